package e2e

import (
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// smallImage is a two-layer image with a config that create and run
// override.
func smallImage(t *testing.T, tag string) v1.Image {
	return imagetest.Image(t, &v1.Config{Entrypoint: []string{"/bin/app"}, Cmd: []string{"--serve"}, WorkingDir: "/srv", User: "app"},
		imagetest.LayerTar(t, imagetest.Entry{Name: "bin/", Type: 53}, imagetest.Entry{Name: "bin/app", Body: tag, Mode: 0o755}),
		imagetest.LayerTar(t, imagetest.Entry{Name: "etc/", Type: 53}, imagetest.Entry{Name: "etc/tag", Body: tag}))
}

// Defects (issue 9, #9 and #11): create and run take a command after --,
// --entrypoint, --workdir and --user, record them, show them, and let set
// change them while the VM is down; an image that is not stored is pulled
// from its registry with progress (--pull=missing), or always, or never.
func TestCreateRunCommandAndPull(t *testing.T) {
	e := newEnv(t, "")
	e.daemon(t, nil)
	reg := imagetest.Registry(t)
	imagetest.Push(t, reg+"/app:1", smallImage(t, "1"))
	imagetest.Push(t, reg+"/app:2", smallImage(t, "2"))

	// Not stored: pulled, with one line per layer start and end (stderr is
	// not a terminal), and the VM created from it.
	r := e.cli(t, nil, "create", "web", "--image", reg+"/app:1", "--", "sleep", "1000")
	id := strings.TrimSpace(r.ok(t, "create with a pull"))
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`image .*/app:1 is not stored; pulling it\n`),
		regexp.MustCompile(`layer 1/2 [0-9a-f]{12}: [0-9.]+ [KM]?i?B\n`),
		regexp.MustCompile(`layer 1/2 [0-9a-f]{12}: done, [0-9.]+ [KM]?i?B in `),
		regexp.MustCompile(`layer 2/2 [0-9a-f]{12}: done, `),
		regexp.MustCompile(`build: done, `),
		regexp.MustCompile(`image .*/app:1 imported \(sha256:[0-9a-f]{64}\)\n`),
	} {
		if !want.MatchString(r.stderr) {
			t.Fatalf("pull progress lacks %s:\n%s", want, r.stderr)
		}
	}
	if strings.Contains(r.stderr, "\033") || !regexp.MustCompile(`^[0-9a-f]{12,}$`).MatchString(id) {
		t.Fatalf("create output: %q, stderr %q", id, r.stderr)
	}
	vm := inspectVM(t, e, "web")
	if !slices.Equal(vm.Spec.Cmd, []string{"sleep", "1000"}) || vm.Spec.Entrypoint != nil || vm.Spec.ImageDigest == "" {
		t.Fatalf("spec after create -- CMD: %+v", vm.Spec)
	}

	// Stored now: no pull. Every override, shown by inspect.
	r = e.cli(t, nil, "create", "w2", "--image", reg+"/app:1", "--entrypoint", "/bin/sh", "-w", "/tmp", "-u", "1000:1000", "--", "-c", "echo hi")
	r.ok(t, "create with overrides")
	if strings.Contains(r.stderr, "pulling") {
		t.Fatalf("pulled a stored image: %s", r.stderr)
	}
	human := e.cli(t, nil, "inspect", "w2").ok(t, "inspect")
	for _, want := range []string{`Entrypoint: +\["/bin/sh"\]\n`, `Cmd: +\["-c","echo hi"\]\n`, `Workdir: +/tmp\n`, `User: +1000:1000\n`, `Kernel: +\(default\)\n`} {
		if !regexp.MustCompile(want).MatchString(human) {
			t.Fatalf("inspect lacks %q:\n%s", want, human)
		}
	}
	if w := inspectVM(t, e, "w2").Spec; w.Entrypoint == nil || !slices.Equal(*w.Entrypoint, []string{"/bin/sh"}) || w.Workdir != "/tmp" || w.User != "1000:1000" {
		t.Fatalf("spec: %+v", w)
	}

	// --pull=never does not pull; --pull=always does, even when stored;
	// with --json nothing but the VM is printed.
	if r := e.cli(t, nil, "create", "w3", "--image", reg+"/app:2", "--pull=never"); r.code != 1 || strings.Contains(r.stderr, "pulling") || !strings.Contains(r.stderr, "app:2") {
		t.Fatalf("--pull=never: %+v", r)
	}
	if r := e.cli(t, nil, "create", "w3", "--image", reg+"/app:1", "--pull=always"); r.code != 0 || !strings.Contains(r.stderr, "already present") || strings.Contains(r.stderr, "not stored") {
		t.Fatalf("--pull=always: %+v", r)
	}
	r = e.cli(t, nil, "create", "w4", "--image", reg+"/app:2", "--json")
	var made api.VM
	if err := json.Unmarshal([]byte(r.ok(t, "create --json with a pull")), &made); err != nil || made.Name != "w4" || r.stderr != "" {
		t.Fatalf("create --json: %v %+v, stderr %q", err, made, r.stderr)
	}

	// set changes them while the VM is down (refused while it runs: see
	// TestRunCommandBoots), and --reset returns them to the image's.
	e.cli(t, nil, "set", "web", "--workdir", "/srv/www", "--", "/bin/true").ok(t, "set while created")
	if s := inspectVM(t, e, "web").Spec; s.Workdir != "/srv/www" || !slices.Equal(s.Cmd, []string{"/bin/true"}) {
		t.Fatalf("after set: %+v", s)
	}
	e.cli(t, nil, "set", "web", "--reset", "cmd,workdir").ok(t, "set --reset")
	if s := inspectVM(t, e, "web").Spec; s.Workdir != "" || s.Cmd != nil {
		t.Fatalf("after --reset: %+v", s)
	}

	// Usage and validation errors name the culprit.
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"run", "x", "--image", "alpine", "sleep", "1000"}, 2, `unexpected argument "sleep": a command for the VM goes after --`},
		{[]string{"create", "x", "--image", "alpine", "--workdir", "relative"}, 1, `workdir "relative" must be an absolute path`},
		{[]string{"create", "x", "--image", "alpine", "--pull", "sometimes"}, 2, `--pull "sometimes"`},
		{[]string{"create", "x", "--image", "alpine", "--kernel", "nope"}, 1, `no boot kit named "nope" (there is none)`},
		{[]string{"set", "web", "--reset", "cpus"}, 1, `reset "cpus"`},
	} {
		if r := e.cli(t, nil, c.args...); r.code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%v: %+v, want exit %d and %q", c.args, r, c.code, c.want)
		}
	}
}

