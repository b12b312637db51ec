package actors

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/guestboot"
	"github.com/paddock-vm/paddock/host/disk"
	"github.com/paddock-vm/paddock/host/netdev"
	"github.com/paddock-vm/paddock/host/netfilter"
	"github.com/paddock-vm/paddock/host/passt"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/netspec"
	"github.com/paddock-vm/paddock/state"
)

// bootPlan is what a boot's steps work from. The VM actor fills it before
// it sends a step; a child reads it only while its step runs.
type bootPlan struct {
	vmID, vmDir, runDir string
	vmName              string
	owner               uint32
	workspaces          []state.WorkspaceMount // to attach
	imgConfig           []byte                 // the image's config, for the seed
	seed                string                 // the seed disk's path
	deadline            time.Time              // of the whole boot: every step fits in it
	rootfs              string                 // the image's base (first start only)
	disk                *disk.Disk
	diskSize            int64
	args                guestboot.BootArgs // the paddock.* keys; the driver adds its channel
	vmm                 vmm.Spec
	rules               netfilter.VM // bridge mode: completed with the tap
	passt               passt.Spec   // user mode
	// restore: the first start of a VM made from a template resumes its
	// saved guest, which then takes guestCfg (the VM's own config) with
	// its identity.
	restore  *TemplateBoot
	guestCfg []byte
}

// bootStep is one step of a boot: a resource child acquires, or the agent
// child connects; up records the result.
type bootStep struct {
	kind string
	skip func(a *vmActor) bool
	up   func(a *vmActor, ctx actor.Context, handle any) error
}

// bootSteps is the boot, in order; a failure at any step releases every
// resource in reverse (rollback) and leaves the VM in error with the reason.
var bootSteps = []bootStep{
	{kind: KindTap, skip: (*vmActor).notBridged, up: (*vmActor).tapUp},
	{kind: KindRules, skip: (*vmActor).noRules, up: (*vmActor).rulesUp},
	{kind: KindPasst, skip: (*vmActor).notUserMode, up: (*vmActor).passtUp},
	{kind: KindDisk, up: (*vmActor).diskUp},
	{kind: KindWorkspaces, up: (*vmActor).workspacesUp},
	{kind: KindVMM, up: (*vmActor).vmmUp},
	{kind: KindAgent, up: (*vmActor).agentUp},
}

// boot starts the VM: tap, disk, VMM, agent hello, each step a message to
// a child. The start is answered when the last step is done, or has failed
// and been rolled back.
func (a *vmActor) boot(ctx actor.Context, received time.Time, w waiter) error {
	failpoint("start-begin")
	a.newOp(opStart, w)
	if !received.IsZero() {
		a.op.marks = append(a.op.marks, state.BootPhase{Name: "api", MS: msOf(a.op.started.Sub(received))})
	}
	if err := a.setStatus(ctx, state.StatusStarting, ""); err != nil {
		a.op = nil
		return err
	}
	a.op.mark("record")
	plan, err := a.prepare()
	if err != nil {
		a.rollback(ctx, err)
		return errPending
	}
	a.op.mark("prepare")
	if err := plan.writeSeed(a); err != nil {
		a.rollback(ctx, err)
		return errPending
	}
	a.op.mark("seed")
	a.op.plan = plan
	a.nextBootStep(ctx)
	return errPending
}

