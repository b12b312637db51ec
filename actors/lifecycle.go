package actors

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/host/disk"
	"github.com/paddock-vm/paddock/host/netdev"
	"github.com/paddock-vm/paddock/state"
)

// ExecVM asks a running VM for its agent connection; answered with
// *AgentResult. The caller runs the exec itself so that a long session
// never blocks the VM's mailbox.
type ExecVM struct {
	Caller Caller
	Ref    string
}

func (m *ExecVM) ref() string    { return m.Ref }
func (m *ExecVM) caller() Caller { return m.Caller }

// AgentResult answers ExecVM.
type AgentResult struct {
	VM    *state.VM
	Agent *agent.Client
	Dir   string // the VM's state directory (console log)
	Err   error
}

// vmmExited reports the end of a VMM process.
type vmmExited struct {
	pid    int
	reason string
}

// agentConnected delivers a (re)connected agent to the VM actor.
type agentConnected struct {
	pid int
	c   *agent.Client
}

// machine is the running VMM as the VM actor tracks it.
type machine struct {
	rt     *state.VMMRuntime
	done   chan struct{}
	mu     sync.Mutex
	reason string
}

func (m *machine) exited() (string, bool) {
	select {
	case <-m.done:
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.reason, true
	default:
		return "", false
	}
}

func (a *vmActor) spawnChildren(ctx actor.Context) {
	a.children = map[string]*actor.PID{}
	for _, kind := range []string{KindTap, KindDisk, KindVMM, KindAgent} {
		k := kind
		pid, err := ctx.SpawnNamed(actor.PropsFromProducer(func() actor.Actor {
			return &resourceActor{kind: k, book: a.book, timeout: 2 * time.Minute}
		}), k)
		if err != nil {
			a.log.Error("spawn resource actor", "kind", k, "err", err)
			continue
		}
		a.children[k] = pid
	}
}

func (a *vmActor) ask(ctx actor.Context, kind string, msg any) (*resourceDone, error) {
	pid := a.children[kind]
	if pid == nil {
		return nil, fmt.Errorf("no %s actor", kind)
	}
	res, err := ctx.RequestFuture(pid, msg, 3*time.Minute).Result()
	if err != nil {
		return nil, fmt.Errorf("%s actor: %w", kind, err)
	}
	d := res.(*resourceDone)
	return d, d.err
}

func (a *vmActor) vmDir() string  { return a.store.Dir(a.id) }
func (a *vmActor) runDir() string { return filepath.Join(a.host.RunDir, a.id) }

// reconcile runs when the actor starts (daemon start, or restart after a
// panic): a running VMM that is still ours is re-adopted; anything else
// that was made for this VM is torn down.
func (a *vmActor) reconcile(ctx actor.Context) {
	rt := a.vmmRuntime()
	switch a.vm.Status {
	case state.StatusRunning:
		if rt != nil && a.host.VMM.Alive(rt) {
			a.log.Info("re-adopting running VM", "vm_name", a.vm.Name, "pid", rt.PID)
			actx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := a.host.VMM.Adopt(actx, rt)
			cancel()
			if err == nil {
				a.adopt(ctx, rt)
				return
			}
			a.log.Warn("re-adopting failed; tearing the VM down", "vm_name", a.vm.Name, "err", err)
		}
		a.teardown(ctx)
		a.setStatus(ctx, state.StatusStopped, "the VMM exited while paddockd was not running")
	case state.StatusStarting:
		a.teardown(ctx)
		a.setStatus(ctx, state.StatusStopped, "start interrupted by a daemon restart")
	case state.StatusStopping:
		a.teardown(ctx)
		a.setStatus(ctx, state.StatusStopped, "")
	default:
		if !a.book.empty() || a.vm.Runtime.VMM != nil || a.vm.Runtime.Tap != nil || len(a.vm.Runtime.Loops) > 0 || a.vm.Runtime.DM != nil {
			a.teardown(ctx)
		}
	}
}

