package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/internal/nettopo"
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

// guestDNSConf is the [vm] section of a bridge-mode daemon whose guests
// resolve through the topology's test resolver.
var guestDNSConf = fmt.Sprintf("\n[vm]\nrun = \"on\"\nstart_timeout = \"90s\"\nstop_timeout = \"10s\"\ndns = [%q]\n", nettopo.UplinkIP.String())

// netEnv is a root daemon in bridge mode in its own namespace, the demo
// image pulled, and nettopo's uplink and client namespaces wired to it.
func netEnv(t *testing.T) (*env, *proc, string, string, *nettopo.Topology) {
	t.Helper()
	e, p, ns, image := vmEnvImage(t, guestDNSConf, nil)
	top := nettopo.New(t, ns)
	return e, p, ns, image, top
}

// guestSh runs a shell script in the guest; $b is busybox, whose applets
// the demo image does not all link.
func guestSh(t *testing.T, e *env, vm, script string) (string, int) {
	t.Helper()
	return execOut(t, e, vm, "", "/bin/sh", "-c", "b=/bin/busybox; "+script)
}

// guestHTTPD starts busybox httpd on port in the guest serving body at /.
func guestHTTPD(t *testing.T, e *env, vm string, port int, body string) {
	t.Helper()
	script := fmt.Sprintf("$b mkdir -p /www && echo %s > /www/index.html && $b httpd -p %d -h /www", body, port)
	if out, code := guestSh(t, e, vm, script); code != 0 {
		t.Fatalf("httpd in %s: exit %d %q", vm, code, out)
	}
}

// guestIP is the VM's bridge address as inspect reports it.
func guestIP(t *testing.T, e *env, vm string) string {
	t.Helper()
	n := inspectVM(t, e, vm).Network
	if n == nil || n.IP == "" {
		t.Fatalf("VM %s has no address: %+v", vm, n)
	}
	ip, _, _ := strings.Cut(n.IP, "/")
	return ip
}

// httpGet fetches http://addr/ from inside the namespace n.
func httpGet(n *nettopo.Netns, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       func(ctx context.Context, network, a string) (net.Conn, error) { return n.Dial(ctx, network, a) },
	}}
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return string(b), err
}

// waitHTTP polls http://addr/ from n until it answers want (a guest's
// server comes up a moment after its command returns).
func waitHTTP(t *testing.T, n *nettopo.Netns, addr, want, what string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err := httpGet(n, addr)
		if err == nil && got == want {
			t.Logf("%s: %s answered %q", what, addr, strings.TrimSpace(got))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: http://%s/ from %s: %q %v, want %q", what, addr, n.Name, got, err, want)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// Issue 11, acceptance: egress through NAT (the uplink sees the daemon
// namespace's uplink address), DNS through vm.dns, and -p 18080:8080
// reached from the client namespace, from the daemon namespace's own
// address and from its 127.0.0.1; ports and inspect list the mapping.
func TestNetEgressDNSPorts(t *testing.T) {
	e, _, ns, image, top := netEnv(t)
	e.cli(t, nil, "run", "--image", image, "--name", "web", "-p", "18080:8080").ok(t, "run -p 18080:8080")

	// Egress: masqueraded to the daemon namespace's uplink address.
	before := len(top.HTTP.Seen())
	out, code := guestSh(t, e, "web", "$b timeout 30 $b wget -qO- "+top.URL("/ip"))
	if code != 0 || strings.TrimSpace(out) != nettopo.HostUplinkIP.String() {
		t.Errorf("guest -> uplink: exit %d %q, want %s", code, out, nettopo.HostUplinkIP)
	}
	seen := top.HTTP.Seen()[before:]
	if len(seen) != 1 || seen[0] != nettopo.HostUplinkIP {
		t.Errorf("the uplink server saw %v, want one request from %s", seen, nettopo.HostUplinkIP)
	}
	t.Logf("egress: guest saw itself as %q; uplink saw %v", strings.TrimSpace(out), seen)

	// DNS: the guest's resolv.conf names vm.dns, and a lookup reaches it.
	if rc, code := guestSh(t, e, "web", "cat /etc/resolv.conf"); code != 0 || !strings.Contains(rc, "nameserver "+nettopo.UplinkIP.String()) {
		t.Errorf("guest resolv.conf (exit %d):\n%s", code, rc)
	}
	out, code = guestSh(t, e, "web", "$b timeout 30 $b nslookup "+nettopo.DNSName)
	if code != 0 || !strings.Contains(out, nettopo.UplinkIP.String()) {
		t.Errorf("nslookup %s in the guest: exit %d\n%s", nettopo.DNSName, code, out)
	}
	if !slices.Contains(top.DNS.Asked(), nettopo.DNSName) {
		t.Errorf("the test resolver was asked %q, not %s", top.DNS.Asked(), nettopo.DNSName)
	}
	t.Logf("dns: resolver asked %q", top.DNS.Asked())

	// Published port.
	guestHTTPD(t, e, "web", 8080, "hello-from-web")
	addr := func(ip netip.Addr) string { return netip.AddrPortFrom(ip, 18080).String() }
	waitHTTP(t, top.Client, addr(nettopo.HostClientIP), "hello-from-web\n", "client -> daemon ns:18080")
	waitHTTP(t, top.Daemon, addr(nettopo.HostUplinkIP), "hello-from-web\n", "daemon ns -> its own uplink address:18080")
	waitHTTP(t, top.Daemon, addr(nettopo.HostClientIP), "hello-from-web\n", "daemon ns -> its own client-side address:18080")
	waitHTTP(t, top.Daemon, "127.0.0.1:18080", "hello-from-web\n", "daemon ns -> 127.0.0.1:18080")

	ports := e.cli(t, nil, "ports", "web").ok(t, "ports")
	if !strings.Contains(ports, "0.0.0.0:18080/tcp") || !strings.Contains(ports, "8080/tcp") {
		t.Errorf("paddock ports does not list 18080 -> 8080:\n%s", ports)
	}
	insp := e.cli(t, nil, "inspect", "web").ok(t, "inspect")
	if !strings.Contains(insp, "18080:8080/tcp") {
		t.Errorf("paddock inspect does not list 18080:8080/tcp:\n%s", insp)
	}
	if vm := inspectVM(t, e, "web"); len(vm.Spec.Ports) != 1 || vm.Spec.Ports[0].HostPort != 18080 || vm.Spec.Ports[0].GuestPort != 8080 {
		t.Errorf("inspect --json ports: %+v", vm.Spec.Ports)
	}
	t.Logf("ports:\n%s", ports)

	e.cli(t, nil, "rm", "--force", "web").ok(t, "rm")
	if l := e.leaks(t, ns); l.host()+l.dirs != 0 {
		t.Fatalf("after rm: %+v %v", l, l.detail)
	}
}
