package actors

import (
	"context"
	"io"
	"time"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/host/disk"
	"github.com/paddock-vm/paddock/host/netdev"
	"github.com/paddock-vm/paddock/state"
)

// Machines starts and tears down VMM processes: the VMM driver as the VM
// actor sees it.
type Machines interface {
	// Start launches the VMM; the process outlives paddockd.
	Start(ctx context.Context, spec MachineSpec) (*state.VMMRuntime, error)
	// Stop asks the guest firmware to power off (ACPI), then kills after
	// timeout. Gone is success.
	Stop(ctx context.Context, rt *state.VMMRuntime, timeout time.Duration) error
	// Kill kills the process if, and only if, it is still the one rt names.
	Kill(ctx context.Context, rt *state.VMMRuntime) error
	// Alive reports whether rt's process runs and is still that VMM
	// (pid, start time, and a command line carrying the VM id).
	Alive(rt *state.VMMRuntime) bool
	// Adopt takes over a VMM that survived a daemon restart (console copier).
	Adopt(ctx context.Context, rt *state.VMMRuntime) error
	// Watch returns a channel that yields why the process ended, once.
	Watch(rt *state.VMMRuntime) <-chan string
	// List finds every VMM process paddock started, by the VM id its
	// command line carries, for the orphan sweep.
	List() (map[string]*state.VMMRuntime, error)
	// Console attaches to a running VM's serial console.
	Console(vmID string) (out <-chan []byte, in io.Writer, detach func(), err error)
	// KillTagged kills every VMM carrying vmID's tag: the VMM a crash left
	// between its launch and the record of its handle.
	KillTagged(ctx context.Context, vmID string) error
}

// MachineSpec is what a VMM is started with.
type MachineSpec struct {
	VMID          string
	Kernel        string
	Initrd        string
	Cmdline       string
	CPUs          int
	MemoryMiB     int
	Disks         []MachineDisk
	Tap, MAC      string
	ControlSocket string // virtio-serial port to the agent
	ConsoleLog    string // serial console, size-capped
	RunDir        string // sockets the VMM owns
	Cgroup        string
}

// MachineDisk is one block device, in order (the first is the root).
type MachineDisk struct {
	Path     string
	Format   string // raw or qcow2
	ReadOnly bool
}

// Kit is the boot kit a VM boots.
type Kit struct {
	Kernel, Initrd string
}

// Host is everything a VM actor needs from the host. A nil Host keeps VMs
// records only (unit tests of the state machine).
type Host struct {
	Net   netdev.Interface  // nil: VMs get no network device
	Alloc *netdev.Allocator // guest addresses (with Net)
	// Disks makes new VM disks; existing ones are released by the backend
	// that made them (DiskOpts).
	Disks    disk.Backend
	DiskOpts disk.Options
	VMM      Machines
	// Kit returns the boot kit VMs boot now.
	Kit func() (*Kit, error)
	// Image returns the base disk and the OCI config (JSON) of an image.
	Image func(digest string) (rootfs string, config []byte, err error)
	// DialAgent connects to a VM's control socket and completes hello.
	DialAgent func(ctx context.Context, socket string) (*agent.Client, error)
	RunDir    string // per-VM sockets under RunDir/<id>/
	TapOwner  netdev.Owner
	// StartTimeout bounds start from VMM launch to the agent's hello.
	StartTimeout time.Duration
	// StopTimeout is how long a guest gets to power off before it is killed.
	StopTimeout time.Duration
	// SweepDisks removes loop and dm devices that paddock made for VMs that
	// no longer exist (known reports whether a VM id exists).
	SweepDisks func(ctx context.Context, known func(vmID string) bool) error
}
