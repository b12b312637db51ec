package actors

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/host/disk"
	"github.com/paddock-vm/paddock/host/passt"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/state"
)

// Resource kinds, one child actor each.
const (
	KindTap   = "tap"
	KindRules = "rules"
	KindPasst = "passt"
	KindDisk  = "disk"
	KindVMM   = "vmm"
	KindAgent = "agent"
	// KindWorkspaces is the VM's workspace attachments (attach.go).
	KindWorkspaces = "workspaces"
)

// resourceKinds are the host resources a VM acquires, in boot order; they
// are released in reverse. Crash points derive from this table.
var resourceKinds = []string{KindTap, KindRules, KindPasst, KindDisk, KindWorkspaces, KindVMM}

type opKind int

const (
	opStart     opKind = iota + 1 // boot: acquire every resource, then the agent's hello
	opRollback                    // a failed boot: release, then status error
	opStop                        // stop: agent power-off, ACPI, kill; release
	opExit                        // the VMM ended by itself: release
	opDelete                      // release (disk discarded), then the record
	opReconcile                   // after a (re)start of the actor
)

// procedure is the one thing a VM actor is doing, step by step; each step
// is a message to a child and its answer.
type procedure struct {
	kind    opKind
	waiters []waiter
	started time.Time

	// boot
	plan     *bootPlan
	step     int // index in bootSteps
	marks    []state.BootPhase
	identity *identityTaken // a resume's identity step, for the report
	lastMark time.Time

	// release
	releasing []string // kinds still to release, in order
	grace     time.Duration
	discard   bool
	force     bool
	inGrace   bool // waiting for the guest to power off (agent asked)

	cause error // why a boot failed, or how the VMM ended
	// saving: a stop that saves the guest's state first (SaveVM);
	// saveErr is how that went.
	saving  bool
	saveErr error
	reason  string       // recorded with the final status
	final   state.Status // status after the release
	prev    state.Status // for the deleted event
}

// stopTimer ends the guest's grace period after the agent was asked.
type stopTimer struct{ gen uint64 }

func (a *vmActor) newOp(k opKind, ws ...waiter) {
	a.gen++
	a.op = &procedure{kind: k, started: time.Now()}
	for _, w := range ws {
		if w.to != nil {
			a.op.waiters = append(a.op.waiters, w)
		}
	}
}

func (a *vmActor) vmDir() string  { return a.store.Dir(a.id) }
func (a *vmActor) runDir() string { return filepath.Join(a.host.RunDir, a.id) }

func (a *vmActor) spawnChildren(ctx actor.Context) {
	h := a.host
	log := a.log.With("vm_name", a.vm.Name)
	timeout := h.releaseTimeout()
	producers := map[string]func() actor.Actor{
		KindTap: func() actor.Actor {
			return &resourceActor[*state.TapRuntime]{kind: KindTap, step: tapStep{net: h.Net, owner: h.TapOwner, log: log}, book: a.book, log: log, timeout: timeout}
		},
		KindRules: func() actor.Actor {
			return &resourceActor[*state.RulesRuntime]{kind: KindRules, step: rulesStep{rules: h.Rules, check: h.CheckPorts, why: h.RulesErr}, book: a.book, log: log, timeout: timeout}
		},
		KindPasst: func() actor.Actor {
			return &resourceActor[*passt.Process]{kind: KindPasst, step: passtStep{run: h.Passt, why: h.PasstErr}, book: a.book, log: log, timeout: timeout}
		},
		KindDisk: func() actor.Actor {
			return &resourceActor[*disk.Disk]{kind: KindDisk, step: diskStep{backend: h.Disks, opts: h.DiskOpts}, book: a.book, log: log, timeout: timeout}
		},
		KindWorkspaces: func() actor.Actor {
			return &resourceActor[*state.AttachRuntime]{kind: KindWorkspaces, step: workspacesStep(a.ws), book: a.book, log: log, timeout: timeout}
		},
		KindVMM: func() actor.Actor {
			return &resourceActor[*vmm.Process]{kind: KindVMM, step: vmmStep{drv: h.VMM, log: log, find: h.FindVMMs}, book: a.book, log: log, timeout: timeout}
		},
		KindAgent: func() actor.Actor { return &agentActor{dial: h.DialAgent, log: log} },
	}
	a.kids = map[string]*actor.PID{}
	for _, k := range append(append([]string(nil), resourceKinds...), KindAgent) {
		pid, err := ctx.SpawnNamed(actor.PropsFromProducer(producers[k]), k)
		if err != nil {
			a.log.Error("spawn resource actor", "kind", k, "err", err)
			continue
		}
		a.kids[k] = pid
	}
}

