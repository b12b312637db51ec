package systemdtest_test

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/paddock-vm/paddock/internal/tbtest"
	"github.com/paddock-vm/paddock/internal/testenv"
	"github.com/paddock-vm/paddock/systemd"
	"github.com/paddock-vm/paddock/systemd/systemdtest"
)

const childEnv = "SYSTEMDTEST_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "journal":
		os.Exit(journalChild())
	case "notify":
		if err := systemd.NewNotifier().Status("from child"); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// journalChild runs inside the journal namespace through Journal.Command.
func journalChild() int {
	ok, err := journal.StderrIsJournalStream()
	fmt.Printf("StderrIsJournalStream=%v err=%v\n", ok, err)
	tok := os.Getenv("CHILD_TOKEN")
	fmt.Fprintf(os.Stderr, "stderr-line %s\n", tok)
	fmt.Fprintf(os.Stderr, "<3>error-line %s\n", tok)
	if err := journal.Send("native "+tok, journal.PriNotice, map[string]string{"TOKEN": tok}); err != nil {
		fmt.Println("send:", err)
		return 1
	}
	return 0
}

func TestNotifySocket(t *testing.T) {
	path, msgs := systemdtest.NotifySocket(t)
	t.Setenv("NOTIFY_SOCKET", path)
	n := systemd.NewNotifier()
	if err := n.Ready("up"); err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	if err := n.FDStore("pipe", pr); err != nil {
		t.Fatal(err)
	}

	m := next(t, msgs)
	if m.Text != "READY=1\nSTATUS=up" || m.PID != os.Getpid() || m.UID != os.Getuid() || len(m.Files) != 0 {
		t.Errorf("got %+v", m)
	}
	m = next(t, msgs)
	if m.Text != "FDSTORE=1\nFDNAME=pipe" || len(m.Files) != 1 {
		t.Fatalf("got %+v", m)
	}
	defer m.Files[0].Close()
	if _, err := pw.WriteString("via fd"); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if b, err := io.ReadAll(m.Files[0]); err != nil || string(b) != "via fd" {
		t.Errorf("read %q, %v from the received fd", b, err)
	}

	// A message from another process carries that process's PID.
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=notify", "NOTIFY_SOCKET="+path)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	m = next(t, msgs)
	if m.Text != "STATUS=from child" || m.PID != cmd.Process.Pid {
		t.Errorf("got %+v, want STATUS=from child from pid %d", m, cmd.Process.Pid)
	}
}

func next(t *testing.T, msgs <-chan systemdtest.Message) systemdtest.Message {
	t.Helper()
	select {
	case m, ok := <-msgs:
		if !ok {
			t.Fatal("channel closed")
		}
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no message within 5s")
	}
	return systemdtest.Message{}
}

func TestNotifySocketLongName(t *testing.T) {
	t.Run(strings.Repeat("long", 30), func(t *testing.T) {
		path, msgs := systemdtest.NotifySocket(t)
		if len(path) >= 108 {
			t.Fatalf("path too long for sockaddr_un: %d bytes", len(path))
		}
		t.Setenv("NOTIFY_SOCKET", path)
		if err := systemd.NewNotifier().Watchdog(); err != nil {
			t.Fatal(err)
		}
		if m := next(t, msgs); m.Text != "WATCHDOG=1" {
			t.Errorf("got %q", m.Text)
		}
	})
}

func TestJournald(t *testing.T) {
	testenv.RequireRoot(t, "mount namespace, systemd-journald")
	var nsPID, jPID int
	var hostMounts string
	t.Run("run", func(t *testing.T) {
		j := systemdtest.Journald(t)
		nsPID, jPID = j.PID(), j.JournaldPID()
		for _, pid := range []int{nsPID, jPID} {
			if err := syscall.Kill(pid, 0); err != nil {
				t.Fatalf("pid %d not running: %v", pid, err)
			}
		}
		// The mounts live in the namespace only.
		b, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			t.Fatal(err)
		}
		hostMounts = string(b)
		if strings.Contains(hostMounts, j.Dir) {
			t.Errorf("journal dir %s is mounted in the host namespace", j.Dir)
		}
		ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", jPID))
		self, _ := os.Readlink("/proc/self/ns/mnt")
		if ns == self || ns == "" {
			t.Errorf("journald mount namespace %q, test's %q: want a different one", ns, self)
		}

		tok := fmt.Sprintf("tok%d", time.Now().UnixNano())
		cmd := j.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(cmd.Env, childEnv+"=journal", "CHILD_TOKEN="+tok)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("child: %v: %s", err, out)
		}
		if got := strings.TrimSpace(string(out)); got != "StderrIsJournalStream=true err=<nil>" {
			t.Fatalf("child stdout %q", got)
		}

		ident := filepath.Base(os.Args[0])
		for _, tc := range []struct {
			match []string
			want  map[string]string
		}{
			{[]string{"MESSAGE=stderr-line " + tok}, map[string]string{"_TRANSPORT": "stdout", "SYSLOG_IDENTIFIER": ident, "PRIORITY": "6"}},
			{[]string{"MESSAGE=error-line " + tok}, map[string]string{"_TRANSPORT": "stdout", "PRIORITY": "3"}},
			{[]string{"TOKEN=" + tok}, map[string]string{"_TRANSPORT": "journal", "MESSAGE": "native " + tok, "PRIORITY": "5"}},
		} {
			e := j.Query(t, tc.match...)
			if len(e) != 1 {
				t.Fatalf("%v: %d entries", tc.match, len(e))
			}
			for k, v := range tc.want {
				if e[0][k] != v {
					t.Errorf("%v: %s=%v, want %q", tc.match, k, e[0][k], v)
				}
			}
		}
		if e := j.Entries(t, "TOKEN=nonexistent"); len(e) != 0 {
			t.Errorf("Entries for a missing token: %v", e)
		}

		// A non-Go program sees the same stream.
		sh := j.Command("/bin/sh", "-c", `[ "$(stat -L -c %d:%i /proc/self/fd/2)" = "$JOURNAL_STREAM" ] && echo "sh says $0" >&2`, tok)
		if out, err := sh.Output(); err != nil {
			t.Fatalf("sh: %v %s", err, out)
		}
		if e := j.Query(t, "MESSAGE=sh says "+tok, "SYSLOG_IDENTIFIER=sh"); len(e) != 1 {
			t.Errorf("sh entry: %v", e)
		}
	})
	// After the test, both processes are gone (reaped, not zombies).
	for _, pid := range []int{nsPID, jPID} {
		if pid == 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
			t.Errorf("pid %d still exists after cleanup (kill 0: %v)", pid, err)
		}
	}
}

func TestQueryFailsWhenNothingMatches(t *testing.T) {
	j := systemdtest.Journald(t)
	old := systemdtest.QueryTimeout
	systemdtest.QueryTimeout = 100 * time.Millisecond
	defer func() { systemdtest.QueryTimeout = old }()
	var got []map[string]any
	f := tbtest.Run(t, func(tb testing.TB) { got = j.Query(tb, "TOKEN=never-logged") })
	if !f.Failed() || got != nil || !strings.Contains(f.Msg(), "TOKEN=never-logged") {
		t.Errorf("Query with no match: failed=%v msg=%q got=%v; want a test failure", f.Failed(), f.Msg(), got)
	}
}
