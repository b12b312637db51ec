package launcher

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/host/cgroup"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// helperEnv makes the test binary a stand-in process: "serve" (a launcher
// on $PADDOCK_LAUNCHER_TEST_SOCKET, in the cgroup it was born in) or
// "hello" (a client of that socket, printing what it got).
const helperEnv = "PADDOCK_LAUNCHER_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "serve":
		os.Exit(helperServe(os.Getenv("PADDOCK_LAUNCHER_TEST_SOCKET")))
	case "hello":
		// Without the client's own checks: what the launcher answers.
		c, err := net.DialTimeout("unix", os.Getenv("PADDOCK_LAUNCHER_TEST_SOCKET"), 5*time.Second)
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_ = writeMsg(c, Request{Op: OpHello})
		var r Response
		if err := readMsg(c, &r); err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		fmt.Printf("%+v\n", r)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// helperServe is a launcher as `paddockd launcher` is one: its delegated
// cgroup when it has one (entered as its leaf), a 0666 socket here so
// that the uid check, not the file mode, is what refuses.
func helperServe(path string) int {
	s := &Server{}
	if d, err := cgroup.Delegated(); err == nil {
		if _, err := cgroup.EnterLeaf(d); err != nil {
			fmt.Println("ERR leaf", err)
			return 1
		}
		s.Cgroup, s.Unit = d, UnitOf(d)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	_ = os.Chmod(path, 0o666)
	fmt.Println("READY")
	_ = s.Serve(context.Background(), ln)
	return 0
}

// serveHere runs a Server in this process on a fresh socket.
func serveHere(t *testing.T, s *Server) string {
	t.Helper()
	return serveIn(t, t.TempDir(), s)
}

func serveIn(t *testing.T, dir string, s *Server) string {
	t.Helper()
	path := filepath.Join(dir, SocketName)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return 5s after its context ended")
		}
	})
	return path
}

// raw sends b on a new connection and returns what comes back until the
// launcher closes it.
func raw(t *testing.T, path string, b []byte) string {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if len(b) > 0 {
		if _, err := c.Write(b); err != nil && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatal(err)
		}
	}
	out, _ := io.ReadAll(c)
	return string(out)
}

func TestRequests(t *testing.T) {
	var got []vmm.Command
	s := &Server{Launch: func(c vmm.Command) (int, uint64, error) {
		got = append(got, c)
		return 4242, 99, nil
	}}
	path := serveHere(t, s)
	for _, tc := range []struct{ name, req, want string }{
		{"unknown request", `{"op":"frobnicate"}` + "\n", `"error":"unknown request \"frobnicate\""`},
		{"malformed", "{not json\n", `"error":"malformed message`},
		{"no command", `{"op":"launch"}` + "\n", `"error":"launch: no command"`},
		{"empty argv", `{"op":"launch","command":{"path":"/bin/true","log":"/tmp/x"}}` + "\n", "empty path or argv"},
		{"relative log", `{"op":"launch","command":{"path":"/bin/true","args":["true"],"log":"x.log"}}` + "\n", "not an absolute path"},
		{"a cgroup without one", `{"op":"launch","command":{"path":"/bin/true","args":["true"],"log":"/tmp/x","cgroup":"paddock-a"}}` + "\n", "has no delegated cgroup"},
		{"no newline, then EOF", `{"op":"hello"}`, "unexpected EOF"},
		{"unknown fields are ignored", `{"op":"hello","later":1}` + "\n", `"version":1,"pid":` + strconv.Itoa(os.Getpid())},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(c, tc.req); err != nil {
				t.Fatal(err)
			}
			_ = c.(*net.UnixConn).CloseWrite()
			out, _ := io.ReadAll(c)
			if !strings.Contains(string(out), tc.want) {
				t.Fatalf("answer %q, want it to contain %q", out, tc.want)
			}
		})
	}
	if len(got) != 0 {
		t.Fatalf("refused requests launched %v", got)
	}

	// A cgroup name must be a paddock one, and a child (no path).
	s.Cgroup = "/sys/fs/cgroup/x.service"
	for _, name := range []string{"../../y", "paddock-a/b", "other"} {
		out := raw(t, path, []byte(`{"op":"launch","command":{"path":"/bin/true","args":["true"],"log":"/tmp/x","cgroup":"`+name+`"}}`+"\n"))
		if !strings.Contains(out, "not a paddock cgroup") {
			t.Errorf("cgroup %q: %q", name, out)
		}
	}
	out := raw(t, path, []byte(`{"op":"launch","command":{"path":"/bin/true","args":["true"],"log":"/tmp/x","cgroup":"paddock-a","env":["A=1"],"no_huge_pages":true}}`+"\n"))
	if !strings.Contains(out, `"child_pid":4242,"start_time":99`) || len(got) != 1 ||
		got[0].Cgroup != "/sys/fs/cgroup/x.service/paddock-a" || got[0].Env[0] != "A=1" || got[0].Log != "/tmp/x" || !got[0].NoHugePages {
		t.Fatalf("a good launch: %q, launched %+v", out, got)
	}
	got = nil
	if out := raw(t, path, []byte(`{"op":"launch","command":{"path":"/bin/true","args":["true"],"log":"/tmp/x"}}`+"\n")); !strings.Contains(out, "child_pid") || got[0].Cgroup != "" || got[0].Env != nil || got[0].NoHugePages {
		t.Fatalf("a launch without cgroup or env: %q, launched %+v", out, got)
	}
}

