package actors

import (
	"fmt"
	"log/slog"
	"reflect"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/state"
)

// vmActor owns one VM's record and its state machine. It reloads the record
// from disk whenever it (re)starts, so a panic costs nothing but the message
// that caused it. Its mailbox never waits: host work runs in the resource
// children, which answer with messages, and a request that needs a
// procedure (start, stop, delete) is answered when the procedure ends.
type vmActor struct {
	id string
	// publish and gone update what Get and List answer, before this actor
	// answers anyone (given by the Manager at spawn).
	publish func(state.VM)
	gone    func(bool)
	store   *state.Store
	log     *slog.Logger
	events  *actor.PID
	host    *Host
	ws      wsLink // to the Workspaces actor
	// netFacts check a set's ports and network (nil: the spec's rules only).
	netFacts NetFacts
	vm       state.VM
	corrupt  bool // the record on disk is unreadable: never overwrite it
	deleted  bool

	book     *handleBook
	kids     map[string]*actor.PID
	agentc   *agent.Client
	agentGen uint64
	vmmPID   int          // the live VMM this actor follows, 0 for none
	proc     *vmm.Process // its handle

	gen uint64     // of the procedure in flight; older answers are dropped
	op  *procedure // nil when idle
}

// waiter is a caller to answer when a procedure ends.
type waiter struct {
	to   *actor.PID
	kind string // "start", "stop", "delete"
}

func (a *vmActor) Receive(ctx actor.Context) {
	if m, ok := ctx.Message().(procedureAnswer); ok && (m.procedure() != a.gen || a.op == nil) {
		return
	}
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.started(ctx)
	case *actor.Restarting:
		a.log.Warn("VM actor restarting after a failure")
	case *crashVM:
		if pid := a.kids[m.Kind]; pid != nil {
			ctx.Send(pid, &crashRes{})
			return
		}
		panic(fmt.Sprintf("injected panic in VM actor %s", a.id))
	case *acquired:
		a.acquired(ctx, m)
	case *released:
		a.released(ctx, m)
	case *probed:
		a.probed(ctx, m)
	case *agentPoweredOff:
		a.agentPoweredOff(ctx, m)
	case *stopTimer:
		a.graceOver(ctx)
	case *agentReady:
		a.agentReady(ctx, m)
	case *vmmExited:
		a.vmmExited(ctx, m)
	case *stateSaved:
		a.stateSaved(ctx, m)
	case *ExecVM:
		if a.deleted {
			ctx.Respond(&AgentResult{Err: &Error{Kind: ErrNotFound, VM: m.Ref, Msg: fmt.Sprintf("no VM named %q", m.Ref)}})
			return
		}
		vm := a.vm
		r := &AgentResult{VM: &vm, Agent: a.agentc, Dir: a.vmDir()}
		if a.vm.Status != state.StatusRunning {
			r.Err = a.refuse(a.vm.Status, "VM %s is %s, not running", a.vm.Name, a.vm.Status)
		} else if a.agentc == nil {
			r.Err = &Error{Kind: ErrAgentUnavailable, VM: a.vm.Name, Status: a.vm.Status, Msg: fmt.Sprintf("the agent of VM %s is not connected (yet)", a.vm.Name)}
		}
		ctx.Respond(r)
	case vmRequest:
		if a.deleted {
			ctx.Respond(&Result{Err: &Error{Kind: ErrNotFound, VM: m.ref(), Msg: fmt.Sprintf("no VM named %q", m.ref())}})
			return
		}
		a.request(ctx, m)
	}
}

// procedureAnswer is a message that moves the procedure in flight on; one
// that carries an older procedure's generation arrived late and is dropped.
type procedureAnswer interface{ procedure() uint64 }

func (m *acquired) procedure() uint64        { return m.gen }
func (m *released) procedure() uint64        { return m.gen }
func (m *probed) procedure() uint64          { return m.gen }
func (m *agentPoweredOff) procedure() uint64 { return m.gen }
func (m *stopTimer) procedure() uint64       { return m.gen }
func (m *stateSaved) procedure() uint64      { return m.gen }

// started loads the record, spawns the resource children and reconciles
// what the record says with what runs.
func (a *vmActor) started(ctx actor.Context) {
	a.vm = loadOrError(a.store, a.id, a.log)
	a.corrupt = a.vm.Name == "" && a.vm.Status == state.StatusError
	a.changed(ctx)
	if a.corrupt || a.host == nil {
		ctx.Send(ctx.Parent(), &vmReconciled{ID: a.id})
		return
	}
	var err error
	if a.book, err = openBook(a.store, a.id); err != nil {
		// Unreadable handles: cleanup falls back to vm.json's Runtime.
		a.log.Warn("handles.json unreadable; using vm.json's runtime mirror", "vm_name", a.vm.Name, "err", err)
	}
	a.spawnChildren(ctx)
	a.reconcile(ctx)
}