// finish ends the procedure: every waiter gets the VM as it is now, or err.
func (a *vmActor) finish(ctx actor.Context, err error) {
	op := a.op
	a.op = nil
	for _, w := range op.waiters {
		switch {
		case err != nil:
			ctx.Send(w.to, &Result{Err: err})
		case a.deleted:
			ctx.Send(w.to, &Result{})
		default:
			vm := a.vm
			ctx.Send(w.to, &Result{VM: &vm})
		}
	}
}

// ---- release: every resource, in reverse boot order ----

// teardown releases every resource of the VM (from handles.json, else the
// vm.json mirror, else paddock's naming rules), then ends the procedure
// through released. grace > 0 lets the guest power off on the ACPI button
// before the VMM is killed.
func (a *vmActor) teardown(ctx actor.Context, grace time.Duration) {
	op := a.op
	op.grace = grace
	op.inGrace = false
	if a.kids[KindAgent] != nil {
		ctx.Send(a.kids[KindAgent], &disconnectAgent{})
	}
	a.agentc = nil
	op.releasing = nil
	for i := len(resourceKinds) - 1; i >= 0; i-- {
		op.releasing = append(op.releasing, resourceKinds[i])
	}
	a.releaseNext(ctx)
}

func (a *vmActor) releaseNext(ctx actor.Context) {
	op := a.op
	if len(op.releasing) == 0 {
		a.releasedAll(ctx)
		return
	}
	k := op.releasing[0]
	how := releaseHow{Discard: op.discard}
	if k == KindVMM && !op.force {
		how.Grace = op.grace
	}
	if k == KindDisk && decodeDisk(a.vm.Disk) == nil {
		how.Discard = true // a layer never recorded as the VM's own
	}
	pid := a.kids[k]
	if pid == nil {
		op.releasing = op.releasing[1:]
		a.releaseNext(ctx)
		return
	}
	ctx.Send(pid, &releaseRes{gen: a.gen, how: how, fallback: a.fallback(k)})
}

// fallback is what to release when handles.json has no record of kind:
// the vm.json mirror, else the naming rule.
func (a *vmActor) fallback(kind string) any {
	rt := a.vm.Runtime
	switch kind {
	case KindTap:
		if a.host.Net == nil {
			return nil
		}
		if rt.Tap != nil {
			t := *rt.Tap
			return &t
		}
		return tapStep{}.Plan(&bootPlan{vmID: a.id})
	case KindRules:
		if a.host.Rules == nil {
			return nil
		}
		if rt.Rules != nil {
			r := *rt.Rules
			return &r
		}
		return rulesStep{}.Plan(&bootPlan{vmID: a.id})
	case KindPasst:
		if p := passtFromMirror(rt.Passt, a.id); p != nil {
			return p
		}
		return passtStep{}.Plan(&bootPlan{vmID: a.id, runDir: a.runDir()})
	case KindDisk:
		if rt.DiskBackend != "" {
			d := &disk.Disk{Backend: rt.DiskBackend, Dir: a.vmDir(), Files: rt.DiskFiles}
			for _, l := range rt.Loops {
				d.Loops = append(d.Loops, l.Device)
			}
			if rt.DM != nil {
				d.DM = []string{rt.DM.Name}
			}
			return d
		}
		if own := decodeDisk(a.vm.Disk); own != nil {
			return own
		}
		// Nothing recorded: a plan of the configured backend names
		// everything it could have made.
		return a.host.Disks.Plan(a.vmDir())
	case KindWorkspaces:
		if rt.Workspaces != nil {
			w := *rt.Workspaces
			return &w
		}
		return workspacesStep{}.Plan(&bootPlan{vmID: a.id, vmName: a.vm.Name, owner: a.vm.OwnerUID})
	case KindVMM:
		p := vmmFromMirror(rt.VMM, a.id)
		if p.PID == 0 {
			p.Driver, p.RunDir = a.host.VMM.Name(), a.runDir()
		}
		return p
	}
	return nil
}

