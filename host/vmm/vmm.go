// Package vmm is the hypervisor-process layer of paddockd: the Driver
// interface the VM actor consumes, the persisted VMM handle (Process), and
// the driver-independent machinery both drivers share (Base): launching a
// VMM that outlives paddockd, proving a pid is still that VMM, waiting for
// and killing it without ever signalling a reused pid, a size-capped console
// log, and finding paddock's VMMs by their tag after a crash.
//
// Drivers: vmm/qemu (qemu-system-x86_64 -M microvm, KVM or TCG, tested end to
// end) and vmm/firecracker (REST API over a UNIX socket; contract-tested
// only, Firecracker does not run on the development hosts).
//
// # Lifetime
//
// A VMM runs in its own session (setsid), with stdin on /dev/null and
// stdout/stderr in <RunDir>/vmm.log (a file, never a pipe to paddockd: a pipe
// would SIGPIPE the VMM once paddockd is gone), without a parent-death
// signal, and in its own cgroup (<Spec.Cgroup>/paddock-<vm id>, cloned
// straight into it) when the caller has a delegated cgroup. It therefore
// outlives paddockd; paddock.service uses KillMode=process so that systemd
// does not kill it on a restart either.
//
// While paddockd runs, it is the VMM's parent and reaps it (Wait reports the
// exit status). After a restart the VMM is re-parented (to PID 1 or a
// subreaper); the daemon re-adopts it from the persisted Process: Probe checks
// /proc (and opens a pidfd, so the check and any later signal address the
// same process), Adopt re-attaches the console, and Wait then learns of the
// exit through the pidfd (status unknown: Exit.Known is false).
//
// # Identity (never kill a reused pid)
//
// A Process is ours only when all of these hold: the pid is alive and not a
// zombie, its start time (/proc/PID/stat field 22, clock ticks since boot)
// equals the recorded one, the boot id (when it could be read at start)
// equals the current one, its argv equals the recorded Cmdline, and that
// argv carries the VM's tag: "-name paddock-<vm id>" (QEMU) or "--id
// paddock-<vm id>" (Firecracker). Every signal goes through a pidfd opened
// before the check (pidfd_send_signal), so a pid reused between the check and
// the signal cannot be hit. Probe reports StateNotOurs for a live pid that
// fails the check; Kill and Stop then do nothing and succeed: the VMM the
// handle describes is gone.
//
// # Crash windows
//
// The daemon persists its intent (VM id, driver, RunDir, cgroup) before
// Start and the returned Process after it. If it dies in between, Kill with
// the intent-only handle (PID 0) kills every process carrying the VM's tag
// and removes the cgroup; Find locates such VMMs in /proc, and cgroup.Find
// the cgroups, both deterministic from the VM id. Start refuses
// (ErrAlreadyRunning) to launch a second VMM for a VM whose tagged VMM is
// still alive. An orphan sweep (VMMs of no known VM) must use Owner.Find and
// act only on VMMs it reports as Ours: a tag says "a paddock VMM", not "this
// daemon's VMM", and several daemons or test suites may share a host, even
// with the same paths in different mount namespaces. A VMM is a daemon's
// when it runs as the daemon's uid and its API socket, seen in the VMM's own
// mount namespace, is the very file (device and inode) the daemon sees at
// that path, or its cgroup lies in the daemon's delegated cgroup.
//
// # Confinement
//
// A VMM holds no capability (effective, permitted, inheritable, ambient all
// empty; the bounding set emptied as far as the daemon may, all of it for
// root) and runs with no_new_privs, whatever the daemon holds (paddockd has
// an ambient CAP_NET_ADMIN for taps): see Confine. The QEMU driver also
// turns on QEMU's seccomp sandbox. QEMU still opens its tap by name: the tap
// is persistent and owned by the daemon's uid and gid, which lets a process
// of that uid attach to it without CAP_NET_ADMIN.
//
// # Console log
//
// The guest's serial console is never written by the VMM to a file (a file
// would grow without bound: QEMU's -serial file: and Firecracker's serial
// output have no cap). QEMU serves it on a UNIX socket
// (-chardev socket,server=on,wait=off), Firecracker writes it into a FIFO;
// Base copies it into <ConsoleLog>, a ConsoleLog file capped at
// Spec.ConsoleLogMax bytes (when full, the older half is dropped). The copier
// lives in paddockd: it reconnects when the connection drops and is
// re-attached by Adopt after a restart. Output the guest writes while no
// copier is attached is dropped by QEMU (not buffered, never blocking the
// guest). QEMU starts paused (-S); Start connects the copier first and then
// resumes the VM, so no boot output is lost.
package vmm

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/host/cgroup"
)