// vmmRuntime is the VMM identity from handles.json, else from vm.json.
func (a *vmActor) vmmRuntime() *state.VMMRuntime {
	if h, ok := a.book.get(KindVMM); ok && h.State == "live" {
		var rt state.VMMRuntime
		if json.Unmarshal(h.Payload, &rt) == nil && rt.PID > 0 {
			return &rt
		}
	}
	return a.vm.Runtime.VMM
}

// adopt watches a VMM and (re)connects to its agent in the background.
func (a *vmActor) adopt(ctx actor.Context, rt *state.VMMRuntime) {
	a.adoptWatchOnly(ctx, rt)
	if a.agentc == nil && len(rt.Sockets) > 0 {
		sock := a.controlSocket()
		self, root := ctx.Self(), ctx.ActorSystem().Root
		go func() {
			dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := a.host.DialAgent(dctx, sock)
			if err != nil {
				a.log.Warn("agent of a re-adopted VM does not answer", "vm_name", a.vm.Name, "err", err)
				return
			}
			root.Send(self, &agentConnected{pid: rt.PID, c: c})
		}()
	}
}

func (a *vmActor) controlSocket() string { return filepath.Join(a.runDir(), "agent.sock") }

// boot starts the VM: tap, disk, VMM, agent hello. Any failure rolls back
// in reverse and leaves the VM in error with the reason.
func (a *vmActor) boot(ctx actor.Context) error {
	failpoint("start-begin")
	if err := a.setStatus(ctx, state.StatusStarting, ""); err != nil {
		return err
	}
	if err := a.bootSteps(ctx); err != nil {
		a.log.Warn("start failed; rolling back", "vm_name", a.vm.Name, "err", err)
		a.teardown(ctx)
		_ = a.setStatus(ctx, state.StatusError, err.Error())
		return a.refuse(state.StatusError, "start of VM %s failed: %v", a.vm.Name, err)
	}
	failpoint("start-before-running")
	return a.setStatus(ctx, state.StatusRunning, "")
}

