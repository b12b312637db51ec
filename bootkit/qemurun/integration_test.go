package qemurun

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/host/vmm/qemu"
	"github.com/paddock-vm/paddock/internal/guesttest"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// testNetns is a network namespace created by the test, held by one locked
// OS thread; Do runs functions on that thread (sockets they create, and
// processes they start, live in the namespace). The host's interfaces are
// never touched.
type testNetns struct {
	ops chan func()
}

func newTestNetns(t testing.TB) *testNetns {
	t.Helper()
	n := &testNetns{ops: make(chan func())}
	ready := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		ns, err := netns.New()
		if err != nil {
			ready <- err
			return
		}
		defer ns.Close()
		ready <- nil
		for f := range n.ops {
			f()
		}
	}()
	if err := <-ready; err != nil {
		t.Fatalf("creating a network namespace: %v", err)
	}
	t.Cleanup(func() { close(n.ops) })
	return n
}

func (n *testNetns) Do(f func()) {
	done := make(chan struct{})
	n.ops <- func() { defer close(done); f() }
	<-done
}

const (
	hostIP  = "10.213.0.1"
	guestIP = "10.213.0.2"
	tapName = "pdktest0"
)

func (n *testNetns) setupTap(t testing.TB) {
	t.Helper()
	var err error
	n.Do(func() {
		lo, e := netlink.LinkByName("lo")
		if e == nil {
			_ = netlink.LinkSetUp(lo)
		}
		tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: tapName}, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR}
		if err = netlink.LinkAdd(tap); err != nil {
			return
		}
		link, e := netlink.LinkByName(tapName)
		if e != nil {
			err = e
			return
		}
		addr, _ := netlink.ParseAddr(hostIP + "/24")
		if err = netlink.AddrAdd(link, addr); err != nil {
			return
		}
		err = netlink.LinkSetUp(link)
	})
	if err != nil {
		t.Fatalf("tap in test netns: %v", err)
	}
}

