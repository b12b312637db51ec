package systemd

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/internal/testenv"
)

// childReport is what listenChild prints after Listen.
type childReport struct {
	Activated bool     `json:"activated"`
	Addr      string   `json:"addr"`
	Err       string   `json:"err"`
	Env       []string `json:"env"`   // LISTEN_* left in the environment
	State     string   `json:"state"` // read from TakeFiles("state")
	PID       int      `json:"pid"`
}

// listenChild runs as a (socket-activated) child: Listen, report, serve one
// connection with "pong <pid>".
func listenChild() int {
	ln, activated, err := Listen(os.Getenv("CHILD_PATH"), 0o660, -1)
	r := childReport{Activated: activated, PID: os.Getpid()}
	if err != nil {
		r.Err = err.Error()
	} else {
		r.Addr = ln.Addr().String()
	}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "LISTEN_") {
			r.Env = append(r.Env, kv)
		}
	}
	for _, f := range TakeFiles("state") {
		b, _ := io.ReadAll(f)
		r.State += string(b)
		f.Close()
	}
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
	if err != nil {
		return 1
	}
	defer ln.Close()
	if ul, ok := ln.(*net.UnixListener); ok {
		_ = ul.SetDeadline(time.Now().Add(10 * time.Second))
	}
	c, err := ln.Accept()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Fprintf(c, "pong %d\n", os.Getpid())
	c.Close()
	return 0
}

// startChild starts cmd with stdout piped and kills it (by PID) at cleanup.
func startChild(t *testing.T, cmd *exec.Cmd) *bufio.Reader {
	t.Helper()
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return bufio.NewReader(out)
}

func readReport(t *testing.T, r *bufio.Reader) childReport {
	t.Helper()
	type res struct {
		line string
		err  error
	}
	ch := make(chan res, 1)
	go func() { l, err := r.ReadString('\n'); ch <- res{l, err} }()
	select {
	case x := <-ch:
		if x.err != nil {
			t.Fatalf("child report: %v", x.err)
		}
		var rep childReport
		if err := json.Unmarshal([]byte(x.line), &rep); err != nil {
			t.Fatalf("child report %q: %v", x.line, err)
		}
		return rep
	case <-time.After(10 * time.Second):
		t.Fatal("child did not report within 10s")
	}
	return childReport{}
}

// ping connects to path and expects "pong <pid>".
func ping(t *testing.T, path string, pid int) {
	t.Helper()
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read from %s: %v", path, err)
	}
	if want := fmt.Sprintf("pong %d\n", pid); line != want {
		t.Fatalf("got %q from %s, want %q", line, path, want)
	}
}

func TestListenActivated(t *testing.T) {
	type fdSpec struct {
		kind string // "sock" or "pipe"
		name string
	}
	for _, tc := range []struct {
		name      string
		fds       []fdSpec
		fdnames   string // LISTEN_FDNAMES; "-" = unset
		wantPick  int    // index into fds; -1 = not activated (self-bound)
		wantState string
	}{
		{"single api", []fdSpec{{"sock", "api"}}, "api", 0, ""},
		{"varlink preferred over first", []fdSpec{{"sock", "other"}, {"sock", "varlink"}}, "other:varlink", 1, ""},
		{"varlink preferred over api", []fdSpec{{"sock", "api"}, {"sock", "varlink"}}, "api:varlink", 1, ""},
		{"api preferred over unnamed", []fdSpec{{"sock", "x"}, {"sock", "api"}}, "x:api", 1, ""},
		{"unknown names take the first", []fdSpec{{"sock", "unknown"}, {"sock", "unknown"}}, "unknown:unknown", 0, ""},
		{"no LISTEN_FDNAMES takes the first", []fdSpec{{"sock", ""}, {"sock", ""}}, "-", 0, ""},
		{"fd store entry skipped and kept", []fdSpec{{"pipe", "state"}, {"sock", "varlink"}}, "state:varlink", 1, "persisted"},
		{"only fd store entries: bind ourselves", []fdSpec{{"pipe", "state"}}, "state", -1, "persisted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var files []*os.File
			var paths []string
			for i, fd := range tc.fds {
				switch fd.kind {
				case "sock":
					p := filepath.Join(dir, fmt.Sprintf("s%d.sock", i))
					l, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
					if err != nil {
						t.Fatal(err)
					}
					f, err := l.File()
					if err != nil {
						t.Fatal(err)
					}
					l.SetUnlinkOnClose(false)
					l.Close()
					files, paths = append(files, f), append(paths, p)
				case "pipe":
					pr, pw, err := os.Pipe()
					if err != nil {
						t.Fatal(err)
					}
					if _, err := pw.WriteString("persisted"); err != nil {
						t.Fatal(err)
					}
					pw.Close()
					files, paths = append(files, pr), append(paths, "")
				}
			}
			defer func() {
				for _, f := range files {
					f.Close()
				}
			}()
			own := filepath.Join(dir, "own.sock")
			// LISTEN_PID must be the child's PID: sh sets it and execs.
			cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), childEnv+"=listen", "CHILD_PATH="+own, fmt.Sprintf("LISTEN_FDS=%d", len(files)))
			if tc.fdnames != "-" {
				cmd.Env = append(cmd.Env, "LISTEN_FDNAMES="+tc.fdnames)
			}
			cmd.ExtraFiles = files
			rep := readReport(t, startChild(t, cmd))
			if rep.Err != "" {
				t.Fatalf("child Listen: %s", rep.Err)
			}
			want := own
			if tc.wantPick >= 0 {
				want = paths[tc.wantPick]
			}
			if rep.Activated != (tc.wantPick >= 0) || rep.Addr != want {
				t.Errorf("child: activated=%v addr=%s; want activated=%v addr=%s", rep.Activated, rep.Addr, tc.wantPick >= 0, want)
			}
			if len(rep.Env) != 0 {
				t.Errorf("LISTEN_* still set in the child: %q", rep.Env)
			}
			if rep.State != tc.wantState {
				t.Errorf("TakeFiles(state) read %q, want %q", rep.State, tc.wantState)
			}
			ping(t, want, rep.PID)
		})
	}
}

