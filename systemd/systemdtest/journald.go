package systemdtest

import (
	"bufio"
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/internal/testenv"
)

//go:embed journald.sh
var journaldScript string

// Journal is a standalone systemd-journald running in a private mount
// namespace. Inside that namespace /run/systemd is a private tmpfs holding
// journald's sockets (so go-systemd's journal package and systemd-cat reach
// it at their fixed paths) and /run/log is a bind mount of Dir, so the
// journal files can be read from the host with `journalctl -D`.
type Journal struct {
	// Dir holds the journal files (journal/<machine-id>/system.journal).
	Dir string

	t        testing.TB
	cmd      *exec.Cmd // /bin/sh running journald.sh: the namespace's anchor
	stdin    io.WriteCloser
	jpid     int
	logFile  string
	stderr   *lockedBuffer
	nsenter  string
	jctl     string
	stopOnce sync.Once
}

// QueryTimeout bounds Query's polling.
var QueryTimeout = 5 * time.Second

// Journald starts systemd-journald in a new private mount namespace (root
// only; testenv.SkipBecause otherwise) and stops it when the test ends. It kills
// only the processes it started; the namespace and its mounts vanish with
// them. Start-up takes some 10–30 ms.
func Journald(t testing.TB) *Journal {
	t.Helper()
	testenv.RequireRoot(t, "systemdtest.Journald: mount namespace, systemd-journald")
	journald := firstExisting("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")
	testenv.Require(t, journald != "", "systemd-journald not installed (apt-get install systemd, or make deps)")
	nsenter := testenv.RequireTool(t, "nsenter", "util-linux")
	jctl := testenv.RequireTool(t, "journalctl", "systemd")

	j := &Journal{
		Dir:     t.TempDir(),
		t:       t,
		logFile: filepath.Join(t.TempDir(), "journald.log"),
		stderr:  &lockedBuffer{},
		nsenter: nsenter,
		jctl:    jctl,
	}
	cmd := exec.Command("/bin/sh", "-c", journaldScript, "journald.sh", j.Dir, j.logFile, journald)
	// Go makes "/" recursively private in the child after unsharing.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	cmd.Stderr = j.stderr
	var err error
	j.stdin, err = cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start journald namespace: %v", err)
	}
	j.cmd = cmd
	t.Cleanup(j.stop)

	type ready struct {
		pid int
		err error
	}
	rc := make(chan ready, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil {
			rc <- ready{err: fmt.Errorf("reading ready line: %w", err)}
			return
		}
		pid, err := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(line), "ready "))
		rc <- ready{pid, err}
	}()
	select {
	case r := <-rc:
		if r.err != nil {
			j.stop()
			t.Fatalf("journald did not start: %v\nscript stderr: %s\njournald output: %s", r.err, j.stderr, j.journaldLog())
		}
		j.jpid = r.pid
	case <-time.After(10 * time.Second):
		j.stop()
		t.Fatalf("journald did not start within 10s\nscript stderr: %s\njournald output: %s", j.stderr, j.journaldLog())
	}
	return j
}

// PID is the process anchoring the mount namespace (nsenter -t PID -m).
func (j *Journal) PID() int { return j.cmd.Process.Pid }

// JournaldPID is systemd-journald's process id.
func (j *Journal) JournaldPID() int { return j.jpid }

// Command returns a command that runs name with args inside the journal's
// mount namespace (through nsenter, in the caller's working directory or
// cmd.Dir) with stderr connected to a journald stdout stream identified as
// filepath.Base(name), and JOURNAL_STREAM set to that stream's
// "device:inode", exactly as systemd does for StandardError=journal. Inside,
// go-systemd's journal.StderrIsJournalStream() reports true and journal.Send
// reaches this journald. Keep JOURNAL_STREAM when replacing cmd.Env. The
// caller starts, waits for and cleans up the process; the stream is closed
// when the test ends.
func (j *Journal) Command(name string, args ...string) *exec.Cmd {
	j.t.Helper()
	stream, err := j.Stream(filepath.Base(name))
	if err != nil {
		j.t.Fatal(err)
	}
	j.t.Cleanup(func() { _ = stream.Close() })
	var st syscall.Stat_t
	if err := syscall.Fstat(int(stream.Fd()), &st); err != nil {
		j.t.Fatal(err)
	}
	cmd := exec.Command(j.nsenter, append([]string{
		"-t", strconv.Itoa(j.PID()), "-m", "--wd=.", "--", name}, args...)...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("JOURNAL_STREAM=%d:%d", st.Dev, st.Ino))
	cmd.Stderr = stream
	return cmd
}