// TagPrefix starts the tag a VMM's command line carries, and the name of its
// cgroup: TagPrefix + VM id.
const TagPrefix = "paddock-"

// DefaultConsoleLogMax caps a console log when Spec.ConsoleLogMax is 0.
const DefaultConsoleLogMax = 4 << 20

// Control-channel kinds (Process.ControlKind).
const (
	// ControlVirtioSerial: Process.ControlSocket is QEMU's chardev socket for
	// the agent's virtio-serial port; dial it directly.
	ControlVirtioSerial = "virtio-serial"
	// ControlHybridVsock: Process.ControlSocket is Firecracker's vsock UDS;
	// dial it with agent.DialHybridVsock.
	ControlHybridVsock = "hybrid-vsock"
)

// Errors. Errors returned by this package and its drivers wrap one of these
// or carry their own context.
var (
	// ErrInvalidSpec: the Spec cannot be started as given.
	ErrInvalidSpec = errdefs.New(errdefs.ErrInvalidArgument, "vmm: invalid spec")
	// ErrAlreadyRunning: a VMM carrying this VM's tag is alive already.
	ErrAlreadyRunning = errdefs.New(errdefs.ErrAlreadyExists, "vmm: a VMM for this VM is already running")
	// ErrNotRunning: the handle's VMM is not running (Adopt).
	ErrNotRunning = errdefs.New(errdefs.ErrFailedPrecondition, "vmm: VMM is not running")
	// ErrInvalidHandle: the Process cannot describe a VMM (no pid, no VM id,
	// wrong driver).
	ErrInvalidHandle = errdefs.New(errdefs.ErrInvalidArgument, "vmm: invalid VMM handle")
	// ErrUnsupported: the driver cannot do what the Spec asks (e.g. a qcow2
	// disk on Firecracker).
	ErrUnsupported = errdefs.New(errdefs.ErrNotImplemented, "vmm: unsupported by this driver")
)

// Driver starts, stops and re-adopts VMM processes of one kind. The VM actor
// persists the returned Process before it acts on it further.
type Driver interface {
	// Name is the driver's name ("qemu", "firecracker"), stored in
	// Process.Driver.
	Name() string
	// Start launches a VMM for spec and returns once the guest runs (the
	// agent may still be booting). On error nothing is left behind.
	Start(ctx context.Context, spec Spec) (*Process, error)
	// Adopt takes over a VMM that Probe reported StateRunning, after a
	// daemon restart: it re-attaches the console copier (QEMU also resumes
	// a guest its previous daemon left paused at start-up). Idempotent;
	// ErrNotRunning when the VMM is gone, not ours, or (Firecracker) never
	// started its guest: the caller then tears it down with Kill.
	Adopt(ctx context.Context, p *Process) error
	// Wait blocks until the VMM exits (or ctx ends) and reports how; it
	// returns at once for a VMM that is gone or not ours.
	Wait(ctx context.Context, p *Process) (Exit, error)
	// Stop shuts the guest down gracefully (QEMU: ACPI power button over
	// QMP; Firecracker: SendCtrlAltDel), waits up to timeout for the VMM to
	// exit, then kills it. Asking the agent to shut down first is the
	// caller's job. Sockets and the cgroup are removed afterwards.
	Stop(ctx context.Context, p *Process, timeout time.Duration) error
	// Kill SIGKILLs the VMM and waits for it to exit, then removes its
	// sockets and cgroup. Idempotent: a VMM that is gone (or a pid that is
	// no longer ours) is success, and nothing is signalled. A handle with
	// PID 0 (intent only) kills whatever carries the VM's tag.
	Kill(ctx context.Context, p *Process) error
	// Probe reports whether p's VMM is alive and really p's (see the
	// package documentation). It reads /proc only.
	Probe(p *Process) (State, error)
}

