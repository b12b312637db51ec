// Package qemu is the QEMU VMM driver: qemu-system-x86_64 -M microvm with
// the measured boot recipe (Machine, the one place QEMU's argv is built),
// virtio-blk disks (raw or qcow2), virtio-net on a tap or on a user-mode
// backend's socket (passt, -netdev stream), the agent's
// virtio-serial port on a UNIX socket, the serial console on a UNIX socket
// copied into a capped log (see package vmm), and a QMP socket for
// system_powerdown, quit, cont and query-status.
//
// # Accelerator
//
// Accel "auto" uses KVM only when a KVM guest really boots: /dev/kvm must
// open read-write, and then a probe boots the VM's own kernel under
// "-accel kvm -cpu host" with no initramfs and no disk, expecting the
// kernel's "Kernel panic - not syncing: VFS:" line (the end of kernel init)
// on the console and QEMU's exit through panic=-1 and -no-reboot, within
// KVMProbeTimeout. Anything else (QEMU aborting on an MSR, as on nested PVM
// hosts, a hang, a triple-fault reset) means TCG. The result is cached per
// kernel file (path, size, mtime) for the Driver's lifetime.
//
// # Start
//
// QEMU starts paused (-S). Start waits for the QMP socket, attaches the
// console copier, then resumes the guest with QMP cont, so the console log
// misses nothing. VMMs are tagged "-name paddock-<vm id>".
//
// # Stop
//
// The whole ladder is: the agent's own shutdown, then the ACPI power button,
// then QMP quit, then SIGKILL. The first rung is the caller's: it asks the
// agent (agent.Client.Shutdown, with a deadline), which works from the
// moment the agent answers and says what went wrong. Stop is the rest: QMP
// system_powerdown (the ACPI power button), wait up to the timeout; then QMP
// quit (QEMU exits cleanly, flushing its block layer, e.g. qcow2 metadata),
// wait QuitWait; then SIGKILL through a pidfd. paddock-agent powers off on
// the power button (it listens for KEY_POWER once its late modules are
// loaded), so a guest whose agent protocol is wedged still stops cleanly;
// any other guest may ignore it, and then quit ends it.
package qemu

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/host/vmm"
)

// Name is the driver's name (Process.Driver).
const Name = "qemu"

// Defaults.
const (
	DefaultBinary          = "qemu-system-x86_64"
	DefaultKVMProbeTimeout = 10 * time.Second
	DefaultQuitWait        = 3 * time.Second
)

// Driver runs QEMU microvm VMMs. Use New; the zero value also works.
type Driver struct {
	vmm.Base
	// Binary is the QEMU binary (DefaultBinary on $PATH).
	Binary string
	// KVMProbeTimeout bounds the KVM boot probe (DefaultKVMProbeTimeout).
	KVMProbeTimeout time.Duration
	// QuitWait is how long Stop waits after QMP quit (DefaultQuitWait).
	QuitWait time.Duration
	// TSCkHz overrides the host TSC rate put on the kernel command line.
	TSCkHz int

	kvmMu  sync.Mutex
	kvm    map[string]kvmResult
	kvmDev string // /dev/kvm; tests point it elsewhere
}

type kvmResult struct {
	ok     bool
	reason string
}

var _ vmm.Driver = (*Driver)(nil)

// New returns a QEMU driver with default settings.
func New() *Driver { return &Driver{} }

// Name returns "qemu".
func (d *Driver) Name() string { return Name }

func (d *Driver) binary() string { return cmp.Or(d.Binary, DefaultBinary) }

// Check reports whether the driver can start a VMM here: its binary is
// found (in $PATH, or at the path given). The error, in
// errdefs.ErrUnavailable, names the binary.
func (d *Driver) Check() error {
	bin := d.binary()
	if err := vmm.LookBinary(bin); err != nil {
		return errdefs.Newf(errdefs.ErrUnavailable, "QEMU binary %q: %v", bin, err)
	}
	return nil
}

// Paths of a VM's sockets under its RunDir.
func qmpPath(runDir string) string     { return filepath.Join(runDir, "qmp.sock") }
func consolePath(runDir string) string { return filepath.Join(runDir, "console.sock") }