// Stream opens a stdout-stream connection to journald (what systemd passes
// as a service's stdout/stderr) with the given SYSLOG_IDENTIFIER, INFO
// priority and "<N>" level prefixes honoured. The caller closes it. The
// connection is made by the test process, so journald attributes stream
// entries (_PID, _COMM, _EXE) to it, not to the program writing to it.
func (j *Journal) Stream(identifier string) (*os.File, error) {
	path := fmt.Sprintf("/proc/%d/root/run/systemd/journal/stdout", j.PID())
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("journal stream: %w", err)
	}
	defer c.Close()
	// identifier, unit id, priority, level prefix, forward to syslog,
	// kmsg, console (systemd's stdout-stream header).
	if _, err := fmt.Fprintf(c, "%s\n\n6\n1\n0\n0\n0\n", identifier); err != nil {
		return nil, fmt.Errorf("journal stream header: %w", err)
	}
	_ = c.CloseRead()
	f, err := c.File() // a blocking duplicate, fit for a child's stderr
	if err != nil {
		return nil, fmt.Errorf("journal stream: %w", err)
	}
	return f, nil
}

// Entries returns the entries that match now (journalctl field matches such
// as "VM_NAME=web1"; several matches of one field are ORed, of different
// fields ANDed), oldest first, decoded from `journalctl -o json`: values are
// strings, or arrays for binary and repeated fields.
func (j *Journal) Entries(t testing.TB, matches ...string) []map[string]any {
	t.Helper()
	entries, err := j.entries(matches)
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

// Query polls until at least one entry matches, for up to QueryTimeout, and
// returns the matching entries; it fails the test when none shows up.
func (j *Journal) Query(t testing.TB, matches ...string) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(QueryTimeout)
	var lastErr error
	for {
		entries, err := j.entries(matches)
		if err == nil && len(entries) > 0 {
			return entries
		}
		lastErr = err
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	tail, _ := j.entries(nil)
	if len(tail) > 20 {
		tail = tail[len(tail)-20:]
	}
	var b strings.Builder
	for _, e := range tail {
		fmt.Fprintf(&b, "  %v: %v\n", e["SYSLOG_IDENTIFIER"], e["MESSAGE"])
	}
	t.Fatalf("no journal entry matched %q within %s (last error: %v); last entries:\n%s",
		matches, QueryTimeout, lastErr, b.String())
	return nil
}

func (j *Journal) entries(matches []string) ([]map[string]any, error) {
	args := append([]string{"-D", filepath.Join(j.Dir, "journal"), "--no-pager", "-q", "-o", "json"}, matches...)
	cmd := exec.Command(j.jctl, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("journalctl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	var entries []map[string]any
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var e map[string]any
		if err := dec.Decode(&e); errors.Is(err, io.EOF) {
			return entries, nil
		} else if err != nil {
			return entries, fmt.Errorf("journalctl -o json: %w", err)
		}
		entries = append(entries, e)
	}
}

// stop ends journald and the namespace: closing stdin makes the script
// SIGTERM journald and exit; after 5 s it SIGKILLs both PIDs it started.
func (j *Journal) stop() {
	j.stopOnce.Do(func() {
		_ = j.stdin.Close()
		done := make(chan struct{})
		go func() { _ = j.cmd.Wait(); close(done) }()
		select {
		case <-done:
			return
		case <-time.After(5 * time.Second):
		}
		if j.jpid > 0 {
			_ = syscall.Kill(j.jpid, syscall.SIGKILL)
		}
		_ = j.cmd.Process.Kill()
		<-done
		j.t.Errorf("journald (pid %d) did not stop within 5s; killed", j.jpid)
	})
}

func (j *Journal) journaldLog() string {
	b, _ := os.ReadFile(j.logFile)
	return string(b)
}

func firstExisting(paths ...string) string {
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
