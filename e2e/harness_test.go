// Package e2e drives the built paddockd and paddock binaries the way users
// and systemd do: real sockets, real signals, real uids.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/imaging/imagetest"
)

var binDir string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "paddock-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Other uids run these binaries in the authorization tests.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	build := exec.Command("go", "build", "-o", dir+"/", "../cmd/paddockd", "../cmd/paddock")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building binaries:", err)
		return 1
	}
	agentBuild := exec.Command("go", "build", "-o", dir+"/", "../cmd/paddock-agent")
	agentBuild.Env = append(os.Environ(), "CGO_ENABLED=0")
	agentBuild.Stderr = os.Stderr
	if err := agentBuild.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building paddock-agent:", err)
		return 1
	}
	binDir = dir
	return m.Run()
}

func bin(name string) string { return filepath.Join(binDir, name) }

// env is one daemon's directories and config.
type env struct {
	dir, cfg, socket, state string
}

// newEnv makes a short temp dir (socket paths are limited to 107 bytes), a
// config pointing into it, and a seeded image "alpine". extra is appended to
// the config file.
func newEnv(t *testing.T, extra string) *env {
	t.Helper()
	dir, err := os.MkdirTemp("", "pdk-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	e := &env{dir: dir, cfg: filepath.Join(dir, "paddock.toml"), socket: filepath.Join(dir, "run", "io.paddock.v1"), state: filepath.Join(dir, "state")}
	if !strings.Contains(extra, "[vm]") {
		// The API tests drive the state machine: VMs stay records.
		extra += "\n[vm]\nrun = \"off\"\n"
	}
	if !strings.Contains(extra, "[dbus]") {
		// Only the D-Bus tests reach a bus (their own).
		extra += "\n[dbus]\nbus = \"off\"\n"
	}
	body := fmt.Sprintf("state_dir = %q\nruntime_dir = %q\ncache_dir = %q\n%s", e.state, filepath.Join(dir, "run"), filepath.Join(dir, "cache"), extra)
	if err := os.WriteFile(e.cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	imagetest.Seed(t, e.state, "alpine")
	return e
}

// proc is a started daemon.
type proc struct {
	cmd    *exec.Cmd
	stderr *lockedBuf
	done   chan struct{}
	err    error
}

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// start runs cmd, reaps it in the background and kills it (by PID) at the
// end of the test if it is still running.
func start(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{cmd: cmd, stderr: &lockedBuf{}, done: make(chan struct{})}
	if cmd.Stderr == nil {
		cmd.Stderr = p.stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s stderr:\n%s", filepath.Base(cmd.Path), p.stderr.String())
		}
	})
	return p
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("process %d did not exit within %s", p.cmd.Process.Pid, timeout)
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	t.Fatalf("wait: %v", p.err)
	return -1
}

func (p *proc) signal(t *testing.T, s syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(s); err != nil {
		t.Fatalf("signal %v: %v", s, err)
	}
}

// daemon starts paddockd on e's config and waits until it answers.
func (e *env) daemon(t *testing.T, mod func(*exec.Cmd)) *proc {
	t.Helper()
	cmd := exec.Command(bin("paddockd"), "--config", e.cfg)
	if mod != nil {
		mod(cmd)
	}
	p := start(t, cmd)
	e.waitReady(t, p)
	return p
}

func (e *env) waitReady(t *testing.T, p *proc) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := api.Dial(context.Background(), e.socket)
		if err == nil {
			_, err = c.Version(context.Background())
			c.Close()
			if err == nil {
				return
			}
		}
		select {
		case <-p.done:
			t.Fatalf("paddockd exited early: %v\n%s", p.err, p.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("paddockd not answering on %s: %v\n%s", e.socket, err, p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// client dials the daemon as the test's own uid.
func (e *env) client(t *testing.T) *api.Client {
	t.Helper()
	c, err := api.Dial(context.Background(), e.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

type result struct {
	stdout, stderr string
	code           int
}

// cli runs the paddock CLI against e's socket; cred, when set, runs it as
// another user.
func (e *env) cli(t *testing.T, cred *syscall.Credential, args ...string) result {
	t.Helper()
	// Generous: a boot under TCG on a loaded 2-core host can take a while.
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin("paddock"), append([]string{"--socket", e.socket}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/"}
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("paddock %s: %v", strings.Join(args, " "), err)
	}
	return result{out.String(), errb.String(), code}
}

func (r result) ok(t *testing.T, what string) string {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("%s: exit %d\nstdout: %s\nstderr: %s", what, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// waitLog waits until the daemon's stderr holds every substring (stderr is
// copied from a pipe, so it lags the daemon a little).
func (p *proc) waitLog(t *testing.T, subs ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		logs := p.stderr.String()
		missing := ""
		for _, s := range subs {
			if !strings.Contains(logs, s) {
				missing = s
				break
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon log lacks %q:\n%s", missing, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
