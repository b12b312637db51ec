// Package qemurun starts a boot kit under qemu-system-x86_64 -M microvm: the
// uncompressed vmlinux through PVH, the kit's initramfs, an ext4 root disk
// on virtio-blk, the agent's virtio-serial port on a host UNIX socket, the
// serial console in a log file, and optionally a virtio-net device on a tap.
// It is the QEMU invocation the VMM driver builds on; tests use it directly.
//
// ACPI stays on (the microvm default): the Debian kernel finds virtio-mmio
// devices only through ACPI (no VIRTIO_MMIO_CMDLINE_DEVICES) and powers off
// through it. Under TCG the guest needs tsc_early_khz=<host TSC kHz> or it
// usually hangs calibrating the TSC, so the runner always passes it.
package qemurun

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultPortName is the virtio-serial port name paddock-agent serves on.
const DefaultPortName = "paddock.agent"

// Config describes one VM.
type Config struct {
	// QEMU binary (qemu-system-x86_64 on $PATH).
	QEMU string
	// Kernel (uncompressed vmlinux) and Initrd paths.
	Kernel string
	Initrd string
	// RootDisk is a raw ext4 image attached as the first virtio-blk disk
	// (/dev/vda); empty for none.
	RootDisk     string
	RootReadOnly bool
	// MemoryMiB (256) and CPUs (1).
	MemoryMiB int
	CPUs      int
	// Accel is "tcg" (default) or "kvm".
	Accel string
	// Cmdline holds extra kernel arguments (the paddock.* keys).
	Cmdline []string
	// ControlSocket is the host UNIX socket QEMU listens on for the agent's
	// virtio-serial port; empty for none.
	ControlSocket string
	// PortName names the virtio-serial port (DefaultPortName).
	PortName string
	// ConsoleLog receives the guest's serial console; empty discards it.
	ConsoleLog string
	// Tap attaches a virtio-net device to an existing tap device.
	Tap string
	// MAC of the virtio-net device (02:00:00:00:00:02 by default).
	MAC string
	// TSCkHz is the host TSC rate (read from /proc/cpuinfo when 0).
	TSCkHz int
	// ExtraArgs are appended to QEMU's arguments.
	ExtraArgs []string
	// SysProcAttr for the QEMU process. nil means Setpgid plus
	// Pdeathsig=SIGKILL, right for tests; paddockd, whose VMs must outlive
	// it, passes its own (no Pdeathsig).
	SysProcAttr *syscall.SysProcAttr
}

// HostTSCkHz reads the TSC rate from /proc/cpuinfo ("cpu MHz" × 1000),
// which is what the guest's rdtsc runs at under TCG.
func HostTSCkHz() (int, error) {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil || mhz <= 0 {
				return 0, fmt.Errorf("bad cpu MHz %q", v)
			}
			return int(mhz * 1000), nil
		}
	}
	return 0, errors.New("no cpu MHz in /proc/cpuinfo")
}

// KernelCmdline returns the kernel command line for cfg.
func (c *Config) KernelCmdline() (string, error) {
	khz := c.TSCkHz
	if khz == 0 {
		var err error
		if khz, err = HostTSCkHz(); err != nil {
			return "", err
		}
	}
	args := []string{"console=ttyS0", "panic=-1", "quiet", "pci=off",
		"tsc_early_khz=" + strconv.Itoa(khz), "tsc=reliable"}
	if c.ControlSocket != "" && c.portName() != DefaultPortName {
		args = append(args, "paddock.ctl="+c.portName())
	}
	args = append(args, c.Cmdline...)
	return strings.Join(args, " "), nil
}

func (c *Config) portName() string {
	if c.PortName == "" {
		return DefaultPortName
	}
	return c.PortName
}

// Args returns QEMU's argument vector (without the binary).
func (c *Config) Args() ([]string, error) {
	if c.Kernel == "" || c.Initrd == "" {
		return nil, errors.New("qemurun: Kernel and Initrd are required")
	}
	mem, cpus := c.MemoryMiB, c.CPUs
	if mem == 0 {
		mem = 256
	}
	if cpus == 0 {
		cpus = 1
	}
	cmdline, err := c.KernelCmdline()
	if err != nil {
		return nil, err
	}
	a := []string{"-M", "microvm,pit=off,pic=off,rtc=on"}
	switch c.Accel {
	case "", "tcg":
		a = append(a, "-accel", "tcg,tb-size=32", "-cpu", "max")
	case "kvm":
		a = append(a, "-accel", "kvm", "-cpu", "host")
	default:
		return nil, fmt.Errorf("qemurun: unknown accelerator %q", c.Accel)
	}
	a = append(a, "-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot")
	if c.ConsoleLog != "" {
		a = append(a, "-serial", "file:"+c.ConsoleLog)
	} else {
		a = append(a, "-serial", "null")
	}
	a = append(a, "-kernel", c.Kernel, "-initrd", c.Initrd, "-append", cmdline)
	if c.RootDisk != "" {
		drive := "id=root,file=" + qemuEscape(c.RootDisk) + ",format=raw,if=none"
		if c.RootReadOnly {
			drive += ",readonly=on"
		}
		a = append(a, "-drive", drive, "-device", "virtio-blk-device,drive=root")
	}
	if c.ControlSocket != "" {
		a = append(a, "-device", "virtio-serial-device",
			"-chardev", "socket,id=ctl,path="+qemuEscape(c.ControlSocket)+",server=on,wait=off",
			"-device", "virtserialport,chardev=ctl,name="+c.portName())
	}
	if c.Tap != "" {
		mac := c.MAC
		if mac == "" {
			mac = "02:00:00:00:00:02"
		}
		a = append(a, "-netdev", "tap,id=n0,ifname="+c.Tap+",script=no,downscript=no",
			"-device", "virtio-net-device,netdev=n0,mac="+mac)
	}
	return append(a, c.ExtraArgs...), nil
}

// qemuEscape doubles commas, QEMU's option-value escape.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

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

// BuildExt4 makes a raw ext4 image of sizeMiB from the directory tree dir
// with mkfs.ext4 -d (no root, loop device or mount needed).
func BuildExt4(ctx context.Context, dir, out string, sizeMiB int, label string) error {
	args := []string{"-q", "-F", "-t", "ext4", "-d", dir}
	if label != "" {
		args = append(args, "-L", label)
	}
	args = append(args, out, strconv.Itoa(sizeMiB)+"M")
	cmd := exec.CommandContext(ctx, "mkfs.ext4", args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4: %w: %s", err, strings.TrimSpace(string(b)))
	}
	return nil
}
