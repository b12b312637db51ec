// Command unitprobe stands in for paddockd under the real paddock.service
// sandbox (see ../nspawn-check.sh): it takes the activated socket, exercises
// every host facility paddockd and its VMMs need, and answers each
// connection with its report. Not part of the build (testdata).
package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/paddock-vm/paddock/systemd"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var report []string

func check(name string, err error) {
	line := "ok   " + name
	if err != nil {
		line = "FAIL " + name + ": " + err.Error()
	}
	report = append(report, line)
}

func note(format string, args ...any) { report = append(report, "info "+fmt.Sprintf(format, args...)) }

func main() {
	n := systemd.NewNotifier()
	log := systemd.NewLogger(systemd.LogOptions{Identifier: "paddockd"})
	note("stderr is journal: %v", systemd.StderrIsJournal())

	ln, activated, err := systemd.Listen("/run/paddock/io.paddock.v1", 0o660, -1)
	check("listen", err)
	if err != nil {
		log.Error("listen", "err", err)
		os.Exit(1)
	}
	note("activated=%v addr=%s", activated, ln.Addr())

	restarts := 0
	for _, f := range systemd.TakeFiles("state") {
		b, _ := io.ReadAll(io.NewSectionReader(f, 0, 64))
		restarts, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		restarts++
		f.Close()
	}
	note("restarts seen through the fd store: %d", restarts)
	mfd, err := unix.MemfdCreate("state", 0)
	check("memfd_create", err)
	if err == nil {
		f := os.NewFile(uintptr(mfd), "state")
		fmt.Fprintf(f, "%d\n", restarts)
		check("FDSTORE state", n.FDStore("state", f))
		f.Close()
	}

	for _, env := range []string{"STATE_DIRECTORY", "CACHE_DIRECTORY", "RUNTIME_DIRECTORY"} {
		dir := os.Getenv(env)
		check("write "+env+"="+dir, os.WriteFile(filepath.Join(dir, "probe"), []byte("x"), 0o600))
	}
	check("write /etc is refused (ProtectSystem=strict)", expectFail(os.WriteFile("/etc/paddock-probe", nil, 0o600)))
	_, err = os.ReadDir("/home")
	note("read /home: %v", err)
	_, err = os.Stat("/usr/lib/modules")
	note("stat /usr/lib/modules: %v", err)

	check("open /dev/kvm + KVM_GET_API_VERSION", kvm())
	check("create tap (TUNSETIFF, CAP_NET_ADMIN)", tap())
	check("netlink bridge add/del", bridge())
	check("AF_VSOCK socket", sock(unix.AF_VSOCK, unix.SOCK_STREAM))
	check("AF_INET socket", sock(unix.AF_INET, unix.SOCK_STREAM))
	check("AF_PACKET refused", expectFail(sock(unix.AF_PACKET, unix.SOCK_RAW)))
	check("mmap W+X (QEMU TCG JIT)", wx())
	check("mmap memfd RW + RX alias (QEMU split-wx)", splitWX())
	check("seccomp filter install (VMM self-sandboxing)", seccompStrictChild())
	check("delegated cgroup: child into sub-cgroup", cgroupChild())
	check("write /proc/sys/net/ipv4/ip_forward refused", expectFail(os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0)))
	check("0666 fuse node (not in DeviceAllow) refused", expectFail(openDev("/dev/pdk-fuse")))
	_, err = os.ReadDir("/usr/lib/modules/pdk-test")
	note("read /usr/lib/modules/pdk-test: %v", err)
	check("VMM outlives restarts (KillMode=process)", survivor(restarts))

	check("mkfs.ext4 -d + debugfs (image bases)", ext4())
	if _, err := os.Stat("/usr/bin/qemu-system-x86_64"); err == nil {
		for _, accel := range []string{"tcg", "tcg,split-wx=on", "kvm"} {
			check("qemu -accel "+accel+" runs 1.5s", qemu(accel))
		}
	}

	iv, ok := n.WatchdogInterval()
	note("watchdog interval %v enabled %v", iv, ok)
	log.Info("probe done", "vm_name", "probe", "op", "probe", "failures", strings.Count(strings.Join(report, "\n"), "FAIL"))
	for _, l := range report {
		fmt.Println(l)
	}
	check("READY", n.Ready("probe: "+strconv.Itoa(len(report))+" checks"))
	if ok {
		go func() {
			for range time.Tick(iv / 2) {
				_ = n.Watchdog()
			}
		}()
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		w := bufio.NewWriter(c)
		for _, l := range report {
			fmt.Fprintln(w, l)
		}
		w.Flush()
		c.Close()
	}
}

func expectFail(err error) error {
	if err == nil {
		return errors.New("unexpectedly succeeded")
	}
	return nil
}

func openDev(p string) error {
	f, err := os.OpenFile(p, os.O_RDONLY, 0)
	if err == nil {
		f.Close()
	}
	return err
}

func kvm() error {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	v, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), 0xAE00, 0)
	if errno != 0 {
		return errno
	}
	if v != 12 {
		return fmt.Errorf("API version %d", v)
	}
	return nil
}

