package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/bootkit"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// demoImage is a busybox userland with a motd and a tiny service.
func demoImage(t *testing.T) v1.Image {
	return imagetest.Image(t, &v1.Config{Cmd: []string{"/bin/sh", "-c", "echo demo-main-started; sleep 100000"}, Env: []string{"PATH=/bin", "DEMO=1"}},
		imagetest.BusyboxLayer(t),
		imagetest.LayerTar(t, imagetest.Entry{Name: "etc/", Type: 53}, imagetest.Entry{Name: "etc/motd", Body: "welcome to the paddock demo\n"}))
}

// vmEnv is a daemon in its own network namespace with a boot kit and the
// demo image pulled from a registry in that namespace.
func vmEnv(t *testing.T, extra string, mod func(*exec.Cmd)) (*env, *proc, string) {
	e, p, ns, _ := vmEnvImage(t, extra, mod)
	return e, p, ns
}

// vmEnvImage is vmEnv that also returns the pulled image's reference.
func vmEnvImage(t *testing.T, extra string, mod func(*exec.Cmd)) (*env, *proc, string, string) {
	t.Helper()
	e, p, ns, ref := bootEnv(t, extra, mod)
	e.bootKit(t)
	e.cli(t, nil, "image", "pull", ref).ok(t, "pull demo image")
	return e, p, ns, ref
}

// bootEnv is a daemon that runs VMs, in its own network namespace, with a
// registry there holding the demo image (returned): no kit, nothing pulled.
func bootEnv(t *testing.T, extra string, mod func(*exec.Cmd)) (*env, *proc, string, string) {
	t.Helper()
	ns := newNetns(t)
	if !strings.Contains(extra, "[vm]") {
		extra += "\n[vm]\nrun = \"on\"\nstart_timeout = \"90s\"\nstop_timeout = \"10s\"\n"
	}
	e := newEnv(t, extra)
	reg := registryIn(t, ns)
	pushTo(t, reg+"/demo:1", demoImage(t))
	p := e.daemon(t, func(c *exec.Cmd) {
		if mod != nil {
			mod(c)
		}
		inNetns(ns)(c)
	})
	t.Cleanup(func() {
		// Whatever a failing test left running is killed by PID.
		e.killVMMs(t)
	})
	return e, p, ns, reg + "/demo:1"
}

// pushTo pushes to a registry made by registryIn through its twin listener
// on the test's own loopback (storage is shared; the repository is what counts).
func pushTo(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	host, repo, _ := strings.Cut(ref, "/")
	side, ok := registrySides.Load(host)
	if !ok {
		t.Fatalf("no registry for %s", ref)
	}
	imagetest.Push(t, side.(string)+"/"+repo, img)
}

func execOut(t *testing.T, e *env, vm string, stdin string, cmd ...string) (string, int) {
	t.Helper()
	return execWith(t, e, []string{vm}, stdin, cmd...)
}

// execOutAs is execOut as a user of the guest (exec --user).
func execOutAs(t *testing.T, e *env, vm, user string, cmd ...string) (string, int) {
	t.Helper()
	return execWith(t, e, []string{vm, "--user", user}, "", cmd...)
}

func execWith(t *testing.T, e *env, args []string, stdin string, cmd ...string) (string, int) {
	t.Helper()
	c := exec.Command(bin("paddock"), append(append(append([]string{"--socket", e.socket, "exec"}, args...), "--"), cmd...)...)
	c.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if errb.Len() > 0 && code != 0 {
		t.Logf("exec %v stderr: %s", cmd, errb.String())
	}
	return out.String(), code
}