// TestBounded: a request over MaxMessage is refused without reading it
// all, and a caller that says nothing is cut off at the deadline.
func TestBounded(t *testing.T) {
	const timeout = 300 * time.Millisecond
	path := serveHere(t, &Server{Timeout: timeout, Launch: func(vmm.Command) (int, uint64, error) {
		t.Error("launched")
		return 0, 0, errors.New("no")
	}})
	big := make([]byte, 2*MaxMessage)
	for i := range big {
		big[i] = 'x'
	}
	if out := raw(t, path, big); !strings.Contains(out, "larger than") {
		t.Fatalf("an oversized request: %q", out)
	}
	start := time.Now()
	out := raw(t, path, nil)
	// Cut off: the connection ends (the answer's own write is past the
	// deadline too).
	if d := time.Since(start); d > 5*time.Second || d < timeout || strings.Contains(out, "version") {
		t.Fatalf("a silent caller: %q after %v, want the connection closed after %v", out, d, timeout)
	}
}

// TestClientRefuses: the client sends nothing to a launcher in another
// cgroup than the one it named, nor asks one for a cgroup outside it.
func TestClientRefuses(t *testing.T) {
	path := serveHere(t, &Server{Launch: func(vmm.Command) (int, uint64, error) {
		t.Error("launched")
		return 0, 0, errors.New("no")
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Hello(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if c.hello.PID != os.Getpid() || c.Cgroup() != "" {
		t.Fatalf("hello: %+v", c.hello)
	}
	if _, _, err := c.Launch(vmm.Command{Path: "/bin/true", Args: []string{"true"}, Log: "/tmp/x", Cgroup: "/sys/fs/cgroup/paddock-a"}); err == nil || !strings.Contains(err.Error(), "not below the VMM launcher's") {
		t.Fatalf("a cgroup outside the launcher's: %v", err)
	}
	// A launcher that claimed a cgroup it is not in.
	c.hello.Cgroup = "/sys/fs/cgroup/not-ours.service"
	if _, _, err := c.Launch(vmm.Command{Path: "/bin/true", Args: []string{"true"}, Log: "/tmp/x"}); err == nil || !strings.Contains(err.Error(), "no longer in its cgroup") {
		t.Fatalf("a launcher outside its cgroup: %v", err)
	}
}

// helperBinary copies the test binary where another uid may run it.
func helperBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "pdk-launcher-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "launcher.test")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// startHelper starts the test binary in helper mode as uid (-1: this
// one), born in cgroup dir when set, and waits for its first line.
func startHelper(t *testing.T, bin, mode, sock string, uid int, cgdir string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = []string{helperEnv + "=" + mode, "PADDOCK_LAUNCHER_TEST_SOCKET=" + sock, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if uid >= 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}
	}
	if cgdir != "" {
		f, err := cgroup.OpenDir(cgdir)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(f.Fd())
	}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("helper %d not reaped", cmd.Process.Pid)
		}
	})
	return cmd, bufio.NewReader(out)
}

func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	ch := make(chan string, 1)
	go func() { l, _ := r.ReadString('\n'); ch <- strings.TrimSpace(l) }()
	select {
	case l := <-ch:
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("the helper said nothing in 10s")
		return ""
	}
}

// TestPeerCredRefusal: a launcher refuses a caller of another uid, and
// paddockd's side refuses a launcher of another uid, with real processes.
func TestPeerCredRefusal(t *testing.T) {
	testenv.RequireRoot(t, "a process of another uid")
	const nobody = 65534
	bin := helperBinary(t)
	dir := filepath.Dir(bin)

	// This process (root) serves; a nobody client is refused.
	path := serveIn(t, dir, &Server{})
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	cmd, out := startHelper(t, bin, "hello", path, nobody, "")
	if l := readLine(t, out); l != "{Error:the VMM launcher serves uid 0 only, not 65534 Version:0 PID:0 Unit: Cgroup: CgroupInfo: ChildPID:0 StartTime:0}" {
		t.Fatalf("a nobody client: %q", l)
	}
	_ = cmd

	// A nobody launcher; this process (root) does not use it.
	sock := filepath.Join(dir, "nobody.sock")
	if err := os.Chown(dir, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	_, out = startHelper(t, bin, "serve", sock, nobody, "")
	if l := readLine(t, out); l != "READY" {
		t.Fatalf("the nobody launcher: %q", l)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := Hello(ctx, sock); err == nil || !strings.Contains(err.Error(), "runs as uid 65534, not this daemon's 0") {
		t.Fatalf("Hello to a nobody launcher: %v", err)
	}
}

// TestLaunchInCgroup: a launcher born in a delegated (stand-in) unit
// cgroup, as under systemd; paddockd's side makes paddock-<id> there and
// has the launcher start a VMM-like process in it: confined, the
// launcher's child, reaped by it when killed through paddockd's way
// (pidfd), and still running after the launcher itself is killed.
func TestLaunchInCgroup(t *testing.T) {
	testenv.RequireRoot(t, "cgroupfs writes")
	unit := testUnit(t)
	bin := helperBinary(t)
	sock := filepath.Join(filepath.Dir(bin), SocketName)
	helper, out := startHelper(t, bin, "serve", sock, -1, unit)
	if l := readLine(t, out); l != "READY" {
		t.Fatalf("the launcher: %q", l)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hctx, hcancel := context.WithTimeout(ctx, HelloTimeout)
	defer hcancel()
	c, err := Hello(hctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	if c.Cgroup() != unit || c.hello.PID != helper.Process.Pid || c.hello.Unit != filepath.Base(unit) {
		t.Fatalf("hello: %+v, want cgroup %s, pid %d", c.hello, unit, helper.Process.Pid)
	}
	if d := c.Describe(ctx); d != fmt.Sprintf("%s (pid %d)", filepath.Base(unit), helper.Process.Pid) {
		t.Fatalf("Describe: %q", d)
	}
	launch := func(id, script string) vmm.Ident {
		t.Helper()
		dir, err := cgroup.Create(unit, cgroup.Prefix+id) // paddockd's part
		if err != nil {
			t.Fatal(err)
		}
		argv := []string{"sh", "-c", script}
		pid, start, err := c.Launch(vmm.Command{Path: "/bin/sh", Args: argv, Log: filepath.Join(t.TempDir(), "vmm.log"), Cgroup: dir})
		if err != nil {
			t.Fatal(err)
		}
		in, cg, err := cgroup.Within(pid, unit)
		if err != nil || !in || cg != dir {
			t.Fatalf("pid %d is in %s (%v), want %s", pid, cg, err, dir)
		}
		return vmm.Ident{PID: pid, StartTime: start, BootID: vmm.BootID(), Cmdline: argv}
	}
	running := func(id vmm.Ident) bool {
		s, err := id.Probe()
		return err == nil && s == vmm.StateRunning
	}

	a := launch("a", "sleep 300")
	b := launch("b", "sleep 300")
	deadline := time.Now().Add(5 * time.Second)
	for { // past the confining step: sh runs
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", a.PID))
		if c := strings.TrimSpace(string(comm)); c == "sh" || c == "sleep" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still %q 5s after its launch", a.PID, comm)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !running(a) {
		t.Fatalf("pid %d is not the process launched", a.PID)
	}
	st, err := vmm.Status(a.PID)
	if err != nil {
		t.Fatal(err)
	}
	if st["PPid"] != strconv.Itoa(helper.Process.Pid) || st["NoNewPrivs"] != "1" || st["CapEff"] != "0000000000000000" || st["CapPrm"] != "0000000000000000" {
		t.Fatalf("the launched process: PPid %s (launcher %d), NoNewPrivs %s, CapEff %s, CapPrm %s", st["PPid"], helper.Process.Pid, st["NoNewPrivs"], st["CapEff"], st["CapPrm"])
	}
	if sid, _ := unix.Getsid(a.PID); sid != a.PID {
		t.Fatalf("the launched process is not in a session of its own: sid %d", sid)
	}

	// paddockd kills it; the launcher reaps it (no zombie left).
	if err := a.Kill(ctx, nil); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", a.PID)); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d not reaped by the launcher 5s after it was killed", a.PID)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The launcher dies; its child does not.
	if err := helper.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if !running(b) {
		t.Fatal("the launched process died with the launcher")
	}
	c.timeout = time.Second
	if _, _, err := c.Launch(vmm.Command{Path: "/bin/true", Args: []string{"true"}, Log: "/tmp/x"}); err == nil {
		t.Fatal("a launch with the launcher gone succeeded")
	}
	if err := b.Kill(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

// testUnit makes <cgroup2 mount>/pdktest-<pid>.service, marked delegated
// as systemd marks Delegate=yes units, and removes it at cleanup.
func testUnit(t *testing.T) string {
	t.Helper()
	mnt, _, err := cgroup.Mountpoint()
	if err != nil {
		testenv.SkipBecause(t, fmt.Sprintf("no cgroup2: %v", err))
	}
	dir := filepath.Join(mnt, fmt.Sprintf("pdktest-launcher-%d.service", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if e.IsDir() {
				p := filepath.Join(dir, e.Name())
				if err := cgroup.Kill(ctx, p); err != nil && cgroup.ValidName(e.Name()) == nil {
					t.Errorf("cleanup: %v", err)
				}
				if pids, _ := cgroup.Procs(p); len(pids) > 0 {
					for _, pid := range pids {
						_ = unix.Kill(pid, unix.SIGKILL)
					}
				}
				for i := 0; i < 100 && syscall.Rmdir(p) != nil; i++ {
					time.Sleep(20 * time.Millisecond)
				}
			}
		}
		if err := syscall.Rmdir(dir); err != nil {
			t.Errorf("cleanup: removing %s: %v", dir, err)
		}
	})
	if err := unix.Setxattr(dir, "trusted.delegate", []byte("1"), 0); err != nil {
		t.Fatalf("marking %s delegated: %v", dir, err)
	}
	return dir
}
