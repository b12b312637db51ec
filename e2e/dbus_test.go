package e2e

// The D-Bus API org.paddock1 (issue 13, section 3) against a private
// dbus-daemon run with a system-like configuration: the Debian system bus
// policy with the shipped packaging/dbus/org.paddock1.conf included (its
// group paddock being the test's socket group), clients as real uids
// driven with busctl and a godbus listener (testdata/dbuswatch).

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// privateBus starts dbus-daemon on a socket in a temp dir and returns its
// address.
func privateBus(t *testing.T) string {
	t.Helper()
	daemonBin := testenv.RequireTool(t, "dbus-daemon", "dbus")
	sysConf, err := os.ReadFile("/usr/share/dbus-1/system.conf")
	if err != nil {
		testenv.SkipBecause(t, "no /usr/share/dbus-1/system.conf (apt-get install dbus)")
	}
	policy, err := os.ReadFile("../packaging/dbus/org.paddock1.conf")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "pdkbus-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The shipped policy, with the package's user and group made ones this
	// host has (dbus-daemon takes names only): paddockd runs as root here,
	// and the clients' group is "users" (busGroup).
	p := strings.ReplaceAll(string(policy), `user="paddock"`, `user="root"`)
	p = strings.ReplaceAll(p, `group="paddock"`, `group="users"`)
	policyPath := filepath.Join(dir, "org.paddock1.conf")
	if err := os.WriteFile(policyPath, []byte(p), 0o644); err != nil {
		t.Fatal(err)
	}
	// The system bus's own policy, less what only a booted system has.
	conf := string(sysConf)
	for _, re := range []string{`<user>[^<]*</user>`, `<fork/>`, `<standard_system_servicedirs/>`, `<servicehelper>[^<]*</servicehelper>`,
		`<pidfile>[^<]*</pidfile>`, `<syslog/>`, `<includedir>[^<]*</includedir>`, `<include [^>]*>[^<]*</include>`} {
		conf = regexp.MustCompile(re).ReplaceAllString(conf, "")
	}
	sock := filepath.Join(dir, "bus")
	conf = regexp.MustCompile(`<listen>[^<]*</listen>`).ReplaceAllString(conf, "<listen>unix:path="+sock+"</listen>")
	conf = strings.Replace(conf, "</busconfig>", "<include>"+policyPath+"</include>\n</busconfig>", 1)
	confPath := filepath.Join(dir, "system.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p2 := start(t, exec.Command(daemonBin, "--config-file="+confPath, "--nofork", "--nopidfile", "--nosyslog"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case <-p2.done:
			t.Fatalf("dbus-daemon exited: %v\n%s", p2.err, p2.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dbus-daemon did not listen on %s\n%s", sock, p2.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "unix:path=" + sock
}

// busctl runs busctl on the private bus as cred (nil: root).
func busctl(t *testing.T, addr string, cred *syscall.Credential, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testenv.RequireTool(t, "busctl", "systemd"), append([]string{"--address=" + addr}, args...)...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("busctl %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	who := "root"
	if cred != nil {
		who = fmt.Sprint(cred.Uid)
	}
	t.Logf("[%s] $ busctl %s\n%s%s", who, strings.Join(args, " "), out.String(), errb.String())
	return result{stdout: out.String(), stderr: errb.String(), code: code}
}

// The bus's clients. dbus-daemon drops a connection whose uid the user
// database does not know, so they are users every Debian has: nobody,
// daemon and bin (an admin through the admin group), each in the socket's
// group and in busGroup ("users"), a group that grants nothing.
const busGroup = 100

var (
	busAlice = asUser(65534, 65534, socketGID, busGroup)
	busBob   = asUser(1, 1, socketGID, busGroup)
	busCarol = asUser(2, 2, adminGID, socketGID, busGroup)
)

var watchBuild struct {
	once sync.Once
	err  error
}

// busSignal is one signal as dbuswatch prints it.
type busSignal struct {
	Path string `json:"path"`
	Name string `json:"name"`
	Body []any  `json:"body"`
}

type watcher struct {
	mu   sync.Mutex
	sigs []busSignal
	in   io.WriteCloser
}

func (w *watcher) all() []busSignal {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]busSignal(nil), w.sigs...)
}

// watch starts dbuswatch as cred and waits until it has subscribed.
func watch(t *testing.T, addr string, cred *syscall.Credential) *watcher {
	t.Helper()
	watchBuild.once.Do(func() {
		out, err := exec.Command("go", "build", "-o", bin("dbuswatch"), "./testdata/dbuswatch").CombinedOutput()
		if err != nil {
			watchBuild.err = fmt.Errorf("building dbuswatch: %v\n%s", err, out)
		}
	})
	if watchBuild.err != nil {
		t.Fatal(watchBuild.err)
	}
	cmd := exec.Command(bin("dbuswatch"), "-address", addr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	w := &watcher{}
	if w.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	start(t, cmd)
	t.Cleanup(func() { w.in.Close() })
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		first := true
		for sc.Scan() {
			if first {
				first = false
				close(ready)
				continue
			}
			var s busSignal
			if json.Unmarshal(sc.Bytes(), &s) == nil {
				w.mu.Lock()
				w.sigs = append(w.sigs, s)
				w.mu.Unlock()
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatal("dbuswatch did not subscribe")
	}
	return w
}

// waitFor polls until cond holds.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	if !waitUntil(d, cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// waitUntil polls cond until it holds (true) or d has passed (false).
func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

var objPathRE = regexp.MustCompile(`"(/org/paddock1/[a-z]+/[0-9a-f]+)"`)

func objPath(t *testing.T, r result) string {
	t.Helper()
	m := objPathRE.FindStringSubmatch(r.stdout)
	if r.code != 0 || m == nil {
		t.Fatalf("no object path in %q (%s)", r.stdout, r.stderr)
	}
	return m[1]
}

func TestDBusAPI(t *testing.T) {
	e := usersEnv(t, "[dbus]\nbus = \"system\"\n")
	addr := privateBus(t)
	e.daemon(t, func(c *exec.Cmd) { c.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+addr) })

	// Every varlink event, read as root (an admin sees all).
	var evMu sync.Mutex
	var events []api.Event
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		c, err := api.Dial(ctx, e.socket)
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.Events(ctx, "", func(ev api.Event) error {
			evMu.Lock()
			events = append(events, ev)
			evMu.Unlock()
			return nil
		})
	}()

	waitFor(t, "org.paddock1 on the bus", 15*time.Second, func() bool {
		return exec.Command("busctl", "--address="+addr, "call", "org.paddock1", "/org/paddock1", "org.freedesktop.DBus.Peer", "Ping").Run() == nil
	})
	alice, bob, carol := busAlice, busBob, busCarol
	aliceUID := int(alice.Uid)
	// The bus lets everyone send; outside the socket's group, the daemon
	// refuses and says why.
	if r := busctl(t, addr, &syscall.Credential{Uid: alice.Uid, Gid: alice.Gid, Groups: []uint32{busGroup}}, "call", "org.paddock1", "/org/paddock1", "org.paddock1.Manager", "ListVMs"); r.code == 0 || !strings.Contains(r.stderr, "may not use paddock") {
		t.Errorf("a caller outside the socket's group: code %d %s", r.code, r.stderr)
	}
	aw, bw, cw := watch(t, addr, alice), watch(t, addr, bob), watch(t, addr, carol)

	const mgr, mi = "/org/paddock1", "org.paddock1.Manager"
	alicePath := objPath(t, busctl(t, addr, alice, "call", "org.paddock1", mgr, mi, "CreateVM", "a{sv}", "2", "name", "s", "a1", "image", "s", "alpine"))
	bobPath := objPath(t, busctl(t, addr, bob, "call", "org.paddock1", mgr, mi, "CreateVM", "a{sv}", "3", "name", "s", "b1", "image", "s", "alpine", "cpus", "i", "2"))

	// Each sees its own VM only, on every path.
	tree := busctl(t, addr, alice, "tree", "org.paddock1")
	if !strings.Contains(tree.stdout, alicePath) || strings.Contains(tree.stdout, bobPath) {
		t.Errorf("alice's tree:\n%s", tree.stdout)
	}
	if l := busctl(t, addr, alice, "call", "org.paddock1", mgr, mi, "ListVMs"); !strings.Contains(l.stdout, alicePath) || strings.Contains(l.stdout, bobPath) {
		t.Errorf("alice's ListVMs: %s", l.stdout)
	}
	if l := busctl(t, addr, carol, "call", "org.paddock1", mgr, mi, "ListVMs"); !strings.Contains(l.stdout, alicePath) || !strings.Contains(l.stdout, bobPath) {
		t.Errorf("carol (admin) ListVMs: %s", l.stdout)
	}
	if g := busctl(t, addr, alice, "call", "org.paddock1", mgr, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects"); g.code != 0 || !strings.Contains(g.stdout, `"a1"`) || strings.Contains(g.stdout, `"b1"`) {
		t.Errorf("alice's GetManagedObjects: %s %s", g.stdout, g.stderr)
	}
	for _, args := range [][]string{
		{"get-property", "org.paddock1", bobPath, "org.paddock1.VM", "Name"},
		{"introspect", "org.paddock1", bobPath},
		{"call", "org.paddock1", bobPath, "org.paddock1.VM", "Delete"},
		{"call", "org.paddock1", mgr, mi, "GetVM", "s", "b1"},
	} {
		r := busctl(t, addr, alice, args...)
		if r.code == 0 || !strings.Contains(r.stderr, "no VM named") {
			t.Errorf("alice %v on bob's VM: code %d, %s%s; want not found", args, r.code, r.stdout, r.stderr)
		}
	}
	// busctl prints no error names: read them with godbus (root).
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var de dbus.Error
	if err := conn.Object("org.paddock1", "/org/paddock1/vm/0123456789abcdef").Call("org.freedesktop.DBus.Properties.Get", 0, "org.paddock1.VM", "Name").Err; !errors.As(err, &de) ||
		de.Name != "org.paddock1.Error.NotFound" || !strings.Contains(fmt.Sprint(de.Body...), `no VM named "0123456789abcdef"`) {
		t.Errorf("a missing VM's property: %v", err)
	}
	if err := conn.Object("org.paddock1", "/org/paddock1").Call("org.paddock1.Manager.CreateVM", 0, map[string]dbus.Variant{"name": dbus.MakeVariant("x"), "bogus": dbus.MakeVariant(1)}).Err; !errors.As(err, &de) ||
		de.Name != "org.paddock1.Error.InvalidArgument" {
		t.Errorf("CreateVM with an unknown option: %v", err)
	}
	if r := busctl(t, addr, alice, "get-property", "org.paddock1", alicePath, "org.paddock1.VM", "Name", "State", "Owner", "CPUs"); r.code != 0 ||
		!strings.Contains(r.stdout, `s "a1"`) || !strings.Contains(r.stdout, `s "created"`) || !strings.Contains(r.stdout, fmt.Sprintf("u %d", aliceUID)) {
		t.Errorf("alice's properties: %s %s", r.stdout, r.stderr)
	}
	if r := busctl(t, addr, alice, "introspect", "org.paddock1", alicePath); r.code != 0 || !strings.Contains(r.stdout, "org.paddock1.VM") || !strings.Contains(r.stdout, ".Start") {
		t.Errorf("introspect: %s %s", r.stdout, r.stderr)
	}

	// Start returns a job at once; JobDone tells the outcome (this daemon
	// has vm.run = "off": the start fails, as the varlink one would).
	job := objPath(t, busctl(t, addr, alice, "call", "org.paddock1", alicePath, "org.paddock1.VM", "Start"))
	waitFor(t, "JobDone for "+job, time.Minute, func() bool {
		for _, s := range aw.all() {
			if s.Name == mi+".JobDone" && len(s.Body) > 1 && s.Body[1] == job {
				if s.Body[4] != "failed" || s.Body[5] != "org.paddock1.Error.InvalidState" {
					t.Fatalf("job %s: %v", job, s.Body)
				}
				return true
			}
		}
		return false
	})
	busctl(t, addr, alice, "call", "org.paddock1", alicePath, "org.paddock1.VM", "Set", "a{sv}", "1", "cpus", "i", "2")
	busctl(t, addr, alice, "call", "org.paddock1", alicePath, "org.paddock1.VM", "Kill")
	busctl(t, addr, alice, "call", "org.paddock1", alicePath, "org.paddock1.VM", "Delete").ok(t, "delete")
	busctl(t, addr, bob, "call", "org.paddock1", bobPath, "org.paddock1.VM", "Delete").ok(t, "bob delete")

	// Every varlink event has its signal: carol (admin) gets one for each,
	// carrying its seq; alice and bob get only their own VM's.
	// The varlink stream may still be on its way: the last delete's event
	// reaches the subscriber after the Delete's answer.
	var evs []api.Event
	ok := waitUntil(15*time.Second, func() bool {
		evMu.Lock()
		defer evMu.Unlock()
		evs = append([]api.Event(nil), events...)
		return len(evs) >= 5
	})
	if !ok {
		t.Fatalf("only %d varlink events: %+v", len(evs), evs)
	}
	seqOf := func(s busSignal) (float64, bool) {
		var props map[string]any
		switch s.Name {
		case "org.freedesktop.DBus.Properties.PropertiesChanged":
			props, _ = s.Body[1].(map[string]any)
		case "org.freedesktop.DBus.ObjectManager.InterfacesAdded":
			ifs, _ := s.Body[1].(map[string]any)
			props, _ = ifs["org.paddock1.VM"].(map[string]any)
		}
		v, ok := props["LastEventSeq"].(float64)
		return v, ok
	}
	waitFor(t, "a signal for every varlink event", 30*time.Second, func() bool {
		got := map[string]int{}
		for _, s := range cw.all() {
			if seq, ok := seqOf(s); ok {
				got[fmt.Sprint(seq)]++
			}
			if s.Name == "org.freedesktop.DBus.ObjectManager.InterfacesRemoved" {
				got["removed "+fmt.Sprint(s.Body[0])]++
			}
		}
		for _, ev := range evs {
			key := fmt.Sprint(float64(ev.Seq))
			if ev.Kind == api.EventDeleted {
				key = "removed /org/paddock1/vm/" + ev.VMID
			}
			if got[key] != 1 {
				return false
			}
		}
		return true
	})
	var kinds []string
	for _, ev := range evs {
		kinds = append(kinds, fmt.Sprintf("%d:%s:%s:%s", ev.Seq, ev.VMName, ev.Kind, ev.Status))
	}
	sort.Strings(kinds)
	t.Logf("varlink events, each with its D-Bus signal: %s", strings.Join(kinds, " "))
	for who, w := range map[string]*watcher{"alice": aw, "bob": bw} {
		other := bobPath
		if who == "bob" {
			other = alicePath
		}
		n := 0
		for _, s := range w.all() {
			b, _ := json.Marshal(s)
			if strings.Contains(string(b), other) {
				t.Errorf("%s got a signal about the other's VM: %s", who, b)
			}
			n++
		}
		if n == 0 {
			t.Errorf("%s got no signal at all", who)
		}
	}
	for _, s := range cw.all() {
		b, _ := json.Marshal(s)
		t.Logf("carol got %s", b)
	}
}
