package e2e

import (
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// Issue 11, item 6 with item 5: an unprivileged daemon (vm.network =
// "user") runs each VM's network as a passt process, a resource with its
// own crash points. paddockd killed at each leaves, after a restart, a
// consistent VM and no passt of its own running; the VM then boots with
// user-mode networking and inspect says so.
func TestNetUserModeCrashPoints(t *testing.T) {
	testenv.RequireTool(t, "passt", "passt")
	e, ns, reg, rootless := rootlessEnv(t, "network = \"user\"\n")
	uplink(t, ns)
	pushTo(t, reg+"/demo:1", demoImage(t))
	p := e.daemon(t, rootless())
	e.cli(t, nil, "image", "pull", reg+"/demo:1").ok(t, "pull")
	e.cli(t, nil, "create", "fp", "--image", reg+"/demo:1").ok(t, "create")

	points := slices.DeleteFunc(slices.Clone(actors.StartFailpoints), func(fp string) bool {
		return !strings.HasPrefix(fp, "acquire-"+actors.KindPasst+"-")
	})
	if len(points) != 2 {
		t.Fatalf("passt crash points: %q, want intent and live", points)
	}
	for _, fp := range points {
		p.signal(t, syscall.SIGTERM)
		p.wait(t, 30*time.Second)
		p = e.daemon(t, rootless("PADDOCK_FAILPOINTS="+fp))
		if r := e.cli(t, nil, "start", "fp"); r.code == 0 {
			t.Fatalf("%s: start succeeded although the daemon died", fp)
		} else {
			t.Logf("%s: start: %d %s", fp, r.code, r.stderr)
		}
		p.wait(t, 60*time.Second) // the daemon killed itself at fp
		p = e.daemon(t, rootless())
		switch vm := inspectVM(t, e, "fp"); vm.Status {
		case "running":
			e.cli(t, nil, "stop", "fp").ok(t, fp+": stop")
		case "stopped", "created", "error":
		default:
			t.Fatalf("%s: VM left %s (%s)", fp, vm.Status, vm.Reason)
		}
		if l := e.leaks(t, ns); l.host() != 0 {
			t.Fatalf("%s: leaked %+v %v", fp, l, l.detail)
		}
	}

	e.cli(t, nil, "start", "fp").ok(t, "start after the crashes")
	if vm := inspectVM(t, e, "fp"); vm.Network == nil || vm.Network.Mode != "user" {
		t.Errorf("inspect does not say user mode: %+v", vm.Network)
	}
	if out := e.cli(t, nil, "inspect", "fp").ok(t, "inspect"); !strings.Contains(out, "Network:      user") {
		t.Errorf("paddock inspect does not say user mode:\n%s", out)
	}
	if l := e.leaks(t, ns); l.passts != 1 {
		t.Errorf("running user-mode VM: %d passt processes, want 1: %v", l.passts, l.detail)
	}
	addr, code := execOut(t, e, "fp", "", "/bin/busybox", "ip", "-4", "-o", "addr", "show", "eth0")
	if code != 0 || !strings.Contains(addr, "10.0.2.15/24") {
		t.Errorf("guest address in user mode: exit %d %q", code, addr)
	}
	e.cli(t, nil, "rm", "--force", "fp").ok(t, "rm")
	if l := e.leaks(t, ns); l.host()+l.dirs != 0 {
		t.Fatalf("after rm: %+v %v", l, l.detail)
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("daemon exit %d", code)
	}
}

// uplink gives the test's namespace an interface with a default route: passt
// takes its addresses from the host's default-route interface and refuses
// to start without one.
func uplink(t *testing.T, ns string) {
	t.Helper()
	for _, args := range [][]string{
		{"link", "add", "up0", "type", "veth", "peer", "name", "up1"},
		{"link", "set", "up1", "up"},
		{"addr", "add", "192.0.2.2/24", "dev", "up0"},
		{"link", "set", "up0", "up"},
		{"route", "add", "default", "via", "192.0.2.1"},
	} {
		if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip -n %s %s: %v %s", ns, strings.Join(args, " "), err, out)
		}
	}
}
