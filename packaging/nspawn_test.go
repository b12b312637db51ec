package packaging

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/internal/testenv"
)

// The container's packages: systemd as PID 1, and what the .deb Depends on,
// so dpkg -i works offline inside (debootstrap --include); then libvirt's
// daemon, only to measure its unit's exposure beside paddock's.
const (
	rootfsInclude = "systemd,systemd-sysv,dbus,qemu-system-x86,qemu-utils,e2fsprogs,procps"
	rootfsExtra   = "libvirt-daemon-system"
)

// rootfsTar builds (once; packaging/testdata/nspawn-rootfs.sh) the
// container's rootfs as a tar under PADDOCK_TEST_CACHE, named by its
// package lists, and returns its path.
func rootfsTar(t *testing.T) string {
	t.Helper()
	cache := os.Getenv("PADDOCK_TEST_CACHE")
	testenv.Require(t, cache != "", "PADDOCK_TEST_CACHE is not set (the Makefile sets it; the rootfs is cached there)")
	key := fmt.Sprintf("%x", sha256.Sum256([]byte(rootfsInclude+"\n"+rootfsExtra)))[:12]
	out := filepath.Join(cache, "nspawn", "bookworm-"+key+".tar")
	if _, err := os.Stat(out); err == nil {
		return out
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	b, err := exec.CommandContext(ctx, "testdata/nspawn-rootfs.sh", out, rootfsInclude, rootfsExtra).CombinedOutput()
	if err != nil {
		t.Fatalf("building the container's rootfs %s: %v\n%s", out, err, b)
	}
	return out
}

// container is a Debian 12 rootfs copy booted with systemd-nspawn --boot.
type container struct {
	t      *testing.T
	nspawn *exec.Cmd
	init   int           // the container's systemd, as the host sees it
	root   string        // its root directory, on the host
	exited chan struct{} // closed when systemd-nspawn has exited
}

// bootContainer unpacks rootfs into a fresh directory and boots it, with
// binds (host dir -> container dir, read-only). Everything is torn down at
// the end of the test: the container killed through its init (which takes
// its whole PID namespace, VMs included), nspawn reaped, cgroups and the
// copy removed.
func bootContainer(t *testing.T, rootfs string, binds map[string]string) *container {
	t.Helper()
	dir, err := os.MkdirTemp("/var/tmp", "pdk-nspawn-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing the container's copy: %v", err)
		}
	})
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("tar", "-C", root, "--numeric-owner", "-xf", rootfs).CombinedOutput(); err != nil {
		t.Fatalf("unpacking %s: %v\n%s", rootfs, err, b)
	}

	// nspawn --keep-unit makes payload/ and supervisor/ below the cgroup it
	// starts in: give it one of its own in the named (v1) and unified
	// hierarchies. /run/systemd is hidden behind a tmpfs: systemd is not the
	// host's init here, and nspawn must not take the host's for a manager.
	cg := fmt.Sprintf("pdk-nspawn-%d", os.Getpid())
	var cgs []string
	for _, h := range []string{"systemd", "unified"} {
		if _, err := os.Stat("/sys/fs/cgroup/" + h + "/cgroup.procs"); err == nil {
			cgs = append(cgs, "/sys/fs/cgroup/"+h+"/"+cg)
		}
	}
	args := []string{"-D", root, "--boot", "--register=no", "--keep-unit", "--console=pipe",
		"--private-network", "--machine=pdk-nspawn"}
	for src, dst := range binds {
		args = append(args, "--bind-ro="+src+":"+dst)
	}
	script := `set -e
for cg in $PDK_CGROUPS; do mkdir -p "$cg"; echo $$ >"$cg/cgroup.procs"; done
exec unshare -m --propagation private sh -c 'mount -t tmpfs tmpfs /run/systemd && exec systemd-nspawn "$@"' nspawn "$@"`
	cmd := exec.Command("sh", append([]string{"-c", script, "pdk"}, args...)...)
	cmd.Env = append(os.Environ(), "PDK_CGROUPS="+strings.Join(cgs, " "))
	var console bytes.Buffer
	cmd.Stdout, cmd.Stderr = &console, &console
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &container{t: t, nspawn: cmd, root: root, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(c.exited) }()
	t.Cleanup(func() {
		if c.init > 0 {
			syscall.Kill(c.init, syscall.SIGKILL)
		}
		select {
		case <-c.exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			select {
			case <-c.exited:
			case <-time.After(10 * time.Second):
				t.Errorf("systemd-nspawn (pid %d) did not exit", cmd.Process.Pid)
			}
		}
		for _, d := range cgs {
			removeCgroup(t, d)
		}
		if t.Failed() {
			t.Logf("container console:\n%s", tail(console.String(), 60))
		}
	})

	// The container's init: the child of nspawn (unshare and sh exec in
	// place, so cmd's pid is nspawn's) whose comm is systemd.
	deadline := time.Now().Add(30 * time.Second)
	for c.init == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the container did not boot in 30s:\n%s", tail(console.String(), 40))
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		for _, f := range strings.Fields(string(b)) {
			if comm, _ := os.ReadFile("/proc/" + f + "/comm"); strings.TrimSpace(string(comm)) == "systemd" {
				c.init, _ = strconv.Atoi(f)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	// "degraded" is fine (units of the minimal image that fail in a
	// container); what matters is that boot finished. Until systemd listens
	// on its private socket, systemctl cannot connect at all.
	for {
		out, err := c.try(2*time.Minute, "systemctl is-system-running --wait")
		if err == nil || !strings.Contains(out, "Failed to connect to bus") {
			t.Logf("booted (init pid %d): %s", c.init, strings.TrimSpace(out))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("systemd in the container does not answer: %s\n%s", out, tail(console.String(), 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
	// /dev/net/tun as on a Debian host (0666; nspawn copies the host's
	// node, whose mode may be tighter here).
	c.sh("rm -f /dev/net/tun && mknod -m 0666 /dev/net/tun c 10 200")
	return c
}

// removeCgroup removes the cgroup dir and every cgroup below it, deepest
// first (they are empty once the container is gone).
func removeCgroup(t *testing.T, dir string) {
	var dirs []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, syscall.ENOENT) {
			t.Errorf("removing cgroup %s: %v", dirs[i], err)
		}
	}
}

func tail(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// try runs script with sh inside the container (its namespaces, as root)
// and returns its combined output.
func (c *container) try(timeout time.Duration, script string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(c.init), "-m", "-u", "-i", "-n", "-p", "--",
		"/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0",
		"sh", "-c", script)
	b, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("no answer in %v: %w", timeout, ctx.Err())
	}
	return string(b), err
}

// sh is try that fails the test on an error.
func (c *container) sh(script string) string {
	c.t.Helper()
	out, err := c.try(5*time.Minute, script)
	if err != nil {
		c.t.Fatalf("in the container: %s: %v\n%s", script, err, out)
	}
	return out
}

// show returns the unit's properties (systemctl show -p).
func (c *container) show(unit string, props ...string) map[string]string {
	c.t.Helper()
	m := map[string]string{}
	for _, l := range strings.Split(c.sh("systemctl show "+unit+" -p "+strings.Join(props, ",")), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

// vmmCgroupRE matches a VMM's own cgroup in /proc/PID/cgroup.
var vmmCgroupRE = regexp.MustCompile(`/paddock-[0-9a-f]{24}(/|\n|$)`)

// nsPID maps a host pid to the container's PID namespace (NSpid).
func (c *container) nsPID(pid int) int {
	c.t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		c.t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "NSpid:"); ok {
			f := strings.Fields(v)
			n, _ := strconv.Atoi(f[len(f)-1])
			return n
		}
	}
	c.t.Fatalf("no NSpid in /proc/%d/status", pid)
	return 0
}

// qemuPIDs returns the host pids of the QEMU processes in the container.
func (c *container) qemuPIDs() []int {
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", c.init))
	if err != nil {
		c.t.Fatal(err)
	}
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, _ := os.ReadFile("/proc/" + e.Name() + "/comm")
		if n, _ := os.Readlink("/proc/" + e.Name() + "/ns/pid"); n == ns && strings.HasPrefix(string(comm), "qemu-system") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// step runs f and logs how long it took.
func step(t *testing.T, name string, f func()) {
	t.Helper()
	start := time.Now()
	f()
	t.Logf("%-44s %v", name+":", time.Since(start).Round(time.Millisecond))
}

// TestInstalledService installs the .deb into a Debian 12 container booted
// under real systemd (systemd-nspawn --boot) and drives the installed
// service as a host would: socket activation by an unprivileged user, a VM,
// the journal, restart/kill/stop with the VM running, reload, the unit's
// exposure, remove and purge.
func TestInstalledService(t *testing.T) {
	testenv.RequireRoot(t, "debootstrap and systemd-nspawn")
	testenv.BootsVM(t)
	for tool, pkg := range map[string]string{"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container", "nsenter": "util-linux", "unshare": "util-linux"} {
		testenv.RequireTool(t, tool, pkg)
	}
	vmlinuz, modules := testenv.RequireKernel(t)
	kdir := filepath.Dir(filepath.Dir(vmlinuz)) // the unpacked linux-image package
	rel := func(p string) string {
		r, err := filepath.Rel(kdir, p)
		if err != nil || strings.HasPrefix(r, "..") {
			t.Fatalf("%s is not under %s", p, kdir)
		}
		return "/ci/kernel/" + r
	}
	kvmlinuz, kmodules := rel(vmlinuz), rel(modules)

	var deb, rootfs string
	step(t, "make deb", func() { deb = buildDeb(t) })
	step(t, "rootfs (debootstrap, cached)", func() { rootfs = rootfsTar(t) })

	// A one-file rootfs tar: the agent is the guest's init, nothing else is
	// needed for a VM to boot and run.
	data := t.TempDir()
	os.Chmod(data, 0o755)
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	err := errors.Join(tw.WriteHeader(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}),
		tw.WriteHeader(&tar.Header{Name: "./hello", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3}))
	if _, werr := tw.Write([]byte("hi\n")); werr != nil || err != nil {
		t.Fatal(err, werr)
	}
	// /bin/cat, a static one of the test's own, for paddock exec.
	catSrc := filepath.Join(t.TempDir(), "cat.go")
	if err := os.WriteFile(catSrc, []byte("package main\n\nimport (\n\t\"io\"\n\t\"os\"\n)\n\nfunc main() {\n\tf, err := os.Open(os.Args[1])\n\tif err != nil {\n\t\tos.Exit(1)\n\t}\n\tio.Copy(os.Stdout, f)\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	catBin := filepath.Join(filepath.Dir(catSrc), "cat")
	build := exec.Command("go", "build", "-o", catBin, catSrc)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building a static cat: %v\n%s", err, b)
	}
	cat, err := os.ReadFile(catBin)
	if err != nil {
		t.Fatal(err)
	}
	err = errors.Join(tw.WriteHeader(&tar.Header{Name: "./bin/", Typeflag: tar.TypeDir, Mode: 0o755}),
		tw.WriteHeader(&tar.Header{Name: "./bin/cat", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(cat))}))
	if _, werr := tw.Write(cat); werr != nil || err != nil {
		t.Fatal(err, werr)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "root.tar"), tb.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(deb, filepath.Join(data, "paddock.deb")); err != nil {
		b, _ := os.ReadFile(deb)
		if err := os.WriteFile(filepath.Join(data, "paddock.deb"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	var c *container
	step(t, "boot the container", func() {
		c = bootContainer(t, rootfs, map[string]string{data: "/ci/data", kdir: "/ci/kernel"})
	})
	alice := func(args string) string {
		t.Helper()
		return c.sh("setpriv --reuid=alice --regid=alice --init-groups env HOME=/home/alice paddock " + args)
	}

	step(t, "dpkg -i", func() {
		t.Logf("%s", c.sh("dpkg -i /ci/data/paddock.deb 2>&1 | tail -n 3"))
		if got := c.sh("systemctl is-enabled paddock.socket; systemctl is-active paddock.socket"); got != "enabled\nactive\n" {
			t.Fatalf("paddock.socket after dpkg -i: %q, want enabled and active", got)
		}
		if got, _ := c.try(time.Minute, "systemctl is-active paddock.service"); got != "inactive\n" {
			t.Errorf("paddock.service after dpkg -i: %q, want inactive until the first connection", got)
		}
		t.Logf("%s", c.sh("ls -ld /run/paddock /run/paddock/io.paddock.v1 /var/lib/paddock && getent passwd paddock && getent group paddock paddock-admin"))
		c.sh("test -S /run/paddock/io.paddock.v1")
		if got := c.sh("systemctl is-enabled paddock-guests.service; systemctl is-active paddock-guests.service"); got != "enabled\nactive\n" {
			t.Errorf("paddock-guests.service after dpkg -i: %q, want enabled and active", got)
		}
		// The VMM launcher runs (Type=notify: ready once it listens), its
		// socket the paddock user's alone.
		g := c.show("paddock-guests.service", "MainPID", "Type", "StatusText")
		t.Logf("paddock-guests.service: %v", g)
		if g["Type"] != "notify" || g["MainPID"] == "0" || g["MainPID"] == "" {
			t.Errorf("paddock-guests.service after dpkg -i: %v, want Type=notify with a main pid (the launcher)", g)
		}
		if got := c.sh("stat -c '%F %a %U' /run/paddock/launcher.sock"); got != "socket 600 paddock\n" {
			t.Errorf("/run/paddock/launcher.sock: %q, want a socket, 600, paddock's", got)
		}
	})

	var mainPID string
	step(t, "socket activation by a paddock member", func() {
		c.sh("useradd --create-home --groups paddock alice")
		alice("ls")
		p := c.show("paddock.service", "ActiveState", "SubState", "StatusText", "WatchdogUSec", "MainPID", "Type")
		t.Logf("paddock.service: %v", p)
		if p["ActiveState"] != "active" || p["Type"] != "notify" || p["StatusText"] == "" || p["WatchdogUSec"] == "0" || p["WatchdogUSec"] == "" {
			t.Fatalf("after paddock ls: %v, want active (Type=notify), a STATUS and the watchdog armed", p)
		}
		st := c.sh("systemctl status --no-pager --lines=0 paddock.service || true")
		if !strings.Contains(st, "Status: \""+p["StatusText"]+"\"") {
			t.Errorf("systemctl status shows no Status line:\n%s", st)
		}
		mainPID = p["MainPID"]
	})

	var qemu int
	var launcher string // paddock-guests.service's main pid
	step(t, "a VM boots (TCG)", func() {
		c.sh("paddock kernel import " + kvmlinuz + " --modules " + kmodules)
		alice("image import /ci/data/root.tar --name plain:1")
		alice("run --image plain:1 --name v1")
		if s := alice("inspect v1 --json"); !strings.Contains(s, `"status": "running"`) {
			t.Fatalf("v1 after run:\n%s", s)
		}
		pids := c.qemuPIDs()
		if len(pids) != 1 {
			t.Fatalf("QEMU processes in the container: %v, want one", pids)
		}
		qemu = pids[0]
		// Launched by the VMM launcher, into a cgroup of its own below
		// paddock-guests.service's: nothing done to paddock.service
		// reaches it.
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", qemu))
		if !strings.Contains(string(b), "/paddock-guests.service/paddock-") {
			t.Errorf("v1's QEMU is not in a cgroup of its own below paddock-guests.service (paddock-<id>):\n%s", b)
		}
		launcher = c.show("paddock-guests.service", "MainPID")["MainPID"]
		if st := c.sh(fmt.Sprintf("grep PPid /proc/%d/status", c.nsPID(qemu))); strings.Fields(st)[1] != launcher {
			t.Errorf("v1's QEMU: %s, want the launcher's pid %s as its parent", strings.TrimSpace(st), launcher)
		}
		info := alice("info")
		t.Logf("paddock info:\n%s", info)
		if !strings.Contains(info, "paddock-guests.service (pid "+launcher+")") {
			t.Errorf("paddock info does not name the launcher paddock-guests.service (pid %s):\n%s", launcher, info)
		}
	})

	step(t, "journalctl -u paddock VM_NAME=v1", func() {
		out := c.sh("journalctl --no-pager -o verbose -u paddock VM_NAME=v1")
		for _, f := range []string{"VM_ID=", "OP=", "VM_NAME=v1"} {
			if !strings.Contains(out, "    "+f) {
				t.Errorf("the journal's entries for v1 lack %s:\n%s", f, tail(out, 40))
			}
		}
	})

	// The system bus inside: paddockd owns org.paddock1 under the shipped
	// policy; alice (group paddock) sees her VM, a user outside the group
	// may send (the policy lets everyone) and is refused by paddockd.
	step(t, "D-Bus on the container's system bus", func() {
		tree := c.sh("setpriv --reuid=alice --regid=alice --init-groups busctl --system tree --list org.paddock1")
		t.Logf("busctl --system tree org.paddock1 (alice):\n%s", tree)
		if !strings.Contains(tree, "/org/paddock1/vm/") {
			t.Errorf("alice's tree has no VM object:\n%s", tree)
		}
		vms := c.sh("setpriv --reuid=alice --regid=alice --init-groups busctl --system call org.paddock1 /org/paddock1 org.paddock1.Manager ListVMs")
		path := strings.Trim(strings.Fields(vms + " x x x")[2], `"`)
		name := c.sh("setpriv --reuid=alice --regid=alice --init-groups busctl --system get-property org.paddock1 " + path + " org.paddock1.VM Name State")
		t.Logf("ListVMs: %s%s: %s", vms, path, name)
		if !strings.Contains(name, `"v1"`) || !strings.Contains(name, `"running"`) {
			t.Errorf("v1 over D-Bus: %q", name)
		}
		c.sh("id carol >/dev/null 2>&1 || useradd --create-home carol")
		out, err := c.try(time.Minute, "setpriv --reuid=carol --regid=carol --init-groups busctl --system call org.paddock1 /org/paddock1 org.paddock1.Manager ListVMs 2>&1")
		t.Logf("carol (not in group paddock): %s", strings.TrimSpace(out))
		if err == nil || !strings.Contains(out, "may not use paddock") {
			t.Errorf("a user outside group paddock over D-Bus: %v %q", err, out)
		}
	})

	// The VM survives each of these, with the same QEMU, and the next
	// paddockd adopts it (running, as inspect shows).
	survives := func(what string) {
		t.Helper()
		if err := syscall.Kill(qemu, 0); err != nil {
			t.Fatalf("after %s the VM's QEMU (pid %d) is gone: %v", what, qemu, err)
		}
		if pids := c.qemuPIDs(); len(pids) != 1 || pids[0] != qemu {
			t.Fatalf("after %s QEMU processes %v, want only %d", what, pids, qemu)
		}
		if s := alice("inspect v1 --json"); !strings.Contains(s, `"status": "running"`) {
			t.Fatalf("after %s v1 is not running:\n%s", what, s)
		}
		if out := c.sh("journalctl --no-pager -o cat -u paddock VM_NAME=v1 _PID=" + mainPID); !strings.Contains(out, "re-adopted running VM") {
			t.Fatalf("after %s paddockd (pid %s) logged no re-adoption of v1:\n%s", what, mainPID, out)
		}
		if out := alice("exec v1 -- cat /hello"); out != "hi\n" {
			t.Fatalf("after %s paddock exec v1: %q", what, out)
		}
	}
	// newLauncher waits for paddock-guests.service to be back, active
	// with a new launcher, after its main process was killed.
	newLauncher := func(what string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			p := c.show("paddock-guests.service", "ActiveState", "MainPID")
			if p["ActiveState"] == "active" && p["MainPID"] != launcher && p["MainPID"] != "0" {
				launcher = p["MainPID"]
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("paddock-guests.service not back 30s after %s: %v", what, c.show("paddock-guests.service", "ActiveState", "SubState", "MainPID", "NRestarts"))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	newMain := func(what string) {
		t.Helper()
		p := c.show("paddock.service", "ActiveState", "MainPID")
		if p["ActiveState"] != "active" || p["MainPID"] == mainPID || p["MainPID"] == "0" {
			t.Fatalf("after %s: %v, want active with a new main pid (was %s)", what, p, mainPID)
		}
		mainPID = p["MainPID"]
	}
	step(t, "systemctl restart paddock", func() {
		c.sh("systemctl restart paddock")
		newMain("restart")
		survives("restart")
	})
	// systemctl kill signals every process of paddock.service, whatever
	// KillMode= says: the VMMs are not among them (the launcher's).
	step(t, "systemctl kill -s KILL paddock", func() {
		c.sh("systemctl kill -s KILL paddock")
		// Restart=on-failure brings it back after RestartSec; a client
		// queued on the socket would too.
		deadline := time.Now().Add(30 * time.Second)
		for c.show("paddock.service", "MainPID")["MainPID"] == mainPID || c.show("paddock.service", "ActiveState")["ActiveState"] != "active" {
			if time.Now().After(deadline) {
				t.Fatalf("paddock.service not back 30s after SIGKILL: %v", c.show("paddock.service", "ActiveState", "SubState", "MainPID", "NRestarts"))
			}
			time.Sleep(200 * time.Millisecond)
		}
		newMain("kill -s KILL")
		survives("kill -s KILL")
	})
	// A crash of the launcher: Restart=always brings it back; its ExecStop
	// (run after the crash, $EXIT_CODE set) applies no host shutdown
	// policy, and KillMode=process leaves the VMMs. (A plain systemctl
	// kill of paddock-guests would signal the VMMs: they are its.)
	step(t, "systemctl kill --kill-whom=main -s KILL paddock-guests", func() {
		c.sh("systemctl kill --kill-whom=main -s KILL paddock-guests")
		newLauncher("kill -s KILL")
		if s := alice("inspect v1 --json"); !strings.Contains(s, `"status": "running"`) {
			t.Fatalf("after the launcher's crash v1 is not running:\n%s", s)
		}
		if pids := c.qemuPIDs(); len(pids) != 1 || pids[0] != qemu {
			t.Fatalf("after the launcher's crash QEMU processes %v, want only %d", pids, qemu)
		}
		if out := alice("exec v1 -- cat /hello"); out != "hi\n" {
			t.Fatalf("after the launcher's crash paddock exec v1: %q", out)
		}
		// The new launcher starts VMs for the same paddockd.
		alice("run --image plain:1 --name v4")
		for _, pid := range c.qemuPIDs() {
			if pid == qemu {
				continue
			}
			if st := c.sh(fmt.Sprintf("grep PPid /proc/%d/status", c.nsPID(pid))); strings.Fields(st)[1] != launcher {
				t.Errorf("v4's QEMU: %s, want the new launcher's pid %s as its parent", strings.TrimSpace(st), launcher)
			}
		}
		alice("rm --force v4")
	})
	step(t, "systemctl stop paddock", func() {
		c.sh("systemctl stop paddock")
		if got, _ := c.try(time.Minute, "systemctl is-active paddock.service"); got != "inactive\n" {
			t.Fatalf("after stop: %q", got)
		}
		if err := syscall.Kill(qemu, 0); err != nil {
			t.Fatalf("stop took the VM's QEMU (pid %d) down: %v", qemu, err)
		}
		alice("ls") // activates it again
		newMain("stop and activation")
		survives("stop, then socket activation")
	})

	step(t, "systemctl reload paddock (a live key)", func() {
		c.sh(`sed -i 's/^level = "info"/level = "debug"/' /etc/paddock/paddock.toml && grep -q '^level = "debug"' /etc/paddock/paddock.toml`)
		c.sh("systemctl reload paddock")
		if p := c.show("paddock.service", "ActiveState", "MainPID"); p["ActiveState"] != "active" || p["MainPID"] != mainPID {
			t.Fatalf("after reload: %v, want active, main pid still %s", p, mainPID)
		}
		out := c.sh("journalctl --no-pager -o verbose -u paddock _PID=" + mainPID)
		if !strings.Contains(out, "reload: applied") || !strings.Contains(out, "log.level") {
			t.Fatalf("no \"reload: applied\" naming log.level in the journal:\n%s", tail(out, 20))
		}
	})

	// What the unit leaves out, or lets through, and why (its comments):
	// with each of these drop-ins a VM no longer starts. A VM that does
	// start means the unit's reason is gone: tighten the unit.
	step(t, "settings the unit leaves out break a VM start", func() {
		alice("create v2 --image plain:1")
		// Both units: the launcher starts VMMs, and paddockd does when the
		// launcher does not answer. The launcher takes a drop-in when
		// restarted the way that keeps the VMs (its main process killed).
		dropins := []string{"/etc/systemd/system/paddock.service.d/check.conf", "/etc/systemd/system/paddock-guests.service.d/check.conf"}
		for _, setting := range []string{"PrivateDevices=yes", "ProtectControlGroups=yes", "MemoryDenyWriteExecute=yes", "ProcSubset=pid", "SystemCallFilter=~capset"} {
			for _, dropin := range dropins {
				c.sh("mkdir -p " + filepath.Dir(dropin) + " && printf '[Service]\\n%s\\n' '" + setting + "' >" + dropin)
			}
			c.sh("systemctl daemon-reload && systemctl kill --kill-whom=main -s KILL paddock-guests")
			newLauncher(setting)
			// The daemon itself may not start under it: that breaks it too.
			// reset-failed: the restarts here come faster than the unit's
			// start limit allows.
			c.try(time.Minute, "systemctl reset-failed paddock.service paddock.socket; systemctl start paddock.socket; systemctl restart paddock")
			if _, err := c.try(3*time.Minute, "setpriv --reuid=alice --regid=alice --init-groups env HOME=/home/alice paddock start v2"); err != nil {
				// The VM's reason, or why paddockd did not start at all.
				out, _ := c.try(time.Minute, "setpriv --reuid=alice --regid=alice --init-groups env HOME=/home/alice paddock inspect v2 --json | grep -E '^  \"reason\"' || journalctl --no-pager -o cat -u paddock -n 4")
				t.Logf("with %s the start fails: %s", setting, strings.Join(strings.Fields(out), " "))
				continue
			}
			// Started: it must at least lack its own cgroup.
			var own bool
			for _, pid := range c.qemuPIDs() {
				if pid != qemu {
					b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
					// paddock-<vm id>, not paddock-guests.service
					own = vmmCgroupRE.Match(b)
					t.Logf("with %s v2 starts; its VMM's cgroups:\n%s", setting, b)
				}
			}
			if own {
				t.Errorf("with %s a VM starts in its own cgroup: the unit's reason to leave it out no longer holds", setting)
			}
			alice("stop v2")
		}
		c.sh("rm -rf " + filepath.Dir(dropins[0]) + " " + filepath.Dir(dropins[1]) + " && systemctl daemon-reload && systemctl kill --kill-whom=main -s KILL paddock-guests")
		newLauncher("the variants")
		c.sh("systemctl reset-failed paddock.service paddock.socket; systemctl restart paddock.socket paddock.service")
		newMain("the variants")
		survives("the variants")
		alice("rm v2")
	})

	step(t, "systemd-analyze security", func() {
		for _, u := range []string{"paddock.service", "paddock-guests.service", "libvirtd.service"} {
			out, _ := c.try(2*time.Minute, "systemd-analyze security --no-pager "+u+" | tail -n 1")
			var level float64
			if _, err := fmt.Sscanf(strings.TrimPrefix(strings.TrimSpace(out), "→ "), "Overall exposure level for "+u+": %g", &level); err != nil {
				t.Fatalf("systemd-analyze security %s: %q", u, out)
			}
			t.Logf("systemd-analyze security %s: %.1f", u, level)
			if u != "libvirtd.service" && level > 2.5 {
				t.Errorf("%s exposure %.1f > 2.5", u, level)
			}
		}
	})

	step(t, "apt-get remove", func() {
		c.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q paddock")
		if got, _ := c.try(time.Minute, "systemctl is-active paddock.service paddock.socket"); got != "inactive\ninactive\n" {
			t.Errorf("after remove: %q, want both inactive", got)
		}
		if _, err := c.try(time.Minute, "test -e /run/paddock/io.paddock.v1"); err == nil {
			t.Error("the socket node outlives remove")
		}
		if err := syscall.Kill(qemu, 0); err != nil {
			t.Errorf("remove took the VM's QEMU down: %v", err)
		}
		c.sh("test -d /var/lib/paddock && test -n \"$(ls -A /var/lib/paddock)\" && getent passwd paddock")
	})

	step(t, "dpkg --purge (VMs gone)", func() {
		// userdel refuses while paddock's VMs run: purge after they are gone.
		syscall.Kill(qemu, syscall.SIGKILL)
		deadline := time.Now().Add(10 * time.Second)
		for len(c.qemuPIDs()) > 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		c.sh("dpkg --purge paddock")
		if out, err := c.try(time.Minute, "ls -d /var/lib/paddock /var/cache/paddock /etc/paddock 2>/dev/null; getent passwd paddock; getent group paddock paddock-admin"); out != "" {
			t.Errorf("left after purge (%v):\n%s", err, out)
		}
	})

	// The host shuts down with a VM running: paddock-guests.service stops
	// first and paddockd powers the VM off cleanly (vm.on_host_shutdown =
	// "stop", the default), before systemd kills the service's cgroup.
	step(t, "poweroff with a VM running (on_host_shutdown = stop)", func() {
		c.sh("dpkg -i /ci/data/paddock.deb >/dev/null 2>&1")
		c.sh("usermod -aG paddock alice") // the purge took the group
		c.sh("paddock kernel import " + kvmlinuz + " --modules " + kmodules)
		alice("image import /ci/data/root.tar --name plain:1")
		alice("run --image plain:1 --name v3")
		if _, err := c.try(time.Minute, "systemctl poweroff"); err != nil {
			t.Logf("systemctl poweroff: %v (the container may be gone before it answers)", err)
		}
		select {
		case <-c.exited:
			c.init = 0 // gone: its pid is no longer the container's to kill
		case <-time.After(3 * time.Minute):
			t.Fatal("the container did not power off within 3 minutes")
		}
		recs, _ := filepath.Glob(filepath.Join(c.root, "var/lib/paddock/vms/*/vm.json"))
		found := false
		for _, r := range recs {
			b, err := os.ReadFile(r)
			if err != nil || !bytes.Contains(b, []byte(`"name": "v3"`)) && !bytes.Contains(b, []byte(`"name":"v3"`)) {
				continue
			}
			found = true
			var rec struct{ Status, Reason string }
			if err := json.Unmarshal(b, &rec); err != nil || rec.Status != "stopped" || !strings.Contains(rec.Reason, "host shutdown") {
				t.Errorf("v3 after poweroff: %v %+v, want stopped by the host shutdown", err, rec)
			}
			t.Logf("v3 after poweroff: %s (%s)", rec.Status, rec.Reason)
		}
		if !found {
			t.Errorf("no record of v3 in the powered-off container (%d records)", len(recs))
		}
	})
}