// Acceptance (issue 5): run from the registry image, exec, stop, start,
// rm; afterwards no tap, loop device, VMM process or file of the VM remains.
func TestBootExecStopStartRm(t *testing.T) {
	e, _, ns := vmEnv(t, "", nil)
	regImage := ""
	var imgs []api.Image
	json.Unmarshal([]byte(e.cli(t, nil, "image", "ls", "--json").ok(t, "image ls")), &imgs)
	for _, im := range imgs {
		for _, n := range im.Names {
			if strings.HasSuffix(n, "/demo:1") {
				regImage = n
			}
		}
	}
	e.cli(t, nil, "run", "--image", regImage, "--name", "web", "--env", "DEMO=2", "--env", "EXTRA=yes", "--disk", "1GiB").ok(t, "run")
	// Where the start went: paddock's steps and the guest's phases.
	if lb := inspectVM(t, e, "web").LastBoot; lb == nil || len(lb.Steps) < 5 || lb.Steps[len(lb.Steps)-1].Name != "agent" || len(lb.Guest) == 0 || lb.Guest[0].Name != "kernel" {
		t.Fatalf("last boot report: %+v", lb)
	}
	if out := e.cli(t, nil, "inspect", "web").ok(t, "inspect"); !strings.Contains(out, "Last start:") || !strings.Contains(out, "vmm ") || !strings.Contains(out, "Guest boot:") {
		t.Fatalf("inspect shows no start report:\n%s", out)
	}
	if out, code := execOut(t, e, "web", "", "cat", "/etc/motd"); code != 0 || out != "welcome to the paddock demo\n" {
		t.Fatalf("exec cat /etc/motd: %q exit %d", out, code)
	}
	if out, code := execOut(t, e, "web", "from stdin\n", "cat"); code != 0 || out != "from stdin\n" {
		t.Fatalf("exec with stdin: %q exit %d", out, code)
	}
	if _, code := execOut(t, e, "web", "", "sh", "-c", "exit 7"); code != 7 {
		t.Fatalf("exit code: %d", code)
	}
	if out, _ := execOut(t, e, "web", "", "sh", "-c", "echo $DEMO $EXTRA $PATH"); out != "2 yes /bin\n" {
		t.Fatalf("image env with the VM's own on top: %q", out)
	}
	// The root file system fills the 1 GiB disk, whatever the image's size.
	if out, _ := execOut(t, e, "web", "", "sh", "-c", "df -k / | tail -1"); len(strings.Fields(out)) < 2 || atoi(strings.Fields(out)[1]) < 900000 {
		t.Fatalf("root not grown to the disk size: %q", out)
	}
	// ...and is mounted so that no ext4lazyinit thread zeroes the grown
	// groups' inode tables (zeros already) or reads every bitmap.
	if out, _ := execOut(t, e, "web", "", "sh", "-c", "cat /proc/fs/ext4/vda/options; cat /proc/[0-9]*/comm"); !strings.Contains(out, "noinit_itable\n") ||
		!strings.Contains(out, "no_prefetch_block_bitmaps\n") || strings.Contains(out, "ext4lazyinit") {
		t.Fatalf("root's mount options and threads:\n%s", out)
	}
	if l := e.cli(t, nil, "logs", "web").ok(t, "logs"); !strings.Contains(l, "demo-main-started") {
		t.Fatalf("console log lacks the entrypoint's output:\n%s", l)
	}
	during := e.leaks(t, ns)
	if during.taps != 1 || during.vmms != 1 {
		t.Fatalf("while running: %+v", during)
	}
	// What the guest writes to its disk survives a stop and a start.
	if _, code := execOut(t, e, "web", "", "sh", "-c", "echo kept > /root/note; sync"); code != 0 {
		t.Fatalf("write in guest: %d", code)
	}
	e.cli(t, nil, "stop", "web").ok(t, "stop")
	if l := e.leaks(t, ns); l.host() != 0 {
		t.Fatalf("after stop: %+v", l)
	}
	assertRecoveryCleared(t, e, "web")
	e.cli(t, nil, "start", "web").ok(t, "start")
	if out, code := execOut(t, e, "web", "", "cat", "/etc/motd", "/root/note"); code != 0 || out != "welcome to the paddock demo\nkept\n" {
		t.Fatalf("after restart: %q %d", out, code)
	}
	e.cli(t, nil, "rm", "--force", "web").ok(t, "rm --force")
	if l := e.leaks(t, ns); l.host()+l.dirs != 0 {
		t.Fatalf("after rm: %+v %v", l, l.detail)
	}
}