func (a *vmActor) bootSteps(ctx actor.Context) error {
	h := a.host
	// The whole boot, every step included, fits in StartTimeout: a step that
	// hangs fails the start (and rolls it back) instead of holding the VM.
	deadline := time.Now().Add(h.StartTimeout)
	bounded := func(c context.Context) (context.Context, context.CancelFunc) {
		return context.WithDeadline(c, deadline)
	}
	step := func(name string, t0 time.Time) {
		a.log.Debug("boot step done", "vm_name", a.vm.Name, "step", name, "took", time.Since(t0))
	}
	kit, err := h.Kit()
	if err != nil {
		return err
	}
	// The image is needed to make the VM's disk at its first start; after
	// that the VM carries its disk and a copy of the image config.
	var rootfs string
	imgConfig, cerr := os.ReadFile(filepath.Join(a.vmDir(), "config.json"))
	if a.ownDisk() == nil || cerr != nil {
		var err error
		rootfs, imgConfig, err = h.Image(a.vm.Spec.ImageDigest)
		if err != nil {
			return fmt.Errorf("image %s (%s): %w", a.vm.Spec.Image, a.vm.Spec.ImageDigest, err)
		}
		if err := state.WriteFileAtomic(filepath.Join(a.vmDir(), "config.json"), imgConfig, 0o640); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(a.runDir(), 0o750); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	args := []string{"console=ttyS0", "panic=-1", "quiet", "paddock.root=/dev/vda", "paddock.hostname=" + a.vm.Name,
		"paddock.config=/dev/vdb", "paddock.ctl=paddock.agent"}
	spec := MachineSpec{VMID: a.id, Kernel: kit.Kernel, Initrd: kit.Initrd, CPUs: a.vm.Spec.CPUs,
		MemoryMiB: int(a.vm.Spec.Memory >> 20), ControlSocket: a.controlSocket(),
		ConsoleLog: filepath.Join(a.vmDir(), "console.log"), RunDir: a.runDir()}

	// Tap.
	if h.Net != nil && a.vm.Net != nil {
		name := netdev.TapName(a.id)
		t0 := time.Now()
		d, err := a.ask(ctx, KindTap, &acquireRes{plan: state.TapRuntime{Name: name}, create: func(c context.Context) (any, error) {
			c, cancel := bounded(c)
			defer cancel()
			tap, err := h.Net.AcquireTap(c, a.id, h.TapOwner)
			if err != nil {
				return nil, err
			}
			return state.TapRuntime{Name: tap.Name, Ifindex: tap.Ifindex}, nil
		}})
		if err != nil {
			return err
		}
		step("tap", t0)
		tr := d.handle.(state.TapRuntime)
		if err := a.mirror(func(r *state.Runtime) { r.Tap = &tr }); err != nil {
			return err
		}
		spec.Tap, spec.MAC = tr.Name, a.vm.Net.MAC
		args = append(args, "paddock.ip="+a.vm.Net.IP, "paddock.gw="+a.vm.Net.Gateway)
	}

	// Disk: the VM's own copy-on-write layer over the image base, made at
	// the first start and kept (deactivated) across stops.
	var dk *disk.Disk
	if existing := a.ownDisk(); existing != nil {
		b, err := disk.ForDisk(existing, h.DiskOpts)
		if err != nil {
			return err
		}
		d, err := a.ask(ctx, KindDisk, &acquireRes{plan: existing, create: func(c context.Context) (any, error) {
			c, cancel := bounded(c)
			defer cancel()
			return b.Activate(c, existing)
		}})
		if err != nil {
			return err
		}
		dk = d.handle.(*disk.Disk)
	} else {
		plan := h.Disks.Plan(a.vmDir())
		d, err := a.ask(ctx, KindDisk, &acquireRes{plan: plan, create: func(c context.Context) (any, error) {
			c, cancel := bounded(c)
			defer cancel()
			return h.Disks.Create(c, a.vmDir(), rootfs, a.vm.Spec.DiskSize)
		}})
		if err != nil {
			return err
		}
		dk = d.handle.(*disk.Disk)
	}
	raw, err := json.Marshal(dk)
	if err != nil {
		return err
	}
	next := a.vm
	next.Disk = raw
	if err := a.save(next); err != nil {
		return err
	}
	if err := a.mirror(func(r *state.Runtime) {
		r.DiskFiles, r.DiskBackend, r.Loops = dk.Files, dk.Backend, nil
		for _, l := range dk.Loops {
			r.Loops = append(r.Loops, state.LoopRuntime{Device: l})
		}
		if len(dk.DM) > 0 {
			r.DM = &state.DMRuntime{Name: dk.DM[0], UUID: dk.DM[0]}
		}
	}); err != nil {
		return err
	}
	if dk.GuestResize {
		args = append(args, "paddock.growfs")
	}
	seed := filepath.Join(a.vmDir(), "seed.img")
	cfgJSON, err := withEnv(imgConfig, a.vm.Spec.Env)
	if err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	if err := writeSeed(seed, cfgJSON); err != nil {
		return err
	}
	spec.Disks = []MachineDisk{{Path: dk.Path, Format: dk.Format}, {Path: seed, Format: "raw", ReadOnly: true}}
	spec.Cmdline = strings.Join(args, " ")

	// VMM.
	t0 := time.Now()
	d, err := a.ask(ctx, KindVMM, &acquireRes{plan: state.VMMRuntime{Sockets: []string{spec.ControlSocket}}, create: func(c context.Context) (any, error) {
		c, cancel := bounded(c)
		defer cancel()
		return h.VMM.Start(c, spec)
	}})
	if err != nil {
		return err
	}
	step("vmm", t0)
	rt := d.handle.(*state.VMMRuntime)
	if err := a.mirror(func(r *state.Runtime) { r.VMM = rt }); err != nil {
		return err
	}
	a.agentc = nil
	a.adoptWatchOnly(ctx, rt)

	// Agent hello, within what is left of the boot's time.
	actx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	t0 = time.Now()
	defer step("agent", t0)
	type dialed struct {
		c   *agent.Client
		err error
	}
	res := make(chan dialed, 1)
	go func() {
		c, err := h.DialAgent(actx, spec.ControlSocket)
		res <- dialed{c, err}
	}()
	select {
	case r := <-res:
		if r.err != nil {
			if reason, gone := a.mach.exited(); gone {
				return fmt.Errorf("the VMM exited during boot: %s (see %s)", reason, spec.ConsoleLog)
			}
			return fmt.Errorf("agent did not answer within %s: %w", h.StartTimeout, r.err)
		}
		a.agentc = r.c
	case <-a.mach.done:
		reason, _ := a.mach.exited()
		cancel()
		return fmt.Errorf("the VMM exited during boot: %s (see %s)", reason, spec.ConsoleLog)
	}
	return nil
}

// adoptWatchOnly watches a VMM for its exit (the agent is dialed by the
// caller).
func (a *vmActor) adoptWatchOnly(ctx actor.Context, rt *state.VMMRuntime) {
	m := &machine{rt: rt, done: make(chan struct{})}
	a.mach = m
	self, root := ctx.Self(), ctx.ActorSystem().Root
	ch := a.host.VMM.Watch(rt)
	go func() {
		reason := <-ch
		m.mu.Lock()
		m.reason = reason
		m.mu.Unlock()
		close(m.done)
		root.Send(self, &vmmExited{pid: rt.PID, reason: reason})
	}()
}

// mirror applies f to the Runtime in vm.json, so cleanup works even when
// handles.json is lost.
func (a *vmActor) mirror(f func(*state.Runtime)) error {
	next := a.vm
	f(&next.Runtime)
	return a.save(next)
}

// withEnv adds a VM's own environment to its image config (an OCI config
// or its "config" object); a VM's KEY=VALUE replaces the image's KEY.
func withEnv(config []byte, env []string) ([]byte, error) {
	if len(env) == 0 {
		return config, nil
	}
	whole := map[string]json.RawMessage{}
	if len(config) > 0 {
		if err := json.Unmarshal(config, &whole); err != nil {
			return nil, err
		}
	}
	inner := whole
	nested := false
	if raw, ok := whole["config"]; ok {
		inner = map[string]json.RawMessage{}
		if err := json.Unmarshal(raw, &inner); err != nil {
			return nil, err
		}
		nested = true
	}
	var cur []string
	if raw, ok := inner["Env"]; ok {
		_ = json.Unmarshal(raw, &cur)
	}
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		out := cur[:0:0]
		for _, c := range cur {
			if ck, _, _ := strings.Cut(c, "="); ck != k {
				out = append(out, c)
			}
		}
		cur = append(out, kv)
	}
	b, _ := json.Marshal(cur)
	inner["Env"] = b
	if nested {
		b, _ := json.Marshal(inner)
		whole["config"] = b
		return json.Marshal(whole)
	}
	return json.Marshal(inner)
}