func (a *vmActor) released(ctx actor.Context, m *released) {
	op := a.op
	if len(op.releasing) == 0 || op.releasing[0] != m.kind {
		return
	}
	if m.err != nil {
		a.log.Error("teardown step failed", "vm_name", a.vm.Name, "kind", m.kind, "err", m.err)
	}
	if m.kind == KindVMM {
		a.vmmPID = 0
	}
	op.releasing = op.releasing[1:]
	a.releaseNext(ctx)
}

// releasedAll ends a release: files of the run, the mirror, the status.
func (a *vmActor) releasedAll(ctx actor.Context) {
	op := a.op
	_ = os.Remove(filepath.Join(a.vmDir(), "seed.img"))
	_ = os.RemoveAll(a.runDir())
	if err := a.mirror(func(r *state.Runtime) { *r = state.Runtime{} }); err != nil {
		a.log.Error("clearing runtime", "err", err)
	}
	switch op.kind {
	case opRollback:
		_ = a.setStatus(ctx, state.StatusError, op.cause.Error())
		a.finish(ctx, a.refuse(state.StatusError, "start of VM %s failed: %v", a.vm.Name, op.cause))
	case opStop:
		failpoint("stop-before-stopped")
		err := a.settle(ctx, state.StatusStopped, op.reason)
		if op.saving && op.saveErr != nil {
			err = op.saveErr
		}
		a.finish(ctx, err)
		if op.reason != "" {
			ctx.Send(a.events, &emit{Owner: a.vm.OwnerUID, Event: eventAutoStopped(a.vm, op.reason)})
		}
	case opExit, opReconcile:
		if op.final != "" {
			_ = a.settle(ctx, op.final, op.reason)
		}
		if op.kind == opReconcile {
			ctx.Send(ctx.Parent(), &vmReconciled{ID: a.id})
		}
		a.finish(ctx, nil)
	case opDelete:
		a.finish(ctx, a.remove(ctx, op.prev))
	}
}

// settle records the final status of a procedure unless it is already so.
func (a *vmActor) settle(ctx actor.Context, s state.Status, reason string) error {
	if a.vm.Status == s && a.vm.Reason == reason {
		return nil
	}
	return a.setStatus(ctx, s, reason)
}

// hurry cuts a graceful stop short: no more waiting for the guest.
func (a *vmActor) hurry(ctx actor.Context) {
	op := a.op
	op.force = true
	if op.inGrace {
		a.teardown(ctx, 0)
		return
	}
	if len(op.releasing) > 0 && op.releasing[0] == KindVMM {
		ctx.Send(a.kids[KindVMM], &hurryRes{})
	}
}

// ---- stop: the agent, then the driver's ladder (ACPI, quit, kill) ----

// shutdown stops a running VM: the agent is asked to power the guest off;
// after half the stop timeout (or at once, without an agent) the VMM gets
// the ACPI power button for the rest of it, then is killed. Force kills.
func (a *vmActor) shutdown(ctx actor.Context, force bool, reason string, w waiter) {
	a.newOp(opStop, w)
	op := a.op
	op.force, op.reason = force, reason
	failpoint("stop-begin")
	if err := a.setStatus(ctx, state.StatusStopping, ""); err != nil {
		a.log.Error("recording stopping", "err", err)
	}
	timeout := a.host.StopTimeout
	switch {
	case force || a.vmmPID == 0:
		a.teardown(ctx, 0)
	case a.agentc != nil:
		op.inGrace = true
		ctx.Send(a.kids[KindAgent], &powerOffAgent{gen: a.gen})
		gen, self, root := a.gen, ctx.Self(), ctx.ActorSystem().Root
		time.AfterFunc(timeout/2, func() { root.Send(self, &stopTimer{gen: gen}) })
	default:
		a.teardown(ctx, timeout)
	}
}

