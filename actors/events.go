package actors

import (
	"log/slog"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/api"
)

// Subscribe registers a subscriber; answered with *Subscribed. The events
// actor closes Ch when the subscriber falls behind by more than its buffer,
// so one slow client can never stall the others.
type Subscribe struct {
	Caller Caller
	VMID   string // only this VM's events when set
	Ch     chan api.Event
}

func (m *Subscribe) describe() string { return "events subscription" }

// Subscribed answers Subscribe.
type Subscribed struct{ ID uint64 }

// Unsubscribe removes a subscriber and closes its channel.
type Unsubscribe struct{ ID uint64 }

// emit publishes one event; Owner filters who may see it.
type emit struct {
	Event api.Event
	Owner uint32
}

type subscriber struct {
	caller Caller
	vmID   string
	ch     chan api.Event
}

type eventsActor struct {
	log  *slog.Logger
	seq  uint64
	next uint64
	subs map[uint64]*subscriber
}

func newEventsActor(log *slog.Logger) actor.Actor {
	return &eventsActor{log: log.With("actor", "events"), subs: map[uint64]*subscriber{}}
}

func (a *eventsActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *Ping:
		ctx.Respond(&Pong{From: "events"})
	case *Subscribe:
		a.next++
		a.subs[a.next] = &subscriber{caller: m.Caller, vmID: m.VMID, ch: m.Ch}
		ctx.Respond(&Subscribed{ID: a.next})
	case *Unsubscribe:
		if s, ok := a.subs[m.ID]; ok {
			close(s.ch)
			delete(a.subs, m.ID)
		}
	case *emit:
		a.seq++
		ev := m.Event
		ev.Seq = a.seq
		if ev.Time == "" {
			ev.Time = time.Now().UTC().Format(time.RFC3339Nano)
		}
		attrs := []any{"vm_id", ev.VMID, "vm_name", ev.VMName, "op", string(ev.Kind), "status", ev.Status, "seq", ev.Seq}
		what := "vm " + string(ev.Kind)
		if ev.Workspace != "" {
			attrs = []any{"workspace", ev.Workspace, "workspace_id", ev.WorkspaceID, "op", string(ev.Kind), "status", ev.Status, "seq", ev.Seq}
			what = string(ev.Kind)
		}
		if ev.PreviousStatus != "" {
			attrs = append(attrs, "previous_status", ev.PreviousStatus)
		}
		if ev.Reason != "" {
			attrs = append(attrs, "reason", ev.Reason)
		}
		a.log.Info(what, attrs...)
		for id, s := range a.subs {
			if !s.caller.May(m.Owner) || (s.vmID != "" && s.vmID != ev.VMID) {
				continue
			}
			select {
			case s.ch <- ev:
			default:
				a.log.Warn("dropping a slow events subscriber", "subscriber", id)
				close(s.ch)
				delete(a.subs, id)
			}
		}
	}
}

// notYetActor stands in the tree for siblings whose capability comes in a
// later milestone (Stats, Import): alive, supervised, pingable, and honest
// that it does nothing yet.
type notYetActor struct{ name string }

func (a *notYetActor) Receive(ctx actor.Context) {
	switch ctx.Message().(type) {
	case *Ping:
		ctx.Respond(&Pong{From: a.name})
	case actor.SystemMessage, actor.AutoReceiveMessage:
	default:
		if ctx.Sender() != nil {
			ctx.Respond(&Result{Err: errorf(ErrNotYet, "%s: not implemented yet", a.name)})
		}
	}
}