// prepare gathers what the steps need: the kit, the image (at the first
// start), the guest config on its seed disk, the VMM spec.
func (a *vmActor) prepare() (*bootPlan, error) {
	h := a.host
	kit, err := h.Kit(a.vm.Spec.Kernel)
	if err != nil {
		return nil, err
	}
	b := &bootPlan{vmID: a.id, vmDir: a.vmDir(), runDir: a.runDir(), deadline: time.Now().Add(h.StartTimeout),
		disk: decodeDisk(a.vm.Disk), diskSize: a.vm.Spec.DiskSize,
		vmName: a.vm.Name, owner: a.vm.OwnerUID, workspaces: a.vm.Spec.Workspaces}
	// The image is needed to make the VM's disk at its first start; after
	// that the VM carries its disk and a copy of the image config.
	cfgPath := filepath.Join(b.vmDir, "config.json")
	imgConfig, cerr := os.ReadFile(cfgPath)
	if b.disk == nil || cerr != nil {
		b.rootfs, imgConfig, err = h.Image(a.vm.Spec.ImageDigest)
		if err != nil {
			return nil, fmt.Errorf("image %s (%s): %w", a.vm.Spec.Image, a.vm.Spec.ImageDigest, err)
		}
		if err := state.WriteFileAtomic(cfgPath, imgConfig, 0o640); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(b.runDir, 0o750); err != nil {
		return nil, fmt.Errorf("run dir: %w", err)
	}
	seed := filepath.Join(b.vmDir, "seed.img")
	b.imgConfig, b.seed = imgConfig, seed
	b.args = guestboot.BootArgs{Root: "/dev/vda", Hostname: a.vm.Name, Config: "/dev/vdb"}
	b.vmm = vmm.Spec{VMID: a.id, Kernel: kit.Kernel, Initrd: kit.Initrd,
		CPUs: a.vm.Spec.CPUs, MemoryMiB: int(a.vm.Spec.Memory >> 20),
		ControlSocket: filepath.Join(b.runDir, "agent.sock"), ControlPort: "paddock.agent",
		ConsoleLog: filepath.Join(b.vmDir, "console.log"), ConsoleLogMax: h.ConsoleLogMax,
		RunDir: b.runDir, Cgroup: h.Cgroup, Limits: h.vmmLimits(a.vm.Spec), Accel: h.Accel,
		Disks: []vmm.Disk{{}, {Path: seed, Format: vmm.FormatRaw, ReadOnly: true}}}
	if a.vm.Spec.Template != "" && b.disk == nil {
		if err := a.planRestore(b); err != nil {
			return nil, err
		}
	}
	if a.vm.Spec.TemplateBoot {
		// A template's builder keeps its RAM in a file from boot: the save
		// then writes the devices only and the file becomes the template's
		// memory, never copied (vmm.Spec.MemoryFile).
		b.vmm.MemoryFile = filepath.Join(b.vmDir, "memory")
		if err := newMemoryFile(b.vmm.MemoryFile); err != nil {
			return nil, err
		}
	}
	if a.netMode() == netspec.User {
		b.passt = passt.Spec{VMID: a.id, RunDir: b.runDir, Addr: userAddr, Gateway: userGateway,
			DNS: a.host.DNS, Ports: a.vm.Spec.Ports}
	}
	return b, nil
}

// newMemoryFile makes an empty file for a guest's RAM, private to the
// daemon (QEMU would create it world-readable), a stale one replaced.
func newMemoryFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("guest memory file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("guest memory file: %w", err)
	}
	return f.Close()
}

// writeSeed writes the guest config on the seed disk (the workspaces step
// writes it again with their mounts).
func (b *bootPlan) writeSeed(a *vmActor) error {
	cfgJSON, err := guestConfig(b.imgConfig, a.vm.Spec, nil)
	if err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	b.guestCfg = cfgJSON // a resumed guest takes it with its identity
	return guestboot.WriteSeed(b.seed, cfgJSON)
}

// The guest's address in user mode: each VM has a passt of its own, so
// every one can use the same (QEMU's user-mode defaults).
var (
	userAddr    = netip.MustParsePrefix("10.0.2.15/24")
	userGateway = netip.MustParseAddr("10.0.2.2")
)

// netMode is the VM's network: its spec's, else the daemon's vm.network
// ("bridge" when unset); a shared group is a bridge network.
func (a *vmActor) netMode() string {
	n := cmp.Or(a.vm.Spec.Network, a.host.DefaultNetwork, netspec.Bridge)
	mode, _, err := netspec.ParseNetwork(n)
	if err != nil {
		return n // "none", or a record from a newer paddockd: no device
	}
	return cmp.Or(mode, netspec.Bridge)
}

// notBridged: no tap (another mode, or no bridge on this host, where a VM
// starts without a network device, as before).
func (a *vmActor) notBridged() bool {
	return a.netMode() != netspec.Bridge || a.host.Net == nil || a.vm.Net == nil
}

// noRules: no tap, or a host that programs no rules at all (a unit test's);
// a daemon always sets Rules or says why not (RulesErr).
func (a *vmActor) noRules() bool {
	return a.notBridged() || a.host.Rules == nil && a.host.RulesErr == nil
}

func (a *vmActor) notUserMode() bool { return a.netMode() != netspec.User }

// group is the VM's shared group, scoped to its owner: two users' groups
// of the same name are two groups.
func (a *vmActor) group() string {
	_, g, err := netspec.ParseNetwork(a.vm.Spec.Network)
	if err != nil || g == "" {
		return ""
	}
	return fmt.Sprintf("%d:%s", a.vm.OwnerUID, g)
}

func (a *vmActor) nextBootStep(ctx actor.Context) {
	op := a.op
	for op.step < len(bootSteps) && bootSteps[op.step].skip != nil && bootSteps[op.step].skip(a) {
		op.step++
	}
	if op.step == len(bootSteps) {
		failpoint("start-before-running")
		a.vm.LastBoot = a.bootReport(op)
		a.finish(ctx, a.setStatus(ctx, state.StatusRunning, ""))
		return
	}
	s := bootSteps[op.step]
	if s.kind == KindAgent {
		a.connectAgent(ctx, a.proc, op.plan.deadline)
		return
	}
	ctx.Send(a.kids[s.kind], &acquireRes{gen: a.gen, plan: op.plan})
}

func (a *vmActor) acquired(ctx actor.Context, m *acquired) {
	if a.op.kind == opStart {
		a.bootStepDone(ctx, m.kind, m.handle, m.err)
	}
}

// bootStepDone records a step's result and goes on, or rolls back.
func (a *vmActor) bootStepDone(ctx actor.Context, kind string, handle any, err error) {
	op := a.op
	if op.step >= len(bootSteps) || bootSteps[op.step].kind != kind {
		return
	}
	if err == nil {
		err = bootSteps[op.step].up(a, ctx, handle)
	}
	if err != nil {
		if kind == KindAgent && a.vmmPID == 0 {
			return // the VMM's exit is the cause, and is handled already
		}
		a.rollback(ctx, a.stepError(kind, err))
		return
	}
	a.log.Debug("boot step done", "vm_name", a.vm.Name, "step", kind, "after", time.Since(op.started))
	op.mark(kind)
	op.step++
	a.nextBootStep(ctx)
}

// stepError says which step failed, in words for users.
func (a *vmActor) stepError(kind string, err error) error {
	if kind == KindAgent {
		return fmt.Errorf("the guest agent did not answer within %s: %w (see %s)", a.host.StartTimeout, err, filepath.Join(a.vmDir(), "console.log"))
	}
	return fmt.Errorf("%s: %w", kind, err)
}

// rollback releases what a failed boot acquired; the VM ends in error.
func (a *vmActor) rollback(ctx actor.Context, cause error) {
	a.log.Warn("start failed; rolling back", "vm_name", a.vm.Name, "err", cause)
	a.op.kind = opRollback
	a.op.cause = cause
	a.op.force = true
	a.teardown(ctx, 0)
}

func (a *vmActor) tapUp(ctx actor.Context, handle any) error {
	t := handle.(*state.TapRuntime)
	if err := a.mirror(func(r *state.Runtime) { tc := *t; r.Tap = &tc }); err != nil {
		return err
	}
	b := a.op.plan
	b.vmm.Tap = &vmm.Tap{Name: t.Name, MAC: a.vm.Net.MAC}
	ip, err := netip.ParsePrefix(a.vm.Net.IP)
	if err != nil {
		return fmt.Errorf("VM address %q: %w", a.vm.Net.IP, err)
	}
	gw, err := netip.ParseAddr(a.vm.Net.Gateway)
	if err != nil {
		return fmt.Errorf("VM gateway %q: %w", a.vm.Net.Gateway, err)
	}
	b.args.IPs, b.args.Gateways = []netip.Prefix{ip}, []netip.Addr{gw}
	// The agent writes them to the guest's /etc/resolv.conf.
	b.args.DNS = a.host.DNS
	b.rules = netfilter.VM{ID: a.id, Tap: t.Name, MAC: netdev.GuestMAC(a.id), IP: ip.Addr(), Group: a.group(), Ports: a.vm.Spec.Ports}
	return nil
}

func (a *vmActor) rulesUp(ctx actor.Context, handle any) error {
	r := handle.(*state.RulesRuntime)
	return a.mirror(func(rt *state.Runtime) { rc := *r; rt.Rules = &rc })
}

func (a *vmActor) passtUp(ctx actor.Context, handle any) error {
	p := handle.(*passt.Process)
	raw, err := jsonRaw(p)
	if err != nil {
		return err
	}
	if err := a.mirror(func(rt *state.Runtime) { rt.Passt = raw }); err != nil {
		return err
	}
	b := a.op.plan
	b.vmm.Stream = &vmm.Stream{Socket: p.Socket, MAC: netdev.GuestMAC(a.id).String()}
	b.args.IPs, b.args.Gateways = []netip.Prefix{userAddr}, []netip.Addr{userGateway}
	b.args.DNS = a.host.DNS
	return nil
}

