package e2e

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/vishvananda/netns"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/imaging/imagetest"
)

// servicesImage is busybox plus a static program serving HTTP on 8080,
// HTTPS on 8443 and raw TCP on 9000 (SIGUSR1 closes HTTPS, SIGUSR2 reopens).
func servicesImage(t *testing.T) v1.Image {
	t.Helper()
	out := filepath.Join(t.TempDir(), "services")
	b := exec.Command("go", "build", "-o", out, "../imaging/imagetest/services")
	b.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := b.CombinedOutput(); err != nil {
		t.Fatalf("build services: %v %s", err, msg)
	}
	bin, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return imagetest.Image(t, &v1.Config{Entrypoint: []string{"/bin/services", "-http", ":8080", "-https", ":8443", "-tcp", ":9000"}, Env: []string{"PATH=/bin"}},
		imagetest.BusyboxLayer(t),
		imagetest.LayerTar(t, imagetest.Entry{Name: "bin/services", Body: string(bin), Mode: 0o755}))
}

func portsOf(t *testing.T, e *env, vm string) map[int]api.Port {
	t.Helper()
	var ps []api.Port
	out := e.cli(t, nil, "ports", vm, "--json").ok(t, "ports")
	if err := json.Unmarshal([]byte(out), &ps); err != nil {
		t.Fatalf("ports --json: %v %s", err, out)
	}
	m := map[int]api.Port{}
	for _, p := range ps {
		m[p.Port] = p
	}
	return m
}

func waitPorts(t *testing.T, e *env, vm string, want func(map[int]api.Port) bool) map[int]api.Port {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := portsOf(t, e, vm)
		if want(got) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("ports of %s never matched; last %+v", vm, got)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func statsOf(t *testing.T, e *env, vm string) api.VMStats {
	t.Helper()
	var st []api.VMStats
	out := e.cli(t, nil, "stats", vm, "--json").ok(t, "stats")
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st) != 1 {
		t.Fatalf("stats --json: %v %s", err, out)
	}
	return st[0]
}

