package actors

import (
	"context"
	"fmt"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/state"
)

// stateSaved carries the end of a SaveVM's save into the mailbox.
type stateSaved struct {
	gen   uint64
	saved vmm.Saved
	err   error
}

// saveState saves the running guest's state off the mailbox (the driver
// pauses it and writes the file), then tears the VM down as a forced
// stop: the VMM is killed, the disk kept for the caller to freeze.
func (a *vmActor) saveState(ctx actor.Context, m *SaveVM, w waiter) error {
	if a.op != nil || a.vm.Status != state.StatusRunning || a.proc == nil {
		return a.refuse(a.vm.Status, "VM %s is %s: only a running VM can be saved", a.name(), a.vm.Status)
	}
	saver, ok := a.host.VMM.(vmm.Saver)
	if !ok {
		return &Error{Kind: ErrInvalidState, VM: a.name(), Msg: fmt.Sprintf("the %s VMM driver cannot save a guest's state (templates need the qemu driver)", a.host.VMM.Name())}
	}
	a.newOp(opStop, w)
	op := a.op
	op.force, op.saving = true, true
	failpoint("save-begin")
	if err := a.setStatus(ctx, state.StatusStopping, ""); err != nil {
		a.log.Error("recording stopping", "err", err)
	}
	gen, p, path, timeout := a.gen, a.proc, m.Path, a.host.StartTimeout
	self, root := ctx.Self(), ctx.ActorSystem().Root
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), timeout)
		saved, err := saver.Save(sctx, p, path)
		cancel()
		root.Send(self, &stateSaved{gen: gen, saved: saved, err: err})
	}()
	return errPending
}

func (a *vmActor) stateSaved(ctx actor.Context, m *stateSaved) {
	op := a.op
	if !op.saving {
		return
	}
	// A forced delete may have taken the procedure over meanwhile: it
	// tears down too, discarding the disk.
	if m.err != nil {
		op.saveErr = fmt.Errorf("save of VM %s: %w", a.vm.Name, m.err)
	} else {
		a.log.Info("guest state saved", "vm_name", a.vm.Name, "bytes", m.saved.Bytes, "took", m.saved.Took)
	}
	failpoint("save-before-stop")
	a.teardown(ctx, 0)
}