func (a *vmActor) name() string {
	if a.corrupt {
		return a.id
	}
	return a.vm.Name
}

func (a *vmActor) refuse(status state.Status, format string, args ...any) error {
	return &Error{Kind: ErrInvalidState, VM: a.name(), Status: status, Msg: fmt.Sprintf(format, args...)}
}

// request handles a VM request: at once (get, set, refusals), or by
// starting (or joining) a procedure that answers when it ends.
func (a *vmActor) request(ctx actor.Context, req vmRequest) {
	name := a.name()
	if _, del := req.(*DeleteVM); a.corrupt && !del {
		ctx.Respond(&Result{Err: a.refuse(a.vm.Status, "VM %s is in error (%s); only delete is possible", name, a.vm.Reason)})
		return
	}
	reply := func(err error) {
		if err == errPending {
			return // answered when the procedure ends
		}
		if err != nil {
			ctx.Respond(&Result{Err: err})
			return
		}
		vm := a.vm
		ctx.Respond(&Result{VM: &vm})
	}
	switch m := req.(type) {
	case *GetVM:
		reply(nil)
	case *SetVM:
		reply(a.set(ctx, m))
	case *StartVM:
		reply(a.start(ctx, m.Received, waiter{to: ctx.Sender(), kind: "start"}))
	case *StopVM:
		reply(a.stop(ctx, m, waiter{to: ctx.Sender(), kind: "stop"}))
	case *DeleteVM:
		reply(a.delete(ctx, m, waiter{to: ctx.Sender(), kind: "delete"}))
	case *SaveVM:
		reply(a.saveState(ctx, m, waiter{to: ctx.Sender(), kind: "save"}))
	}
}

// errPending means "answered when the procedure ends": request does not
// reply to it.
var errPending = &Error{Kind: ErrInvalidState, Msg: "pending"}

func (a *vmActor) start(ctx actor.Context, received time.Time, w waiter) error {
	if a.op != nil {
		if a.op.kind == opStart {
			a.op.waiters = append(a.op.waiters, w) // one boot answers both
			return errPending
		}
		return a.refuse(a.vm.Status, "VM %s is %s: it can only be started when created or stopped", a.name(), a.vm.Status)
	}
	if a.host == nil {
		return &Error{Kind: ErrInvalidState, VM: a.name(), Status: a.vm.Status, Msg: fmt.Sprintf("VM %s cannot start: this daemon runs no VMs (vm.run = \"off\" in its configuration)", a.name())}
	}
	switch a.vm.Status {
	case state.StatusCreated, state.StatusStopped, state.StatusError:
		// error: a VM whose VMM crashed or whose start failed has had its
		// resources released; starting it again is allowed.
	default:
		return a.refuse(a.vm.Status, "VM %s is %s: it can only be started when created or stopped", a.name(), a.vm.Status)
	}
	return a.boot(ctx, received, w)
}

func (a *vmActor) stop(ctx actor.Context, m *StopVM, w waiter) error {
	if a.op != nil {
		switch {
		case a.op.kind == opStop:
			a.op.waiters = append(a.op.waiters, w)
			if m.Force {
				a.hurry(ctx)
			}
			return errPending
		case a.op.kind == opStart && m.Force:
			a.abortStart(ctx, opStop, w)
			return errPending
		case a.op.kind == opStart:
			return a.refuse(a.vm.Status, "VM %s is starting: wait for it, or stop it with force to cut the start short", a.name())
		}
		return a.refuse(a.vm.Status, "VM %s is %s", a.name(), a.vm.Status)
	}
	if a.vm.Status != state.StatusRunning {
		return a.refuse(a.vm.Status, "VM %s is %s: only a running VM can be stopped", a.name(), a.vm.Status)
	}
	a.shutdown(ctx, m.Force, m.Reason, w)
	return errPending
}