// Start launches QEMU for spec (see the package documentation).
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (*vmm.Process, error) {
	spec, err := spec.Normalize()
	if err != nil {
		return nil, err
	}
	if err := d.Check(); err != nil {
		return nil, err
	}
	if err := vmm.RefuseRunning(spec.VMID); err != nil {
		return nil, err
	}
	accel, err := d.resolveAccel(ctx, spec)
	if err != nil {
		return nil, err
	}
	if spec.MemoryFile, err = memoryFile(spec); err != nil {
		return nil, err
	}
	argv, err := d.Argv(spec, accel)
	if err != nil {
		return nil, err
	}
	p := &vmm.Process{
		Driver: Name, VMID: spec.VMID, RunDir: spec.RunDir, Accel: accel,
		APISocket:     qmpPath(spec.RunDir),
		ControlSocket: spec.ControlSocket, ControlKind: vmm.ControlVirtioSerial,
		ConsoleSocket: consolePath(spec.RunDir), ConsoleLog: spec.ConsoleLog, ConsoleLogMax: spec.ConsoleLogMax,
	}
	if spec.Incoming == "" {
		p.MemoryFile = spec.MemoryFile
	}
	p.Sockets = []string{p.APISocket, p.ConsoleSocket, p.ControlSocket}
	if err := vmm.PrepareRunDir(p); err != nil {
		return nil, err
	}
	boot := func(ctx context.Context) error { return d.boot(ctx, p, spec.Incoming, spec.MemoryFile != "") }
	// A TCG guest's VMM runs without transparent huge pages (see
	// vmm.Command.NoHugePages), booted or restored: restores from a
	// template with them were faster run back to back on a quiet host
	// (median 478 against 588 ms), where the memory just freed comes back,
	// but beside another VM 458-1016 ms against 507-655.
	noTHP := accel == vmm.AccelTCG
	if err := d.StartVMM(ctx, p, spec.Cgroup, spec.Limits, vmm.Command{Path: argv[0], Args: argv, NoHugePages: noTHP}, boot); err != nil {
		return nil, err
	}
	return p, nil
}

// memoryFile is the file spec's guest RAM lives in: at a boot the caller's
// (Spec.MemoryFile), at a resume the saved memory beside the state when the
// state was saved without it (a whole migration stream has none).
func memoryFile(spec vmm.Spec) (string, error) {
	if spec.Incoming == "" {
		return spec.MemoryFile, nil
	}
	mem := vmm.MemPath(spec.Incoming)
	switch _, err := os.Stat(mem); {
	case err == nil:
		return mem, nil
	case errors.Is(err, fs.ErrNotExist):
		return "", nil
	default:
		return "", fmt.Errorf("restore state: its memory: %w", err)
	}
}

// boot waits for QMP, loads the saved state when there is one (its RAM
// apart, in a file, when ramApart), attaches the console and resumes the
// paused guest.
func (d *Driver) boot(ctx context.Context, p *vmm.Process, incoming string, ramApart bool) error {
	q, err := d.waitQMP(ctx, p)
	if err != nil {
		return err
	}
	defer q.Close()
	if incoming != "" {
		if err := q.restore(ctx, incoming, ramApart); err != nil {
			return err
		}
	}
	if err := d.AttachConsole(ctx, p); err != nil {
		return err
	}
	return q.execute(ctx, "cont", nil, nil)
}

// waitQMP dials the QMP socket until it answers, the VMM dies or ctx ends.
func (d *Driver) waitQMP(ctx context.Context, p *vmm.Process) (*qmpConn, error) {
	var q *qmpConn
	err := d.WaitReady(ctx, p, "QMP socket "+p.APISocket, func(ctx context.Context) (err error) {
		q, err = dialQMP(ctx, p.APISocket)
		return err
	})
	return q, err
}

// qmp runs one QMP command on p's VMM, after checking p is running.
func (d *Driver) qmp(ctx context.Context, p *vmm.Process, cmd string, out any) error {
	if err := d.RequireRunning(p); err != nil {
		return err
	}
	return qmpDo(ctx, p.APISocket, cmd, nil, out)
}

// Status returns QEMU's run state from QMP query-status ("running",
// "paused", "shutdown"...).
func (d *Driver) Status(ctx context.Context, p *vmm.Process) (string, error) {
	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := d.qmp(ctx, p, "query-status", &st); err != nil {
		return "", err
	}
	return st.Status, nil
}

// Powerdown presses the guest's ACPI power button (QMP system_powerdown).
func (d *Driver) Powerdown(ctx context.Context, p *vmm.Process) error {
	return d.qmp(ctx, p, "system_powerdown", nil)
}

// Quit makes QEMU exit at once (QMP quit); the guest is not asked.
func (d *Driver) Quit(ctx context.Context, p *vmm.Process) error {
	err := d.qmp(ctx, p, "quit", nil)
	if err != nil && isClosed(err) {
		return nil // QEMU may close the socket before its reply arrives
	}
	return err
}

func isClosed(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || strings.Contains(err.Error(), "EOF")
}

