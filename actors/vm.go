package actors

import (
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/state"
)

// vmActor owns one VM's record and its state machine. It reloads the record
// from disk whenever it (re)starts, so a panic costs nothing but the message
// that caused it.
type vmActor struct {
	id      string
	store   *state.Store
	log     *slog.Logger
	events  *actor.PID
	vm      state.VM
	corrupt bool // the record on disk is unreadable: never overwrite it
	deleted bool

	// Set when VMs really run (nil: records only).
	host     *Host
	book     *handleBook
	children map[string]*actor.PID
	mach     *machine
	agentc   *agent.Client
}

func (a *vmActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.load(ctx)
		if a.host != nil && !a.corrupt {
			var err error
			if a.book, err = openBook(a.store, a.id); err != nil {
				// Unreadable handles: cleanup falls back to vm.json's Runtime.
				a.log.Warn("handles.json unreadable; using vm.json's runtime mirror", "vm_name", a.vm.Name, "err", err)
			}
			a.spawnChildren(ctx)
			a.reconcile(ctx)
			ctx.Send(ctx.Parent(), &vmChanged{VM: a.vm})
		}
	case *actor.Restarting:
		a.log.Warn("VM actor restarting after a failure")
	case *actor.Stopping:
		if a.agentc != nil {
			_ = a.agentc.Close()
		}
	case *crashVM:
		panic(fmt.Sprintf("injected panic in VM actor %s", a.id))
	case *reconciled:
		ctx.Respond(true)
	case *vmmExited:
		a.vmmGone(ctx, m)
	case *agentConnected:
		if a.mach != nil && a.mach.rt.PID == m.pid && a.vm.Status == state.StatusRunning {
			a.agentc = m.c
		} else {
			_ = m.c.Close()
		}
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
		vm, err := a.handle(ctx, m)
		ctx.Respond(&Result{VM: vm, Err: err})
	}
}

func (a *vmActor) load(ctx actor.Context) {
	a.vm = loadOrError(a.store, a.id, a.log)
	a.corrupt = a.vm.Name == "" && a.vm.Status == state.StatusError
	if a.corrupt {
		ctx.Send(ctx.Parent(), &vmChanged{VM: a.vm})
		return
	}
	// Transitions cut short by a crash settle to where they were heading
	// (records only: nothing runs yet to be re-adopted or torn down).
	switch a.vm.Status {
	case state.StatusStarting:
		a.setStatus(ctx, state.StatusStopped, "start interrupted by a daemon restart")
	case state.StatusStopping:
		a.setStatus(ctx, state.StatusStopped, "")
	}
	ctx.Send(ctx.Parent(), &vmChanged{VM: a.vm})
}

func (a *vmActor) refuse(status state.Status, format string, args ...any) error {
	return &Error{Kind: ErrInvalidState, VM: a.vm.Name, Status: status, Msg: fmt.Sprintf(format, args...)}
}

