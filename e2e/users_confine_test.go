package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// Issue 10, findings 5 and 12: confined VMMs, and an orphan sweep that
// kills only its own daemon's VMMs.

const zeroCaps = "0000000000000000"

// sandboxOpts is the -sandbox value every QEMU VMM carries.
const sandboxOpts = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// procStatus reads /proc/PID/status into a map.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	st, err := vmm.Status(pid)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// vmmOf returns the one live VMM of the VM called name.
func vmmOf(t *testing.T, e *env, name string) *vmm.Process {
	t.Helper()
	id := inspectVM(t, e, name).ID
	procs, err := vmm.Find(id)
	if err != nil || len(procs) != 1 {
		t.Fatalf("VMM of %s (%s): %v %v", name, id, procs, err)
	}
	return procs[0]
}

// assertConfined checks the VMM's /proc status: no capability in any set,
// the bounding set wantBnd, no_new_privs, a seccomp filter, and QEMU's
// sandbox on its command line. It logs the lines as the figures.
func assertConfined(t *testing.T, who string, p *vmm.Process, wantBnd string) {
	t.Helper()
	st := procStatus(t, p.PID)
	for _, c := range []struct{ key, want string }{
		{"CapInh", zeroCaps},
		{"CapPrm", zeroCaps},
		{"CapEff", zeroCaps},
		{"CapAmb", zeroCaps},
		{"CapBnd", wantBnd},
		{"NoNewPrivs", "1"},
		{"Seccomp", "2"}, // filter mode: QEMU's -sandbox
	} {
		if got := st[c.key]; got != c.want {
			t.Errorf("%s: VMM pid %d %s = %s, want %s", who, p.PID, c.key, got, c.want)
		}
	}
	if i := slices.Index(p.Cmdline, "-sandbox"); i < 0 || i+1 >= len(p.Cmdline) || p.Cmdline[i+1] != sandboxOpts {
		t.Errorf("%s: QEMU runs without -sandbox %s: %q", who, sandboxOpts, p.Cmdline)
	}
	t.Logf("FIGURES %s VMM pid %d /proc status: CapInh %s CapPrm %s CapEff %s CapAmb %s CapBnd %s NoNewPrivs %s Seccomp %s Seccomp_filters %s",
		who, p.PID, st["CapInh"], st["CapPrm"], st["CapEff"], st["CapAmb"], st["CapBnd"], st["NoNewPrivs"], st["Seccomp"], st["Seccomp_filters"])
}