// Adopt re-attaches to a running QEMU after a daemon restart: the console
// copier, and a "cont" when the guest is still in "prelaunch" (the previous
// daemon died between launching QEMU with -S and resuming it).
func (d *Driver) Adopt(ctx context.Context, p *vmm.Process) error {
	if err := d.Base.Adopt(ctx, p); err != nil {
		return err
	}
	st, err := d.Status(ctx, p)
	if err != nil {
		return err
	}
	if st == "prelaunch" {
		return qmpDo(ctx, p.APISocket, "cont", nil, nil)
	}
	return nil
}

// Stop: system_powerdown, wait timeout; quit, wait QuitWait; SIGKILL (see
// the package documentation; the caller asks the agent first).
func (d *Driver) Stop(ctx context.Context, p *vmm.Process, timeout time.Duration) error {
	quitWait := d.QuitWait
	if quitWait <= 0 {
		quitWait = DefaultQuitWait
	}
	return d.StopWith(ctx, p,
		vmm.StopStep{Name: "system_powerdown", Wait: timeout, Do: func(ctx context.Context) error {
			return qmpDo(ctx, p.APISocket, "system_powerdown", nil, nil)
		}},
		vmm.StopStep{Name: "quit", Wait: quitWait, Do: func(ctx context.Context) error {
			if err := qmpDo(ctx, p.APISocket, "quit", nil, nil); err != nil && !isClosed(err) {
				return err
			}
			return nil
		}},
	)
}

// resolveAccel maps spec.Accel to kvm or tcg.
func (d *Driver) resolveAccel(ctx context.Context, spec vmm.Spec) (string, error) {
	switch spec.Accel {
	case vmm.AccelKVM, vmm.AccelTCG:
		return spec.Accel, nil
	}
	ok, _ := d.KVMUsable(ctx, spec.Kernel)
	if ok {
		return vmm.AccelKVM, nil
	}
	return vmm.AccelTCG, nil
}

// KVMUsable reports whether a KVM guest boots kernel on this host, and why
// not (see the package documentation). Probed once per kernel file.
func (d *Driver) KVMUsable(ctx context.Context, kernel string) (bool, string) {
	fi, err := os.Stat(kernel)
	if err != nil {
		return false, err.Error()
	}
	key := fmt.Sprintf("%s\x00%d\x00%d", kernel, fi.Size(), fi.ModTime().UnixNano())
	d.kvmMu.Lock()
	defer d.kvmMu.Unlock()
	if r, ok := d.kvm[key]; ok {
		return r.ok, r.reason
	}
	ok, reason := d.probeKVM(ctx, kernel)
	if ctx.Err() == nil { // an interrupted probe is not cached
		if d.kvm == nil {
			d.kvm = map[string]kvmResult{}
		}
		d.kvm[key] = kvmResult{ok, reason}
	}
	return ok, reason
}

// kvmProbeMarker is printed at the end of kernel init when there is no root
// file system (pr_emerg, so printed even with "quiet").
const kvmProbeMarker = "Kernel panic - not syncing: VFS:"

func (d *Driver) probeKVM(ctx context.Context, kernel string) (bool, string) {
	dev := d.kvmDev
	if dev == "" {
		dev = "/dev/kvm"
	}
	f, err := os.OpenFile(dev, os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return false, err.Error()
	}
	f.Close()
	tmp, err := os.MkdirTemp("", "paddock-kvmprobe-")
	if err != nil {
		return false, err.Error()
	}
	defer os.RemoveAll(tmp)
	timeout := d.KVMProbeTimeout
	if timeout <= 0 {
		timeout = DefaultKVMProbeTimeout
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	console := filepath.Join(tmp, "console.log")
	args := append([]string{
		"-M", "microvm,pit=off,pic=off,rtc=on", "-accel", "kvm", "-cpu", "host",
		"-m", "128", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"},
		SandboxArgs...)
	cmd := exec.CommandContext(pctx, d.binary(), append(args,
		"-serial", "file:"+qemuEscape(console), "-kernel", kernel,
		"-append", "console=ttyS0 panic=-1 quiet pci=off")...)
	vmm.Confine(cmd, false) // confined like every VMM
	// the probe is short-lived and must not outlive paddockd
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if pctx.Err() != nil {
		return false, fmt.Sprintf("KVM guest did not finish booting within %v", timeout)
	}
	log, _ := os.ReadFile(console)
	if err != nil {
		return false, fmt.Sprintf("QEMU with KVM failed: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if !strings.Contains(string(log), kvmProbeMarker) {
		return false, "KVM guest exited without reaching the end of kernel init"
	}
	return true, ""
}
