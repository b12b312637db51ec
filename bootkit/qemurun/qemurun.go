// Package qemurun starts a boot kit under qemu-system-x86_64 -M microvm
// directly, without the VMM driver's machinery (no tag, -S, QMP or console
// copier): the reference runs of the boot benchmarks and tests that boot a
// kit on their own. The argv is the driver's own boot recipe
// (host/vmm/qemu.Machine); this package adds only the process around it:
// the console in a log file, stderr kept, Wait, Kill and DialControl.
package qemurun

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/host/vmm/qemu"
)

// Config describes one VM.
type Config struct {
	// QEMU binary (qemu-system-x86_64 on $PATH).
	QEMU string
	// Machine is the guest (kernel, initrd, disks, command line, agent
	// port, tap); its Serial is set from ConsoleLog.
	qemu.Machine
	// ConsoleLog receives the guest's serial console; empty discards it.
	ConsoleLog string
	// ExtraArgs are appended to QEMU's arguments.
	ExtraArgs []string
	// SysProcAttr for the QEMU process. nil means Setpgid plus
	// Pdeathsig=SIGKILL, right for tests.
	SysProcAttr *syscall.SysProcAttr
	// NoHugePages starts QEMU as paddock starts a TCG guest's: confined,
	// without transparent huge pages (vmm.Confine).
	NoHugePages bool
}

// Args returns QEMU's argument vector (without the binary).
func (c *Config) Args() ([]string, error) {
	m := c.Machine
	m.Serial = "null"
	if c.ConsoleLog != "" {
		m.Serial = "file:" + c.ConsoleLog
	}
	a, err := m.Args()
	if err != nil {
		return nil, err
	}
	return append(a, c.ExtraArgs...), nil
}

// VM is a running QEMU process.
type VM struct {
	Cmd     *exec.Cmd
	Started time.Time
	cfg     Config
	done    chan struct{}
	mu      sync.Mutex
	exit    error
	exited  time.Time
	stderr  *strings.Builder
}

// Start launches QEMU. The caller must Kill or Wait for it.
func Start(cfg Config) (*VM, error) {
	args, err := cfg.Args()
	if err != nil {
		return nil, err
	}
	bin := cfg.QEMU
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	if cfg.ControlSocket != "" {
		_ = os.Remove(cfg.ControlSocket)
	}
	cmd := exec.Command(bin, args...)
	if cfg.NoHugePages {
		vmm.Confine(cmd, true)
	}
	cmd.SysProcAttr = cfg.SysProcAttr
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	}
	var stderr strings.Builder
	cmd.Stderr = &limitedWriter{w: &stderr, n: 64 << 10}
	vm := &VM{Cmd: cmd, cfg: cfg, done: make(chan struct{}), stderr: &stderr}
	vm.Started = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("qemurun: starting %s: %w", bin, err)
	}
	go func() {
		err := cmd.Wait()
		vm.mu.Lock()
		vm.exit, vm.exited = err, time.Now()
		vm.mu.Unlock()
		close(vm.done)
	}()
	return vm, nil
}

type limitedWriter struct {
	mu sync.Mutex
	w  *strings.Builder
	n  int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := l.n - l.w.Len(); room > 0 {
		l.w.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// PID of the QEMU process.
func (v *VM) PID() int { return v.Cmd.Process.Pid }

// Done is closed when QEMU exited.
func (v *VM) Done() <-chan struct{} { return v.done }

// Wait waits for QEMU to exit and returns its exit error (nil for status 0)
// and when it exited.
func (v *VM) Wait(ctx context.Context) (time.Time, error) {
	select {
	case <-v.done:
		v.mu.Lock()
		defer v.mu.Unlock()
		if v.exit != nil {
			return v.exited, fmt.Errorf("qemu: %w (stderr: %s)", v.exit, strings.TrimSpace(v.Stderr()))
		}
		return v.exited, nil
	case <-ctx.Done():
		return time.Time{}, ctx.Err()
	}
}

// Stderr returns what QEMU printed on stderr (first 64 KiB).
func (v *VM) Stderr() string {
	lw := v.Cmd.Stderr.(*limitedWriter)
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return v.stderr.String()
}

// Kill kills QEMU by PID and waits for it; the control socket is removed.
func (v *VM) Kill() {
	select {
	case <-v.done:
	default:
		_ = v.Cmd.Process.Kill()
		<-v.done
	}
	if v.cfg.ControlSocket != "" {
		_ = os.Remove(v.cfg.ControlSocket)
	}
}

// DialControl connects to the agent's virtio-serial socket, waiting for QEMU
// to create it. QEMU holds bytes written before the guest opens the port, so
// a client can send its hello right away and get the answer as soon as the
// agent is up.
func (v *VM) DialControl(ctx context.Context) (net.Conn, error) {
	if v.cfg.ControlSocket == "" {
		return nil, errors.New("qemurun: no control socket configured")
	}
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", v.cfg.ControlSocket)
		if err == nil {
			return c, nil
		}
		select {
		case <-v.done:
			return nil, fmt.Errorf("qemurun: qemu exited before its control socket appeared (stderr: %s)", strings.TrimSpace(v.Stderr()))
		case <-ctx.Done():
			return nil, fmt.Errorf("qemurun: control socket %s: %w", v.cfg.ControlSocket, err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}