// Acceptance (issue 5): VMs survive kill -9 of paddockd and are re-adopted;
// with VMMs gone too, everything is torn down from the handles, from
// vm.json's Runtime, or found by tag.
func TestRestartSafety(t *testing.T) {
	e, p, ns, image := vmEnvImage(t, "", nil)
	names := []string{"a", "b", "c"}
	for _, n := range names {
		e.cli(t, nil, "run", "--image", image, "--name", n).ok(t, "run "+n)
	}
	restart := func(p *proc) *proc {
		t.Helper()
		p.signal(t, syscall.SIGKILL)
		p.wait(t, 10*time.Second)
		return e.daemon(t, inNetns(ns))
	}
	expectStatus := func(want string) {
		t.Helper()
		var vms []api.VM
		if err := json.Unmarshal([]byte(e.cli(t, nil, "ls", "--json").ok(t, "ls")), &vms); err != nil {
			t.Fatal(err)
		}
		for _, vm := range vms {
			if vm.Status != want {
				t.Fatalf("VM %s is %s (%s), want %s", vm.Name, vm.Status, vm.Reason, want)
			}
		}
	}
	noLeaks := func(stage string) {
		t.Helper()
		if l := e.leaks(t, ns); l.host() != 0 {
			t.Fatalf("%s: leaked %+v %v", stage, l, l.detail)
		}
	}

	// 1. kill -9 paddockd: the VMs keep running and are re-adopted.
	p = restart(p)
	expectStatus("running")
	for _, n := range names {
		if out, code := execOut(t, e, n, "", "cat", "/etc/motd"); code != 0 || !strings.Contains(out, "welcome") {
			t.Fatalf("exec in re-adopted %s: %q %d", n, out, code)
		}
	}
	e.cli(t, nil, append([]string{"stop"}, names...)...).ok(t, "stop through the new daemon")
	noLeaks("stop after re-adopt")

	// 2-4. kill -9 paddockd and the VMMs: torn down from handles.json, then
	// from vm.json's Runtime with handles.json corrupt, then deleted.
	for _, damage := range []string{"none", "corrupt handles.json", "delete handles.json"} {
		e.cli(t, nil, append([]string{"start"}, names...)...).ok(t, "start ("+damage+")")
		p.signal(t, syscall.SIGKILL)
		p.wait(t, 10*time.Second)
		if n := e.killVMMs(t); n != len(names) {
			t.Fatalf("%s: killed %d VMMs, want %d", damage, n, len(names))
		}
		ents, _ := os.ReadDir(filepath.Join(e.state, "vms"))
		for _, en := range ents {
			hp := filepath.Join(e.state, "vms", en.Name(), "handles.json")
			switch damage {
			case "corrupt handles.json":
				os.WriteFile(hp, []byte("{\"schema\": 1, \"items\": [tru"), 0o640)
			case "delete handles.json":
				os.Remove(hp)
			}
		}
		p = e.daemon(t, inNetns(ns))
		expectStatus("stopped")
		noLeaks(damage)
	}

	// 5. VM directories gone entirely while their VMs run: the orphans are
	// found by tag (tap alias, VMM command line) and removed.
	e.cli(t, nil, append([]string{"start"}, names...)...).ok(t, "start (orphans)")
	p.signal(t, syscall.SIGKILL)
	p.wait(t, 10*time.Second)
	if err := os.RemoveAll(filepath.Join(e.state, "vms")); err != nil {
		t.Fatal(err)
	}
	p = e.daemon(t, inNetns(ns))
	if out := e.cli(t, nil, "ls", "-q").ok(t, "ls"); strings.TrimSpace(out) != "" {
		t.Fatalf("VMs without records listed: %q", out)
	}
	noLeaks("orphans")
	p.waitLog(t, "orphan VMM", "orphan tap")
}

// inspectVM reads one VM through the CLI.
func inspectVM(t *testing.T, e *env, name string) api.VM {
	t.Helper()
	var vm api.VM
	if err := json.Unmarshal([]byte(e.cli(t, nil, "inspect", name, "--json").ok(t, "inspect "+name)), &vm); err != nil {
		t.Fatal(err)
	}
	return vm
}