func (a *vmActor) diskUp(ctx actor.Context, handle any) error {
	dk := handle.(*disk.Disk)
	raw, err := jsonRaw(dk)
	if err != nil {
		return err
	}
	next := a.vm
	next.Disk = raw
	next.Runtime.DiskFiles, next.Runtime.DiskBackend, next.Runtime.Loops, next.Runtime.DM = dk.Files, dk.Backend, nil, nil
	for _, l := range dk.Loops {
		next.Runtime.Loops = append(next.Runtime.Loops, state.LoopRuntime{Device: l})
	}
	if len(dk.DM) > 0 {
		next.Runtime.DM = &state.DMRuntime{Name: dk.DM[0], UUID: dk.DM[0]}
	}
	if err := a.save(next); err != nil {
		return err
	}
	b := a.op.plan
	b.disk = dk
	if dk.GuestResize {
		b.args.GrowFS = true
	}
	if err := b.args.Validate(); err != nil {
		return fmt.Errorf("kernel command line: %w", err)
	}
	b.vmm.Disks[0] = vmm.Disk{Path: dk.Path, Format: dk.Format}
	b.vmm.Cmdline = b.args.String()
	return nil
}

func (a *vmActor) vmmUp(ctx actor.Context, handle any) error {
	p := handle.(*vmm.Process)
	a.vmmPID = p.PID
	a.proc = p
	return a.mirror(func(r *state.Runtime) { r.VMM = vmmMirror(p) })
}

func (a *vmActor) agentUp(ctx actor.Context, handle any) error {
	a.agentc = handle.(*agent.Client)
	return nil
}

// bootReport is where op's start spent its time: its marks, and the
// guest's phases from the hello (guest boot clock).
func (a *vmActor) bootReport(op *procedure) *state.BootReport {
	r := &state.BootReport{Steps: op.marks}
	if op.plan != nil && op.plan.restore != nil {
		// The hello came with the saved guest: its phases are the
		// template's boot, not this start's. The agent step is split into
		// the resumed guest's hello and its identity step, whose phases
		// are the guest's part of this start.
		r.Resumed = op.plan.restore.Name
		if id := op.identity; id != nil {
			r.Steps = splitAgentStep(r.Steps, msOf(id.took))
			for _, p := range id.phases[:min(len(id.phases), maxGuestPhases)] {
				if p.EndNS >= p.StartNS {
					r.Guest = append(r.Guest, state.BootPhase{Name: guestPhaseName(p.Name), MS: float64((p.EndNS-p.StartNS)/1000) / 1000})
				}
			}
		}
		return r
	}
	if a.agentc == nil {
		return r
	}
	r.GuestReadyMS = float64(a.agentc.Hello().ReadyNS/1000) / 1000
	ph := a.agentc.Hello().Phases
	for _, p := range ph[:min(len(ph), maxGuestPhases)] {
		if p.EndNS >= p.StartNS {
			r.Guest = append(r.Guest, state.BootPhase{Name: guestPhaseName(p.Name), MS: float64((p.EndNS-p.StartNS)/1000) / 1000})
		}
	}
	return r
}

// splitAgentStep splits the agent step (VMM resumed -> identity taken)
// into agent (-> hello) and identity (the identity step's round trip).
func splitAgentStep(steps []state.BootPhase, identityMS float64) []state.BootPhase {
	out := make([]state.BootPhase, 0, len(steps)+1)
	for _, s := range steps {
		if s.Name == "agent" && s.MS >= identityMS {
			out = append(out, state.BootPhase{Name: "agent", MS: s.MS - identityMS}, state.BootPhase{Name: "identity", MS: identityMS})
			continue
		}
		out = append(out, s)
	}
	return out
}

// maxGuestPhases bounds what a guest's hello adds to the VM's record.
const maxGuestPhases = 32

// guestPhaseName keeps a guest-given phase name short and printable.
func guestPhaseName(s string) string {
	out := make([]rune, 0, len(s))
	for _, r := range s {
		if len(out) == 32 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' {
			out = append(out, r)
		} else {
			out = append(out, '?')
		}
	}
	return string(out)
}

func jsonRaw(v any) (json.RawMessage, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return b, nil
}
