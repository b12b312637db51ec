package qemu

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/paddock-vm/paddock/guestboot"
	"github.com/paddock-vm/paddock/host/vmm"
)

// maxCmdline is the x86 kernel's COMMAND_LINE_SIZE (with its NUL): a longer
// line is cut off by the kernel, silently.
const maxCmdline = 2048

// SandboxArgs turn on QEMU's seccomp filter for every VMM (the KVM probe
// included): the default deny list, obsolete system calls, set*id and the
// like, fork and exec (so no helper scripts: taps come ready, script=no),
// and scheduler or affinity changes. A QEMU built without seccomp refuses
// to start rather than run unconfined.
var SandboxArgs = []string{"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"}

// ramID names the guest RAM's memory backend when it is a file: the same
// at the save and at every resume (migration matches RAM blocks by name).
const ramID = "pdk-ram"

// defaultMAC is the virtio-net MAC when the tap has none.
const defaultMAC = "02:00:00:00:00:02"

// Machine is one microvm guest as the boot recipe describes it. Args turns
// it into QEMU's arguments; Driver.Argv adds what the driver needs around
// them (tag, -S, QMP, the console socket), and bootkit/qemurun starts it
// directly for tests and the boot benchmark.
//
// The recipe, as measured by BenchmarkBoot (bootkit/qemurun) and
// BenchmarkStartToHello: -M microvm without PIT and PIC, the uncompressed
// vmlinux booted through PVH, the kit's initramfs, virtio-mmio devices, and
// ACPI left on (the microvm default): the Debian kernel finds virtio-mmio
// devices only through ACPI (no VIRTIO_MMIO_CMDLINE_DEVICES), powers off
// through it, and gets the power button (system_powerdown) through its GED
// device. Under TCG the guest needs tsc_early_khz=<host TSC kHz> or it
// usually hangs calibrating the TSC, so the command line always carries it.
type Machine struct {
	// Kernel is the uncompressed vmlinux (booted through PVH), Initrd the
	// boot kit's initramfs. Both are required.
	Kernel, Initrd string
	// MemoryMiB (256) and CPUs (1).
	MemoryMiB, CPUs int
	// Accel is vmm.AccelTCG (default) or vmm.AccelKVM.
	Accel string
	// TSCkHz is the host TSC rate put on the kernel command line (read from
	// /proc/cpuinfo when 0).
	TSCkHz int
	// Cmdline holds the caller's kernel arguments: the paddock.* keys (see
	// package guestboot). It must parse; its control-channel keys are
	// replaced by the machine's own.
	Cmdline string
	// Disks are virtio-blk disks in guest order (/dev/vda first).
	Disks []vmm.Disk
	// Tap attaches a virtio-net device to a tap; nil for none.
	Tap *vmm.Tap
	// Stream attaches the virtio-net device to a user-mode backend's UNIX
	// socket instead (passt); nil for none. At most one of Tap and Stream.
	Stream *vmm.Stream
	// ControlSocket is the host UNIX socket QEMU serves the agent's
	// virtio-serial port on; "" for no port. ControlPort names the port
	// (guestboot.DefaultSerialPort).
	ControlSocket, ControlPort string
	// Serial is the -serial backend ("null" when empty), e.g. "chardev:con"
	// or "file:/path/console.log".
	Serial string
	// MemoryFile backs the guest's RAM with a file instead of QEMU's own
	// memory: shared with the file when MemoryShared (a guest booted to be
	// saved: the file is its RAM), else mapped copy-on-write (a resume from
	// it: the file is never written).
	MemoryFile   string
	MemoryShared bool
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
				return 0, fmt.Errorf("bad cpu MHz %q in /proc/cpuinfo", v)
			}
			return int(mhz * 1000), nil
		}
	}
	return 0, errors.New("no cpu MHz in /proc/cpuinfo")
}

func (m *Machine) controlPort() string {
	if m.ControlPort == "" {
		return guestboot.DefaultSerialPort
	}
	return m.ControlPort
}

// tcgCodeCacheMiB caps TCG's translated-code cache. A boot of the stock
// kernel to the agent and a first few execs translate about 67 MB of code
// (119,000 blocks, QMP "info jit"): at 32 MiB the cache was flushed twice
// before the first exec, which then translated again what the boot had —
// first exec 174–221 ms, second 66–114 ms (6 boots); at 96 or 256 MiB
// nothing was flushed: 71–168 and 29–56 ms (6 boots each). The cost is
// memory, only as much as is translated: 37 MB more resident per VM here
// (RssAnon 169 → 206 MB). Unused under KVM.
const tcgCodeCacheMiB = 128

// KernelCmdline returns the guest's kernel command line: the recipe's own
// words (serial console, panic=-1 so a dead init ends QEMU through
// -no-reboot, no PCI probe, the TSC rate), then the caller's Cmdline with the
// agent's control channel set to this machine's virtio-serial port (or to
// none without a ControlSocket): exactly one paddock.ctl reaches the guest.
func (m *Machine) KernelCmdline() (string, error) {
	boot, err := guestboot.Parse(m.Cmdline)
	if err != nil {
		return "", fmt.Errorf("kernel command line: %w", err)
	}
	if m.ControlSocket != "" {
		boot.SetControl(m.controlPort(), 0)
	} else {
		boot.SetControl("", 0)
	}
	if err := boot.Validate(); err != nil {
		return "", fmt.Errorf("kernel command line: %w", err)
	}
	khz := m.TSCkHz
	if khz == 0 {
		if khz, err = HostTSCkHz(); err != nil {
			return "", err
		}
	}
	line := strings.Join([]string{"console=ttyS0", "panic=-1", "quiet", "pci=off",
		"tsc_early_khz=" + strconv.Itoa(khz), "tsc=reliable", boot.String()}, " ")
	line = strings.TrimSuffix(line, " ")
	if len(line) >= maxCmdline {
		return "", fmt.Errorf("kernel command line is %d bytes, the kernel keeps %d", len(line), maxCmdline-1)
	}
	return line, nil
}

