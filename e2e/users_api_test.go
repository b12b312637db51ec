package e2e

// Many users on one host, the API side (issue 10, findings 6, 7 and 11):
// each test runs the attack with real uids (setpriv, credentials) against a
// real paddockd and checks that it now fails, logging the figures.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/internal/testenv"
)

const (
	daveUID = 61004
	erinUID = 61005
)

var hostileBuild struct {
	once sync.Once
	err  error
}

// hostileBin builds the misbehaving client (testdata/hostile) next to the
// other binaries, where every uid may run it.
func hostileBin(t *testing.T) string {
	t.Helper()
	hostileBuild.once.Do(func() {
		out, err := exec.Command("go", "build", "-o", bin("hostile"), "./testdata/hostile").CombinedOutput()
		if err != nil {
			hostileBuild.err = fmt.Errorf("building the hostile client: %v\n%s", err, out)
		}
	})
	if hostileBuild.err != nil {
		t.Fatal(hostileBuild.err)
	}
	return bin("hostile")
}

// cred is a process identity: uid, primary gid and supplementary groups.
func cred(uid, gid int, groups ...int) *syscall.Credential {
	c := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	for _, g := range groups {
		c.Groups = append(c.Groups, uint32(g))
	}
	return c
}

// usersEnv is an env for usersDaemon: the socket's group may connect, the
// admin group is adminGID.
func usersEnv(t *testing.T, extra string) *env {
	t.Helper()
	testenv.RequireRoot(t, "runs the daemon and clients as other uids")
	return newEnv(t, fmt.Sprintf("[api]\nsocket_group = \"%d\"\nadmin_group = \"%d\"\n%s", socketGID, adminGID, extra))
}

// usersDaemon runs paddockd on e as daemonUID with the socket's group as
// its primary group, as the packaged unit does (User=paddock,
// Group=paddock, the socket's group paddock), with no capabilities.
// umask000 starts it under umask 000.
func (e *env) usersDaemon(t *testing.T, umask000 bool) *proc {
	t.Helper()
	setpriv := testenv.RequireTool(t, "setpriv", "util-linux")
	chownTree(t, e.dir, daemonUID, socketGID)
	p := e.daemon(t, func(c *exec.Cmd) {
		args := []string{setpriv, fmt.Sprintf("--reuid=%d", daemonUID), fmt.Sprintf("--regid=%d", socketGID),
			fmt.Sprintf("--groups=%d", socketGID), "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
			bin("paddockd"), "--config", e.cfg}
		c.Path, c.Args = setpriv, args
		if umask000 {
			c.Path = "/bin/sh"
			c.Args = append([]string{"sh", "-c", `umask 000 && exec "$@"`, "sh"}, args...)
		}
		c.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent"}
	})
	// sh and setpriv exec in place: the pid is paddockd's.
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p.cmd.Process.Pid)); strings.TrimSpace(string(comm)) != "paddockd" {
		t.Fatalf("process %d is %q, not paddockd", p.cmd.Process.Pid, comm)
	}
	return p
}

// hostileProc is a running testdata/hostile.
type hostileProc struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	done  chan struct{}
}

// hostile runs testdata/hostile as c with args.
func (e *env) hostile(t *testing.T, name string, c *syscall.Credential, args ...string) *hostileProc {
	t.Helper()
	cmd := exec.Command(hostileBin(t), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c}
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/"}
	stderr := &lockedBuf{}
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &hostileProc{name: name, cmd: cmd, stdin: stdin, lines: make(chan string, 4), done: make(chan struct{})}
	go func() {
		defer close(h.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
	}()
	go func() { _ = cmd.Wait(); close(h.done) }()
	t.Cleanup(func() {
		_ = stdin.Close()
		select {
		case <-h.done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-h.done
		}
		if t.Failed() && stderr.String() != "" {
			t.Logf("%s's hostile client stderr:\n%s", name, stderr.String())
		}
	})
	return h
}

// line decodes the next line of figures into v.
func (h *hostileProc) line(t *testing.T, v any, within time.Duration) {
	t.Helper()
	select {
	case l, ok := <-h.lines:
		if !ok {
			t.Fatalf("%s's hostile client ended without its figures", h.name)
		}
		if err := json.Unmarshal([]byte(l), v); err != nil {
			t.Fatalf("%s's hostile client said %q: %v", h.name, l, err)
		}
	case <-time.After(within):
		t.Fatalf("%s's hostile client gave no figures within %s", h.name, within)
	}
}

// release tells the client to let go and reads its last figures into v.
func (h *hostileProc) release(t *testing.T, v any) {
	t.Helper()
	_ = h.stdin.Close()
	h.line(t, v, time.Minute)
}

type holdFigures struct {
	Held, Refused int
	Refusal       string
}

// procCount reads a number from /proc/PID/status (Threads) or counts
// /proc/PID/fd (key "fds").
func procCount(t *testing.T, pid int, key string) int {
	t.Helper()
	if key == "fds" {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	n, err := strconv.Atoi(capLine(t, pid, key))
	if err != nil {
		t.Fatalf("%s of %d: %v", key, pid, err)
	}
	return n
}

// Finding 6: one uid held every connection (256) and locked everyone out.
// Now alice gets her cap and no more; another user and an admin still
// connect and call; users together stop short of the slots kept for
// admins, and a user who finds them all taken is told which limit; an idle
// connection is closed after the idle timeout while the held streams,
// older than it, stay.
func TestTwoUsersConnectionLimits(t *testing.T) {
	const maxConns, perUser, reserved = 24, 8, 4
	e := usersEnv(t, fmt.Sprintf("max_connections = %d\nmax_connections_per_user = %d\nadmin_reserved_connections = %d\nidle_timeout = \"2s\"\n",
		maxConns, perUser, reserved))
	e.usersDaemon(t, false)
	alice, bob, carol := cred(aliceUID, socketGID), cred(bobUID, socketGID), cred(carolUID, adminGID, socketGID)
	dave, erin := cred(daveUID, socketGID), cred(erinUID, socketGID)
	n := strconv.Itoa(maxConns)

	// The attack: alice opens every connection the daemon accepts and holds
	// each with an event stream (a call in flight: no idle timeout applies).
	ha := e.hostile(t, "alice", alice, "hold", "-socket", e.socket, "-n", n)
	var a holdFigures
	ha.line(t, &a, time.Minute)
	t.Logf("alice tried %d connections: held %d, refused %d: %q", maxConns, a.Held, a.Refused, a.Refusal)
	if a.Held != perUser || a.Refused != maxConns-perUser || !strings.Contains(a.Refusal, "api.max_connections_per_user = 8") {
		t.Fatalf("alice held %d of %d (refused %d: %q), want her cap of %d, the rest refused naming api.max_connections_per_user", a.Held, maxConns, a.Refused, a.Refusal, perUser)
	}
	// A third uid and an admin still connect and call.
	for _, who := range []struct {
		name string
		c    *syscall.Credential
	}{{"bob", bob}, {"carol (admin)", carol}, {"root", nil}} {
		r := e.cli(t, who.c, "ls")
		t.Logf("%s while alice holds %d: ls exit %d %q", who.name, a.Held, r.code, strings.TrimSpace(r.stdout+r.stderr))
		r.ok(t, who.name+" ls while alice holds her cap")
	}

	// Users together: bob takes his cap, dave what is left of the users'
	// share; the admins' slots stay free.
	hb := e.hostile(t, "bob", bob, "hold", "-socket", e.socket, "-n", n)
	var b holdFigures
	hb.line(t, &b, time.Minute)
	hd := e.hostile(t, "dave", dave, "hold", "-socket", e.socket, "-n", n)
	var d holdFigures
	hd.line(t, &d, time.Minute)
	t.Logf("bob held %d, dave held %d (refused %d: %q)", b.Held, d.Held, d.Refused, d.Refusal)
	if users := maxConns - reserved; b.Held != perUser || d.Held != users-2*perUser || !strings.Contains(d.Refusal, "every connection open to users is in use") {
		t.Fatalf("bob held %d, dave %d (%q): want %d and %d, the users' share of %d", b.Held, d.Held, d.Refusal, perUser, users-2*perUser, users)
	}
	r := e.cli(t, erin, "ls")
	t.Logf("erin with every user slot taken: exit %d %q", r.code, strings.TrimSpace(r.stderr))
	if r.code == 0 || !strings.Contains(r.stderr, "api.admin_reserved_connections = 4") || !strings.Contains(r.stderr, "Unavailable") {
		t.Fatalf("erin, with every user slot taken: %+v, want a refusal naming the limit", r)
	}
	e.cli(t, carol, "ls").ok(t, "carol (admin) ls with every user slot taken")
	e.cli(t, nil, "ls").ok(t, "root ls with every user slot taken")

	// Idle connections go after api.idle_timeout; the streams stay.
	var gone struct {
		StillOpen int `json:"still_open"`
	}
	hd.release(t, &gone)
	if gone.StillOpen != d.Held {
		t.Fatalf("dave's streams: %d of %d open at release", gone.StillOpen, d.Held)
	}
	hi := e.hostile(t, "erin", erin, "idle", "-socket", e.socket, "-n", "4", "-wait", "60s")
	var idle struct {
		Opened         int     `json:"opened"`
		ClosedByDaemon int     `json:"closed_by_daemon"`
		Seconds        float64 `json:"seconds"`
	}
	hi.line(t, &idle, 2*time.Minute)
	t.Logf("erin's idle connections: %d opened, %d closed by the daemon within %.1fs (idle_timeout 2s)", idle.Opened, idle.ClosedByDaemon, idle.Seconds)
	if idle.ClosedByDaemon != idle.Opened {
		t.Fatalf("idle connections left open: %+v", idle)
	}
	var kept struct {
		StillOpen int `json:"still_open"`
	}
	ha.release(t, &kept)
	t.Logf("alice's %d streams, held past the idle timeout: %d still open", a.Held, kept.StillOpen)
	if kept.StillOpen != a.Held {
		t.Fatalf("alice's streams closed by the idle timeout: %d of %d open", kept.StillOpen, a.Held)
	}
	hb.release(t, &kept)
}

// Finding 7: every Exec whose client kept its stdin open and silent pinned
// one of the daemon's OS threads (and a descriptor) for good. Now alice
// makes 2,000 such calls, keeping her end of every socket open, never
// reading, and switching the stdin end she passed back to blocking mode:
// the daemon's thread and descriptor counts stay flat, and pipes (which
// the daemon could not keep from blocking it) are refused naming the stream.
func TestTwoUsersAbandonedExecs(t *testing.T) {
	testenv.RequireRoot(t, "runs clients as other uids")
	e, p, ns, ref := bootEnv(t, fmt.Sprintf("[api]\nsocket_group = \"%d\"\n", socketGID), nil)
	e.bootKit(t)
	pid := p.cmd.Process.Pid
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) != "paddockd" {
		t.Fatalf("process %d is %q, not paddockd", pid, comm)
	}
	alice, bob := cred(aliceUID, socketGID), cred(bobUID, socketGID)
	e.cli(t, alice, "image", "pull", ref).ok(t, "alice pulls")
	e.cli(t, alice, "run", "--image", ref, "--name", "alice-vm").ok(t, "alice runs her VM")
	t.Cleanup(func() { e.cli(t, nil, "rm", "--force", "alice-vm") })
	if out := e.cli(t, alice, "exec", "alice-vm", "--", "echo", "warm").ok(t, "warm-up exec"); out != "warm\n" {
		t.Fatalf("warm-up exec printed %q", out)
	}

	hp := e.hostile(t, "alice", alice, "pipes", "-socket", e.socket, "-vm", "alice-vm")
	var piped struct{ Error string }
	hp.line(t, &piped, time.Minute)
	t.Logf("Exec with pipes: %s", piped.Error)
	if !strings.Contains(piped.Error, "stdin must be passed as a stream socket") || !strings.Contains(piped.Error, "pipe") {
		t.Fatalf("Exec with pipes: %q, want a refusal naming stdin and the pipe", piped.Error)
	}

	threadsBefore, fdsBefore := procCount(t, pid, "Threads"), procCount(t, pid, "fds")
	const calls = 2000
	h := e.hostile(t, "alice", alice, "exec", "-socket", e.socket, "-vm", "alice-vm", "-n", strconv.Itoa(calls), "-parallel", "8")
	var ran struct {
		Calls      int     `json:"calls"`
		OK         int     `json:"ok"`
		Errors     int     `json:"errors"`
		FdsHeld    int     `json:"fds_held"`
		FirstError string  `json:"first_error"`
		Seconds    float64 `json:"seconds"`
	}
	h.line(t, &ran, 20*time.Minute)
	threadsAfter, fdsAfter := procCount(t, pid, "Threads"), procCount(t, pid, "fds")
	t.Logf("%d abandoned execs by alice (%d ok, %d failed, in %.0fs; she holds %d descriptors): daemon threads %d before, %d after; descriptors %d before, %d after",
		ran.Calls, ran.OK, ran.Errors, ran.Seconds, ran.FdsHeld, threadsBefore, threadsAfter, fdsBefore, fdsAfter)
	if ran.OK != calls {
		t.Fatalf("%d of %d execs failed; first: %s", ran.Errors, calls, ran.FirstError)
	}
	// Flat: the runtime may add a few threads under load, never one a call.
	if threadsAfter > threadsBefore+32 || fdsAfter > fdsBefore+32 {
		t.Fatalf("after %d abandoned execs the daemon has %d threads (was %d) and %d descriptors (was %d)", calls, threadsAfter, threadsBefore, fdsAfter, fdsBefore)
	}
	// Everyone is still served while alice holds it all.
	e.cli(t, bob, "ls").ok(t, "bob ls")
	if out := e.cli(t, alice, "exec", "alice-vm", "--", "echo", "still"); out.code != 0 || out.stdout != "still\n" {
		t.Fatalf("exec after the attack: %+v", out)
	}
	var released struct{ Released int }
	h.release(t, &released)
	t.Logf("alice let go of %d descriptors; daemon threads %d", released.Released, procCount(t, pid, "Threads"))

	e.cli(t, alice, "rm", "--force", "alice-vm").ok(t, "rm")
	if l := e.leaks(t, ns); l.taps+l.vmms+l.loops+l.dirs != 0 {
		t.Fatalf("leaked %v", l.detail)
	}
}

// Finding 11, modes: with the API's users in the daemon's group (as
// packaged), vm.json (which holds --env values) was readable by every one
// of them. Now, under umask 000 even, everything the daemon writes is its
// own alone and bob cannot read alice's VM record.
func TestTwoUsersStateModes(t *testing.T) {
	e := usersEnv(t, "")
	// What exists before the daemon starts (the seeded image) is not its doing.
	before := map[string]bool{}
	if err := filepath.WalkDir(e.dir, func(p string, _ fs.DirEntry, err error) error {
		before[p] = true
		return err
	}); err != nil {
		t.Fatal(err)
	}
	p := e.usersDaemon(t, true)
	pid := p.cmd.Process.Pid
	t.Logf("paddockd started under umask 000 runs with Umask %s", capLine(t, pid, "Umask"))
	alice, bob := cred(aliceUID, socketGID), cred(bobUID, socketGID)
	e.cli(t, alice, "create", "alice-vm", "--image", "alpine", "--env", "API_TOKEN=hunter2").ok(t, "alice create")
	vm := inspectAs(t, e, alice, "alice-vm")
	record := filepath.Join(e.state, "vms", vm.ID, "vm.json")
	if b, err := os.ReadFile(record); err != nil || !strings.Contains(string(b), "hunter2") {
		t.Fatalf("%s does not hold the env value: %v", record, err)
	}
	cat := exec.Command("cat", record)
	cat.SysProcAttr = &syscall.SysProcAttr{Credential: bob}
	out, err := cat.CombinedOutput()
	t.Logf("bob reads alice's vm.json: %v %q", err, strings.TrimSpace(string(out)))
	if err == nil || strings.Contains(string(out), "hunter2") || !strings.Contains(string(out), "Permission denied") {
		t.Fatalf("bob read alice's VM record: %v %q", err, out)
	}

	want := map[string]os.FileMode{e.state: 0o700, filepath.Join(e.dir, "cache"): 0o700, filepath.Join(e.dir, "run"): 0o755}
	for p, m := range want {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != m {
			t.Errorf("%s: %v %v, want %v", p, fi.Mode().Perm(), err, m)
		}
	}
	var checked []string
	err = filepath.WalkDir(e.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(e.dir, p)
		if before[p] || want[p] != 0 || p == e.dir || p == e.cfg || strings.HasPrefix(rel, "run"+string(filepath.Separator)) {
			return nil // the test's own, the roots checked above, the runtime directory (sockets)
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		checked = append(checked, fmt.Sprintf("%s %v", rel, fi.Mode().Perm()))
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: mode %v lets others in", rel, fi.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(e.socket)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket: %v %v, want 0660", fi.Mode(), err)
	}
	t.Logf("what the daemon made: %s", strings.Join(checked, ", "))
	if len(checked) < 3 {
		t.Fatalf("only %d paths checked", len(checked))
	}
}

func inspectAs(t *testing.T, e *env, c *syscall.Credential, name string) api.VM {
	t.Helper()
	var vm api.VM
	if err := json.Unmarshal([]byte(e.cli(t, c, "inspect", name, "--json").ok(t, "inspect "+name)), &vm); err != nil {
		t.Fatal(err)
	}
	return vm
}

// Finding 11, groups: admin membership came from the group database,
// cached by uid for 5 s, so a process that carried the admin group was not
// an admin unless /etc/group said so, and a uid judged admin stayed one
// for its next connections though they no longer carried the group. Now
// each connection is judged by the groups it carries.
func TestTwoUsersAdminByConnectionGroups(t *testing.T) {
	e := usersEnv(t, "")
	e.usersDaemon(t, false)
	alice, bob := cred(aliceUID, socketGID), cred(bobUID, socketGID)
	e.cli(t, alice, "create", "alice-vm", "--image", "alpine").ok(t, "alice create")
	e.cli(t, bob, "create", "bob-vm", "--image", "alpine").ok(t, "bob create")
	for _, tc := range []struct {
		who  string
		c    *syscall.Credential
		sees string
	}{
		{"alice carrying the admin group (not in the group database)", cred(aliceUID, socketGID, adminGID), "alice-vm,bob-vm"},
		{"alice without it, at once", alice, "alice-vm"},
		{"carol, the admin group her primary group", cred(carolUID, adminGID, socketGID), "alice-vm,bob-vm"},
		{"carol after leaving it, at once", cred(carolUID, socketGID), ""},
		{"alice with it again", cred(aliceUID, socketGID, socketGID, adminGID), "alice-vm,bob-vm"},
		{"bob", bob, "bob-vm"},
	} {
		var vms []api.VM
		if err := json.Unmarshal([]byte(e.cli(t, tc.c, "ls", "--json").ok(t, tc.who)), &vms); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, vm := range vms {
			names = append(names, vm.Name)
		}
		got := strings.Join(names, ",")
		t.Logf("%s (uid %d gid %d groups %v) sees %q", tc.who, tc.c.Uid, tc.c.Gid, tc.c.Groups, got)
		if got != tc.sees {
			t.Errorf("%s sees %q, want %q", tc.who, got, tc.sees)
		}
	}
}
