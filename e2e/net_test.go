package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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
	if out := e.cli(t, nil, "inspect", "fp").ok(t, "inspect"); !inspectField(out, "Network", "user") {
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

// Issue 11, acceptance: isolation. VMs a and b of one user reach each
// other neither by TCP nor by ping; a guest that takes a foreign IP or a
// foreign MAC gets nothing through to the uplink; no guest reaches a
// listener on the gateway address, though it may ping the gateway; VMs of
// one owner in --network shared:GROUP reach each other.
func TestNetIsolation(t *testing.T) {
	e, _, ns, image, top := netEnv(t)
	for _, vm := range []struct{ name, network string }{{"a", ""}, {"b", ""}, {"c", "shared:grp"}, {"d", "shared:grp"}} {
		args := []string{"run", "--image", image, "--name", vm.name}
		if vm.network != "" {
			args = append(args, "--network", vm.network)
		}
		e.cli(t, nil, args...).ok(t, "run "+vm.name)
	}
	ip := map[string]string{}
	for _, n := range []string{"a", "b", "c", "d"} {
		ip[n] = guestIP(t, e, n)
		guestHTTPD(t, e, n, 8080, "hello-from-"+n)
		// The server is up: the guest reaches it itself.
		if out, code := guestSh(t, e, n, "$b timeout 10 $b wget -qO- http://127.0.0.1:8080/"); code != 0 || out != "hello-from-"+n+"\n" {
			t.Fatalf("%s's own server: exit %d %q", n, code, out)
		}
	}
	t.Logf("addresses: %v", ip)
	fetch := func(from, to string) (string, int) {
		return guestSh(t, e, from, fmt.Sprintf("$b timeout 5 $b wget -qO- http://%s:8080/", ip[to]))
	}
	ping := func(from, to string) (string, int) {
		return guestSh(t, e, from, "$b ping -c 2 -W 3 "+to)
	}

	// Shared group: c and d talk, both ways, by TCP and ping (the control:
	// the same commands do work between guests when allowed).
	for _, p := range [][2]string{{"c", "d"}, {"d", "c"}} {
		if out, code := fetch(p[0], p[1]); code != 0 || out != "hello-from-"+p[1]+"\n" {
			t.Errorf("shared:grp %s -> %s TCP: exit %d %q", p[0], p[1], code, out)
		}
		if out, code := ping(p[0], ip[p[1]]); code != 0 {
			t.Errorf("shared:grp %s pings %s: exit %d\n%s", p[0], p[1], code, out)
		}
	}
	// Default network: a and b do not; nor a group member and a non-member.
	for _, p := range [][2]string{{"a", "b"}, {"b", "a"}, {"a", "c"}, {"c", "a"}} {
		out, code := fetch(p[0], p[1])
		if code == 0 || strings.Contains(out, "hello") {
			t.Errorf("%s -> %s TCP got through: exit %d %q", p[0], p[1], code, out)
		}
		pout, pcode := ping(p[0], ip[p[1]])
		if pcode == 0 {
			t.Errorf("%s pings %s:\n%s", p[0], p[1], pout)
		}
		t.Logf("%s -> %s: wget exit %d, ping exit %d", p[0], p[1], code, pcode)
	}
	// The gateway answers pings; a listener on its address is out of reach.
	gw := nettopo.UplinkIP // replaced below by the VM's gateway
	if n := inspectVM(t, e, "a").Network; n != nil {
		gw = netip.MustParseAddr(strings.Split(n.Gateway, "/")[0])
	}
	if out, code := ping("a", gw.String()); code != 0 {
		t.Errorf("a pings its gateway %s: exit %d\n%s", gw, code, out)
	}
	ln, err := top.Daemon.Listen("tcp", netip.AddrPortFrom(gw, 18999).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan string, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c.RemoteAddr().String()
			fmt.Fprintln(c, "gateway-listener")
			c.Close()
		}
	}()
	if c, err := top.Daemon.Dial(context.Background(), "tcp", ln.Addr().String()); err != nil {
		t.Fatalf("the gateway listener does not answer in the daemon namespace: %v", err)
	} else {
		c.Close()
		<-accepted
	}
	for _, n := range []string{"a", "c"} {
		out, code := guestSh(t, e, n, fmt.Sprintf("echo hi | $b nc -w 5 %s 18999", gw))
		if code == 0 || strings.Contains(out, "gateway-listener") {
			t.Errorf("%s reached a listener on the gateway %s:18999: exit %d %q", n, gw, code, out)
		}
	}
	select {
	case from := <-accepted:
		t.Errorf("the gateway listener accepted a connection from %s", from)
	default:
	}

	// Egress works for a, as the control for the spoofing checks.
	egress := func(what string) (int, int) {
		t.Helper()
		before := len(top.HTTP.Seen())
		_, code := guestSh(t, e, "a", "$b timeout 10 $b wget -qO- "+top.URL("/ip"))
		return code, len(top.HTTP.Seen()) - before
	}
	// Every TCP packet reaching the uplink's port 80 is counted there: a
	// spoofed SYN that got out would count even if no answer came back.
	syns := uplinkCounter(t, top)
	s0 := syns()
	if code, n := egress("control"); code != 0 || n != 1 {
		t.Fatalf("a -> uplink before spoofing: exit %d, %d requests seen", code, n)
	}
	if s1 := syns(); s1 == s0 {
		t.Fatalf("the uplink's packet counter did not count the control request (%d)", s1)
	} else {
		s0 = s1
	}
	// A foreign address added to eth0 and made the source of the default
	// route: nothing from it reaches the uplink.
	before := len(top.HTTP.Seen())
	out, code := guestSh(t, e, "a", fmt.Sprintf(`$b ip addr add 10.77.200.200/32 dev eth0 && $b ip route replace default via %s src 10.77.200.200 || exit 99
$b timeout 10 $b wget -qO- %s; rc=$?
$b ip route replace default via %s src %s; $b ip addr del 10.77.200.200/32 dev eth0; exit $rc`, gw, top.URL("/ip"), gw, ip["a"]))
	if code == 99 {
		t.Fatalf("a could not take a foreign address: %q", out)
	}
	if code == 0 || len(top.HTTP.Seen()) != before || syns() != s0 {
		t.Errorf("a with a foreign source address reached the uplink: exit %d %q, server saw %v, %d packets", code, out, top.HTTP.Seen()[before:], syns()-s0)
	}
	t.Logf("foreign IP: wget exit %d, uplink saw %d requests, %d packets", code, len(top.HTTP.Seen())-before, syns()-s0)
	// A foreign MAC: nothing through either (ARP included: the link is
	// bounced, so the guest must ARP for its gateway from that MAC).
	before = len(top.HTTP.Seen())
	out, code = guestSh(t, e, "a", fmt.Sprintf(`orig=$(cat /sys/class/net/eth0/address) || exit 99
set_mac() { $b ip link set eth0 down && $b ip link set eth0 address $1 && $b ip link set eth0 up && $b ip route replace default via %s; }
set_mac 02:00:00:77:77:77 || exit 99
$b timeout 10 $b wget -qO- %s; rc=$?
set_mac $orig; exit $rc`, gw, top.URL("/ip")))
	if code == 99 {
		t.Fatalf("a could not take a foreign MAC: %q", out)
	}
	if code == 0 || len(top.HTTP.Seen()) != before || syns() != s0 {
		t.Errorf("a with a foreign MAC reached the uplink: exit %d %q, server saw %v, %d packets", code, out, top.HTTP.Seen()[before:], syns()-s0)
	}
	t.Logf("foreign MAC: wget exit %d, uplink saw %d requests, %d packets", code, len(top.HTTP.Seen())-before, syns()-s0)
	// Restored, a gets through again: the refusals were the spoofing's.
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, n := egress("after")
		if code == 0 && n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a -> uplink after restoring its IP and MAC: exit %d, %d requests seen", code, n)
		}
		time.Sleep(time.Second)
	}

	e.cli(t, nil, "rm", "--force", "a", "b", "c", "d").ok(t, "rm")
	if l := e.leaks(t, ns); l.host()+l.dirs != 0 {
		t.Fatalf("after rm: %+v %v", l, l.detail)
	}
}