// Acceptance (issue 6): ports with schemes and URLs, reconciled every scan;
// stats that move under load; auto-stop of idle VMs only.
func TestStatsPortsAutoStop(t *testing.T) {
	ns := newNetns(t)
	e := newEnv(t, "\n[vm]\nrun = \"on\"\nstart_timeout = \"90s\"\nstop_timeout = \"10s\"\n[stats]\ninterval = \"1s\"\nidle_cpu = 0.3\n")
	reg := registryIn(t, ns)
	pushTo(t, reg+"/services:1", servicesImage(t))
	e.daemon(t, inNetns(ns))
	t.Cleanup(func() { e.killVMMs(t) })
	e.bootKit(t)
	e.cli(t, nil, "image", "pull", reg+"/services:1").ok(t, "pull")
	e.cli(t, nil, "run", "--image", reg+"/services:1", "--name", "web", "--memory", "256MiB").ok(t, "run web")
	vm := inspectVM(t, e, "web")

	// Ports: exactly the three services, each with its scheme and a URL.
	three := func(m map[int]api.Port) bool { return len(m) == 3 }
	got := waitPorts(t, e, "web", three)
	for port, scheme := range map[int]string{8080: "http", 8443: "https", 9000: "tcp"} {
		p, ok := got[port]
		if !ok || p.Scheme != scheme || !strings.Contains(p.URL, ":"+itoa(port)) || !strings.HasPrefix(p.URL, scheme+"://") {
			t.Fatalf("port %d: %+v, want %s", port, p, scheme)
		}
	}
	// The HTTPS listener goes away and comes back: the set follows.
	execOut(t, e, "web", "", "sh", "-c", "kill -USR1 $(pidof services)")
	waitPorts(t, e, "web", func(m map[int]api.Port) bool { _, https := m[8443]; return len(m) == 2 && !https })
	execOut(t, e, "web", "", "sh", "-c", "kill -USR2 $(pidof services)")
	waitPorts(t, e, "web", three)

	// Stats: sane at rest, CPU rises under load. Rest is after boot has
	// settled.
	var idle api.VMStats
	restDeadline := time.Now().Add(60 * time.Second)
	for {
		idle = statsOf(t, e, "web")
		if idle.Guest != nil && idle.Guest.CPURate < 0.5 {
			break
		}
		if time.Now().After(restDeadline) {
			t.Fatalf("the guest never rests: %+v %+v", idle.Host, idle.Guest)
		}
		time.Sleep(time.Second)
	}
	if idle.Health != "healthy" || idle.Guest == nil || idle.Guest.MemTotal <= 0 || idle.Guest.MemTotal > 256<<20 || idle.Host.RSS <= 0 || idle.Host.DiskUsed <= 0 {
		t.Fatalf("stats at rest: %+v %+v", idle, idle.Guest)
	}
	load := exec.Command(bin("paddock"), "--socket", e.socket, "exec", "web", "--", "sh", "-c", "yes > /dev/null")
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	defer load.Process.Kill()
	var busy api.VMStats
	deadline := time.Now().Add(30 * time.Second)
	for {
		time.Sleep(1500 * time.Millisecond)
		busy = statsOf(t, e, "web")
		if busy.Guest != nil && busy.Guest.CPURate > idle.Guest.CPURate+0.3 && busy.Host.CPURate > idle.Host.CPURate {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CPU did not rise under load: idle %+v/%+v busy %+v/%+v", idle.Host, idle.Guest, busy.Host, busy.Guest)
		}
	}
	if busy.Guest.Sessions < 1 {
		t.Fatalf("the exec session is not counted: %+v", busy.Guest)
	}
	// Ending the client ends its session: the daemon kills what it ran.
	load.Process.Kill()
	load.Wait()

	// Auto-stop: idle stops by itself; an open exec session keeps its VM.
	e.cli(t, nil, "run", "--image", reg+"/services:1", "--name", "idle", "--auto-stop", "20s").ok(t, "run idle")
	e.cli(t, nil, "run", "--image", reg+"/services:1", "--name", "kept", "--auto-stop", "20s").ok(t, "run kept")
	e.cli(t, nil, "run", "--image", reg+"/services:1", "--name", "conn", "--auto-stop", "20s").ok(t, "run conn")
	session := exec.Command(bin("paddock"), "--socket", e.socket, "exec", "kept", "--", "sleep", "600")
	if err := session.Start(); err != nil {
		t.Fatal(err)
	}
	defer session.Process.Kill()
	// An established inbound connection (made from the bridge's side, in
	// the test's namespace) that sends nothing and stays open.
	connIP := strings.Split(inspectVM(t, e, "conn").IP, "/")[0]
	conn := dialIn(t, ns, connIP+":8080")
	defer conn.Close()
	if out := e.cli(t, nil, "inspect", "idle").ok(t, "inspect"); !strings.Contains(out, "Auto-stop at:") || !strings.Contains(out, "Last activity:") {
		t.Fatalf("inspect lacks activity:\n%s", out)
	}
	stopped := waitStatusTimeout(t, e, "idle", "running", 60*time.Second)
	if stopped.Status == "stopping" {
		stopped = waitStatusTimeout(t, e, "idle", "stopping", 60*time.Second)
	}
	if stopped.Status != "stopped" || !strings.Contains(stopped.Reason, "auto-stop") {
		t.Fatalf("idle VM: %s %q", stopped.Status, stopped.Reason)
	}
	if k := inspectVM(t, e, "kept"); k.Status != "running" {
		t.Fatalf("VM with an open exec session was stopped: %s %q", k.Status, k.Reason)
	}
	if k := inspectVM(t, e, "conn"); k.Status != "running" {
		t.Fatalf("VM with an established inbound connection was stopped: %s %q", k.Status, k.Reason)
	}
	if out := e.cli(t, nil, "inspect", "conn").ok(t, "inspect conn"); !strings.Contains(out, "inbound TCP connection") {
		t.Fatalf("inspect does not say what keeps conn alive:\n%s", out)
	}
	// Health: reachable, root writable, clock in step.
	if out := e.cli(t, nil, "health", "kept").ok(t, "health"); !strings.Contains(out, "healthy") || !strings.Contains(out, "root writable true") {
		t.Fatalf("health: %s", out)
	}
	_ = vm
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func waitStatusTimeout(t *testing.T, e *env, name, from string, d time.Duration) api.VM {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		vm := inspectVM(t, e, name)
		if vm.Status != from {
			return vm
		}
		if time.Now().After(deadline) {
			t.Fatalf("VM %s still %s after %s:\n%s\n%s", name, from, d, e.cli(t, nil, "inspect", name).stdout, e.cli(t, nil, "stats", name, "--json").stdout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// dialIn opens a TCP connection from inside the namespace ns (the socket is
// made on a thread that entered it, and stays there).
func dialIn(t *testing.T, ns, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		h, herr := netns.GetFromName(ns)
		if herr != nil {
			err = herr
			return
		}
		defer h.Close()
		if err = netns.Set(h); err != nil {
			return
		}
		// The guest's service may still be starting: retry a while.
		deadline := time.Now().Add(30 * time.Second)
		for {
			c, err = net.DialTimeout("tcp", addr, 5*time.Second)
			if err == nil || time.Now().After(deadline) {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	<-done
	if err != nil {
		t.Fatalf("dial %s in %s: %v", addr, ns, err)
	}
	return c
}
