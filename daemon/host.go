package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netns"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/bootkit"
	"github.com/paddock-vm/paddock/config"
	"github.com/paddock-vm/paddock/host/disk"
	"github.com/paddock-vm/paddock/host/dm"
	"github.com/paddock-vm/paddock/host/loop"
	"github.com/paddock-vm/paddock/host/netdev"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/state"
)

// newHost wires the host facilities VMs run on. What is unavailable here is
// logged with its reason; VMs then fail to start with that reason rather
// than the daemon failing to start.
func (d *Daemon) newHost(ctx context.Context, cfg *config.Config, images *imaging.Store, driver vmm.Driver) (*actors.Host, error) {
	log := d.log.With("actor", "host")
	h := &actors.Host{
		RunDir:       filepath.Join(cfg.RuntimeDir, "vms"),
		StartTimeout: cfg.VM.StartTimeout.Duration,
		StopTimeout:  cfg.VM.StopTimeout.Duration,
		TapOwner:     netdev.Owner{UID: os.Geteuid(), GID: os.Getegid()},
	}
	if err := os.MkdirAll(h.RunDir, 0o750); err != nil {
		return nil, fmt.Errorf("create %s: %w", h.RunDir, err)
	}
	if cfg.VM.Network == "bridge" {
		subnet, _ := netip.ParsePrefix(cfg.VM.Subnet)
		nm, err := netdev.New(netdev.Config{Bridge: cfg.VM.Bridge, Subnet: subnet}, netns.None())
		if err != nil {
			log.Warn("VM networking unavailable; VMs start without a network device", "err", err)
		} else {
			h.Net, h.Alloc = nm, nm.Allocator()
		}
	}
	h.DiskOpts = disk.Options{Dir: filepath.Join(cfg.StateDir, "vms"), BaseDir: images.Root, QCOW2: true}
	b, statuses, err := disk.New(ctx, cfg.VM.DiskBackend, h.DiskOpts)
	for _, s := range statuses {
		log.Debug("disk backend", "backend", s.Name, "usable", s.Usable, "reason", s.Reason)
	}
	if err != nil {
		return nil, fmt.Errorf("disk backend %q: %w", cfg.VM.DiskBackend, err)
	}
	log.Info("disk backend chosen", "backend", b.Name(), "configured", cfg.VM.DiskBackend)
	h.Disks = b
	h.VMM = &machines{drv: driver, accel: cfg.VM.Accel, consoleMax: int64(cfg.VM.ConsoleLogMax), runDir: h.RunDir}
	h.Kit = func() (*actors.Kit, error) {
		name := d.config().VM.Kernel
		kit, err := bootkit.Get(cfg.StateDir, name)
		if err != nil {
			return nil, fmt.Errorf("boot kit %q: %v (import one: paddock kernel import VMLINUZ --modules DIR --name %s)", name, err, name)
		}
		return &actors.Kit{Kernel: filepath.Join(kit.Dir, "vmlinux"), Initrd: filepath.Join(kit.Dir, "initramfs.cpio.gz")}, nil
	}
	h.Image = func(digest string) (string, []byte, error) {
		img, err := images.Get(digest)
		if err != nil {
			return "", nil, err
		}
		if img == nil {
			return "", nil, errors.New("the image was removed; pull or import it again, or recreate the VM from another image")
		}
		cfgJSON, _ := os.ReadFile(filepath.Join(images.Dir(digest), "config.json"))
		return filepath.Join(images.Dir(digest), img.RootFS), cfgJSON, nil
	}
	h.DialAgent = dialAgent
	h.SweepDisks = func(ctx context.Context, known func(string) bool) error {
		return sweepDisks(ctx, h.DiskOpts.Dir, known)
	}
	return h, nil
}