func (a *vmActor) agentPoweredOff(ctx actor.Context, m *agentPoweredOff) {
	if a.op.kind == opStop && a.op.inGrace && m.err != nil {
		a.log.Info("the agent did not take the power-off; pressing the ACPI power button", "vm_name", a.vm.Name, "err", m.err)
		a.graceOver(ctx)
	}
}

func (a *vmActor) graceOver(ctx actor.Context) {
	op := a.op
	if op.kind != opStop || !op.inGrace {
		return
	}
	left := a.host.StopTimeout - time.Since(op.started)
	if left < a.host.StopTimeout/2 {
		left = a.host.StopTimeout / 2
	}
	a.teardown(ctx, left)
}

// abortStart cuts a boot in flight short (a forced stop or delete): its
// waiters are told so, and the resources acquired so far, or being
// acquired, are released (a release cancels an acquire in flight).
func (a *vmActor) abortStart(ctx actor.Context, k opKind, w waiter) {
	old := a.op
	cut := a.refuse(state.StatusStopped, "start of VM %s was cut short by a forced %s", a.vm.Name, map[opKind]string{opStop: "stop", opDelete: "delete"}[k])
	a.op = old
	a.finish(ctx, cut)
	a.newOp(k, w)
	a.op.force = true
	a.op.prev = a.vm.Status
	if k == opDelete {
		a.op.discard = true
	}
	if err := a.setStatus(ctx, state.StatusStopping, ""); err != nil {
		a.log.Error("recording stopping", "err", err)
	}
	a.teardown(ctx, 0)
}

// ---- the VMM ending by itself ----

func (a *vmActor) vmmExited(ctx actor.Context, m *vmmExited) {
	if m.pid == 0 || m.pid != a.vmmPID {
		return // a VMM this actor no longer follows
	}
	a.vmmPID = 0
	if m.err != nil {
		a.log.Warn("waiting for the VMM failed", "vm_name", a.vm.Name, "err", m.err)
	}
	why := exitReason(m.exit, m.err)
	switch {
	case a.op != nil && a.op.kind == opStart:
		a.rollback(ctx, fmt.Errorf("the VMM exited during boot: %s (see %s)", why, filepath.Join(a.vmDir(), "console.log")))
	case a.op != nil && a.op.kind == opStop && a.op.inGrace:
		a.teardown(ctx, 0) // the guest powered off: release what is left
	case a.op == nil && a.vm.Status == state.StatusRunning:
		a.log.Warn("VMM exited", "vm_name", a.vm.Name, "pid", m.pid, "how", why)
		a.newOp(opExit)
		a.op.final, a.op.reason = state.StatusStopped, "the guest powered off"
		if !m.exit.Known {
			// A re-adopted VMM is not our child: how it ended cannot be known.
			a.op.reason = "the VMM exited (" + why + ")"
		} else if m.exit.Code != 0 || m.exit.Signal != 0 {
			a.op.final, a.op.reason = state.StatusError, "the VMM ended: "+why
		}
		a.teardown(ctx, 0)
	}
}

func exitReason(ex vmm.Exit, err error) string {
	if err != nil {
		return "wait: " + err.Error()
	}
	return ex.String()
}

// ---- reconcile: after the actor (re)starts ----

// reconcile makes the host match the record: a running VMM that is still
// ours is re-adopted; anything else that was made for this VM is torn down.
func (a *vmActor) reconcile(ctx actor.Context) {
	a.newOp(opReconcile)
	op := a.op
	switch a.vm.Status {
	case state.StatusRunning:
		ctx.Send(a.kids[KindVMM], &probeRes{gen: a.gen, fallback: a.fallback(KindVMM)})
		return
	case state.StatusStarting:
		op.final, op.reason = state.StatusStopped, "start interrupted by a daemon restart"
	case state.StatusStopping:
		op.final = state.StatusStopped
	default:
		rt := a.vm.Runtime
		if a.book.empty() && rt.VMM == nil && rt.Tap == nil && len(rt.Loops) == 0 && rt.DM == nil {
			ctx.Send(ctx.Parent(), &vmReconciled{ID: a.id})
			a.finish(ctx, nil)
			return
		}
	}
	a.teardown(ctx, 0)
}