// writeSeed writes the image config where the guest reads it: a raw block
// device holding the JSON, padded with NULs to a whole sector.
func writeSeed(path string, config []byte) error {
	if len(config) == 0 {
		config = []byte("{}")
	}
	if len(config) > 1<<20 {
		return fmt.Errorf("image config is larger than 1 MiB")
	}
	n := (len(config) + 1 + 4095) / 4096 * 4096
	buf := make([]byte, n)
	copy(buf, config)
	return state.WriteFileAtomic(path, buf, 0o640)
}

// shutdown stops a running VM: agent power-off, then ACPI, then kill.
func (a *vmActor) shutdown(ctx actor.Context, force bool) error {
	failpoint("stop-begin")
	if err := a.setStatus(ctx, state.StatusStopping, ""); err != nil {
		return err
	}
	timeout := a.host.StopTimeout
	if force {
		timeout = 0
	}
	if a.mach != nil {
		if _, gone := a.mach.exited(); !gone && a.agentc != nil && !force {
			sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			_ = a.agentc.Shutdown(sctx, false)
			cancel()
		}
		if timeout > 0 {
			select {
			case <-a.mach.done:
			case <-time.After(timeout):
			}
		}
	}
	a.teardown(ctx)
	failpoint("stop-before-stopped")
	return a.setStatus(ctx, state.StatusStopped, "")
}

// ownDisk is the VM's recorded disk, if it has one.
func (a *vmActor) ownDisk() *disk.Disk {
	if len(a.vm.Disk) == 0 {
		return nil
	}
	var d disk.Disk
	if json.Unmarshal(a.vm.Disk, &d) != nil || d.Backend == "" {
		return nil
	}
	return &d
}