// uplinkCounter counts, in a table of its own in the uplink namespace,
// every TCP packet arriving for the uplink's HTTP port; the returned
// function reads the count.
func uplinkCounter(t *testing.T, top *nettopo.Topology) func() int {
	t.Helper()
	nft := func(stdin string, args ...string) string {
		t.Helper()
		c := top.Uplink.Command(context.Background(), "nft", args...)
		c.Stdin = strings.NewReader(stdin)
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("nft %v in the uplink: %v %s", args, err, out)
		}
		return string(out)
	}
	nft(fmt.Sprintf("table inet obs {\n chain in {\n  type filter hook input priority 0; policy accept;\n  tcp dport %d counter\n }\n}\n", nettopo.HTTPPort), "-f", "-")
	re := regexp.MustCompile(`counter packets (\d+)`)
	return func() int {
		m := re.FindStringSubmatch(nft("", "list", "chain", "inet", "obs", "in"))
		if m == nil {
			t.Fatal("no counter in the uplink's observer chain")
		}
		return atoi(m[1])
	}
}

// nsNft runs nft in the namespace ns.
func nsNft(t *testing.T, ns, stdin string, args ...string) string {
	t.Helper()
	c := exec.Command("ip", append([]string{"netns", "exec", ns, "nft"}, args...)...)
	c.Stdin = strings.NewReader(stdin)
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns exec %s nft %s: %v %s", ns, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// paddockTables is paddock's two tables in ns as nft lists them.
func paddockTables(t *testing.T, ns string) string {
	t.Helper()
	return nsNft(t, ns, "", "list", "table", "inet", "paddock") + nsNft(t, ns, "", "list", "table", "bridge", "paddock")
}

// lineDiff is a plain diff of two listings: each line with more copies in
// a ("-") or in b ("+"), and by how many.
func lineDiff(a, b string) string {
	count := func(s string) (map[string]int, []string) {
		m := map[string]int{}
		var order []string
		for _, l := range strings.Split(s, "\n") {
			if m[l] == 0 {
				order = append(order, l)
			}
			m[l]++
		}
		return m, order
	}
	ca, oa := count(a)
	cb, ob := count(b)
	var out []string
	for _, l := range oa {
		if ca[l] > cb[l] {
			out = append(out, fmt.Sprintf("- %s (x%d)", l, ca[l]-cb[l]))
		}
	}
	for _, l := range ob {
		if cb[l] > ca[l] {
			out = append(out, fmt.Sprintf("+ %s (x%d)", l, cb[l]-ca[l]))
		}
	}
	return strings.Join(out, "\n")
}

// Issue 11, acceptance: kill -9 of paddockd with two VMs publishing ports.
// The ports answer while it is down and after it is back; paddock's tables
// are then identical to before, without duplicates; rm of both VMs leaves
// no VM's rules; a canary table in the same namespace is byte-identical
// at the end.
func TestNetRestartSafety(t *testing.T) {
	e, p, ns, image, top := netEnv(t)
	nsNft(t, ns, `table inet canary {
	chain input {
		type filter hook input priority 10; policy accept;
		tcp dport 1 counter accept comment "canary"
	}
}
`, "-f", "-")
	nsNft(t, ns, "", "add", "chain", "inet", "canary", "extra")
	nsNft(t, ns, "", "add", "rule", "inet", "canary", "extra", "ip", "daddr", "192.0.2.99", "drop")
	canary := nsNft(t, ns, "", "-a", "list", "table", "inet", "canary")

	vms := map[string]int{"one": 18081, "two": 18082}
	for name, port := range vms {
		e.cli(t, nil, "run", "--image", image, "--name", name, "-p", fmt.Sprintf("%d:8080", port)).ok(t, "run "+name)
		guestHTTPD(t, e, name, 8080, "hello-from-"+name)
	}
	answer := func(stage string) {
		t.Helper()
		for name, port := range vms {
			want := "hello-from-" + name + "\n"
			waitHTTP(t, top.Client, netip.AddrPortFrom(nettopo.HostClientIP, uint16(port)).String(), want, stage+": client")
			waitHTTP(t, top.Daemon, fmt.Sprintf("127.0.0.1:%d", port), want, stage+": daemon ns 127.0.0.1")
		}
	}
	answer("before")
	before := paddockTables(t, ns)
	if n := strings.Count(before, "paddock:vm:"); n == 0 {
		t.Fatalf("no VM rules in paddock's tables:\n%s", before)
	}

	p.signal(t, syscall.SIGKILL)
	p.wait(t, 10*time.Second)
	answer("paddockd down")
	if down := paddockTables(t, ns); down != before {
		t.Errorf("the tables changed while paddockd was down:\n%s", lineDiff(before, down))
	}
	e.daemon(t, inNetns(ns)) // stopped by the env at the end
	for name := range vms {
		if vm := inspectVM(t, e, name); vm.Status != "running" {
			t.Fatalf("%s after the restart: %s (%s)", name, vm.Status, vm.Reason)
		}
	}
	answer("after restart")
	after := paddockTables(t, ns)
	if after != before {
		t.Errorf("paddock's tables after kill -9 and restart differ from before:\n%s\n--- before:\n%s\n--- after:\n%s", lineDiff(before, after), before, after)
	}
	seen := map[string]bool{}
	for _, l := range strings.Split(after, "\n") {
		if strings.Contains(l, "paddock:vm:") {
			if seen[l] {
				t.Errorf("duplicate rule after the restart: %s", strings.TrimSpace(l))
			}
			seen[l] = true
		}
	}
	ids := map[string]bool{}
	for name := range vms {
		id := inspectVM(t, e, name).ID
		ids[id] = true
		if !strings.Contains(after, "paddock:vm:"+id) {
			t.Errorf("no rules tagged for %s (%s)", name, id)
		}
	}
	t.Logf("tables: %d lines, %d VM rules, identical after the restart: %v", strings.Count(after, "\n"), strings.Count(after, "paddock:vm:"), after == before)

	e.cli(t, nil, "rm", "--force", "one", "two").ok(t, "rm")
	end := paddockTables(t, ns)
	if strings.Contains(end, "paddock:vm:") {
		t.Errorf("VM rules left after rm:\n%s", end)
	}
	if l := e.leaks(t, ns); l.host()+l.dirs != 0 {
		t.Fatalf("after rm: %+v %v", l, l.detail)
	}
	for name, port := range vms {
		if got, err := httpGet(top.Client, netip.AddrPortFrom(nettopo.HostClientIP, uint16(port)).String()); err == nil {
			t.Errorf("%s's port %d still answers after rm: %q", name, port, got)
		}
	}
	if now := nsNft(t, ns, "", "-a", "list", "table", "inet", "canary"); now != canary {
		t.Errorf("the canary table changed:\n%s\n--- now:\n%s", canary, now)
	}
	nsNft(t, ns, "", "delete", "table", "inet", "canary")
}

// noCaps is the command modifier running paddockd in ns as the
// unprivileged daemonUID with no capability at all (none effective,
// permitted, inheritable, ambient or in the bounding set); env is added
// to its environment.
func noCaps(t *testing.T, e *env, ns string, env ...string) func(*exec.Cmd) {
	setpriv := testenv.RequireTool(t, "setpriv", "util-linux")
	return func(c *exec.Cmd) {
		nsenter, _ := exec.LookPath("nsenter")
		c.Path = nsenter // enters ns, then execs setpriv, which execs paddockd: one PID
		c.Args = []string{nsenter, "--net=/run/netns/" + ns, "--", setpriv,
			fmt.Sprintf("--reuid=%d", daemonUID), fmt.Sprintf("--regid=%d", daemonUID), "--clear-groups",
			"--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--",
			bin("paddockd"), "--config", e.cfg}
		c.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/nonexistent"}, env...)
	}
}

// requireNoCaps checks the daemon process p is paddockd as daemonUID with
// no capability at all.
func requireNoCaps(t *testing.T, p *proc) {
	t.Helper()
	pid := p.cmd.Process.Pid
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) != "paddockd" {
		t.Fatalf("process %d is %q, not paddockd", pid, comm)
	}
	for _, k := range []string{"CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"} {
		if v := capLine(t, pid, k); v != "0000000000000000" {
			t.Fatalf("paddockd %s = %s, want 0000000000000000", k, v)
		}
	}
	if uid := capLine(t, pid, "Uid"); !strings.HasPrefix(uid, fmt.Sprint(daemonUID)) {
		t.Fatalf("paddockd Uid: %s", uid)
	}
	t.Logf("paddockd pid %d: uid %d, CapEff %s", pid, daemonUID, capLine(t, pid, "CapEff"))
}

