package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/imaging/imagetest"
)

// demoImage is a busybox userland with a motd and a tiny service.
func demoImage(t *testing.T) v1.Image {
	return imagetest.Image(t, &v1.Config{Cmd: []string{"/bin/sh", "-c", "echo demo-main-started; sleep 100000"}, Env: []string{"PATH=/bin", "DEMO=1"}},
		imagetest.BusyboxLayer(t),
		imagetest.LayerTar(t, imagetest.Entry{Name: "etc/", Type: 53}, imagetest.Entry{Name: "etc/motd", Body: "welcome to the paddock demo\n"}))
}

// vmEnv is a daemon in its own network namespace with a boot kit and the
// demo image pulled from a registry in that namespace.
func vmEnv(t *testing.T, extra string, mod func(*exec.Cmd)) (*env, *proc, string) {
	e, p, ns, _ := vmEnvImage(t, extra, mod)
	return e, p, ns
}

// vmEnvImage is vmEnv that also returns the pulled image's reference.
func vmEnvImage(t *testing.T, extra string, mod func(*exec.Cmd)) (*env, *proc, string, string) {
	t.Helper()
	ns := newNetns(t)
	if !strings.Contains(extra, "[vm]") {
		extra += "\n[vm]\nrun = \"on\"\nstart_timeout = \"90s\"\nstop_timeout = \"10s\"\n"
	}
	e := newEnv(t, extra)
	reg := registryIn(t, ns)
	pushTo(t, reg+"/demo:1", demoImage(t))
	p := e.daemon(t, func(c *exec.Cmd) {
		if mod != nil {
			mod(c)
		}
		inNetns(ns)(c)
	})
	e.bootKit(t)
	e.cli(t, nil, "image", "pull", reg+"/demo:1").ok(t, "pull demo image")
	t.Cleanup(func() {
		// Whatever a failing test left running is killed by PID.
		e.killVMMs(t)
	})
	return e, p, ns, reg + "/demo:1"
}

// pushTo pushes to a registry made by registryIn through its twin listener
// on the test's own loopback (storage is shared; the repository is what counts).
func pushTo(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	host, repo, _ := strings.Cut(ref, "/")
	side, ok := registrySides.Load(host)
	if !ok {
		t.Fatalf("no registry for %s", ref)
	}
	imagetest.Push(t, side.(string)+"/"+repo, img)
}

func execOut(t *testing.T, e *env, vm string, stdin string, cmd ...string) (string, int) {
	t.Helper()
	c := exec.Command(bin("paddock"), append([]string{"--socket", e.socket, "exec", vm, "--"}, cmd...)...)
	c.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if errb.Len() > 0 && code != 0 {
		t.Logf("exec %v stderr: %s", cmd, errb.String())
	}
	return out.String(), code
}

// Acceptance (issue 5): run from the registry image, exec, stop, start,
// rm; afterwards no tap, loop device, VMM process or file of the VM remains.
func TestBootExecStopStartRm(t *testing.T) {
	e, _, ns := vmEnv(t, "", nil)
	regImage := ""
	var imgs []api.Image
	json.Unmarshal([]byte(e.cli(t, nil, "image", "ls", "--json").ok(t, "image ls")), &imgs)
	for _, im := range imgs {
		for _, n := range im.Names {
			if strings.HasSuffix(n, "/demo:1") {
				regImage = n
			}
		}
	}
	e.cli(t, nil, "run", "--image", regImage, "--name", "web").ok(t, "run")
	if out, code := execOut(t, e, "web", "", "cat", "/etc/motd"); code != 0 || out != "welcome to the paddock demo\n" {
		t.Fatalf("exec cat /etc/motd: %q exit %d", out, code)
	}
	if out, code := execOut(t, e, "web", "from stdin\n", "cat"); code != 0 || out != "from stdin\n" {
		t.Fatalf("exec with stdin: %q exit %d", out, code)
	}
	if _, code := execOut(t, e, "web", "", "sh", "-c", "exit 7"); code != 7 {
		t.Fatalf("exit code: %d", code)
	}
	if out, _ := execOut(t, e, "web", "", "sh", "-c", "echo $DEMO"); out != "1\n" {
		t.Fatalf("image env not applied: %q", out)
	}
	if l := e.cli(t, nil, "logs", "web").ok(t, "logs"); !strings.Contains(l, "demo-main-started") {
		t.Fatalf("console log lacks the entrypoint's output:\n%s", l)
	}
	during := e.leaks(t, ns)
	if during.taps != 1 || during.vmms != 1 {
		t.Fatalf("while running: %+v", during)
	}
	e.cli(t, nil, "stop", "web").ok(t, "stop")
	if l := e.leaks(t, ns); l.taps+l.loops+l.vmms != 0 {
		t.Fatalf("after stop: %+v", l)
	}
	e.cli(t, nil, "start", "web").ok(t, "start")
	if out, code := execOut(t, e, "web", "", "cat", "/etc/motd"); code != 0 || !strings.Contains(out, "welcome") {
		t.Fatalf("after restart: %q %d", out, code)
	}
	e.cli(t, nil, "rm", "--force", "web").ok(t, "rm --force")
	if l := e.leaks(t, ns); l.taps+l.loops+l.vmms+l.dirs != 0 {
		t.Fatalf("after rm: %+v %v", l, l.detail)
	}
}