func (a *vmActor) delete(ctx actor.Context, m *DeleteVM, w waiter) error {
	busy := a.op != nil || a.vm.Status == state.StatusRunning || a.vm.Status == state.StatusStarting || a.vm.Status == state.StatusStopping
	if busy && !m.Force {
		return a.refuse(a.vm.Status, "VM %s is %s: stop it first or delete with force", a.name(), a.vm.Status)
	}
	if a.op != nil {
		switch a.op.kind {
		case opStart:
			a.abortStart(ctx, opDelete, w)
		case opDelete:
			a.op.waiters = append(a.op.waiters, w)
		default:
			// The teardown in flight ends in the delete; its own callers
			// get their own answer now, not the delete's.
			why := a.refuse(a.vm.Status, "VM %s is being deleted (forced)", a.vm.Name)
			if a.op.kind == opRollback {
				why = a.refuse(state.StatusError, "start of VM %s failed: %v", a.vm.Name, a.op.cause)
			}
			for _, ow := range a.op.waiters {
				ctx.Send(ow.to, &Result{Err: why})
			}
			a.op.waiters = nil
			a.op.kind = opDelete
			a.op.discard = true
			a.op.waiters = append(a.op.waiters, w)
			a.hurry(ctx)
		}
		return errPending
	}
	if a.corrupt || a.host == nil {
		return a.remove(ctx, a.vm.Status)
	}
	a.newOp(opDelete, w)
	a.op.discard = true
	a.op.prev = a.vm.Status
	a.teardown(ctx, 0)
	return errPending
}

// remove deletes the record, after every resource is released.
func (a *vmActor) remove(ctx actor.Context, prev state.Status) error {
	if err := a.store.Remove(a.id); err != nil {
		return fmt.Errorf("delete VM %s: %w", a.name(), err)
	}
	a.deleted = true
	if a.gone != nil {
		a.gone(true)
	}
	ctx.Send(a.events, &emit{Owner: a.vm.OwnerUID, Event: api.Event{Kind: api.EventDeleted, VMID: a.id, VMName: a.vm.Name, Status: "deleted", PreviousStatus: string(prev)}})
	ctx.Send(ctx.Parent(), &vmDeleted{ID: a.id})
	return nil
}

func (a *vmActor) set(ctx actor.Context, m *SetVM) error {
	running := a.op != nil || a.vm.Status == state.StatusRunning || a.vm.Status == state.StatusStarting || a.vm.Status == state.StatusStopping
	if running {
		for _, f := range []struct {
			name    string
			changes bool
		}{
			{"cpus", m.CPUs != nil && *m.CPUs != a.vm.Spec.CPUs},
			{"memory", m.Memory != nil && *m.Memory != a.vm.Spec.Memory},
			{"disk_size", m.DiskSize != nil && *m.DiskSize != a.vm.Spec.DiskSize},
		} {
			if f.changes {
				return a.refuse(a.vm.Status, "cannot change %s of VM %s while it is %s: stop it first", f.name, a.vm.Name, a.vm.Status)
			}
		}
	}
	spec := a.vm.Spec
	if err := applySet(&spec, m, a.vm, a.netFacts); err != nil {
		return err
	}
	if reflect.DeepEqual(spec, a.vm.Spec) {
		return nil
	}
	next := a.vm
	next.Spec = spec
	if err := a.save(next); err != nil {
		return err
	}
	a.changed(ctx)
	ctx.Send(a.events, &emit{Owner: a.vm.OwnerUID, Event: api.Event{Kind: api.EventUpdated, VMID: a.id, VMName: a.vm.Name, Status: string(a.vm.Status)}})
	return nil
}

// changed publishes the record, then tells the Manager (for its tally).
func (a *vmActor) changed(ctx actor.Context) {
	if a.publish != nil {
		a.publish(a.vm)
	}
	ctx.Send(ctx.Parent(), &vmChanged{VM: a.vm})
}

// setStatus persists a transition, then tells the Manager and the Events
// actor. Disk first: a reply never claims what a crash could undo.
func (a *vmActor) setStatus(ctx actor.Context, s state.Status, reason string) error {
	prev := a.vm.Status
	next := a.vm
	next.Status, next.Reason = s, reason
	if err := a.save(next); err != nil {
		return err
	}
	a.log.Debug("status", "vm_name", a.vm.Name, "from", prev, "to", s)
	a.changed(ctx)
	ctx.Send(a.events, &emit{Owner: a.vm.OwnerUID, Event: api.Event{Kind: api.EventStatus, VMID: a.id, VMName: a.vm.Name, Status: string(s), PreviousStatus: string(prev), Reason: reason}})
	return nil
}

func (a *vmActor) save(next state.VM) error {
	next.UpdatedAt = time.Now().UTC()
	if err := a.store.Save(&next); err != nil {
		return fmt.Errorf("persist VM %s: %w", a.vm.Name, err)
	}
	a.vm = next
	return nil
}

// mirror applies f to the Runtime in vm.json, so cleanup works even when
// handles.json is lost.
func (a *vmActor) mirror(f func(*state.Runtime)) error {
	next := a.vm
	f(&next.Runtime)
	return a.save(next)
}

// vmReconciled tells the Manager a VM actor has reconciled its VM.
type vmReconciled struct{ ID string }