// Args returns QEMU's arguments (without the binary) for m: the measured boot
// recipe (see the package documentation), the seccomp sandbox, the disks,
// the agent's port and the network device.
func (m *Machine) Args() ([]string, error) {
	if m.Kernel == "" || m.Initrd == "" {
		return nil, errors.New("qemu: a kernel and an initrd (boot kit) are required")
	}
	mem, cpus := m.MemoryMiB, m.CPUs
	if mem == 0 {
		mem = 256
	}
	if cpus == 0 {
		cpus = 1
	}
	cmdline, err := m.KernelCmdline()
	if err != nil {
		return nil, err
	}
	machine := "microvm,pit=off,pic=off,rtc=on"
	var ram []string
	if m.MemoryFile != "" {
		share := "off"
		if m.MemoryShared {
			share = "on"
		}
		machine += ",memory-backend=" + ramID
		ram = []string{"-object", fmt.Sprintf("memory-backend-file,id=%s,size=%dM,mem-path=%s,share=%s", ramID, mem, qemuEscape(m.MemoryFile), share)}
	}
	a := append([]string{"-M", machine}, ram...)
	switch m.Accel {
	case "", vmm.AccelTCG:
		a = append(a, "-accel", "tcg,tb-size="+strconv.Itoa(tcgCodeCacheMiB), "-cpu", "max")
	case vmm.AccelKVM:
		a = append(a, "-accel", "kvm", "-cpu", "host")
	default:
		return nil, fmt.Errorf("qemu: unknown accelerator %q", m.Accel)
	}
	serial := m.Serial
	if serial == "" {
		serial = "null"
	}
	a = append(a, "-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot")
	a = append(a, SandboxArgs...)
	a = append(a, "-serial", serial,
		"-kernel", m.Kernel, "-initrd", m.Initrd, "-append", cmdline)
	for i, disk := range m.Disks {
		format := disk.Format
		if format == "" {
			format = vmm.FormatRaw
		}
		drive := fmt.Sprintf("id=disk%d,file=%s,format=%s,if=none", i, qemuEscape(disk.Path), format)
		if disk.ReadOnly {
			drive += ",readonly=on"
		}
		a = append(a, "-drive", drive, "-device", fmt.Sprintf("virtio-blk-device,drive=disk%d", i))
	}
	if m.ControlSocket != "" {
		// Two ports (0 is kept for a console, the agent's is 1): the
		// guest's virtio_console sets up two queues per possible port
		// (31 by default) when it probes, its slowest step under TCG.
		a = append(a, "-device", "virtio-serial-device,max_ports=2",
			"-chardev", "socket,id=ctl,path="+qemuEscape(m.ControlSocket)+",server=on,wait=off",
			"-device", "virtserialport,chardev=ctl,name="+m.controlPort())
	}
	switch {
	case m.Tap != nil && m.Stream != nil:
		return nil, errors.New("qemu: a tap and a stream network device: at most one")
	case m.Tap != nil:
		a = append(a, "-netdev", "tap,id=n0,ifname="+m.Tap.Name+",script=no,downscript=no",
			"-device", "virtio-net-device,netdev=n0,mac="+macOr(m.Tap.MAC))
	case m.Stream != nil:
		if m.Stream.Socket == "" {
			return nil, errors.New("qemu: a stream network device needs a socket path")
		}
		// server=off: QEMU connects to the backend (passt listens)
		a = append(a, "-netdev", "stream,id=n0,server=off,addr.type=unix,addr.path="+qemuEscape(m.Stream.Socket),
			"-device", "virtio-net-device,netdev=n0,mac="+macOr(m.Stream.MAC))
	}
	return a, nil
}

func macOr(mac string) string {
	if mac == "" {
		return defaultMAC
	}
	return mac
}

// Argv returns the complete QEMU argv (binary first) for a normalized spec
// and a resolved accelerator (kvm or tcg): the tag, -S, QMP and the console
// socket, then Machine.Args.
func (d *Driver) Argv(spec vmm.Spec, accel string) ([]string, error) {
	m := Machine{
		Kernel: spec.Kernel, Initrd: spec.Initrd, MemoryMiB: spec.MemoryMiB, CPUs: spec.CPUs, Accel: accel,
		TSCkHz: d.TSCkHz, Cmdline: spec.Cmdline, Disks: spec.Disks, Tap: spec.Tap, Stream: spec.Stream,
		ControlSocket: spec.ControlSocket, ControlPort: spec.ControlPort, Serial: "chardev:con",
		MemoryFile: spec.MemoryFile, MemoryShared: spec.Incoming == "",
	}
	args, err := m.Args()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", vmm.ErrInvalidSpec, err)
	}
	argv := []string{d.binary(), "-name", vmm.Tag(spec.VMID), "-S",
		"-qmp", "unix:" + qemuEscape(qmpPath(spec.RunDir)) + ",server=on,wait=off",
		"-chardev", "socket,id=con,path=" + qemuEscape(consolePath(spec.RunDir)) + ",server=on,wait=off"}
	argv = append(argv, args...)
	if spec.Incoming != "" {
		// The state arrives over QMP once the monitor is up (see Save).
		argv = append(argv, "-incoming", "defer")
	}
	return argv, nil
}

// qemuEscape doubles commas, QEMU's option-value escape.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }
