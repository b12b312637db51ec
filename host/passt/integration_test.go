package passt_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/host/cgroup"
	"github.com/paddock-vm/paddock/host/passt"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/host/vmm/qemu"
	"github.com/paddock-vm/paddock/internal/guesttest"
	"github.com/paddock-vm/paddock/internal/testenv"
	"github.com/paddock-vm/paddock/netspec"
)

// The stand-in daemon: the test binary re-run as an unprivileged uid with
// no capability, in the test's "host" network namespace.
const (
	helperEnv = "PADDOCK_PASST_TEST_DAEMON" // start | try | stop
	inputEnv  = "PADDOCK_PASST_TEST_INPUT"
	unprivUID = 65534
)

// handles is what the stand-in daemon persists: passt's and the VMM's.
type handles struct {
	Passt *passt.Process `json:"passt"`
	VMM   *vmm.Process   `json:"vmm"`
}

type helperInput struct {
	Passt        passt.Spec `json:"passt"`
	VMM          vmm.Spec   `json:"vmm"`
	CgroupParent string     `json:"cgroup_parent"`
	Handles      handles    `json:"handles"`
	RunRoot      string     `json:"run_root"`
}

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helper(mode))
	}
	code := m.Run()
	guesttest.Cleanup()
	os.Exit(code)
}

func helper(mode string) int {
	var in helperInput
	if err := json.Unmarshal([]byte(os.Getenv(inputEnv)), &in); err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	switch mode {
	case "start": // passt, then QEMU on its socket; print the handles; wait to be killed
		if in.CgroupParent != "" {
			leaf, err := vmm.CreateCgroup(ctx, in.CgroupParent, in.VMM.VMID, cgroup.Limits{})
			if err != nil {
				fmt.Println("ERR cgroup:", err)
				return 1
			}
			in.Passt.Cgroup = leaf
		}
		p, err := passt.Start(ctx, in.Passt)
		if err != nil {
			fmt.Println("ERR passt:", err)
			return 1
		}
		in.VMM.Stream = &vmm.Stream{Socket: p.Socket, MAC: "02:00:00:0a:0b:0c"}
		in.VMM.Cgroup = in.CgroupParent
		v, err := qemu.New().Start(ctx, in.VMM)
		if err != nil {
			_ = passt.Stop(ctx, p)
			fmt.Println("ERR qemu:", err)
			return 1
		}
		b, _ := json.Marshal(handles{Passt: p, VMM: v})
		fmt.Println(string(b))
		_, _ = os.Stdin.Read(make([]byte, 1)) // SIGKILLed while waiting here
		return 0
	case "try": // a passt that must not start
		p, err := passt.Start(ctx, in.Passt)
		if err == nil {
			_ = passt.Stop(ctx, p)
			fmt.Println("STARTED")
			return 1
		}
		fmt.Println("ERR", strings.ReplaceAll(err.Error(), "\n", " "))
		return 0
	case "stop": // a restarted daemon: re-adopt, refuse what is not provably its own, stop
		h := in.Handles
		if ok, err := passt.Probe(h.Passt); !ok || err != nil {
			fmt.Println("ERR probe passt:", ok, err)
			return 1
		}
		d := qemu.New()
		if s, err := d.Probe(h.VMM); s != vmm.StateRunning || err != nil {
			fmt.Println("ERR probe qemu:", s, err)
			return 1
		}
		found, err := passt.Find(vmm.Owner{UID: os.Geteuid(), RunRoot: in.RunRoot, Cgroup: in.CgroupParent})
		if err != nil || len(found) != 1 || !found[0].Ours || found[0].PID != h.Passt.PID {
			fmt.Printf("ERR Find: %v %+v\n", err, found)
			return 1
		}
		fmt.Println("FOUND", found[0].Why)
		// the same pid and argv, but a socket served by another process and
		// no cgroup to vouch: not provably ours, left alone
		decoy := filepath.Join(in.RunRoot, "decoy.sock")
		l, err := net.Listen("unix", decoy)
		if err != nil {
			fmt.Println("ERR decoy:", err)
			return 1
		}
		fake := *h.Passt
		fake.Socket, fake.Cgroup = decoy, ""
		err = passt.Stop(ctx, &fake)
		l.Close()
		if !errors.Is(err, passt.ErrNotOurs) {
			fmt.Println("ERR Stop with a decoy socket:", err)
			return 1
		}
		if ok, _ := passt.Probe(h.Passt); !ok {
			fmt.Println("ERR passt killed through a decoy handle")
			return 1
		}
		fmt.Println("REFUSED", strings.ReplaceAll(err.Error(), "\n", " "))
		// the real stop, proven by the socket alone (no cgroup in the handle)
		real := *h.Passt
		real.Cgroup = ""
		if err := passt.Stop(ctx, &real); err != nil {
			fmt.Println("ERR Stop:", err)
			return 1
		}
		if ok, _ := passt.Probe(h.Passt); ok {
			fmt.Println("ERR passt still running after Stop")
			return 1
		}
		if err := d.Kill(ctx, h.VMM); err != nil {
			fmt.Println("ERR qemu Kill:", err)
			return 1
		}
		fmt.Println("STOPPED")
		return 0
	}
	fmt.Println("ERR mode", mode)
	return 1
}

// topo is the test's network: a "host" namespace (where the stand-in
// daemon, passt and QEMU run) with 192.0.2.2/24 on a veth whose peer, in an
// "uplink" namespace standing for the internet, has 192.0.2.1 and an HTTP
// server. Both namespaces are the test's own; nothing on the real host is
// touched.
type topo struct {
	orig, host, uplink netns.NsHandle
	seen               chan string // remote addresses the uplink server saw
}

func newTopo(t *testing.T) *topo {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tp := &topo{seen: make(chan string, 16)}
	var err error
	if tp.orig, err = netns.Get(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.orig.Close() })
	defer func() {
		if err := netns.Set(tp.orig); err != nil {
			panic(err) // never hand a thread in a test namespace back
		}
	}()
	for _, ns := range []*netns.NsHandle{&tp.host, &tp.uplink} {
		if *ns, err = netns.New(); err != nil {
			t.Fatal(err)
		}
		h := *ns
		t.Cleanup(func() { h.Close() })
	}
	hh, err := netlink.NewHandleAt(tp.host)
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	uh, err := netlink.NewHandleAt(tp.uplink)
	if err != nil {
		t.Fatal(err)
	}
	defer uh.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "up0", PeerNamespace: netlink.NsFd(tp.uplink)}
	if err := hh.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	setup := func(h *netlink.Handle, name, addr string) {
		for _, n := range []string{"lo", name} {
			l, err := h.LinkByName(n)
			if err == nil {
				err = h.LinkSetUp(l)
			}
			if err != nil {
				t.Fatalf("%s: %v", n, err)
			}
		}
		l, _ := h.LinkByName(name)
		a, _ := netlink.ParseAddr(addr)
		if err := h.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
	}
	setup(hh, "eth0", "192.0.2.2/24")
	setup(uh, "up0", "192.0.2.1/24")
	l, _ := hh.LinkByName("eth0")
	if err := hh.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP("192.0.2.1")}); err != nil {
		t.Fatal(err)
	}
	// the uplink's HTTP server
	if err := netns.Set(tp.uplink); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "192.0.2.1:80")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case tp.seen <- r.RemoteAddr:
		default:
		}
		fmt.Fprint(w, "uplink-ok\n")
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return tp
}

// in runs fn on a thread inside ns (sockets fn opens live there).
func in[T any](t *testing.T, ns netns.NsHandle, fn func() (T, error)) (T, error) {
	t.Helper()
	var v T
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		orig, gerr := netns.Get()
		if gerr != nil {
			err = gerr
			return
		}
		defer orig.Close()
		if err = netns.Set(ns); err != nil {
			return
		}
		v, err = fn()
		if serr := netns.Set(orig); serr == nil {
			runtime.UnlockOSThread()
		} // else the thread dies with this goroutine
	}()
	<-done
	return v, err
}

// fetch GETs http://addr/ from namespace ns and returns the body.
func fetch(t *testing.T, ns netns.NsHandle, addr string) (string, error) {
	conn, err := in(t, ns, func() (net.Conn, error) { return net.DialTimeout("tcp", addr, 10*time.Second) })
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(conn, "GET / HTTP/1.0\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return string(b), err
}

// daemon runs the stand-in daemon in mode as uid 65534 with no capability,
// in the host namespace and (when set) born in the cgroup leaf cg.
func daemon(t *testing.T, tp *topo, mode string, input helperInput, cg string) (*exec.Cmd, *bufio.Reader, io.WriteCloser) {
	t.Helper()
	js, _ := json.Marshal(input)
	// /proc/self/exe: the test binary, whose directory uid 65534 may not
	// search
	cmd := &exec.Cmd{Path: "/proc/self/exe", Args: []string{"passt.test", "-test.run=^$"},
		Env: append(os.Environ(), helperEnv+"="+mode, inputEnv+"="+string(js))}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: unprivUID, Gid: unprivUID}}
	if cg != "" {
		f, err := cgroup.OpenDir(cg)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(f.Fd())
	}
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if _, err := in(t, tp.host, func() (struct{}, error) { return struct{}{}, cmd.Start() }); err != nil {
		t.Fatal(err)
	}
	return cmd, bufio.NewReader(out), stdin
}