// teardown releases every resource of the VM, from handles.json, else from
// vm.json's Runtime, else from paddock's naming rules. Each step is
// idempotent; errors are logged and the rest still runs. The VM's own disk
// is deactivated (its files kept) unless remove is set.
func (a *vmActor) teardown(ctx actor.Context) { a.teardownDisk(ctx, false) }

func (a *vmActor) teardownDisk(ctx actor.Context, remove bool) {
	h := a.host
	if a.agentc != nil {
		_ = a.agentc.Close()
		a.agentc = nil
	}
	steps := []struct {
		kind string
		fn   func(c context.Context, hd state.Handle, found bool) error
	}{
		{KindVMM, func(c context.Context, hd state.Handle, found bool) error {
			rt := a.vm.Runtime.VMM
			if found {
				var r state.VMMRuntime
				if json.Unmarshal(hd.Payload, &r) == nil && r.PID > 0 {
					rt = &r
				}
			}
			if rt != nil && rt.PID > 0 {
				gone := false
				if a.mach != nil && a.mach.rt.PID == rt.PID {
					_, gone = a.mach.exited()
				}
				if !gone {
					if err := h.VMM.Kill(c, rt); err != nil {
						return err
					}
				}
			}
			// A VMM launched but never recorded carries the VM's tag.
			return h.VMM.KillTagged(c, a.id)
		}},
		{KindDisk, func(c context.Context, hd state.Handle, found bool) error {
			var dk *disk.Disk
			if found {
				var d disk.Disk
				if json.Unmarshal(hd.Payload, &d) == nil && d.Backend != "" {
					dk = &d
				}
			}
			if dk == nil && a.vm.Runtime.DiskBackend != "" {
				dk = &disk.Disk{Backend: a.vm.Runtime.DiskBackend, Dir: a.vmDir(), Files: a.vm.Runtime.DiskFiles}
				if a.vm.Runtime.DM != nil {
					dk.DM = []string{a.vm.Runtime.DM.Name}
				}
			}
			own := a.ownDisk()
			if dk == nil {
				dk = own
			}
			if dk == nil {
				// Nothing recorded: a plan of the configured backend names
				// everything it could have made.
				dk = h.Disks.Plan(a.vmDir())
			}
			b, err := disk.ForDisk(dk, h.DiskOpts)
			if err != nil {
				return err
			}
			if remove || own == nil {
				// Deleting the VM, or a layer never recorded as the VM's
				// (a crash between making and recording it): discard it.
				return b.Release(c, dk)
			}
			return b.Deactivate(c, dk)
		}},
		{KindTap, func(c context.Context, hd state.Handle, found bool) error {
			if h.Net == nil {
				return nil
			}
			name, ifindex := netdev.TapName(a.id), 0
			if found {
				var tr state.TapRuntime
				if json.Unmarshal(hd.Payload, &tr) == nil && tr.Name != "" {
					name, ifindex = tr.Name, tr.Ifindex
				}
			} else if a.vm.Runtime.Tap != nil {
				name, ifindex = a.vm.Runtime.Tap.Name, a.vm.Runtime.Tap.Ifindex
			}
			err := h.Net.ReleaseTap(c, name, ifindex)
			if errors.Is(err, netdev.ErrNotOurs) {
				a.log.Warn("not deleting a link that is not this VM's tap", "tap", name)
				return nil
			}
			return err
		}},
	}
	for _, s := range steps {
		if _, err := a.ask(ctx, s.kind, &releaseRes{teardown: s.fn}); err != nil {
			a.log.Error("teardown step failed", "vm_name", a.vm.Name, "kind", s.kind, "err", err)
		}
	}
	_ = os.Remove(filepath.Join(a.vmDir(), "seed.img"))
	_ = os.RemoveAll(a.runDir())
	a.mach = nil
	if err := a.mirror(func(r *state.Runtime) { *r = state.Runtime{} }); err != nil {
		a.log.Error("clearing runtime", "err", err)
	}
}
