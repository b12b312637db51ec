package actors

import (
	"context"
	"net/netip"
	"time"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/host/cgroup"
	"github.com/paddock-vm/paddock/host/disk"
	"github.com/paddock-vm/paddock/host/netdev"
	"github.com/paddock-vm/paddock/host/passt"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/state"
)

// Kit is the boot kit a VM boots.
type Kit struct {
	Kernel, Initrd string
}

// Host is everything a VM actor needs from the host. Unit tests give it
// the recording fakes (vmmtest, netdevtest, disk.Fake); the daemon the
// real facilities.
type Host struct {
	Net   netdev.Interface  // nil: VMs get no network device
	Alloc *netdev.Allocator // guest addresses (with Net)
	// Disks makes new VM disks; existing ones are released by the backend
	// that made them (DiskOpts).
	Disks    disk.Backend
	DiskOpts disk.Options
	// VMM runs the hypervisor processes.
	VMM vmm.Driver
	// Accel is the accelerator VMMs start with (auto, kvm, tcg).
	Accel string
	// ConsoleLogMax caps each VM's console log.
	ConsoleLogMax int64
	// Cgroup is the delegated cgroup each VMM gets a cgroup of its own in
	// ("" runs VMMs in paddockd's cgroup).
	Cgroup string
	// VMMMemoryOverhead is added to a VM's memory to make its VMM
	// cgroup's memory.max (0: none); VMMPIDs plus one per guest CPU is its
	// pids.max (0: none). cpu.max is the VM's CPUs. With Cgroup only.
	VMMMemoryOverhead int64
	VMMPIDs           int
	// FindVMMs lists the VMM processes that could be this daemon's (their
	// sockets' paths under its runtime directory, or their cgroups in its
	// own), each judged: only those with Ours set are provably its own and
	// may be killed (vmm.Owner). For the orphan sweep; nil finds none.
	FindVMMs func() ([]vmm.Found, error)
	// Kit returns the boot kit named name ("": the default).
	Kit func(name string) (*Kit, error)
	// Template returns what a VM made from the template id resumes from
	// (nil: no templates).
	Template func(id string) (*TemplateBoot, error)
	// Image returns the base disk and the OCI config (JSON) of an image.
	Image func(digest string) (rootfs string, config []byte, err error)
	// DialAgent connects to a VM's agent and completes hello; it retries
	// until ctx ends (the agent answers once the guest has booted).
	DialAgent func(ctx context.Context, p *vmm.Process) (*agent.Client, error)
	RunDir    string // per-VM sockets under RunDir/<id>/
	TapOwner  netdev.Owner
	// StartTimeout bounds a start, every step included.
	StartTimeout time.Duration
	// StopTimeout is how long a guest gets to power off before it is killed.
	StopTimeout time.Duration
	// ReleaseTimeout bounds one resource's release (2 minutes when 0).
	ReleaseTimeout time.Duration
	// DNS are the guest's nameservers (vm.dns, or the host's), given to
	// every VM with a network.
	DNS []netip.Addr
	// DefaultNetwork is vm.network: the network of a VM that names none
	// ("bridge", "user", "none"; "" is bridge).
	DefaultNetwork string
	// Rules programs bridged VMs' packet rules; nil with RulesErr set: the
	// bridge is up but rules cannot be made, and bridged VMs do not start.
	Rules    Rules
	RulesErr error
	// CheckPorts refuses published ports a host listener holds (nil: no check).
	CheckPorts PortCheck
	// Passt runs user-mode networks; nil with PasstErr: user mode is
	// unavailable (passt missing), said at start.
	Passt    Passt
	PasstErr error
	// FindPassts lists the passt processes that could be this daemon's,
	// for the orphan sweep (nil finds none).
	FindPassts func() ([]passt.Found, error)
	// SweepDisks removes loop and dm devices that paddock made for VMs that
	// no longer exist (known reports whether a VM id exists).
	SweepDisks func(ctx context.Context, known func(vmID string) bool) error
}

// vmmLimits are the limits of the cgroup of a VM's VMM.
func (h *Host) vmmLimits(s state.Spec) cgroup.Limits {
	l := cgroup.Limits{CPUs: s.CPUs}
	if h.VMMMemoryOverhead > 0 && s.Memory > 0 {
		l.MemoryMax = s.Memory + h.VMMMemoryOverhead
	}
	if h.VMMPIDs > 0 {
		l.PIDsMax = h.VMMPIDs + max(s.CPUs, 1)
	}
	return l
}

func (h *Host) releaseTimeout() time.Duration {
	if h.ReleaseTimeout > 0 {
		return h.ReleaseTimeout
	}
	return 2 * time.Minute
}