// waitStatus polls until the VM leaves status from (bounded, generous:
// this is about correctness, not speed).
func waitStatus(t *testing.T, e *env, name, from string) api.VM {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		vm := inspectVM(t, e, name)
		if vm.Status != from {
			return vm
		}
		if time.Now().After(deadline) {
			t.Fatalf("VM %s still %s", name, from)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Acceptance (issue 5, item 7): a VMM that ends without paddock (killed
// from outside, or the guest powering off) is noticed, its resources
// released, and the VM says why. A VM whose image is gone fails to start
// with an error that says so.
func TestVMMExitAndMissingImage(t *testing.T) {
	e, _, ns, image := vmEnvImage(t, "", nil)
	e.cli(t, nil, "run", "--image", image, "--name", "victim").ok(t, "run victim")
	e.cli(t, nil, "run", "--image", image, "--name", "quitter").ok(t, "run quitter")

	// kill -9 of one VMM from outside.
	procs := e.leaks(t, ns)
	if procs.vmms != 2 {
		t.Fatalf("want 2 VMMs, have %+v", procs)
	}
	victim := inspectVM(t, e, "victim")
	killTagged(t, e, victim.ID)
	vm := waitStatus(t, e, "victim", "running")
	if vm.Status != "error" || !strings.Contains(vm.Reason, "signal 9") {
		t.Fatalf("after kill -9 of its VMM: %s %q", vm.Status, vm.Reason)
	}
	assertRecoveryCleared(t, e, "victim")
	// The guest powers itself off.
	execOut(t, e, "quitter", "", "poweroff", "-f")
	vm = waitStatus(t, e, "quitter", "running")
	if vm.Status != "stopped" || !strings.Contains(vm.Reason, "powered off") {
		t.Fatalf("after guest poweroff: %s %q", vm.Status, vm.Reason)
	}
	if l := e.leaks(t, ns); l.host() != 0 {
		t.Fatalf("resources of exited VMMs not released: %+v %v", l, l.detail)
	}
	// Both start again.
	e.cli(t, nil, "start", "victim", "quitter").ok(t, "start after exits")

	// A VM never started whose image was removed.
	e.cli(t, nil, "create", "orphaned", "--image", image).ok(t, "create")
	e.cli(t, nil, "rm", "--force", "victim", "quitter").ok(t, "rm")
	e.cli(t, nil, "image", "rm", "--force", image).ok(t, "image rm --force")
	r := e.cli(t, nil, "start", "orphaned")
	if r.code != 1 || !strings.Contains(r.stderr, "image") || !strings.Contains(r.stderr, "removed") {
		t.Fatalf("start without its image: %+v", r)
	}
	if l := e.leaks(t, ns); l.host() != 0 {
		t.Fatalf("failed start left %+v", l)
	}
}

func killTagged(t *testing.T, e *env, vmID string) {
	t.Helper()
	procs, err := vmm.Find(vmID)
	if err != nil || len(procs) != 1 {
		t.Fatalf("VMM of %s: %v %v", vmID, procs, err)
	}
	if err := syscallKill(procs[0].PID); err != nil {
		t.Fatal(err)
	}
}

// Acceptance (issue 5): paddockd killed at every step of start and stop
// (failpoints: it SIGKILLs itself there) leaves, after a restart, a
// consistent VM and nothing leaked.
func TestCrashPoints(t *testing.T) {
	e, p, ns, image := vmEnvImage(t, "", nil)
	e.cli(t, nil, "create", "fp", "--image", image).ok(t, "create")
	withFailpoint := func(fp string) func(*exec.Cmd) {
		return func(c *exec.Cmd) {
			c.Env = append(os.Environ(), "PADDOCK_FAILPOINTS="+fp)
			inNetns(ns)(c)
		}
	}
	stopDaemon := func() {
		p.signal(t, syscall.SIGTERM)
		p.wait(t, 30*time.Second)
	}
	settle := func(fp string) {
		t.Helper()
		p.wait(t, 60*time.Second) // the daemon killed itself at fp
		p = e.daemon(t, inNetns(ns))
		vm := inspectVM(t, e, "fp")
		switch vm.Status {
		case "running":
			if out, code := execOut(t, e, "fp", "", "cat", "/etc/motd"); code != 0 || !strings.Contains(out, "welcome") {
				t.Fatalf("%s: running VM does not answer: %q %d", fp, out, code)
			}
			e.cli(t, nil, "stop", "fp").ok(t, fp+": stop")
		case "stopped", "created", "error":
		default:
			t.Fatalf("%s: VM left %s (%s)", fp, vm.Status, vm.Reason)
		}
		if l := e.leaks(t, ns); l.host() != 0 {
			t.Fatalf("%s: leaked %+v %v", fp, l, l.detail)
		}
	}
	// The crash points come from the resource table (actors.resourceKinds):
	// a new kind of resource is covered here without a change.
	// A root daemon's VMs are bridged: the passt acquire points are user
	// mode's, crossed by TestNetUserModeCrashPoints (an unprivileged daemon).
	startPoints, stopPoints := actors.StartFailpoints, actors.StopFailpoints
	var userPoints []string
	startPoints = slices.DeleteFunc(slices.Clone(startPoints), func(fp string) bool {
		if strings.HasPrefix(fp, "acquire-"+actors.KindPasst+"-") {
			userPoints = append(userPoints, fp)
			return true
		}
		return false
	})
	for _, fp := range startPoints {
		stopDaemon()
		p = e.daemon(t, withFailpoint(fp))
		if r := e.cli(t, nil, "start", "fp"); r.code == 0 {
			t.Fatalf("%s: start succeeded although the daemon died", fp)
		}
		settle(fp)
	}
	for _, fp := range stopPoints {
		e.cli(t, nil, "start", "fp").ok(t, fp+": start")
		stopDaemon()
		p = e.daemon(t, withFailpoint(fp))
		if r := e.cli(t, nil, "stop", "fp"); r.code == 0 {
			t.Fatalf("%s: stop succeeded although the daemon died", fp)
		}
		settle(fp)
	}
	if got := len(startPoints) + len(stopPoints) + len(userPoints); got != len(actors.FailpointNames) || got < 13 || len(userPoints) != 2 {
		t.Fatalf("the test covers %d crash points, the daemon has %d", got, len(actors.FailpointNames))
	}
}

// Acceptance (issue 5): the boot test with paddockd as an unprivileged uid
// whose only capability is an ambient CAP_NET_ADMIN, on a non-dm disk
// backend. /dev/net/tun is made world-usable in a private mount namespace,
// as Debian's udev rules make it on a normal host (here it is 0600).
func TestRootlessBoot(t *testing.T) {
	e, ns, reg, rootless := rootlessEnv(t, "", "src")
	pushTo(t, reg+"/demo:1", demoImage(t))
	p := e.daemon(t, rootless())
	e.cli(t, nil, "image", "pull", reg+"/demo:1").ok(t, "pull as the unprivileged daemon")

	// The daemon process: not root, CAP_NET_ADMIN only.
	pids, _ := exec.Command("pgrep", "-f", "paddockd --config "+e.cfg).Output()
	var daemonPID int
	fmt.Sscan(strings.Fields(string(pids) + " 0")[0], &daemonPID)
	if daemonPID == 0 {
		t.Fatal("daemon process not found")
	}
	if eff := capLine(t, daemonPID, "CapEff"); eff != "0000000000001000" {
		t.Fatalf("paddockd CapEff = %s, want CAP_NET_ADMIN only", eff)
	}
	if uid := capLine(t, daemonPID, "Uid"); !strings.HasPrefix(uid, fmt.Sprint(daemonUID)) {
		t.Fatalf("paddockd Uid: %s", uid)
	}

	e.cli(t, nil, "run", "--image", reg+"/demo:1", "--name", "rootless").ok(t, "run")
	if out, code := execOut(t, e, "rootless", "", "cat", "/etc/motd"); code != 0 || !strings.Contains(out, "welcome") {
		t.Fatalf("exec: %q %d", out, code)
	}
	if l := e.leaks(t, ns); l.taps != 1 || l.vmms != 1 {
		t.Fatalf("while running: %+v", l)
	}
	e.cli(t, nil, "stop", "rootless").ok(t, "stop")
	e.cli(t, nil, "rm", "rootless").ok(t, "rm")
	if l := e.leaks(t, ns); l.host()+l.dirs != 0 {
		t.Fatalf("after rm: %+v %v", l, l.detail)
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

func unixMkdev(major, minor uint32) uint64 {
	return uint64(major)<<8 | uint64(minor)
}

func atoi(s string) int {
	n := 0
	fmt.Sscan(s, &n)
	return n
}

// assertRecoveryCleared checks that a VM at rest keeps no recovery state:
// handles.json lists nothing and vm.json's Runtime is empty.
func assertRecoveryCleared(t *testing.T, e *env, name string) {
	t.Helper()
	vm := inspectVM(t, e, name)
	dir := filepath.Join(e.state, "vms", vm.ID)
	var h struct {
		Items []json.RawMessage `json:"items"`
	}
	if b, err := os.ReadFile(filepath.Join(dir, "handles.json")); err == nil {
		if err := json.Unmarshal(b, &h); err != nil || len(h.Items) != 0 {
			t.Fatalf("%s: handles.json not cleared: %s", name, b)
		}
	}
	var rec struct {
		Runtime map[string]json.RawMessage `json:"runtime"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "vm.json"))
	if err != nil || json.Unmarshal(b, &rec) != nil || len(rec.Runtime) != 0 {
		t.Fatalf("%s: vm.json runtime not cleared: %v %s", name, err, rec.Runtime)
	}
}

// rootlessEnv prepares a daemon that runs as an unprivileged uid whose only
// capability is an ambient CAP_NET_ADMIN, in its own network namespace,
// with a boot kit built by the operator (the test, as root: the module tree
// under root's cache is not readable by that uid) and /dev/net/tun usable
// by everyone in a private mount namespace, as Debian's udev rules make it
// on a normal host (it is 0600 on the development machines). rootless(env)
// is the command modifier that starts it.
func rootlessEnv(t *testing.T, extra string, dirs ...string) (*env, string, string, func(env ...string) func(*exec.Cmd)) {
	t.Helper()
	testenv.RequireRoot(t, "runs the daemon as another uid, network namespace")
	setpriv := testenv.RequireTool(t, "setpriv", "util-linux")
	ns := newNetns(t)
	e := newEnv(t, "\n[vm]\nrun = \"on\"\ndisk_backend = \"qcow2\"\nstart_timeout = \"90s\"\nstop_timeout = \"10s\"\n"+extra)
	reg := registryIn(t, ns)
	for _, d := range append([]string{"run", "cache"}, dirs...) {
		if err := os.MkdirAll(filepath.Join(e.dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	vmlinuz, mods := testenv.RequireKernel(t)
	if _, err := bootkit.Import(context.Background(), vmlinuz, mods, "default", e.state, bootkit.WithAgent(bin("paddock-agent"))); err != nil {
		t.Fatal(err)
	}
	tun := filepath.Join(e.dir, "tun")
	if err := syscall.Mknod(tun, syscall.S_IFCHR|0o666, int(unixMkdev(10, 200))); err != nil {
		t.Fatal(err)
	}
	os.Chmod(tun, 0o666)
	chownTree(t, e.dir, daemonUID, daemonUID)
	t.Cleanup(func() { e.killVMMs(t) })
	rootless := func(env ...string) func(*exec.Cmd) {
		return func(c *exec.Cmd) {
			inner := []string{setpriv, fmt.Sprintf("--reuid=%d", daemonUID), fmt.Sprintf("--regid=%d", daemonUID), "--clear-groups",
				"--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin", "--bounding-set=-all,+net_admin", "--",
				bin("paddockd"), "--config", e.cfg}
			script := `ns=$1; shift; mount --bind "$0" /dev/net/tun && exec nsenter --net=/run/netns/"$ns" -- "$@"`
			c.Path = "/usr/bin/unshare"
			c.Args = append([]string{"unshare", "-m", "--propagation", "private", "sh", "-c", script, tun, ns}, inner...)
			c.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/nonexistent"}, env...)
		}
	}
	return e, ns, reg, rootless
}

// Acceptance (issue 2, item 9): SIGTERM lets in-flight calls finish; a
// second signal exits at once. A boot in flight is the in-flight call.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	e, p, ns, image := vmEnvImage(t, "\n[api]\nshutdown_timeout = \"2m\"\n", nil)
	e.cli(t, nil, "create", "slow", "--image", image).ok(t, "create")
	start := exec.Command(bin("paddock"), "--socket", e.socket, "start", "slow")
	if err := start.Start(); err != nil {
		t.Fatal(err)
	}
	defer start.Process.Kill()
	waitStatusTimeout(t, e, "slow", "created", 30*time.Second) // the boot has begun
	p.signal(t, syscall.SIGTERM)
	time.Sleep(100 * time.Millisecond)
	p.signal(t, syscall.SIGINT)
	if code := p.wait(t, 10*time.Second); code != 130 {
		t.Fatalf("exit code %d after a second signal, want 130 (at once)", code)
	}
	start.Wait()
	// The next daemon settles what the interrupted start left.
	e.daemon(t, inNetns(ns))
	vm := inspectVM(t, e, "slow")
	if vm.Status != "stopped" && vm.Status != "running" {
		t.Fatalf("after the restart: %s %q", vm.Status, vm.Reason)
	}
	e.cli(t, nil, "rm", "--force", "slow").ok(t, "rm")
	if l := e.leaks(t, ns); l.host() != 0 {
		t.Fatalf("leaked %v", l.detail)
	}
}
