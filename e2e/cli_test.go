package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// Acceptance: systemd-socket-activate -l SOCK bin/paddockd --config CFG
// serves the CLI's create, ls --json, inspect, set, rm and events.
func TestSocketActivatedCLI(t *testing.T) {
	sa := testenv.RequireTool(t, "systemd-socket-activate", "systemd")
	e := newEnv(t, "")
	if err := os.MkdirAll(e.dir+"/run", 0o755); err != nil {
		t.Fatal(err)
	}
	p := start(t, exec.Command(sa, "-l", e.socket, bin("paddockd"), "--config", e.cfg))
	// The socket exists before paddockd does; the first connection starts it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if fi, err := os.Stat(e.socket); err == nil && fi.Mode()&os.ModeSocket != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("systemd-socket-activate did not create the socket")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// events runs throughout and must see every change below, in order.
	ev := exec.Command(bin("paddock"), "--socket", e.socket, "events", "--json")
	evOut, err := ev.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	evp := start(t, ev)
	evLines := make(chan api.Event, 64)
	go func() {
		sc := bufio.NewScanner(evOut)
		for sc.Scan() {
			var e api.Event
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				evLines <- e
			}
		}
		close(evLines)
	}()
	time.Sleep(300 * time.Millisecond) // let the subscription register

	created := e.cli(t, nil, "create", "web1", "--image", "alpine", "--cpus", "2", "--memory", "256MiB", "--json").ok(t, "create")
	var vm api.VM
	if err := json.Unmarshal([]byte(created), &vm); err != nil || vm.Name != "web1" || vm.Spec.CPUs != 2 || vm.Spec.Memory != 256<<20 || vm.Status != "created" {
		t.Fatalf("create --json: %v %s", err, created)
	}
	if r := e.cli(t, nil, "create", "web1", "--image", "alpine"); r.code != 1 || !strings.Contains(r.stderr, `"web1"`) || !strings.Contains(r.stderr, "NameInUse") {
		t.Fatalf("duplicate create: %+v", r)
	}
	if r := e.cli(t, nil, "create", "web2", "--image", "no-such-image", "--pull=never"); r.code != 1 || !strings.Contains(r.stderr, "no-such-image") {
		t.Fatalf("create from unknown image: %+v", r)
	}
	if r := e.cli(t, nil, "create", "--bogus-flag"); r.code != 2 {
		t.Fatalf("usage error exit code: %+v", r)
	}

	var list []api.VM
	if err := json.Unmarshal([]byte(e.cli(t, nil, "ls", "--json").ok(t, "ls")), &list); err != nil || len(list) != 1 || list[0].ID != vm.ID {
		t.Fatalf("ls --json: %v %+v", err, list)
	}
	table := e.cli(t, nil, "ls").ok(t, "ls")
	if !strings.Contains(table, "NAME") || !strings.Contains(table, "web1") || !strings.Contains(table, vm.ID[:12]) {
		t.Fatalf("ls table:\n%s", table)
	}

	e.cli(t, nil, "set", "web1", "--cpus", "3", "--auto-stop", "30m").ok(t, "set")
	var got api.VM
	if err := json.Unmarshal([]byte(e.cli(t, nil, "inspect", vm.ID[:8], "--json").ok(t, "inspect")), &got); err != nil {
		t.Fatal(err)
	}
	if got.Spec.CPUs != 3 || got.Spec.AutoStop != "30m0s" || got.Name != "web1" {
		t.Fatalf("inspect after set: %+v", got)
	}
	if human := e.cli(t, nil, "inspect", "web1").ok(t, "inspect"); !strings.Contains(human, "CPUs:") || !strings.Contains(human, "3") {
		t.Fatalf("inspect human:\n%s", human)
	}

	// This daemon runs no VMs (vm.run = "off"): a start says so rather than
	// pretending. Running-state refusals are covered against the fakes in
	// actors (TestLifecycleTransitionsAndRefusals) and for real in vm_test.
	if r := e.cli(t, nil, "start", "web1"); r.code != 1 || !strings.Contains(r.stderr, "runs no VMs") {
		t.Fatalf("start on a daemon that runs no VMs: %+v", r)
	}
	e.cli(t, nil, "rm", "web1").ok(t, "rm")
	if r := e.cli(t, nil, "inspect", "web1"); r.code != 1 || !strings.Contains(r.stderr, "VMNotFound") {
		t.Fatalf("inspect after rm: %+v", r)
	}
	if _, err := os.Stat(e.state + "/vms/" + vm.ID); !os.IsNotExist(err) {
		t.Fatalf("VM directory left after rm: %v", err)
	}

	want := []string{"created/created", "updated/created", "deleted/deleted"}
	for i, w := range want {
		select {
		case got, ok := <-evLines:
			if !ok {
				t.Fatalf("events ended early at %d", i)
			}
			if g := string(got.Kind) + "/" + got.Status; g != w || got.VMName != "web1" {
				t.Fatalf("event %d = %+v, want %s", i, got, w)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("event %d (%s) not received", i, w)
		}
	}
	evp.signal(t, syscall.SIGINT)
	if code := evp.wait(t, 5*time.Second); code != 0 {
		t.Fatalf("events exit code %d", code)
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("paddockd exit code %d on SIGTERM\n%s", code, p.stderr.String())
	}
}

func TestCLIWithoutDaemon(t *testing.T) {
	e := &env{socket: "/nonexistent/paddock.sock"}
	r := e.cli(t, nil, "ls")
	if r.code != 1 || !strings.Contains(r.stderr, "/nonexistent/paddock.sock") || !strings.Contains(r.stderr, "cannot reach paddockd") {
		t.Fatalf("unreachable daemon: %+v", r)
	}
	for _, sh := range []string{"bash", "zsh", "fish"} {
		if out := e.cli(t, nil, "completion", sh).ok(t, "completion "+sh); !strings.Contains(out, "paddock") || len(out) < 500 {
			t.Fatalf("completion %s: %q", sh, out)
		}
	}
	if r := e.cli(t, nil, "completion", "tcsh"); r.code != 2 {
		t.Fatalf("unknown shell exit: %+v", r)
	}
	if r := e.cli(t, nil, "frobnicate"); r.code != 2 {
		t.Fatalf("unknown command exit: %+v", r)
	}
}