// Saver is a driver that can write a running guest's whole state (RAM
// and devices) to files that a new VMM resumes with Spec.Incoming = path
// (templates). The guest is left paused; the caller ends the VMM.
//
// path is always the first file written; a driver may write more beside
// it, all listed in Saved.Files: path is the device state (QEMU: the
// migration stream), MemPath(path) the guest memory when it is apart
// (Firecracker always; QEMU when the guest booted with Spec.MemoryFile,
// else its stream holds the memory too). The caller hashes, keeps and
// removes them together; a resume needs them all where Save put them. On
// failure Save removes what it wrote.
type Saver interface {
	Save(ctx context.Context, p *Process, path string) (Saved, error)
}

// MemPath is the guest memory file of the saved state at state, when the
// memory is saved apart from the device state.
func MemPath(state string) string { return state + ".mem" }

// Saved describes a saved state.
type Saved struct {
	// Bytes is the total size of Files.
	Bytes int64
	Took  time.Duration
	// Files lists every file Save wrote, the path it was given first.
	Files []string
}

// State is what Probe found.
type State int

const (
	// StateExited: no process has the pid any more (or only its zombie).
	StateExited State = iota
	// StateRunning: the pid is alive and is this VM's VMM.
	StateRunning
	// StateNotOurs: a live process has the pid but it is not this VMM (the
	// pid was reused, or the handle is wrong). It must never be signalled.
	StateNotOurs
)

