package disk

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/bootkit"
	"github.com/paddock-vm/paddock/bootkit/qemurun"
	"github.com/paddock-vm/paddock/host/vmm/qemu"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// The dm backend needs a kernel with device-mapper; CI machines may not
// have one (this one does not). TestDMInGuestKernel boots the Debian kernel
// of PADDOCK_KERNEL_DIR under QEMU with this very test binary as /init, the
// loop and dm modules, and e2fsprogs; there, TestMain runs the dm tests
// against the real kernel and powers off.

const (
	guestDir        = "/paddock-guest"
	guestExitMarker = "PADDOCK-GUEST-EXIT "
	// guestRun is what the guest runs: the dm backend end to end.
	guestRun = "^TestBackends$/^dm$|^TestDMReleaseWhileOpen$"
)

func TestMain(m *testing.M) {
	if _, err := os.Stat(guestDir + "/run"); err == nil && os.Getpid() == 1 {
		guestInit(m)
	}
	os.Exit(m.Run())
}

// guestInit is /init in the guest: mounts, modules, the tests, power off.
func guestInit(m *testing.M) {
	say := func(format string, args ...any) { fmt.Printf("guest: "+format+"\n", args...) }
	for _, mt := range []struct{ src, dir, typ, opts string }{
		{"devtmpfs", "/dev", "devtmpfs", ""},
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"tmpfs", "/tmp", "tmpfs", "size=75%"},
	} {
		os.MkdirAll(mt.dir, 0o755)
		if err := unix.Mount(mt.src, mt.dir, mt.typ, 0, mt.opts); err != nil {
			say("mount %s: %v", mt.dir, err)
		}
	}
	list, _ := os.ReadFile(guestDir + "/modules")
	for _, p := range strings.Fields(string(list)) {
		f, err := os.Open(p)
		if err == nil {
			err = unix.FinitModule(int(f.Fd()), "", 0)
			f.Close()
		}
		if err != nil && err != unix.EEXIST {
			say("load %s: %v", p, err)
		}
	}
	os.Setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
	os.Setenv("TMPDIR", "/tmp")
	os.Setenv("HOME", "/tmp")
	run, _ := os.ReadFile(guestDir + "/run")
	flag.Set("test.run", strings.TrimSpace(string(run)))
	flag.Set("test.v", "true")
	code := m.Run()
	fmt.Printf("%s%d\n", guestExitMarker, code)
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func TestDMInGuestKernel(t *testing.T) {
	testenv.BootsVM(t)
	vmlinuz, modules := testenv.RequireKernel(t)
	qemuBin := testenv.RequireTool(t, "qemu-system-x86_64", "qemu-system-x86")
	tmp := t.TempDir()
	image, err := os.ReadFile(vmlinuz)
	if err != nil {
		t.Fatal(err)
	}
	vmlinux, _, err := bootkit.ExtractVmlinux(image)
	if err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(tmp, "vmlinux")
	if err := os.WriteFile(kernel, vmlinux, 0o644); err != nil {
		t.Fatal(err)
	}
	mods, err := bootkit.ResolveModules(modules, []string{"loop", "dm_snapshot", "dm_zero"}, bootkit.ResolveOptions{StripSignatures: true})
	if err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(tmp, "initrd.cpio")
	if err := writeGuestInitrd(t, initrd, mods); err != nil {
		t.Fatal(err)
	}

	console := filepath.Join(tmp, "console.log")
	vm, err := qemurun.Start(qemurun.Config{QEMU: qemuBin, Machine: qemu.Machine{Kernel: kernel, Initrd: initrd, MemoryMiB: 1536, CPUs: 2},
		ConsoleLog: console})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, werr := vm.Wait(ctx)
	out, _ := os.ReadFile(console)
	code := -1
	if m := regexp.MustCompile(guestExitMarker + `(\d+)`).FindSubmatch(out); m != nil {
		code, _ = strconv.Atoi(string(m[1]))
	}
	var summary []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		l := strings.TrimRight(sc.Text(), "\r")
		if strings.HasPrefix(strings.TrimSpace(l), "--- ") || strings.HasPrefix(l, "guest: ") || strings.Contains(l, "_test.go:") {
			summary = append(summary, l)
		}
	}
	t.Logf("in the guest (%s):\n%s", filepath.Base(modules), strings.Join(summary, "\n"))
	if werr != nil || code != 0 {
		t.Fatalf("guest run failed: qemu %v, tests exit %d; console:\n%s", werr, code, tail(out, 60))
	}
	for _, want := range []string{"--- PASS: TestBackends/dm/grow", "--- PASS: TestBackends/dm/base-size",
		"--- PASS: TestBackends/dm/smaller-than-base", "--- PASS: TestDMReleaseWhileOpen"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("guest output lacks %q", want)
		}
	}
}

func tail(b []byte, n int) string {
	lines := strings.Split(string(b), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// writeGuestInitrd packs this test binary as /init, the modules, e2fsprogs
// and every shared library they load.
func writeGuestInitrd(t *testing.T, path string, mods *bootkit.ModuleSet) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	files := map[string]string{"/init": self} // in the guest -> on the host
	for _, tool := range []string{"mkfs.ext4", "e2fsck", "resize2fs", "debugfs", "dumpe2fs"} {
		files["/usr/sbin/"+tool] = requireTool(t, tool, "e2fsprogs")
	}
	if _, err := os.Stat("/etc/mke2fs.conf"); err == nil {
		files["/etc/mke2fs.conf"] = "/etc/mke2fs.conf"
	}
	for _, bin := range []string{self, files["/usr/sbin/mkfs.ext4"], files["/usr/sbin/e2fsck"], files["/usr/sbin/resize2fs"],
		files["/usr/sbin/debugfs"], files["/usr/sbin/dumpe2fs"]} {
		libs, err := sharedLibs(bin)
		if err != nil {
			return err
		}
		for _, l := range libs {
			files[l] = l
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	c := bootkit.NewCPIOWriter(f, 0)
	for _, d := range []string{"dev", "proc", "sys", "tmp", strings.TrimPrefix(guestDir, "/")} {
		if err := c.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	if err := c.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		data, err := os.ReadFile(files[n])
		if err != nil {
			return err
		}
		if err := c.WriteFile(strings.TrimPrefix(n, "/"), 0o755, data); err != nil {
			return fmt.Errorf("%s: %w", n, err)
		}
	}
	var list strings.Builder
	for _, m := range mods.Modules {
		p := "lib/modules/" + mods.Release + "/" + m.Path
		if err := c.WriteFile(p, 0o644, m.Data); err != nil {
			return err
		}
		list.WriteString("/" + p + "\n")
	}
	if err := c.WriteFile(strings.TrimPrefix(guestDir, "/")+"/modules", 0o644, []byte(list.String())); err != nil {
		return err
	}
	if err := c.WriteFile(strings.TrimPrefix(guestDir, "/")+"/run", 0o644, []byte(guestRun)); err != nil {
		return err
	}
	return c.Close()
}

// sharedLibs lists the libraries (and the ELF interpreter) bin loads, by
// ldd; none for a static binary.
func sharedLibs(bin string) ([]string, error) {
	out, err := exec.Command("ldd", bin).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "not a dynamic executable") {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %v: %s", bin, err, out)
	}
	var libs []string
	for _, l := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(l) {
			if strings.HasPrefix(f, "/") {
				libs = append(libs, f)
			}
		}
	}
	return libs, nil
}