// TestListenSocketActivateBinary uses the real systemd-socket-activate,
// which sets no LISTEN_FDNAMES without --fdname.
func TestListenSocketActivateBinary(t *testing.T) {
	bin := testenv.RequireTool(t, "systemd-socket-activate", "systemd")
	for _, tc := range []struct{ name, fdname string }{{"no fdname", ""}, {"fdname varlink", "varlink"}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "act.sock")
			args := []string{"-l", path, "-E", childEnv + "=listen", "-E", "CHILD_PATH=" + filepath.Join(dir, "unused.sock")}
			if tc.fdname != "" {
				args = append(args, "--fdname="+tc.fdname)
			}
			cmd := exec.Command(bin, append(args, os.Args[0], "-test.run=^$")...)
			out := startChild(t, cmd)
			// It execs the child on the first connection, which it keeps
			// queued for the child to accept. Between its bind and listen
			// a connect is refused, so retry until one gets through.
			var c net.Conn
			deadline := time.Now().Add(5 * time.Second)
			for {
				var err error
				if c, err = net.DialTimeout("unix", path, 2*time.Second); err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("systemd-socket-activate did not listen: %v", err)
				}
				time.Sleep(5 * time.Millisecond)
			}
			defer c.Close()
			rep := readReport(t, out)
			if !rep.Activated || rep.Addr != path || rep.Err != "" || len(rep.Env) != 0 {
				t.Fatalf("child report %+v; want activated on %s with LISTEN_* unset", rep, path)
			}
			if rep.PID != cmd.Process.Pid {
				t.Errorf("child pid %d, want the exec'd socket-activate pid %d", rep.PID, cmd.Process.Pid)
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || line != fmt.Sprintf("pong %d\n", rep.PID) {
				t.Fatalf("got %q, %v", line, err)
			}
		})
	}
}

func TestListenBind(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "paddock") // missing parents
	path := filepath.Join(dir, "io.paddock.v1")
	gid := -1
	wantGid := os.Getgid()
	if os.Geteuid() == 0 {
		gid, wantGid = 4242, 4242
	}
	ln, activated, err := Listen(path, 0o660, gid)
	if err != nil {
		t.Fatal(err)
	}
	if activated {
		t.Fatal("activated = true without LISTEN_FDS")
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want socket 0660", fi.Mode())
	}
	if g := int(fi.Sys().(*syscall.Stat_t).Gid); g != wantGid {
		t.Errorf("socket gid %d, want %d", g, wantGid)
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o755 {
		t.Errorf("parent dir mode %v, want 0755", di.Mode().Perm())
	}

	// A second daemon must not steal a live socket.
	_, _, err = Listen(path, 0o660, -1)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), path) ||
		!strings.Contains(err.Error(), "already in use by another daemon") {
		t.Errorf("second Listen: %v; want ErrInUse naming %s", err, path)
	}
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	if c, err := net.Dial("unix", path); err != nil {
		t.Errorf("first listener lost its socket: %v", err)
	} else {
		c.Close()
	}

	ln.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Close left the socket file: %v", err)
	}
}

func TestListenStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "api.sock")
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close() // a crashed daemon leaves the file behind
	if _, err := os.Lstat(path); err != nil {
		t.Fatal(err)
	}
	ln, _, err := Listen(path, 0o600, -1)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Write([]byte("x"))
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if b, _ := io.ReadAll(c); string(b) != "x" {
		t.Errorf("read %q from the new listener", b)
	}
}

func TestListenRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "api.sock")
	if err := os.WriteFile(path, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Listen(path, 0o660, -1); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen over a regular file: %v", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "keep me" {
		t.Errorf("regular file clobbered: %q, %v", b, err)
	}
}