func tap() error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("pdkprobe0")
	if err != nil {
		return err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	return unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
}

func bridge() error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "pdkprobebr0"}}
	if err := netlink.LinkAdd(br); err != nil {
		return err
	}
	return netlink.LinkDel(br)
}

func sock(family, typ int) error {
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
	}
	return err
}

func wx() error {
	b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err == nil {
		unix.Munmap(b)
	}
	return err
}

func splitWX() error {
	fd, err := unix.MemfdCreate("tcg", unix.MFD_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 4096); err != nil {
		return err
	}
	rw, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("rw: %w", err)
	}
	defer unix.Munmap(rw)
	rx, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("rx: %w", err)
	}
	return unix.Munmap(rx)
}

// seccompStrictChild installs a trivial allow-all filter in a child.
func seccompStrictChild() error {
	if os.Getenv("UNITPROBE_SECCOMP") == "1" {
		return nil
	}
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = append(os.Environ(), "UNITPROBE_SECCOMP=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

func init() {
	if os.Getenv("UNITPROBE_SECCOMP") != "1" {
		return
	}
	filter := []unix.SockFilter{{Code: 0x06, K: 0x7fff0000}} // RET ALLOW
	prog := unix.SockFprog{Len: 1, Filter: &filter[0]}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, 1 /* SET_MODE_FILTER */, 0, uintptr(unsafe.Pointer(&prog))); e != 0 {
		fmt.Println("seccomp(2):", e)
		os.Exit(1)
	}
	os.Exit(0)
}

func ext4() error {
	dir := filepath.Join(os.Getenv("STATE_DIRECTORY"), "ext4src")
	img := filepath.Join(os.Getenv("STATE_DIRECTORY"), "base.ext4")
	defer os.RemoveAll(dir)
	defer os.Remove(img)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644); err != nil {
		return err
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", dir, img, "8M").CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4: %v: %s", err, out)
	}
	out, err := exec.Command("debugfs", "-w", "-R", "sif /f uid 1000", img).CombinedOutput()
	if err != nil || strings.Contains(string(out), "rror") {
		return fmt.Errorf("debugfs: %v: %s", err, out)
	}
	return nil
}

// qemu runs a microvm with no kernel for 1.5 s (firmware executes, so TCG
// translates code) and reports whether it was still running.
func qemu(accel string) error {
	args := []string{"-M", "microvm", "-accel", accel, "-m", "64", "-nodefaults", "-no-user-config",
		"-display", "none", "-serial", "none"}
	if strings.HasPrefix(accel, "kvm") {
		args = append(args, "-cpu", "qemu64")
	}
	cmd := exec.Command("/usr/bin/qemu-system-x86_64", args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return fmt.Errorf("exited early: %v: %s", err, strings.TrimSpace(out.String()))
	case <-time.After(1500 * time.Millisecond):
		_ = cmd.Process.Kill()
		<-done
		return nil
	}
}

// survivor starts a long-lived stand-in VMM in its own sub-cgroup on the
// first start and checks on later starts that it is still alive.
func survivor(restarts int) error {
	pidFile := filepath.Join(os.Getenv("STATE_DIRECTORY"), "vmm.pid")
	if restarts > 0 {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return err
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if err := unix.Kill(pid, 0); err != nil {
			return fmt.Errorf("VMM pid %d: %w", pid, err)
		}
		cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		note("VMM pid %d alive in %s", pid, strings.TrimSpace(strings.Split(string(cg), "\n")[0]))
		return nil
	}
	mnt, own, err := cgroup2()
	if err != nil {
		return err
	}
	dir := filepath.Join(mnt, own, "vmm-keep")
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	cmd := exec.Command("/bin/sleep", "600")
	if err := cmd.Start(); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0); err != nil {
		return err
	}
	return os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o600)
}

func cgroup2() (mnt, own string, err error) {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", "", err
	}
	for _, l := range strings.Split(string(mi), "\n") {
		if i := strings.Index(l, " - cgroup2 "); i > 0 {
			mnt = strings.Fields(l)[4]
		}
	}
	if mnt == "" {
		return "", "", errors.New("no cgroup2 mount")
	}
	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", "", err
	}
	for _, l := range strings.Split(string(cg), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			own = p
		}
	}
	return mnt, own, nil
}

// cgroupChild starts a child, moves it into <own cgroup>/vmm-probe in the
// cgroup2 hierarchy, then cleans up.
func cgroupChild() error {
	mnt, own, err := cgroup2()
	if err != nil {
		return err
	}
	dir := filepath.Join(mnt, own, "vmm-probe")
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	defer os.Remove(dir)
	cmd := exec.Command("/bin/sleep", "30")
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0); err != nil {
		return fmt.Errorf("move into %s: %w", dir, err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", cmd.Process.Pid))
	if err != nil || !strings.Contains(string(b), "/vmm-probe") {
		return fmt.Errorf("child cgroup %q, %v", b, err)
	}
	return nil
}