func (a *vmActor) probed(ctx actor.Context, m *probed) {
	op := a.op
	if op.kind != opReconcile {
		return
	}
	switch m.kind {
	case KindWorkspaces:
		// The running VM's workspaces are claimed again (Adopt).
		if m.err != nil || m.handle != nil && !m.live {
			a.log.Error("claiming the workspaces of a re-adopted VM again", "vm_name", a.vm.Name, "err", m.err)
		}
		a.readopted(ctx)
		return
	case KindVMM:
	default:
		return
	}
	if m.live {
		p := m.handle.(*vmm.Process)
		a.proc = p
		a.log.Info("re-adopted running VM", "vm_name", a.vm.Name, "pid", p.PID)
		a.vmmPID = p.PID
		if pid := a.kids[KindWorkspaces]; pid != nil {
			ctx.Send(pid, &probeRes{gen: a.gen, fallback: a.fallback(KindWorkspaces)})
			return
		}
		a.readopted(ctx)
		return
	}
	if m.err != nil {
		a.log.Warn("re-adopting failed; tearing the VM down", "vm_name", a.vm.Name, "err", m.err)
	}
	op.final, op.reason = state.StatusStopped, "the VMM exited while paddockd was not running"
	a.teardown(ctx, 0)
}

// readopted ends the reconcile of a VM whose VMM runs on: its agent is
// dialed again. A VMM that ended meanwhile is released instead.
func (a *vmActor) readopted(ctx actor.Context) {
	if a.vmmPID == 0 {
		a.op.final, a.op.reason = state.StatusStopped, "the VMM exited while paddockd was not running"
		a.teardown(ctx, 0)
		return
	}
	a.connectAgent(ctx, a.proc, time.Now().Add(30*time.Second))
	ctx.Send(ctx.Parent(), &vmReconciled{ID: a.id})
	a.finish(ctx, nil)
}

// connectAgent dials the agent in the agent child.
func (a *vmActor) connectAgent(ctx actor.Context, p *vmm.Process, deadline time.Time) {
	a.agentGen++
	m := &connectAgent{gen: a.agentGen, proc: p, deadline: deadline}
	if a.op != nil && a.op.kind == opStart && a.op.plan != nil && a.op.plan.restore != nil {
		m.identity = a.identity(a.op.plan)
	}
	ctx.Send(a.kids[KindAgent], m)
}

func (a *vmActor) agentReady(ctx actor.Context, m *agentReady) {
	if m.gen != a.agentGen {
		if m.client != nil {
			_ = m.client.Close()
		}
		return
	}
	if a.op != nil && a.op.kind == opStart {
		a.op.identity = m.identity
		a.bootStepDone(ctx, KindAgent, m.client, m.err)
		return
	}
	if m.err != nil {
		a.log.Warn("agent of a re-adopted VM does not answer", "vm_name", a.vm.Name, "err", m.err)
		return
	}
	if a.vm.Status == state.StatusRunning && a.op == nil {
		a.agentc = m.client
	}
}

func eventAutoStopped(vm state.VM, reason string) api.Event {
	return api.Event{Kind: api.EventAutoStopped, VMID: vm.ID, VMName: vm.Name, Status: string(vm.Status), Reason: reason}
}

// mark ends a span of the start's report (state.BootReport): from the end
// of the last span, or the start of the procedure, to now.
func (op *procedure) mark(name string) {
	now := time.Now()
	from := op.lastMark
	if from.IsZero() {
		from = op.started
	}
	op.marks = append(op.marks, state.BootPhase{Name: name, MS: msOf(now.Sub(from))})
	op.lastMark = now
}

func msOf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
