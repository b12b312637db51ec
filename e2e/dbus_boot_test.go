package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// dbusexecResult is one line of testdata/dbusexec.
type dbusexecResult struct {
	Stdout, Stderr, Result, Error, Message string
}

func dbusexec(t *testing.T, addr, vm, stdin string, args ...string) dbusexecResult {
	t.Helper()
	c := exec.Command(bin("dbusexec"), append([]string{"-address", addr, "-vm", vm}, args...)...)
	c.Stdin = strings.NewReader(stdin)
	var errb strings.Builder
	c.Stderr = &errb
	out, err := c.Output()
	if err != nil {
		t.Fatalf("dbusexec %v: %v\n%s", args, err, errb.String())
	}
	var r dbusexecResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("dbusexec output %q: %v", out, err)
	}
	return r
}

// Issue 13, section 3, on a VM that boots (QEMU, TCG): through the bus
// alone, CreateVM and Start (a job; the VM reaches running), GetStats,
// Exec with the caller's sockets as stdio (input through, output back,
// the exit code in JobDone), and OpenConsole (the guest's console output
// reaches the caller's socket; Ctrl-] detaches and ends the job).
func TestDBusBoot(t *testing.T) {
	addr := privateBus(t)
	e, _, _, image := vmEnvImage(t, "[dbus]\nbus = \"system\"\n", func(c *exec.Cmd) {
		c.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+addr)
	})
	if out, err := exec.Command("go", "build", "-o", bin("dbusexec"), "./testdata/dbusexec").CombinedOutput(); err != nil {
		t.Fatalf("building dbusexec: %v\n%s", err, out)
	}
	root := &syscall.Credential{}
	waitFor(t, "org.paddock1 on the bus", 15*time.Second, func() bool {
		return busctl(t, addr, root, "call", "org.paddock1", "/org/paddock1", "org.freedesktop.DBus.Peer", "Ping").code == 0
	})
	vm := objPath(t, busctl(t, addr, root, "call", "org.paddock1", "/org/paddock1", "org.paddock1.Manager", "CreateVM", "a{sv}", "2", "name", "s", "d1", "image", "s", image))
	t0 := time.Now()
	if r := busctl(t, addr, root, "call", "org.paddock1", vm, "org.paddock1.VM", "Start"); r.code != 0 || !strings.Contains(r.stdout, "/org/paddock1/job/") {
		t.Fatalf("Start: %d %s %s", r.code, r.stdout, r.stderr)
	}
	t.Logf("Start answered in %s", time.Since(t0).Round(time.Millisecond))
	waitFor(t, "d1 running", 3*time.Minute, func() bool {
		return strings.Contains(busctl(t, addr, root, "get-property", "org.paddock1", vm, "org.paddock1.VM", "State").stdout, `"running"`)
	})
	t.Logf("running %s after Start", time.Since(t0).Round(time.Millisecond))

	var stats string
	waitFor(t, "stats with the guest's figures", time.Minute, func() bool {
		stats = busctl(t, addr, root, "call", "org.paddock1", vm, "org.paddock1.VM", "GetStats").stdout
		return strings.Contains(stats, `"guest" a{sv}`) && strings.Contains(stats, `"mem_total" x`)
	})
	t.Logf("GetStats: %.300s", stats)

	r := dbusexec(t, addr, vm, "hello over D-Bus\n", "--", "cat")
	if r.Stdout != "hello over D-Bus\n" || r.Result != "done" || r.Message != "exit 0" {
		t.Fatalf("Exec cat: %+v", r)
	}
	r = dbusexec(t, addr, vm, "", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
	if r.Stdout != "out\n" || r.Stderr != "err\n" || r.Message != "exit 3" {
		t.Fatalf("Exec exit 3: %+v", r)
	}
	if r := dbusexec(t, addr, vm, "", "--", "/no/such/program"); r.Result != "failed" || !strings.Contains(r.Message, "/no/such/program") {
		t.Fatalf("Exec of a missing program: %+v", r)
	}

	// The console: the marker written to the guest's console reaches the
	// caller's socket, then Ctrl-] ends the job.
	con := exec.Command(bin("dbusexec"), "-address", addr, "-vm", vm, "-console", "-until", "console-marker-42")
	var conOut, conErr strings.Builder
	con.Stdout, con.Stderr = &conOut, &conErr
	if err := con.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- con.Wait() }()
	deadline := time.Now().Add(time.Minute)
	for ended := false; !ended; {
		execOut(t, e, "d1", "", "sh", "-c", "echo console-marker-42 > /dev/console")
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("console client: %v\n%s", err, conErr.String())
			}
			ended = true
		case <-time.After(time.Second):
			if time.Now().After(deadline) {
				_ = con.Process.Kill()
				t.Fatalf("the marker never reached the console client:\n%s", conErr.String())
			}
		}
	}
	var cr dbusexecResult
	if err := json.Unmarshal([]byte(conOut.String()), &cr); err != nil || !strings.Contains(cr.Stdout, "console-marker-42") || cr.Result != "done" {
		t.Fatalf("console: %v %+v", err, cr)
	}
	busctl(t, addr, root, "call", "org.paddock1", vm, "org.paddock1.VM", "Kill").ok(t, "Kill")
	busctl(t, addr, root, "call", "org.paddock1", vm, "org.paddock1.VM", "Delete").ok(t, "Delete")
}