// Issue 11, acceptance, item 6: vm.network = "user" with paddockd holding
// no capability at all (CapEff 0): the guest reaches the uplink (which
// sees the daemon namespace's address), and -p 18080:8080 answers on the
// daemon namespace's addresses, its 127.0.0.1 and from the client
// namespace; inspect says user mode.
func TestNetUserMode(t *testing.T) {
	testenv.RequireTool(t, "passt", "passt")
	e, ns, reg, _ := rootlessEnv(t, "network = \"user\"\n")
	top := nettopo.New(t, ns) // passt needs a default-route interface: the uplink
	pushTo(t, reg+"/demo:1", demoImage(t))
	p := e.daemon(t, noCaps(t, e, ns))
	requireNoCaps(t, p)
	e.cli(t, nil, "image", "pull", reg+"/demo:1").ok(t, "pull")
	e.cli(t, nil, "run", "--image", reg+"/demo:1", "--name", "u", "-p", "18080:8080").ok(t, "run -p 18080:8080")

	vm := inspectVM(t, e, "u")
	if vm.Network == nil || vm.Network.Mode != "user" {
		t.Errorf("inspect --json network: %+v, want mode user", vm.Network)
	}
	if out := e.cli(t, nil, "inspect", "u").ok(t, "inspect"); !inspectField(out, "Network", "user") || !strings.Contains(out, "18080:8080/tcp") {
		t.Errorf("paddock inspect does not say user mode and 18080:8080/tcp:\n%s", out)
	}
	if l := e.leaks(t, ns); l.passts != 1 || l.taps != 0 || l.rules != 0 {
		t.Errorf("user-mode VM: %+v, want one passt, no tap, no packet rules: %v", l, l.detail)
	}

	// Egress: the uplink sees the daemon namespace's address.
	before := len(top.HTTP.Seen())
	out, code := guestSh(t, e, "u", "$b timeout 30 $b wget -qO- "+top.URL("/ip"))
	if code != 0 || strings.TrimSpace(out) != nettopo.HostUplinkIP.String() {
		t.Errorf("guest -> uplink in user mode: exit %d %q, want %s", code, out, nettopo.HostUplinkIP)
	}
	seen := top.HTTP.Seen()[before:]
	if len(seen) != 1 || seen[0] != nettopo.HostUplinkIP {
		t.Errorf("the uplink server saw %v, want one request from %s", seen, nettopo.HostUplinkIP)
	}
	t.Logf("egress: guest saw itself as %q; uplink saw %v", strings.TrimSpace(out), seen)

	// Published port (HTTP: the client speaks first, see passt's bugs).
	guestHTTPD(t, e, "u", 8080, "hello-from-user-mode")
	want := "hello-from-user-mode\n"
	waitHTTP(t, top.Daemon, netip.AddrPortFrom(nettopo.HostUplinkIP, 18080).String(), want, "daemon ns -> its own uplink address:18080")
	waitHTTP(t, top.Daemon, "127.0.0.1:18080", want, "daemon ns -> 127.0.0.1:18080")
	waitHTTP(t, top.Client, netip.AddrPortFrom(nettopo.HostClientIP, 18080).String(), want, "client -> daemon ns:18080")
	ports := e.cli(t, nil, "ports", "u").ok(t, "ports")
	if !strings.Contains(ports, "0.0.0.0:18080/tcp") || !strings.Contains(ports, "8080/tcp") {
		t.Errorf("paddock ports does not list 18080 -> 8080:\n%s", ports)
	}

	e.cli(t, nil, "rm", "--force", "u").ok(t, "rm")
	if l := e.leaks(t, ns); l.host()+l.dirs != 0 {
		t.Fatalf("after rm: %+v %v", l, l.detail)
	}
	if _, err := httpGet(top.Daemon, "127.0.0.1:18080"); err == nil {
		t.Errorf("port 18080 still answers after rm")
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("daemon exit %d", code)
	}
}