// Finding 5: paddockd as an unprivileged uid with an ambient CAP_NET_ADMIN
// (as paddock.service runs it) used to hand that capability on to QEMU,
// which ran without a seccomp sandbox. Now the VMM holds no capability, has
// no_new_privs and QEMU's sandbox, and still uses the tap the daemon made
// (owned by the daemon's uid): the guest reaches its gateway through it.
func TestUsersConfinedVMM(t *testing.T) {
	e, ns, reg, rootless := rootlessEnv(t, "")
	pushTo(t, reg+"/demo:1", demoImage(t))
	p := e.daemon(t, rootless())
	daemon := procStatus(t, p.cmd.Process.Pid)
	if daemon["CapAmb"] != "0000000000001000" || !strings.HasPrefix(daemon["Uid"], strconv.Itoa(daemonUID)) {
		t.Fatalf("paddockd: Uid %s CapAmb %s, want uid %d with an ambient CAP_NET_ADMIN", daemon["Uid"], daemon["CapAmb"], daemonUID)
	}
	t.Logf("FIGURES paddockd pid %d /proc status: Uid %s CapEff %s CapAmb %s CapBnd %s NoNewPrivs %s",
		p.cmd.Process.Pid, daemon["Uid"], daemon["CapEff"], daemon["CapAmb"], daemon["CapBnd"], daemon["NoNewPrivs"])
	e.cli(t, nil, "image", "pull", reg+"/demo:1").ok(t, "pull")
	e.cli(t, nil, "run", "--image", reg+"/demo:1", "--name", "confined").ok(t, "run")

	q := vmmOf(t, e, "confined")
	if uid := procStatus(t, q.PID)["Uid"]; !strings.HasPrefix(uid, strconv.Itoa(daemonUID)) {
		t.Fatalf("VMM Uid %s", uid)
	}
	// Without CAP_SETPCAP the daemon cannot shrink the bounding set; with
	// no_new_privs and nothing permitted or inheritable it grants nothing.
	assertConfined(t, "unprivileged daemon", q, daemon["CapBnd"])

	// The tap works without CAP_NET_ADMIN in the VMM.
	out, code := execOut(t, e, "confined", "", "/bin/busybox", "sh", "-c",
		`gw=$(/bin/busybox ip route show default | /bin/busybox awk '/^default via/{print $3; exit}'); echo "gw=$gw"; /bin/busybox ping -c 1 -W 10 "$gw" >/dev/null && echo reached`)
	if code != 0 || !strings.Contains(out, "reached") {
		t.Fatalf("guest ping of its gateway through the tap: exit %d: %q", code, out)
	}
	t.Logf("guest network: %s", strings.TrimSpace(out))

	e.cli(t, nil, "rm", "--force", "confined").ok(t, "rm")
	if l := e.leaks(t, ns); l.host()+l.dirs != 0 {
		t.Fatalf("after rm: %+v %v", l, l.detail)
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// twinDaemon is one of two paddockd whose state, runtime and cache
// directories have the same paths, each in a mount namespace of its own
// where those paths are bind mounts of its private directories (as two
// containers, or two units with PrivateMounts=, see them). Each has its own
// API socket, network namespace and registry.
type twinDaemon struct {
	*env
	name, priv, ns, ref string
	procs               []*proc // every start, in order
}

func (d *twinDaemon) start(t *testing.T, paths string) *proc {
	t.Helper()
	p := d.daemon(t, func(c *exec.Cmd) {
		script := `p=$0 d=$1 ns=$2; shift 2; for x in state run cache; do mount --bind "$p/$x" "$d/$x" || exit 1; done; exec nsenter --net=/run/netns/"$ns" -- "$@"`
		c.Path = "/usr/bin/unshare"
		c.Args = append([]string{"unshare", "-m", "--propagation", "private", "sh", "-c", script, d.priv, paths, d.ns}, c.Args...)
	})
	d.procs = append(d.procs, p)
	return p
}

// restart stops the daemon (SIGTERM, or SIGKILL as a crash) and starts it
// again: a new mount namespace over the same private directories.
func (d *twinDaemon) restart(t *testing.T, sig syscall.Signal, paths string) *proc {
	t.Helper()
	cur := d.procs[len(d.procs)-1]
	cur.signal(t, sig)
	cur.wait(t, 30*time.Second)
	return d.start(t, paths)
}

func (d *twinDaemon) logs() string {
	var b strings.Builder
	for i, p := range d.procs {
		fmt.Fprintf(&b, "--- %s start %d\n%s", d.name, i+1, p.stderr.String())
	}
	return b.String()
}

// Finding 12: two daemons whose runtime directories have the same path in
// different mount namespaces each took the other's QEMU for an orphan (its
// sockets lie under "their" runtime directory) and SIGKILLed it at start-up.
// Now each restart, in turns and after a crash, leaves the other's VM
// running and says why; a VMM that is really its own orphan (its VM's
// directory lost) is still killed. Root daemons: their VMMs' bounding set is
// empty too (finding 5).
func TestUsersTwinDaemonsSparEachOthersVMMs(t *testing.T) {
	testenv.RequireRoot(t, "mount and network namespaces")
	testenv.RequireTool(t, "unshare", "util-linux")
	testenv.RequireTool(t, "nsenter", "util-linux")
	paths, err := os.MkdirTemp("", "pdk-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(paths) })
	for _, x := range []string{"state", "run", "cache"} {
		if err := os.Mkdir(filepath.Join(paths, x), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	vmlinuz, mods := testenv.RequireKernel(t)
	twins := map[string]*twinDaemon{}
	for _, name := range []string{"a", "b"} {
		d := &twinDaemon{name: name, priv: filepath.Join(paths, "priv-"+name), ns: newNetns(t)}
		for _, x := range []string{"state", "run", "cache"} {
			if err := os.MkdirAll(filepath.Join(d.priv, x), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		d.env = &env{dir: paths, cfg: filepath.Join(paths, name+".toml"), socket: filepath.Join(paths, name+".sock"), state: filepath.Join(d.priv, "state")}
		body := fmt.Sprintf("state_dir = %q\nruntime_dir = %q\ncache_dir = %q\n[api]\nsocket = %q\n[vm]\nrun = \"on\"\ndisk_backend = \"qcow2\"\nstart_timeout = \"90s\"\nstop_timeout = \"10s\"\n",
			filepath.Join(paths, "state"), filepath.Join(paths, "run"), filepath.Join(paths, "cache"), d.socket)
		if err := os.WriteFile(d.cfg, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		reg := registryIn(t, d.ns)
		d.ref = reg + "/demo:1"
		pushTo(t, d.ref, demoImage(t))
		twins[name] = d
	}
	t.Cleanup(func() { twins["a"].killVMMs(t) }) // both twins' VMMs carry paths in their argv
	a, b := twins["a"], twins["b"]

	ids := map[string]string{}          // twin → VM id
	handles := map[string]vmm.Process{} // twin → its VMM as first seen
	for _, d := range []*twinDaemon{a, b} {
		d.start(t, paths)
		d.cli(t, nil, "kernel", "import", vmlinuz, "--modules", mods, "--name", "default").ok(t, d.name+": kernel import")
		d.cli(t, nil, "image", "pull", d.ref).ok(t, d.name+": pull")
		d.cli(t, nil, "run", "--image", d.ref, "--name", "v"+d.name).ok(t, d.name+": run")
		q := vmmOf(t, d.env, "v"+d.name)
		ids[d.name], handles[d.name] = q.VMID, *q
		assertConfined(t, "root daemon "+d.name, q, zeroCaps)
	}
	// Same paths, different files: each VMM's API socket path lies under
	// both daemons' runtime directory.
	for _, d := range []*twinDaemon{a, b} {
		h := handles[d.name]
		if !strings.HasPrefix(h.APISocket, filepath.Join(paths, "run", "vms")+"/") {
			t.Fatalf("%s's VMM socket %s is not under the shared path", d.name, h.APISocket)
		}
	}

	alive := func(stage string) {
		t.Helper()
		for _, d := range []*twinDaemon{a, b} {
			h := handles[d.name]
			if s, err := (&vmm.Base{}).Probe(&h); err != nil || s != vmm.StateRunning {
				t.Fatalf("%s: %s's VMM (pid %d) is %v %v\n%s\n%s", stage, d.name, h.PID, s, err, a.logs(), b.logs())
			}
			if vm := inspectVM(t, d.env, "v"+d.name); vm.Status != "running" {
				t.Fatalf("%s: %s's VM is %s (%s)", stage, d.name, vm.Status, vm.Reason)
			}
		}
	}
	alive("both started")
	// Restarts in turns: a clean one each, then a crash of each.
	for _, step := range []struct {
		d   *twinDaemon
		sig syscall.Signal
	}{{a, syscall.SIGTERM}, {b, syscall.SIGTERM}, {a, syscall.SIGKILL}, {b, syscall.SIGKILL}} {
		step.d.restart(t, step.sig, paths)
		alive(fmt.Sprintf("after restarting %s (%v)", step.d.name, step.sig))
	}
	for _, d := range []*twinDaemon{a, b} {
		if out, code := execOut(t, d.env, "v"+d.name, "", "cat", "/etc/motd"); code != 0 || !strings.Contains(out, "welcome") {
			health := d.cli(t, nil, "health", "v"+d.name)
			logs := d.cli(t, nil, "logs", "v"+d.name)
			t.Fatalf("exec in %s's VM after the restarts: %q %d\nhealth: %s%s\nguest log:\n%s%s", d.name, out, code, health.stdout, health.stderr, logs.stdout, logs.stderr)
		}
	}

	// What each sweep decided: the other's VMM left alone, with the reason;
	// nothing killed.
	// a started once before b's VM ran, b only after a's did
	for _, c := range []struct {
		d, other *twinDaemon
		starts   int
	}{{a, b, len(a.procs) - 1}, {b, a, len(b.procs)}} {
		logs := c.d.logs()
		if strings.Contains(logs, "killing an orphan VMM") {
			t.Errorf("%s killed a VMM:\n%s", c.d.name, logs)
		}
		re := regexp.MustCompile(`leaving a VMM that is not provably this daemon's.*vm_id=` + ids[c.other.name] + `.*`)
		left := re.FindAllString(logs, -1)
		if len(left) != c.starts {
			t.Errorf("%s's sweeps left %s's VMM %d times, want %d (every start after it ran):\n%s", c.d.name, c.other.name, len(left), c.starts, logs)
		}
		for _, l := range left {
			// its socket's path names no file here, or another file
			if !strings.Contains(l, "is not in this daemon's view") && !strings.Contains(l, "another file") {
				t.Errorf("%s: the reason does not say the socket is not this daemon's file: %s", c.d.name, l)
			}
		}
		if len(left) > 0 {
			t.Logf("%s's sweep decided (%d times): %s", c.d.name, len(left), left[len(left)-1])
		}
	}

	// A's VM directory lost while A is down: its VMM is now a real orphan
	// of A's (the very socket file in its own namespace) and A's sweep kills
	// it; B's VM stays.
	a.procs[len(a.procs)-1].signal(t, syscall.SIGTERM)
	a.procs[len(a.procs)-1].wait(t, 30*time.Second)
	if err := os.RemoveAll(filepath.Join(a.priv, "state", "vms", ids["a"])); err != nil {
		t.Fatal(err)
	}
	pa := a.start(t, paths)
	pa.waitLog(t, "killing an orphan VMM", ids["a"], "this daemon's very file")
	ha := handles["a"]
	if s, _ := (&vmm.Base{}).Probe(&ha); s == vmm.StateRunning {
		t.Fatalf("A's orphan VMM (pid %d) still runs", ha.PID)
	}
	hb := handles["b"]
	if s, err := (&vmm.Base{}).Probe(&hb); err != nil || s != vmm.StateRunning {
		t.Fatalf("B's VMM (pid %d) is %v %v after A killed its own orphan\n%s", hb.PID, s, err, a.logs())
	}
	for _, l := range strings.Split(a.logs(), "\n") {
		if strings.Contains(l, "killing an orphan VMM") {
			t.Logf("a's sweep decided: %s", l)
		}
	}

	b.cli(t, nil, "rm", "--force", "vb").ok(t, "b: rm")
	if left, err := vmm.Find(""); err != nil {
		t.Fatal(err)
	} else {
		for _, q := range left {
			if q.VMID == ids["a"] || q.VMID == ids["b"] {
				t.Errorf("VMM of %s left: pid %d", q.VMID, q.PID)
			}
		}
	}
	for _, d := range []*twinDaemon{a, b} {
		out, err := exec.Command("ip", "-n", d.ns, "-o", "link", "show").CombinedOutput()
		if err != nil || strings.Contains(string(out), " pdk-") {
			t.Errorf("%s's namespace: taps left or unreadable: %v\n%s", d.name, err, out)
		}
		p := d.procs[len(d.procs)-1]
		p.signal(t, syscall.SIGTERM)
		p.wait(t, 30*time.Second)
	}
}