// status returns fields of /proc/PID/status.
func status(t *testing.T, pid int) map[string]string {
	st, err := vmm.Status(pid)
	if err != nil {
		t.Fatalf("pid %d: %v", pid, err)
	}
	return st
}

// guestGet fetches the uplink's page from inside the guest with busybox nc
// (the static busybox's wget crashes in the guest). The guest half-closes
// first (stdin EOF); passt 2023.03 then does not always pass the server's
// FIN on, so nc is bounded by timeout and the body read from its output.
const guestGet = `printf 'GET / HTTP/1.0\r\nHost: u\r\n\r\n' | timeout 10 nc 192.0.2.1 80 | tail -n 1`

// TestUserModeGuest: real passt and a real QEMU guest, both started by a
// stand-in daemon running as uid 65534 with no capability, in a network
// namespace of the test's own: the guest reaches the uplink's HTTP server,
// a published port reaches a guest listener from the host side (127.0.0.1,
// the host's address) and from the uplink, a taken port is refused naming
// it, both processes survive a kill -9 of the daemon, and a restarted
// daemon re-adopts, refuses a handle it cannot prove, and stops them.
func TestUserModeGuest(t *testing.T) {
	testenv.RequireRoot(t, "network namespaces, cgroup delegation, an unprivileged uid")
	testenv.RequireTool(t, "passt", "passt")
	f := guesttest.Kit(t)
	mnt, _, err := cgroup.Mountpoint()
	testenv.Require(t, err == nil, fmt.Sprintf("no cgroup2 hierarchy: %v", err))
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	// files uid 65534 can use: the kit's kernel and initramfs, a root disk,
	// a run directory of its own
	work, err := os.MkdirTemp("", "pdk-passt-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	run := filepath.Join(work, "run")
	for _, d := range []string{work, run} {
		_ = os.MkdirAll(d, 0o755)
	}
	_ = os.Chmod(work, 0o755)
	if err := os.Chown(run, unprivUID, unprivUID); err != nil {
		t.Fatal(err)
	}
	copyFile := func(src, dst string) {
		b, err := os.ReadFile(src)
		if err == nil {
			err = os.WriteFile(dst, b, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	kernel, initrd := filepath.Join(work, "vmlinux"), filepath.Join(work, "initrd")
	copyFile(f.Kit.VmlinuxPath(), kernel)
	copyFile(f.Kit.InitramfsPath(), initrd)
	root := guesttest.RootDisk(t, filepath.Join(work, "disk"), guesttest.SleepConfig)
	_ = os.Chmod(filepath.Join(work, "disk"), 0o755)
	if err := os.Chown(root, unprivUID, unprivUID); err != nil {
		t.Fatal(err)
	}

	// a delegated cgroup for uid 65534, the daemon's leaf in it
	deleg := filepath.Join(mnt, fmt.Sprintf("pdktest-passt-%d.service", os.Getpid()))
	if err := os.Mkdir(deleg, 0o755); err != nil {
		t.Fatal(err)
	}
	sup := filepath.Join(deleg, "supervisor")
	t.Cleanup(func() {
		if subs, _ := cgroup.Find(deleg); len(subs) > 0 {
			t.Errorf("cgroups left behind: %v", subs)
			for _, s := range subs {
				_ = cgroup.Remove(context.Background(), s, true)
			}
		}
		_ = os.Remove(sup)
		if err := os.Remove(deleg); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if err := os.Mkdir(sup, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{deleg, filepath.Join(deleg, "cgroup.procs"), filepath.Join(deleg, "cgroup.threads"),
		filepath.Join(deleg, "cgroup.subtree_control"), sup, filepath.Join(sup, "cgroup.procs")} {
		if err := os.Chown(p, unprivUID, unprivUID); err != nil {
			t.Fatal(err)
		}
	}

	tp := newTopo(t)
	vmID := fmt.Sprintf("pt%d", os.Getpid())
	guestWeb := netspec.PortMapping{HostPort: 18080, GuestPort: 8080}
	input := helperInput{
		Passt: passt.Spec{VMID: vmID, RunDir: filepath.Join(run, vmID),
			Addr: netip.MustParsePrefix("10.0.2.15/24"), Gateway: netip.MustParseAddr("10.0.2.2"),
			DNS: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, Ports: []netspec.PortMapping{guestWeb}},
		VMM: vmm.Spec{VMID: vmID, Kernel: kernel, Initrd: initrd, Accel: vmm.AccelAuto,
			Cmdline: "paddock.root=/dev/vda paddock.hostname=ua paddock.ip=10.0.2.15/24 paddock.gw=10.0.2.2",
			Disks:   []vmm.Disk{{Path: root}}, RunDir: filepath.Join(run, vmID), ConsoleLogMax: 256 << 10},
		CgroupParent: deleg, RunRoot: run,
	}

	// --- daemon #1 (uid 65534, no capability) starts passt, then QEMU
	d1, out1, stdin1 := daemon(t, tp, "start", input, sup)
	line, err := out1.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "{") {
		_ = d1.Process.Kill()
		_ = d1.Wait()
		t.Fatalf("stand-in daemon: %q %v", line, err)
	}
	var h handles
	if err := json.Unmarshal([]byte(line), &h); err != nil || h.Passt == nil || h.VMM == nil {
		t.Fatalf("handles %q: %v", line, err)
	}
	// whatever happens, neither process outlives the test
	t.Cleanup(func() {
		kctx, kcancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer kcancel()
		for _, id := range []vmm.Ident{
			{PID: h.Passt.PID, StartTime: h.Passt.StartTime, BootID: h.Passt.BootID, Cmdline: h.Passt.Cmdline},
			{PID: h.VMM.PID, StartTime: h.VMM.StartTime, BootID: h.VMM.BootID, Cmdline: h.VMM.Cmdline},
		} {
			if s, _ := id.Probe(); s == vmm.StateRunning {
				t.Errorf("pid %d still running at cleanup", id.PID)
				_ = id.Kill(kctx, nil)
			}
		}
		_ = cgroup.Remove(kctx, filepath.Join(deleg, vmm.Tag(vmID)), true)
		if t.Failed() {
			for _, n := range []string{"console.log", "vmm.log", passt.LogName, passt.OutName} {
				b, _ := os.ReadFile(filepath.Join(input.VMM.RunDir, n))
				t.Logf("%s:\n%s", n, b)
			}
		}
	})
	stdin1.Close()
	t.Logf("handles: %s", strings.TrimSpace(line))
	leaf := filepath.Join(deleg, vmm.Tag(vmID))
	for name, pid := range map[string]int{"passt": h.Passt.PID, "QEMU": h.VMM.PID} {
		st := status(t, pid)
		if !strings.HasPrefix(st["Uid"], "65534\t65534") || st["CapEff"] != "0000000000000000" || st["CapPrm"] != "0000000000000000" || st["NoNewPrivs"] != "1" {
			t.Errorf("%s (pid %d): Uid %q CapEff %s CapPrm %s NoNewPrivs %s, want uid 65534, no capability, no_new_privs",
				name, pid, st["Uid"], st["CapEff"], st["CapPrm"], st["NoNewPrivs"])
		}
		if cg, err := cgroup.Of(pid); err != nil || cg != leaf {
			t.Errorf("%s in cgroup %q (%v), want the VM's leaf %s", name, cg, err, leaf)
		}
	}
	if h.VMM.Cgroup != leaf || h.Passt.Cgroup != leaf {
		t.Errorf("handles' cgroups %q %q, want %s", h.VMM.Cgroup, h.Passt.Cgroup, leaf)
	}

	// --- the guest: egress to the uplink, a listener behind the published port
	conn, err := vmm.DialAgent(ctx, h.VMM)
	if err != nil {
		t.Fatal(err)
	}
	hctx, hcancel := context.WithTimeout(ctx, 3*time.Minute)
	c, err := agent.NewClient(hctx, conn, nil)
	hcancel()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sh := func(script string) (string, error) {
		rctx, rcancel := context.WithTimeout(ctx, 60*time.Second)
		defer rcancel()
		r, err := c.Run(rctx, agent.ExecRequest{Argv: []string{"/bin/sh", "-c", script}}, nil, 0)
		if err != nil {
			return "", err
		}
		if r.Status.Code != 0 {
			return string(r.Stdout), fmt.Errorf("%q: %v: %s", script, r.Status, r.Stderr)
		}
		return string(r.Stdout), nil
	}
	if got, err := sh("ip -4 addr show eth0; ip route"); err != nil || !strings.Contains(got, "10.0.2.15/24") || !strings.Contains(got, "default via 10.0.2.2") {
		t.Fatalf("guest network: %q %v", got, err)
	}
	if got, err := sh(guestGet); err != nil || got != "uplink-ok\n" {
		t.Fatalf("guest → uplink: %q %v", got, err)
	}
	select {
	case from := <-tp.seen:
		if ap, err := netip.ParseAddrPort(from); err != nil || ap.Addr() != netip.MustParseAddr("192.0.2.2") {
			t.Errorf("the uplink saw the guest as %s, want the host's 192.0.2.2", from)
		}
	default:
		t.Error("the uplink server saw no request")
	}
	if _, err := sh("httpd -p 8080 -h /www"); err != nil {
		t.Fatal(err)
	}
	checkPublished := func(when string) {
		for _, tc := range []struct {
			from string
			ns   netns.NsHandle
			addr string
		}{
			{"the host, to 127.0.0.1", tp.host, "127.0.0.1:18080"},
			{"the host, to its address", tp.host, "192.0.2.2:18080"},
			{"the uplink", tp.uplink, "192.0.2.2:18080"},
		} {
			if got, err := fetch(t, tc.ns, tc.addr); err != nil || got != "paddock-guest-web\n" {
				t.Errorf("%s: published port from %s (%s): %q %v", when, tc.from, tc.addr, got, err)
			}
		}
	}
	checkPublished("daemon running")

	// --- a second VM asking for the same host port is refused, naming it,
	// and leaves nothing behind
	try := input
	try.Passt.VMID, try.Passt.RunDir = "pt-busy", filepath.Join(run, "busy")
	try.Passt.Ports = []netspec.PortMapping{{HostPort: 18081, GuestPort: 81}, guestWeb}
	dt, outT, stdinT := daemon(t, tp, "try", try, sup)
	got, _ := outT.ReadString('\n')
	stdinT.Close()
	_ = dt.Wait()
	if !strings.HasPrefix(got, "ERR ") || !strings.Contains(got, "18080:8080/tcp") || !strings.Contains(got, "0.0.0.0:18080 is already in use") {
		t.Errorf("Start with a taken port: %q, want an error naming 18080", got)
	}
	if _, err := os.Lstat(filepath.Join(try.Passt.RunDir, passt.SocketName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused start left a socket: %v", err)
	}
	if found, err := passt.Find(vmm.Owner{UID: unprivUID, RunRoot: run}); err != nil || len(found) != 1 || found[0].PID != h.Passt.PID {
		t.Errorf("passt processes after the refused start: %+v %v, want only the VM's", found, err)
	}

	// --- kill -9 of the daemon: passt and QEMU stay, the port still answers
	_ = d1.Process.Signal(syscall.SIGKILL)
	_ = d1.Wait()
	if ok, err := passt.Probe(h.Passt); !ok || err != nil {
		t.Fatalf("passt after the daemon died: %v %v", ok, err)
	}
	checkPublished("daemon killed")
	if got, err := sh(guestGet); err != nil || got != "uplink-ok\n" {
		t.Errorf("guest → uplink with the daemon killed: %q %v", got, err)
	}

	// --- another uid (root, here) cannot prove the passt its own: refused
	if err := passt.Stop(ctx, h.Passt); !errors.Is(err, passt.ErrNotOurs) {
		t.Errorf("Stop by another uid: %v, want ErrNotOurs", err)
	}
	if ok, _ := passt.Probe(h.Passt); !ok {
		t.Fatal("passt killed by a daemon of another uid")
	}

	// --- daemon #2 re-adopts and stops
	input.Handles = h
	d2, out2, stdin2 := daemon(t, tp, "stop", input, sup)
	stdin2.Close()
	var lines []string
	for {
		l, err := out2.ReadString('\n')
		if l != "" {
			lines = append(lines, strings.TrimSpace(l))
		}
		if err != nil {
			break
		}
	}
	_ = d2.Wait()
	t.Logf("daemon #2: %q", lines)
	if !slices.Contains(lines, "STOPPED") || len(lines) != 3 ||
		!strings.Contains(lines[0], "cgroup") || !strings.Contains(lines[1], "decoy.sock here is served by pid") {
		t.Fatalf("daemon #2: %q", lines)
	}
	if ok, _ := passt.Probe(h.Passt); ok {
		t.Error("passt still runs")
	}
	if s, _ := qemu.New().Probe(h.VMM); s == vmm.StateRunning {
		t.Error("QEMU still runs")
	}
	if _, err := os.Lstat(h.Passt.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("passt socket left: %v", err)
	}
	if _, err := os.Stat(leaf); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup leaf left: %v", err)
	}
	if found, err := passt.Find(vmm.Owner{UID: unprivUID, RunRoot: run}); err != nil || len(found) != 0 {
		t.Errorf("passt processes left: %+v %v", found, err)
	}
}
