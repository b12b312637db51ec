package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netns"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/config"
	"github.com/paddock-vm/paddock/host/cgroup"
	"github.com/paddock-vm/paddock/host/disk"
	"github.com/paddock-vm/paddock/host/dm"
	"github.com/paddock-vm/paddock/host/loop"
	"github.com/paddock-vm/paddock/host/netdev"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/imaging"
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
	h.DefaultNetwork = cfg.VM.Network
	if cfg.VM.Network == "bridge" {
		subnet, _ := netip.ParsePrefix(cfg.VM.Subnet)
		nm, err := netdev.New(netdev.Config{Bridge: cfg.VM.Bridge, Subnet: subnet}, netns.None())
		if err != nil {
			log.Warn("VM networking unavailable; VMs start without a network device", "err", err)
		} else {
			h.Net, h.Alloc = nm, nm.Allocator()
			d.packetRules(ctx, log, cfg, h)
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
	h.VMM, h.Accel, h.ConsoleLogMax = driver, cfg.VM.Accel, int64(cfg.VM.ConsoleLogMax)
	own, ownInfo := vmmCgroup(log, cgroup.Delegated)
	h.Cgroup, d.cgroupInfo = own, ownInfo
	// Another paddockd (a per-user one, a test suite, a container with the
	// same paths in its own mount namespace) may run VMMs on this host: a
	// VMM is this daemon's only when provably so (vmm.Owner).
	d.owner = vmm.Owner{UID: os.Geteuid(), RunRoot: h.RunDir, Cgroup: h.Cgroup}
	if d.launcher = d.useLauncher(ctx, log, cfg.RuntimeDir); d.launcher != nil {
		// VMMs go into the launcher's cgroup; those an in-process start
		// left in this daemon's own (before the launcher ran) stay ours.
		h.Cgroup, d.cgroupInfo = d.launcher.Cgroup(), d.launcher.CgroupInfo()
		d.owner.Cgroup = h.Cgroup
		if own != "" && own != h.Cgroup {
			d.owner.Also = []string{own}
		}
		if h.Cgroup == "" {
			d.cgroupInfo = "none: the VMM launcher has no delegated cgroup (" + d.launcher.CgroupInfo() + ")"
		}
	}
	h.VMMMemoryOverhead, h.VMMPIDs = int64(cfg.VM.VMMMemoryOverhead), cfg.VM.VMMPIDsMax
	h.FindVMMs = d.owner.Find
	h.Kit = func(name string) (*actors.Kit, error) {
		kit, err := findKit(cfg.StateDir, name, d.config().VM.Kernel)
		if err != nil {
			return nil, err
		}
		return &actors.Kit{Kernel: kit.VmlinuxPath(), Initrd: kit.InitramfsPath()}, nil
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
	d.userNetworks(log, cfg, h)
	h.DialAgent = dialAgent
	h.DNS = d.dns
	h.SweepDisks = func(ctx context.Context, known func(string) bool) error {
		return sweepDisks(ctx, h.DiskOpts.Dir, known)
	}
	return h, nil
}

// kvmProber is the VMM driver's KVM check (qemu.Driver.KVMUsable), which
// caches its answer per kernel file.
type kvmProber interface {
	KVMUsable(ctx context.Context, kernel string) (bool, string)
}

// warmKVMProbe asks p about each kernel, one after the other, so that with
// vm.accel "auto" a VM's first start finds the answer cached instead of
// waiting for the probe (a boot of the kernel under KVM). Other accels
// need no probe. Called in the background: at the daemon's start for every
// kit, after an import for the new one.
func warmKVMProbe(ctx context.Context, log *slog.Logger, p kvmProber, accel string, kernels []string) {
	if accel != "" && accel != "auto" {
		return
	}
	for _, k := range kernels {
		if ctx.Err() != nil {
			return
		}
		ok, why := p.KVMUsable(ctx, k)
		log.Debug("KVM probe", "kernel", k, "usable", ok, "reason", why)
	}
}

// dialAgent connects to a VM's agent (its control socket appears when the
// VMM starts) and completes the hello, which the guest answers once booted.
func dialAgent(ctx context.Context, p *vmm.Process) (*agent.Client, error) {
	for {
		conn, err := vmm.DialAgent(ctx, p)
		if err == nil {
			return agent.NewClient(ctx, conn, &agent.ClientOptions{ClientName: "paddockd"})
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("control socket %s: %w", p.ControlSocket, err)
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