func (s State) String() string {
	switch s {
	case StateExited:
		return "exited"
	case StateRunning:
		return "running"
	case StateNotOurs:
		return "not-ours"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Exit describes how a VMM ended.
type Exit struct {
	// Known is false when the VMM was not this process's child (re-adopted
	// after a restart, or already gone): its status cannot be learned.
	Known bool `json:"known"`
	// Code is the exit status (when Known and Signal is 0).
	Code int `json:"code"`
	// Signal is the signal that killed it, 0 if it exited.
	Signal int `json:"signal,omitempty"`
}

func (e Exit) String() string {
	switch {
	case !e.Known:
		return "exited (status unknown: not our child)"
	case e.Signal != 0:
		return fmt.Sprintf("killed by signal %d", e.Signal)
	default:
		return fmt.Sprintf("exit status %d", e.Code)
	}
}

// Disk formats.
const (
	FormatRaw   = "raw"
	FormatQCOW2 = "qcow2"
)

// Disk is one virtio-blk disk. The first disk is /dev/vda in the guest.
type Disk struct {
	Path     string `json:"path"`
	Format   string `json:"format"` // FormatRaw (default) or FormatQCOW2
	ReadOnly bool   `json:"read_only,omitempty"`
}

// Tap attaches a virtio-net device to an existing tap device.
type Tap struct {
	Name string `json:"name"`
	MAC  string `json:"mac,omitempty"` // 02:00:00:00:00:02 by default
}

// Stream attaches a virtio-net device to a user-mode network backend that
// serves Ethernet frames on a UNIX stream socket (passt, see host/passt):
// QEMU connects to Socket as a client. The backend must listen before the
// VMM starts: QEMU 7.2 does not reconnect.
type Stream struct {
	Socket string `json:"socket"`
	MAC    string `json:"mac,omitempty"` // 02:00:00:00:00:02 by default
}

// Accelerators (Spec.Accel, Process.Accel).
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// Spec is what to start.
type Spec struct {
	// VMID identifies the VM: 1-55 ASCII letters, digits or '-'. The VMM's
	// tag and cgroup are TagPrefix + VMID.
	VMID string
	// Kernel is the uncompressed vmlinux (PVH/ELF), Initrd the boot kit's
	// initramfs.
	Kernel, Initrd string
	// Cmdline holds the guest kernel arguments beyond the driver's own
	// (console, panic, TSC settings): the paddock.* keys, written with
	// guestboot.BootArgs.String. It must parse (guestboot.Parse), else
	// Start fails with ErrInvalidSpec. The driver owns the agent's control
	// channel: it replaces paddock.ctl and paddock.vsock with its own.
	Cmdline string
	// CPUs (1) and MemoryMiB (256).
	CPUs, MemoryMiB int
	// Disks in guest order.
	Disks []Disk
	// Tap is the network device, nil for none.
	Tap *Tap
	// Stream is the network device when it is a user-mode backend's
	// socket instead of a tap (at most one of Tap and Stream).
	Stream *Stream
	// ControlSocket is the host UNIX socket of the agent's virtio-serial
	// port (QEMU; default <RunDir>/control.sock).
	ControlSocket string
	// ControlPort names the virtio-serial port (guestboot.DefaultSerialPort).
	ControlPort string
	// VsockUDS is Firecracker's vsock UNIX socket (default
	// <RunDir>/vsock.sock); VsockCID the guest CID (3).
	VsockUDS string
	VsockCID uint32
	// ConsoleLog receives the serial console, capped at ConsoleLogMax bytes
	// (DefaultConsoleLogMax); empty: <RunDir>/console.log.
	ConsoleLog    string
	ConsoleLogMax int64
	// RunDir holds the VMM's sockets and vmm.log (created 0700 if missing).
	RunDir string
	// Cgroup is a parent cgroup directory (cgroup.Delegated) to create the
	// VMM's own cgroup in; empty runs the VMM in paddockd's cgroup.
	Cgroup string
	// Limits are written into the VMM's own cgroup (with Cgroup) before
	// the VMM starts; those whose controller the parent does not offer are
	// skipped (cgroup.SetLimits).
	Limits cgroup.Limits
	// Accel is AccelAuto (default), AccelKVM or AccelTCG.
	Accel string
	// Incoming is the path a driver's Save was given (Saved.Files[0]; the
	// driver finds any other file of the state beside it): the VMM resumes
	// the saved guest instead of booting. Everything that shapes the machine
	// (CPUs, memory, accelerator, kernel, the number, order and sizes of
	// disks, the network device) must be what it was at the save; files and
	// sockets may differ.
	Incoming string
	// MemoryFile, for a guest booted to be saved, puts its RAM in this
	// file from the start, the file shared with the guest (created 0600 by
	// the caller, empty, on a file system that is not memory). Save then
	// writes only the device state and moves the file to MemPath(path): a
	// template's memory is never copied, and every resume maps it
	// copy-on-write (file pages shared between clones until written). A
	// driver that saves memory at Save anyway (Firecracker) ignores it.
	MemoryFile string
}

// Process is the handle of a running VMM: JSON-serializable, persisted by
// the daemon and given back to the driver after a restart.
type Process struct {
	Driver string `json:"driver"`
	VMID   string `json:"vm_id"`
	PID    int    `json:"pid"`
	// StartTime is /proc/PID/stat field 22 (clock ticks after boot).
	StartTime uint64 `json:"start_time"`
	// BootID is /proc/sys/kernel/random/boot_id at start ("" when
	// unreadable, e.g. under ProcSubset=pid).
	BootID string `json:"boot_id,omitempty"`
	// Cmdline is the VMM's argv, which carries the tag.
	Cmdline []string `json:"cmdline"`
	// Sockets lists every socket (or FIFO) the VMM serves; they are removed
	// when it is gone.
	Sockets []string `json:"sockets,omitempty"`
	// APISocket is QMP (QEMU) or the Firecracker API.
	APISocket string `json:"api_socket,omitempty"`
	// ControlSocket and ControlKind say how to reach the agent (DialAgent).
	ControlSocket string `json:"control_socket,omitempty"`
	ControlKind   string `json:"control_kind,omitempty"`
	// ConsoleSocket is where the serial console is read from: QEMU's
	// chardev socket or Firecracker's FIFO.
	ConsoleSocket string `json:"console_socket,omitempty"`
	ConsoleLog    string `json:"console_log,omitempty"`
	ConsoleLogMax int64  `json:"console_log_max,omitempty"`
	// Cgroup is the VMM's own cgroup directory, "" for none.
	Cgroup string `json:"cgroup,omitempty"`
	RunDir string `json:"run_dir,omitempty"`
	// Accel is the accelerator actually used (kvm or tcg; QEMU).
	Accel string `json:"accel,omitempty"`
	// MemoryFile is the file the guest's RAM is shared with (Spec.MemoryFile
	// at a boot; "" when the RAM is the VMM's own or mapped privately).
	MemoryFile string `json:"memory_file,omitempty"`
}

// Tag is the tag a VM's VMM carries on its command line.
func Tag(vmID string) string { return TagPrefix + vmID }

// ValidVMID checks a VM id for use in tags, cgroup names and Firecracker's
// --id (alphanumerics and '-', at most 64 bytes with the prefix).
func ValidVMID(id string) error {
	if id == "" || len(id) > 64-len(TagPrefix) {
		return fmt.Errorf("%w: VM id %q must be 1-%d characters", ErrInvalidSpec, id, 64-len(TagPrefix))
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("%w: VM id %q: only ASCII letters, digits and '-'", ErrInvalidSpec, id)
		}
	}
	return nil
}

// tagFlags are the options a VMM's tag follows on its command line.
var tagFlags = map[string]string{"-name": "qemu", "--id": "firecracker"}

// TagOf returns the VM id tagged on a command line, and the driver whose
// flag carries it ("-name paddock-<id>": qemu, "--id paddock-<id>":
// firecracker).
func TagOf(argv []string) (vmID, driver string, ok bool) {
	for i := 1; i+1 < len(argv); i++ {
		d, isFlag := tagFlags[argv[i]]
		if !isFlag {
			continue
		}
		if id, ok := strings.CutPrefix(argv[i+1], TagPrefix); ok && ValidVMID(id) == nil {
			return id, d, true
		}
	}
	return "", "", false
}

func (s *Spec) validate() error {
	if err := ValidVMID(s.VMID); err != nil {
		return err
	}
	if s.Kernel == "" {
		return fmt.Errorf("%w: no kernel", ErrInvalidSpec)
	}
	if s.RunDir == "" || !filepath.IsAbs(s.RunDir) {
		return fmt.Errorf("%w: RunDir %q must be an absolute path", ErrInvalidSpec, s.RunDir)
	}
	if s.CPUs < 0 || s.CPUs > 255 || s.MemoryMiB < 0 {
		return fmt.Errorf("%w: %d CPUs, %d MiB", ErrInvalidSpec, s.CPUs, s.MemoryMiB)
	}
	if s.Tap != nil && s.Stream != nil {
		return fmt.Errorf("%w: a tap and a stream network device: at most one", ErrInvalidSpec)
	}
	if s.Stream != nil && !filepath.IsAbs(s.Stream.Socket) {
		return fmt.Errorf("%w: stream socket %q must be an absolute path", ErrInvalidSpec, s.Stream.Socket)
	}
	for i, d := range s.Disks {
		if d.Path == "" {
			return fmt.Errorf("%w: disk %d has no path", ErrInvalidSpec, i)
		}
		if d.Format != "" && d.Format != FormatRaw && d.Format != FormatQCOW2 {
			return fmt.Errorf("%w: disk %d: format %q (raw or qcow2)", ErrInvalidSpec, i, d.Format)
		}
	}
	switch s.Accel {
	case "", AccelAuto, AccelKVM, AccelTCG:
	default:
		return fmt.Errorf("%w: accel %q (auto, kvm or tcg)", ErrInvalidSpec, s.Accel)
	}
	return nil
}

// Normalize validates s and fills its defaults (paths under RunDir, one
// CPU, 256 MiB, console cap). Drivers call it at the start of Start.
func (s Spec) Normalize() (Spec, error) {
	if err := s.validate(); err != nil {
		return s, err
	}
	if s.CPUs == 0 {
		s.CPUs = 1
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = 256
	}
	if s.Accel == "" {
		s.Accel = AccelAuto
	}
	if s.ConsoleLog == "" {
		s.ConsoleLog = filepath.Join(s.RunDir, "console.log")
	}
	if s.ConsoleLogMax <= 0 {
		s.ConsoleLogMax = DefaultConsoleLogMax
	}
	if s.ControlSocket == "" {
		s.ControlSocket = filepath.Join(s.RunDir, "control.sock")
	}
	if s.VsockUDS == "" {
		s.VsockUDS = filepath.Join(s.RunDir, "vsock.sock")
	}
	if s.VsockCID == 0 {
		s.VsockCID = 3
	}
	s.Disks = append([]Disk(nil), s.Disks...)
	for i := range s.Disks {
		if s.Disks[i].Format == "" {
			s.Disks[i].Format = FormatRaw
		}
	}
	return s, nil
}