func (a *vmActor) handle(ctx actor.Context, req vmRequest) (*state.VM, error) {
	name := a.vm.Name
	if a.corrupt {
		name = a.id
	}
	if _, del := req.(*DeleteVM); a.corrupt && !del {
		return nil, a.refuse(a.vm.Status, "VM %s is in error (%s); only delete is possible", name, a.vm.Reason)
	}
	switch m := req.(type) {
	case *GetVM:
	case *SetVM:
		if err := a.set(ctx, m); err != nil {
			return nil, err
		}
	case *StartVM:
		switch a.vm.Status {
		case state.StatusCreated, state.StatusStopped:
		case state.StatusError:
			// A VM whose VMM crashed or whose start failed has had its
			// resources released: starting it again is allowed.
		default:
			return nil, a.refuse(a.vm.Status, "VM %s is %s: it can only be started when created or stopped", name, a.vm.Status)
		}
		if a.host != nil {
			if err := a.boot(ctx); err != nil {
				return nil, err
			}
			break
		}
		if err := a.setStatus(ctx, state.StatusStarting, ""); err != nil {
			return nil, err
		}
		if err := a.setStatus(ctx, state.StatusRunning, ""); err != nil {
			return nil, err
		}
	case *StopVM:
		if a.vm.Status != state.StatusRunning && !(m.Force && a.vm.Status == state.StatusStarting) {
			return nil, a.refuse(a.vm.Status, "VM %s is %s: only a running VM can be stopped", name, a.vm.Status)
		}
		if err := a.stop(ctx, m.Force); err != nil {
			return nil, err
		}
		if m.Reason != "" {
			next := a.vm
			next.Reason = m.Reason
			if err := a.save(next); err == nil {
				ctx.Send(ctx.Parent(), &vmChanged{VM: a.vm})
				ctx.Send(a.events, &emit{Owner: a.vm.OwnerUID, Event: api.Event{Kind: "auto-stopped", VMID: a.id, VMName: a.vm.Name, Status: string(a.vm.Status), Reason: m.Reason}})
			}
		}
	case *DeleteVM:
		switch a.vm.Status {
		case state.StatusRunning, state.StatusStarting, state.StatusStopping:
			if !m.Force {
				return nil, a.refuse(a.vm.Status, "VM %s is %s: stop it first or delete with force", name, a.vm.Status)
			}
			if err := a.stop(ctx, true); err != nil {
				return nil, err
			}
		}
		if a.host != nil && a.book != nil {
			a.teardownDisk(ctx, true)
		}
		if err := a.store.Remove(a.id); err != nil {
			return nil, fmt.Errorf("delete VM %s: %w", name, err)
		}
		a.deleted = true
		ctx.Send(a.events, &emit{Owner: a.vm.OwnerUID, Event: api.Event{Kind: "deleted", VMID: a.id, VMName: a.vm.Name, Status: "deleted", PreviousStatus: string(a.vm.Status)}})
		ctx.Send(ctx.Parent(), &vmDeleted{ID: a.id})
		return nil, nil
	}
	vm := a.vm
	return &vm, nil
}

func (a *vmActor) stop(ctx actor.Context, force bool) error {
	if a.host != nil {
		return a.shutdown(ctx, force)
	}
	if err := a.setStatus(ctx, state.StatusStopping, ""); err != nil {
		return err
	}
	return a.setStatus(ctx, state.StatusStopped, "")
}

func (a *vmActor) set(ctx actor.Context, m *SetVM) error {
	running := a.vm.Status == state.StatusRunning || a.vm.Status == state.StatusStarting || a.vm.Status == state.StatusStopping
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
	if err := applySpec(&spec, m.CPUs, m.Memory, m.DiskSize, m.AutoStop, a.vm.Spec.DiskSize); err != nil {
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
	ctx.Send(ctx.Parent(), &vmChanged{VM: a.vm})
	ctx.Send(a.events, &emit{Owner: a.vm.OwnerUID, Event: api.Event{Kind: "updated", VMID: a.id, VMName: a.vm.Name, Status: string(a.vm.Status)}})
	return nil
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
	ctx.Send(ctx.Parent(), &vmChanged{VM: a.vm})
	ctx.Send(a.events, &emit{Owner: a.vm.OwnerUID, Event: api.Event{Kind: "status", VMID: a.id, VMName: a.vm.Name, Status: string(s), PreviousStatus: string(prev), Reason: reason}})
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

// reconciled is answered once the actor has loaded and reconciled its VM;
// the Manager waits for every VM before the daemon reports ready.
type reconciled struct{}

// vmmGone handles a VMM that ended without being stopped through paddock
// (guest poweroff, crash, kill from outside): release everything, and say why.
func (a *vmActor) vmmGone(ctx actor.Context, m *vmmExited) {
	if a.mach == nil || a.mach.rt.PID != m.pid || a.vm.Status != state.StatusRunning {
		return // expected: stop or rollback already handled it
	}
	a.log.Warn("VMM exited", "vm_name", a.vm.Name, "pid", m.pid, "reason", m.reason)
	a.teardown(ctx)
	status, reason := state.StatusStopped, "the guest powered off"
	switch {
	case strings.Contains(m.reason, "status unknown"):
		// A re-adopted VMM is not our child: how it ended cannot be known.
		reason = "the VMM exited (" + m.reason + ")"
	case m.reason != "exit status 0" && m.reason != "":
		status, reason = state.StatusError, "the VMM ended: "+m.reason
	}
	_ = a.setStatus(ctx, status, reason)
}