// dialAgent connects to a VM's control socket (it appears when the VMM
// starts) and completes the hello, which the guest answers once booted.
func dialAgent(ctx context.Context, socket string) (*agent.Client, error) {
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", socket)
		if err == nil {
			return agent.NewClient(ctx, conn, &agent.ClientOptions{ClientName: "paddockd"})
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("control socket %s: %w", socket, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// sweepDisks detaches loop devices and removes dm devices that paddock made
// for VMs that no longer exist: found by backing files under vmsDir and by
// the dm uuid prefix.
func sweepDisks(ctx context.Context, vmsDir string, known func(string) bool) error {
	var errs []error
	loops, err := loop.List()
	if err != nil {
		errs = append(errs, err)
	}
	for _, l := range loops {
		rel, err := filepath.Rel(vmsDir, l.Backing)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue
		}
		id := strings.SplitN(rel, string(filepath.Separator), 2)[0]
		if known(id) {
			continue
		}
		dev := l
		if err := loop.Detach(&dev); err != nil {
			errs = append(errs, err)
		}
	}
	if c, err := dm.Open(); err == nil {
		defer c.Close()
		devs, err := c.List(dm.Prefix)
		if err != nil {
			errs = append(errs, err)
		}
		for _, dv := range devs {
			id := strings.TrimPrefix(strings.SplitN(strings.TrimPrefix(dv.UUID, dm.Prefix), "-", 2)[0], "")
			if !known(id) {
				if err := c.Remove(ctx, dv.Name); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// machines adapts a vmm.Driver to what VM actors consume; the driver's own
// handle travels inside state.VMMRuntime.Handle.
type machines struct {
	drv        vmm.Driver
	accel      string
	consoleMax int64
	// runDir scopes the orphan sweep: a VMM is this daemon's only when its
	// sockets live under this daemon's runtime directory (another paddockd,
	// a per-user one, may run VMMs of its own on the same host).
	runDir string
}

func toRuntime(p *vmm.Process) (*state.VMMRuntime, error) {
	raw, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	return &state.VMMRuntime{PID: p.PID, StartTime: p.StartTime, Sockets: p.Sockets, Handle: raw}, nil
}

func fromRuntime(rt *state.VMMRuntime) *vmm.Process {
	var p vmm.Process
	if len(rt.Handle) > 0 && json.Unmarshal(rt.Handle, &p) == nil && p.PID > 0 {
		return &p
	}
	// Without the driver's handle identity cannot be proven: Probe reports
	// not-ours and nothing is signalled; the tag sweep finds the VMM.
	return &vmm.Process{PID: rt.PID, StartTime: rt.StartTime}
}

func (m *machines) Start(ctx context.Context, s actors.MachineSpec) (*state.VMMRuntime, error) {
	spec := vmm.Spec{VMID: s.VMID, Kernel: s.Kernel, Initrd: s.Initrd, Cmdline: s.Cmdline, CPUs: s.CPUs, MemoryMiB: s.MemoryMiB,
		ControlSocket: s.ControlSocket, ControlPort: "paddock.agent", ConsoleLog: s.ConsoleLog, ConsoleLogMax: m.consoleMax,
		RunDir: s.RunDir, Cgroup: s.Cgroup, Accel: m.accel}
	for _, dk := range s.Disks {
		spec.Disks = append(spec.Disks, vmm.Disk{Path: dk.Path, Format: dk.Format, ReadOnly: dk.ReadOnly})
	}
	if s.Tap != "" {
		spec.Tap = &vmm.Tap{Name: s.Tap, MAC: s.MAC}
	}
	p, err := m.drv.Start(ctx, spec)
	if err != nil {
		return nil, err
	}
	return toRuntime(p)
}

func (m *machines) Stop(ctx context.Context, rt *state.VMMRuntime, timeout time.Duration) error {
	return m.drv.Stop(ctx, fromRuntime(rt), timeout)
}

func (m *machines) Kill(ctx context.Context, rt *state.VMMRuntime) error {
	return m.drv.Kill(ctx, fromRuntime(rt))
}

func (m *machines) Alive(rt *state.VMMRuntime) bool {
	st, err := m.drv.Probe(fromRuntime(rt))
	return err == nil && st == vmm.StateRunning
}

func (m *machines) Adopt(ctx context.Context, rt *state.VMMRuntime) error {
	return m.drv.Adopt(ctx, fromRuntime(rt))
}

func (m *machines) Watch(rt *state.VMMRuntime) <-chan string {
	ch := make(chan string, 1)
	p := fromRuntime(rt)
	go func() {
		e, err := m.drv.Wait(context.Background(), p)
		if err != nil {
			ch <- "wait: " + err.Error()
			return
		}
		ch <- e.String()
	}()
	return ch
}

func (m *machines) List() (map[string]*state.VMMRuntime, error) {
	procs, err := vmm.FindUnder(m.runDir)
	if err != nil {
		return nil, err
	}
	out := map[string]*state.VMMRuntime{}
	for _, p := range procs {
		if rt, err := toRuntime(p); err == nil {
			out[p.VMID] = rt
		}
	}
	return out, nil
}

func (m *machines) KillTagged(ctx context.Context, vmID string) error {
	procs, err := vmm.FindUnder(m.runDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range procs {
		if p.VMID == vmID {
			errs = append(errs, m.drv.Kill(ctx, p))
		}
	}
	return errors.Join(errs...)
}

// consoler is what a driver offers when it follows consoles (vmm.Base).
type consoler interface {
	Console(vmID string) (<-chan []byte, io.Writer, func(), error)
}

func (m *machines) Console(vmID string) (<-chan []byte, io.Writer, func(), error) {
	c, ok := m.drv.(consoler)
	if !ok {
		return nil, nil, nil, fmt.Errorf("the %s driver offers no console", m.drv.Name())
	}
	return c.Console(vmID)
}