// Defect (issue 9, #3): a kit imported under any name is usable: the only
// kit is the default, --kernel picks one by name (recorded and shown), and
// a name that is not there is refused naming the kits there are.
func TestKernelPerVM(t *testing.T) {
	testenv.RequireRoot(t, "importing a boot kit is for admins")
	testenv.RequireKernel(t)
	e := newEnv(t, "")
	e.daemon(t, nil)
	kits := func() map[string]bool {
		var ks []api.Kernel
		if err := json.Unmarshal([]byte(e.cli(t, nil, "kernel", "ls", "--json").ok(t, "kernel ls")), &ks); err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, k := range ks {
			out[k.Name] = k.Default
		}
		return out
	}
	e.bootKitNamed(t, "debian")
	if got := kits(); len(got) != 1 || !got["debian"] {
		t.Fatalf("the only kit is the default: %v", got)
	}
	e.bootKitNamed(t, "second")
	if got := kits(); len(got) != 2 || got["debian"] || got["second"] {
		t.Fatalf("two kits and no vm.kernel: neither is the default: %v", got)
	}
	e.cli(t, nil, "create", "v", "--image", "alpine", "--kernel", "second").ok(t, "create --kernel")
	if k := inspectVM(t, e, "v").Spec.Kernel; k != "second" {
		t.Fatalf("spec.kernel = %q", k)
	}
	if h := e.cli(t, nil, "inspect", "v").ok(t, "inspect"); !regexp.MustCompile(`Kernel: +second\n`).MatchString(h) {
		t.Fatalf("inspect:\n%s", h)
	}
	if r := e.cli(t, nil, "create", "w", "--image", "alpine", "--kernel", "fedora"); r.code != 1 || !strings.Contains(r.stderr, `no boot kit named "fedora" (there are: debian, second)`) {
		t.Fatalf("missing kit: %+v", r)
	}
	e.cli(t, nil, "set", "v", "--kernel", "debian").ok(t, "set --kernel")
	e.cli(t, nil, "set", "v", "--reset", "kernel").ok(t, "set --reset kernel")
	if k := inspectVM(t, e, "v").Spec.Kernel; k != "" {
		t.Fatalf("spec.kernel after reset = %q", k)
	}
}