// refusedNaming checks r is a refusal whose message holds every one of want.
func refusedNaming(t *testing.T, what string, r result, want ...string) {
	t.Helper()
	if r.code == 0 {
		t.Errorf("%s: accepted, want a refusal naming %q\n%s", what, want, r.stdout)
		return
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("%s: refusal does not name %q: %s", what, w, strings.TrimSpace(r.stderr))
			return
		}
	}
	t.Logf("%s: %s", what, strings.TrimSpace(r.stderr))
}

// vmRecord is what of a VM a refused start must leave as it was: its
// identity and spec. (Its status may become "error", with the refusal as
// its reason: that is how every failed start is recorded.)
func vmRecord(t *testing.T, e *env, name string) string {
	t.Helper()
	vm := inspectVM(t, e, name)
	b, err := json.Marshal(struct {
		ID   string
		Spec any
	}{vm.ID, vm.Spec})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// createThenStart tries a VM with args: a refusal at create must leave no
// VM; a create that passes must be followed by a refused start that leaves
// the record as it was. Either refusal must name every one of want; then
// no host object of the VM is left.
func createThenStart(t *testing.T, e *env, ns, image, name string, between func(), args []string, want ...string) {
	t.Helper()
	r := e.cli(t, nil, append([]string{"create", name, "--image", image}, args...)...)
	if r.code != 0 {
		refusedNaming(t, "create "+strings.Join(args, " "), r, want...)
		if out := e.cli(t, nil, "ls", "-q").ok(t, "ls"); strings.Contains(out, name) {
			t.Errorf("a refused create left %s", name)
		}
	} else {
		if between != nil {
			between()
		}
		rec := vmRecord(t, e, name)
		r := e.cli(t, nil, "start", name)
		refusedNaming(t, fmt.Sprintf("start of %s (created with %q)", name, args), r, want...)
		switch {
		case r.code == 0: // failed above; the VM is removed before the leak count
			e.cli(t, nil, "rm", "--force", name).ok(t, "rm the started "+name)
		default:
			if now := vmRecord(t, e, name); now != rec {
				t.Errorf("a refused start changed %s:\n%s\nnow:\n%s", name, rec, now)
			}
			if vm := inspectVM(t, e, name); vm.Status != "created" && vm.Status != "error" {
				t.Errorf("after a refused start %s is %s (%s)", name, vm.Status, vm.Reason)
			}
			assertRecoveryCleared(t, e, name)
		}
	}
	if l := e.leaks(t, ns); l.host() != 0 {
		t.Errorf("after %s %v: leaked %+v %v", name, args, l, l.detail)
	}
	e.cli(t, nil, "rm", "--force", name) // gone already when create was refused
}

// Issue 11, bad input: each a clear refusal at create or start naming the
// value, nothing half-applied. Part one, a root daemon in bridge mode;
// part two, an unprivileged user-mode daemon.
func TestNetBadInput(t *testing.T) {
	t.Run("bridge", func(t *testing.T) {
		e, _, ns, image := vmEnvImage(t, "", nil)
		e.cli(t, nil, "create", "holder", "--image", image, "-p", "18090:8080").ok(t, "create holder")
		for _, tc := range []struct {
			args []string
			want []string
		}{
			{[]string{"-p", "70000:80"}, []string{"70000", "out of range"}},
			{[]string{"-p", "18081:80", "-p", "18081:81"}, []string{"18081", "twice"}},
			{[]string{"-p", "18082:80", "-p", "18082:80"}, []string{"18082", "twice"}},
			{[]string{"-p", "203.0.113.7:18080:80"}, []string{"203.0.113.7", "not an address of this host"}},
			{[]string{"-p", "18090:80"}, []string{"18090", "holder"}},
			{[]string{"--network", "shared:"}, []string{"shared:"}},
		} {
			r := e.cli(t, nil, append([]string{"create", "bad", "--image", image}, tc.args...)...)
			refusedNaming(t, "create "+strings.Join(tc.args, " "), r, tc.want...)
		}
		if out := strings.Fields(e.cli(t, nil, "ls", "-q").ok(t, "ls")); len(out) != 1 {
			t.Errorf("refused creates left VMs: %q", out)
		}

		// A host port a listener holds in the daemon's namespace.
		d, err := nettopo.OpenNetns(ns)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		ln, err := d.Listen("tcp", "0.0.0.0:18091")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		createThenStart(t, e, ns, image, "listened", nil, []string{"-p", "18091:8080"}, "18091", "in use", fmt.Sprint(os.Getpid()))

		// A HOSTIP the host had at create and lost before start.
		for _, args := range [][]string{
			{"link", "add", "ntlost0", "type", "veth", "peer", "name", "ntlost1"}, // no dummy module on every kernel
			{"addr", "add", "198.18.5.5/32", "dev", "ntlost0"},
			{"link", "set", "ntlost0", "up"},
		} {
			if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
				t.Fatalf("ip %v: %v %s", args, err, out)
			}
		}
		createThenStart(t, e, ns, image, "lostip", func() {
			if out, err := exec.Command("ip", "-n", ns, "addr", "del", "198.18.5.5/32", "dev", "ntlost0").CombinedOutput(); err != nil {
				t.Fatalf("ip addr del: %v %s", err, out)
			}
		}, []string{"-p", "198.18.5.5:18085:8080"}, "198.18.5.5")
		if vm := inspectVM(t, e, "holder"); vm.Status != "created" {
			t.Errorf("holder: %s", vm.Status)
		}
	})

	t.Run("user", func(t *testing.T) {
		testenv.RequireTool(t, "passt", "passt")
		e, ns, reg, _ := rootlessEnv(t, "network = \"user\"\n")
		uplink(t, ns)
		pushTo(t, reg+"/demo:1", demoImage(t))
		image := reg + "/demo:1"
		p := e.daemon(t, noCaps(t, e, ns))
		requireNoCaps(t, p)
		e.cli(t, nil, "image", "pull", image).ok(t, "pull")

		// A privileged host port: the daemon (no CAP_NET_BIND_SERVICE) can
		// publish it for nobody, admin callers (root, here) included.
		createThenStart(t, e, ns, image, "priv", nil, []string{"-p", "80:8080"}, "80", "privileged")

		// passt missing: paddockd's PATH has everything but passt.
		farm := filepath.Join(e.dir, "nopasst")
		if err := os.Mkdir(farm, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, dir := range []string{"/usr/sbin", "/usr/bin"} {
			ents, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, en := range ents {
				if strings.HasPrefix(en.Name(), "passt") {
					continue
				}
				_ = os.Symlink(filepath.Join(dir, en.Name()), filepath.Join(farm, en.Name())) // the first of a name wins, as in PATH
			}
		}
		p.signal(t, syscall.SIGTERM)
		p.wait(t, 30*time.Second)
		p = e.daemon(t, noCaps(t, e, ns, "PATH="+farm))
		createThenStart(t, e, ns, image, "nopasst", nil, nil, "passt")
		p.signal(t, syscall.SIGTERM)
		if code := p.wait(t, 30*time.Second); code != 0 {
			t.Fatalf("daemon exit %d", code)
		}
	})
}

// inspectField reports whether paddock inspect's output has the field name
// starting with value, whatever the column width.
func inspectField(out, name, value string) bool {
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == name && strings.HasPrefix(strings.TrimSpace(v), value) {
			return true
		}
	}
	return false
}