// Acceptance (issue 5): VMs survive kill -9 of paddockd and are re-adopted;
// with VMMs gone too, everything is torn down from the handles, from
// vm.json's Runtime, or found by tag.
func TestRestartSafety(t *testing.T) {
	e, p, ns, image := vmEnvImage(t, "", nil)
	names := []string{"a", "b", "c"}
	for _, n := range names {
		e.cli(t, nil, "run", "--image", image, "--name", n).ok(t, "run "+n)
	}
	restart := func(p *proc) *proc {
		t.Helper()
		p.signal(t, syscall.SIGKILL)
		p.wait(t, 10*time.Second)
		return e.daemon(t, inNetns(ns))
	}
	expectStatus := func(want string) {
		t.Helper()
		var vms []api.VM
		if err := json.Unmarshal([]byte(e.cli(t, nil, "ls", "--json").ok(t, "ls")), &vms); err != nil {
			t.Fatal(err)
		}
		for _, vm := range vms {
			if vm.Status != want {
				t.Fatalf("VM %s is %s (%s), want %s", vm.Name, vm.Status, vm.Reason, want)
			}
		}
	}
	noLeaks := func(stage string) {
		t.Helper()
		if l := e.leaks(t, ns); l.taps+l.loops+l.vmms != 0 {
			t.Fatalf("%s: leaked %+v %v", stage, l, l.detail)
		}
	}

	// 1. kill -9 paddockd: the VMs keep running and are re-adopted.
	p = restart(p)
	expectStatus("running")
	for _, n := range names {
		if out, code := execOut(t, e, n, "", "cat", "/etc/motd"); code != 0 || !strings.Contains(out, "welcome") {
			t.Fatalf("exec in re-adopted %s: %q %d", n, out, code)
		}
	}
	e.cli(t, nil, append([]string{"stop"}, names...)...).ok(t, "stop through the new daemon")
	noLeaks("stop after re-adopt")

	// 2-4. kill -9 paddockd and the VMMs: torn down from handles.json, then
	// from vm.json's Runtime with handles.json corrupt, then deleted.
	for _, damage := range []string{"none", "corrupt handles.json", "delete handles.json"} {
		e.cli(t, nil, append([]string{"start"}, names...)...).ok(t, "start ("+damage+")")
		p.signal(t, syscall.SIGKILL)
		p.wait(t, 10*time.Second)
		if n := e.killVMMs(t); n != len(names) {
			t.Fatalf("%s: killed %d VMMs, want %d", damage, n, len(names))
		}
		ents, _ := os.ReadDir(filepath.Join(e.state, "vms"))
		for _, en := range ents {
			hp := filepath.Join(e.state, "vms", en.Name(), "handles.json")
			switch damage {
			case "corrupt handles.json":
				os.WriteFile(hp, []byte("{\"schema\": 1, \"items\": [tru"), 0o640)
			case "delete handles.json":
				os.Remove(hp)
			}
		}
		p = e.daemon(t, inNetns(ns))
		expectStatus("stopped")
		noLeaks(damage)
	}

	// 5. VM directories gone entirely while their VMs run: the orphans are
	// found by tag (tap alias, VMM command line) and removed.
	e.cli(t, nil, append([]string{"start"}, names...)...).ok(t, "start (orphans)")
	p.signal(t, syscall.SIGKILL)
	p.wait(t, 10*time.Second)
	if err := os.RemoveAll(filepath.Join(e.state, "vms")); err != nil {
		t.Fatal(err)
	}
	p = e.daemon(t, inNetns(ns))
	if out := e.cli(t, nil, "ls", "-q").ok(t, "ls"); strings.TrimSpace(out) != "" {
		t.Fatalf("VMs without records listed: %q", out)
	}
	noLeaks("orphans")
	p.waitLog(t, "orphan VMM", "orphan tap")
}