// Defects (issue 9, #3, #9, #11) on a real boot: a VM from an image that
// was never pulled, on a kit imported under its own name, runs the command
// given after -- (not the image's) in --workdir as --user.
func TestRunCommandBoots(t *testing.T) {
	e, _, ns, image := bootEnv(t, "", nil)
	e.bootKitNamed(t, "debian")

	r := e.cli(t, nil, "run", "--image", image, "--name", "x", "--kernel", "debian", "-w", "/tmp", "-u", "1000:1000",
		"--", "/bin/sh", "-c", "echo hi > /tmp/x; pwd > /tmp/wd; id -u > /tmp/uid; sleep 1000")
	if out := r.ok(t, "run -- CMD"); !strings.Contains(out, "x running") || !strings.Contains(r.stderr, "pulling it") {
		t.Fatalf("run: %+v", r)
	}
	for file, want := range map[string]string{"/tmp/x": "hi\n", "/tmp/wd": "/tmp\n", "/tmp/uid": "1000\n"} {
		// The command runs once the agent is up; give it a moment to write.
		out, code := execOut(t, e, "x", "", "sh", "-c", "i=0; while [ ! -s "+file+" ] && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done; cat "+file)
		if code != 0 || out != want {
			t.Fatalf("%s in the guest: %q (exit %d), want %q", file, out, code, want)
		}
	}
	if l := e.cli(t, nil, "logs", "x").ok(t, "logs"); strings.Contains(l, "demo-main-started") {
		t.Fatalf("the image's own command ran:\n%s", l)
	}
	if s := inspectVM(t, e, "x").Spec; s.Kernel != "debian" || !slices.Equal(s.Cmd, []string{"/bin/sh", "-c", "echo hi > /tmp/x; pwd > /tmp/wd; id -u > /tmp/uid; sleep 1000"}) {
		t.Fatalf("spec: %+v", s)
	}
	// Back to the image's own command: refused while the VM runs, set
	// while it is stopped.
	if r := e.cli(t, nil, "set", "x", "--reset", "cmd"); r.code != 1 || !strings.Contains(r.stderr, "cannot change cmd") || !strings.Contains(r.stderr, "InvalidState") {
		t.Fatalf("set --reset cmd while running: %+v", r)
	}
	e.cli(t, nil, "stop", "x").ok(t, "stop")
	e.cli(t, nil, "set", "x", "--reset", "cmd,workdir,user").ok(t, "set --reset")
	e.cli(t, nil, "start", "x").ok(t, "start")
	if out, code := execOut(t, e, "x", "", "sh", "-c", "i=0; while ! pidof sleep >/dev/null && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done; pidof sleep"); code != 0 {
		t.Fatalf("the image's command after --reset is not running: %q %d", out, code)
	}
	deadline := time.Now().Add(30 * time.Second)
	for l := ""; !strings.Contains(l, "demo-main-started"); l = e.cli(t, nil, "logs", "x").ok(t, "logs") {
		if time.Now().After(deadline) {
			t.Fatalf("the image's own command did not run after --reset:\n%s", l)
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.cli(t, nil, "rm", "--force", "x").ok(t, "rm --force")
	if l := e.leaks(t, ns); l.host()+l.dirs != 0 {
		t.Fatalf("after rm: %+v %v", l, l.detail)
	}
}