func TestBootAgent(t *testing.T) {
	f := getFixture(t)
	t.Logf("kit import (vmlinux extraction + initramfs): %v; %d modules, initramfs %s", f.ImportTime.Round(time.Millisecond), len(f.Kit.Modules), f.Kit.InitramfsPath())
	tmp := t.TempDir()
	rootImg := guesttest.RootDisk(t, tmp, map[string]any{
		"config": map[string]any{
			"Entrypoint": []string{"/bin/sh", "-c"},
			"Cmd":        []string{`echo "$(id -u):$(id -g) $(pwd) $GREETING" > /tmp/main.out; exec sleep 3600`},
			"Env":        []string{"PATH=/bin", "GREETING=hello-env"},
			"WorkingDir": "/srv",
			"User":       "app",
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	ns := newTestNetns(t)
	ns.setupTap(t)
	console := filepath.Join(tmp, "console.log")
	cfg := Config{Machine: qemu.Machine{
		Kernel: f.Kit.VmlinuxPath(), Initrd: f.Kit.InitramfsPath(), Disks: []vmm.Disk{{Path: rootImg}},
		ControlSocket: filepath.Join(tmp, "ctl.sock"), Tap: &vmm.Tap{Name: tapName},
		Cmdline: "paddock.root=LABEL=paddockroot paddock.hostname=guest1 " +
			"paddock.ip=" + guestIP + "/24 paddock.gw=" + hostIP + " paddock.dns=" + hostIP,
	}, ConsoleLog: console}
	var vm *VM
	var err error
	ns.Do(func() { vm, err = Start(cfg) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		vm.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(console)
			t.Logf("guest console:\n%s", b)
		}
	})
	conn, err := vm.DialControl(ctx)
	if err != nil {
		t.Fatal(err)
	}
	helloCtx, hcancel := context.WithTimeout(ctx, 60*time.Second)
	c, err := agent.NewClient(helloCtx, conn, nil)
	hcancel()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ready := time.Since(vm.Started)
	h := c.Hello()
	if h.BootError != "" || h.Kit != "debian" || h.Hostname != "guest1" || h.AgentVersion != "test" {
		t.Fatalf("hello: %+v", h)
	}
	phases := map[string]agent.Phase{}
	var breakdown []string
	for _, p := range h.Phases {
		phases[p.Name] = p
		breakdown = append(breakdown, fmt.Sprintf("%s %.0f ms", p.Name, float64(p.Duration())/1e6))
	}
	for _, want := range []string{"kernel", "modules", "root", "switch_root", "network", "control"} {
		if _, ok := phases[want]; !ok {
			t.Errorf("hello has no %q phase: %+v", want, h.Phases)
		}
	}
	t.Logf("agent ready %.2f s after QEMU start (guest ready at %.2f s of guest uptime); phases: %s",
		ready.Seconds(), float64(h.ReadyNS)/1e9, strings.Join(breakdown, ", "))

	rctx := func() context.Context {
		c, cancel := context.WithTimeout(ctx, 20*time.Second)
		t.Cleanup(cancel)
		return c
	}
	var rtts []time.Duration
	for i := 0; i < 20; i++ {
		s := time.Now()
		if _, err := c.Ping(rctx()); err != nil {
			t.Fatal(err)
		}
		rtts = append(rtts, time.Since(s))
	}
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	t.Logf("ping RTT p50 %v, max %v", rtts[len(rtts)/2].Round(time.Microsecond), rtts[len(rtts)-1].Round(time.Microsecond))

	run := func(req agent.ExecRequest, stdin string) *agent.RunResult {
		t.Helper()
		var in io.Reader
		if stdin != "" {
			in = strings.NewReader(stdin)
		}
		r, err := c.Run(rctx(), req, in, 0)
		if err != nil {
			t.Fatalf("exec %q: %v", req.Argv, err)
		}
		return r
	}
	sh := func(script string) *agent.RunResult {
		return run(agent.ExecRequest{Argv: []string{"/bin/sh", "-c", script}}, "")
	}

	// exec: a file from the image, exit codes, stdin, user, tty
	if r := run(agent.ExecRequest{Argv: []string{"cat", "/data/hello.txt"}}, ""); string(r.Stdout) != "hello from the image\n" || r.Status.Code != 0 {
		t.Errorf("cat: %q %v", r.Stdout, r.Status)
	}
	if r := sh("echo to-stderr >&2; exit 7"); r.Status.Code != 7 || string(r.Stderr) != "to-stderr\n" {
		t.Errorf("exit 7: %v %q", r.Status, r.Stderr)
	}
	if r := run(agent.ExecRequest{Argv: []string{"cat"}}, "piped through\n"); string(r.Stdout) != "piped through\n" {
		t.Errorf("stdin: %q", r.Stdout)
	}
	if r := run(agent.ExecRequest{Argv: []string{"id", "-u"}, User: "app"}, ""); string(r.Stdout) != "1000\n" {
		t.Errorf("user app: %q", r.Stdout)
	}
	if r := run(agent.ExecRequest{Argv: []string{"tty"}, TTY: true}, ""); !strings.HasPrefix(string(r.Stdout), "/dev/pts/") {
		t.Errorf("tty: %q %v", r.Stdout, r.Status)
	}
	p, err := c.Exec(rctx(), agent.ExecRequest{Argv: []string{"sleep", "60"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(rctx(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Wait(rctx()); err != nil || st.Signal != int(syscall.SIGKILL) {
		t.Errorf("killed: %v %v", st, err)
	}

	// the image's entrypoint ran with its Env, WorkingDir and User
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := sh("cat /tmp/main.out 2>/dev/null")
		if string(r.Stdout) == "1000:1000 /srv hello-env\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("main process output %q", r.Stdout)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// the drivers of devices this VM has are loaded (its NIC's before the
	// hello), those it lacks (vsock here) are not, and the power button's,
	// deferred past readiness, are in the end
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		r := sh("cat /proc/modules")
		mods := string(r.Stdout)
		if !strings.Contains(mods, "ext4 ") || !strings.Contains(mods, "virtio_net ") || strings.Contains(mods, "vmw_vsock_virtio_transport ") {
			t.Errorf("/proc/modules: %q", mods)
			break
		}
		if strings.Contains(mods, "evdev ") {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the late modules did not load: %q", mods)
			break
		}
	}
	hl, err := c.Health(rctx())
	if err != nil || hl.Status != "ok" || hl.Main.State != "running" || hl.Main.PID <= 1 {
		t.Errorf("health: %+v %v", hl, err)
	}
	st, err := c.Stats(rctx())
	if err != nil || st.MemTotal == 0 || st.DiskTotal == 0 || len(st.Net) == 0 {
		t.Errorf("stats: %+v %v", st, err)
	}
	if r := sh("hostname; cat /etc/resolv.conf; grep guest1 /etc/hosts; mount | grep ' / '"); !strings.HasPrefix(string(r.Stdout), "guest1\n") || !strings.Contains(string(r.Stdout), "\nnameserver "+hostIP+"\n") ||
		!strings.Contains(string(r.Stdout), guestIP+"\tguest1") || !strings.Contains(string(r.Stdout), "/dev/vda on / type ext4") {
		t.Errorf("hostname/etc/mount: %q", r.Stdout)
	}

	// ports: a listener started with exec appears; the host reaches it
	if r := sh("httpd -p 8080 -h /www"); r.Status.Code != 0 {
		t.Fatalf("httpd: %v %q", r.Status, r.Stderr)
	}
	found := false
	for i := 0; i < 50 && !found; i++ {
		ports, err := c.Ports(rctx())
		if err != nil {
			t.Fatal(err)
		}
		for _, pt := range ports {
			if pt.Port == 8080 && strings.HasPrefix(pt.Proto, "tcp") {
				found = true
				t.Logf("port: %+v", pt)
			}
		}
		if !found {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if !found {
		t.Error("port 8080 not reported")
	}
	var body []byte
	ns.Do(func() {
		conn, err := net.DialTimeout("tcp", guestIP+":8080", 10*time.Second)
		if err != nil {
			body = []byte(err.Error())
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.WriteString(conn, "GET /index.html HTTP/1.0\r\n\r\n")
		body, _ = io.ReadAll(io.LimitReader(conn, 1<<16))
	})
	if !strings.Contains(string(body), "paddock-guest-web") {
		t.Errorf("host → guest HTTP: %q", body)
	}

	// the guest reaches the host side of its tap
	var l net.Listener
	ns.Do(func() { l, err = net.Listen("tcp", hostIP+":9090") })
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan string, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(io.LimitReader(conn, 1024))
		got <- string(b)
	}()
	if r := sh("echo from-guest | nc " + hostIP + " 9090"); r.Status.Code != 0 {
		t.Errorf("guest → host nc: %v %q", r.Status, r.Stderr)
	}
	select {
	case s := <-got:
		if s != "from-guest\n" {
			t.Errorf("guest → host: %q", s)
		}
	case <-time.After(10 * time.Second):
		t.Error("guest → host: nothing received")
	}

	// shutdown → QEMU exits 0
	s := time.Now()
	if err := c.Shutdown(rctx(), false); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if _, err := vm.Wait(wctx); err != nil {
		t.Fatalf("qemu exit: %v", err)
	}
	t.Logf("shutdown → QEMU exit 0 in %v", time.Since(s).Round(time.Millisecond))
	if out, err := exec.Command("e2fsck", "-fn", rootImg).CombinedOutput(); err != nil {
		t.Errorf("e2fsck after shutdown: %v\n%s", err, out)
	}

	// the bare-kernel reference, measured in the same run
	bare, err := bareBoot(ctx, f, tmp, 1)
	if err != nil {
		t.Fatal(err)
	}
	agentPhases := phases["modules"].Duration() + phases["root"].Duration() + phases["switch_root"].Duration() + phases["network"].Duration()
	t.Logf("FIGURES: agent ready %.2f s | bare kernel → /init power-off %.2f s | ratio %.2f | agent phases (modules+root+switch_root+network) %.0f ms = %.0f%% of boot",
		ready.Seconds(), bare.Seconds(), ready.Seconds()/bare.Seconds(), float64(agentPhases)/1e6, 100*float64(agentPhases)/float64(ready))
}

// bareBoot boots the same kernel with an initramfs whose /init powers off at
// once (paddock.poweroff) and returns QEMU start → QEMU exit.
func bareBoot(ctx context.Context, f *fixture, tmp string, cpus int) (time.Duration, error) {
	vm, err := Start(Config{Machine: qemu.Machine{Kernel: f.Kit.VmlinuxPath(), CPUs: cpus, Initrd: f.bareInitrd, Cmdline: "paddock.poweroff"},
		ConsoleLog: filepath.Join(tmp, "bare.log"), NoHugePages: true}) // TCG, as the guest it is compared with
	if err != nil {
		return 0, err
	}
	defer vm.Kill()
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	end, err := vm.Wait(wctx)
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(tmp, "bare.log"))
		return 0, fmt.Errorf("bare boot: %w\n%s", err, b)
	}
	return end.Sub(vm.Started), nil
}
