package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/systemd/systemdtest"
)

func next(t *testing.T, msgs <-chan systemdtest.Message, pred func(string) bool, what string) string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				t.Fatalf("notify socket closed before %s", what)
			}
			if pred(m.Text) {
				return m.Text
			}
		case <-timeout:
			t.Fatalf("no %s from paddockd", what)
		}
	}
}

func has(s string) func(string) bool {
	return func(m string) bool {
		for _, l := range strings.Split(m, "\n") {
			if l == s || strings.HasPrefix(l, s) && strings.HasSuffix(s, "=") {
				return true
			}
		}
		return false
	}
}

// Acceptance: READY=1, STATUS=…, WATCHDOG=1, STOPPING=1 in that order of
// life; RELOADING=1 then READY=1 around SIGHUP; SIGTERM exits 0.
func TestNotifyLifecycle(t *testing.T) {
	e := newEnv(t, "[log]\nlevel = \"info\"\n")
	sock, msgs := systemdtest.NotifySocket(t)
	p := e.daemon(t, func(c *exec.Cmd) {
		c.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=400000")
	})
	ready := next(t, msgs, has("READY=1"), "READY=1")
	if !strings.Contains(ready, "STATUS=0 VMs") {
		t.Fatalf("READY without status: %q", ready)
	}
	c := e.client(t)
	if _, err := c.Create(context.Background(), api.CreateIn{Name: "n1", Image: "alpine"}); err != nil {
		t.Fatal(err)
	}
	next(t, msgs, func(m string) bool { return strings.HasPrefix(m, "STATUS=1 VMs") }, "STATUS after create")
	next(t, msgs, has("WATCHDOG=1"), "WATCHDOG=1")

	// Reload: a live key changes, a restart-only key is reported and kept.
	cfg, _ := os.ReadFile(e.cfg)
	cfg = []byte(strings.Replace(string(cfg), `level = "info"`, `level = "debug"`, 1) + "[api]\nmax_connections = 7\n")
	if err := os.WriteFile(e.cfg, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	if m := next(t, msgs, has("RELOADING=1"), "RELOADING=1"); !strings.Contains(m, "MONOTONIC_USEC=") {
		t.Fatalf("RELOADING without MONOTONIC_USEC: %q", m)
	}
	next(t, msgs, has("READY=1"), "READY=1 after reload")
	p.waitLog(t, "reload: applied", "key=log.level", "needs a restart", "key=api.max_connections")
	// A broken file on reload keeps the running config.
	if err := os.WriteFile(e.cfg, []byte("bogus_key = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	next(t, msgs, has("READY=1"), "READY=1 after failed reload")
	p.waitLog(t, "reload failed", "bogus_key")
	if _, err := c.Get(context.Background(), "n1"); err != nil {
		t.Fatalf("daemon unusable after failed reload: %v", err)
	}

	p.signal(t, syscall.SIGTERM)
	next(t, msgs, has("STOPPING=1"), "STOPPING=1")
	if code := p.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// Acceptance: with stderr on a real journald stream, paddockd writes native
// entries that journalctl finds by VM_NAME.
func TestJournalEntries(t *testing.T) {
	j := systemdtest.Journald(t)
	e := newEnv(t, "")
	cmd := j.Command(bin("paddockd"), "--config", e.cfg)
	p := start(t, cmd)
	e.waitReady(t, p)
	c := e.client(t)
	vm, err := c.Create(context.Background(), api.CreateIn{Name: "journaled", Image: "alpine"})
	if err != nil {
		t.Fatal(err)
	}
	entries := j.Query(t, "VM_NAME=journaled")
	found := false
	for _, en := range entries {
		if en["VM_ID"] == vm.ID && en["OP"] == "created" && en["ACTOR"] == "events" && en["PRIORITY"] == "6" && en["SYSLOG_IDENTIFIER"] == "paddockd" {
			found = true
		}
	}
	if !found {
		t.Fatalf("no native entry with VM_ID, OP, ACTOR, PRIORITY: %v", entries)
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}
