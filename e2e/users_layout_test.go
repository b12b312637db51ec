package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// The users of these tests: alice and bob may connect, carol is an admin.
func asUser(uid, gid int, groups ...uint32) *syscall.Credential {
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: append([]uint32{}, groups...)}
}

var (
	alice = asUser(aliceUID, socketGID)
	bob   = asUser(bobUID, socketGID)
	carol = asUser(carolUID, adminGID, socketGID)
)

// hostileName is what a hostile image calls itself: a title change, a
// screen clear, a clipboard write and a direction override.
const hostileName = "\x1b]0;owned\a\x1b[2J\x1b]52;c;cm0gLXJmIH4=\a\u202eevil"

// unprivilegedDaemon starts paddockd as daemonUID with no capabilities
// (as TestUnprivilegedDaemonAndOwnership does), env added to its own.
func unprivilegedDaemon(t *testing.T, e *env, env ...string) *proc {
	t.Helper()
	setpriv := testenv.RequireTool(t, "setpriv", "util-linux")
	for _, d := range []string{"run", "cache"} {
		if err := os.MkdirAll(filepath.Join(e.dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	chownTree(t, e.dir, daemonUID, daemonUID)
	return e.daemon(t, func(c *exec.Cmd) {
		c.Path = setpriv
		c.Args = append([]string{setpriv, fmt.Sprintf("--reuid=%d", daemonUID), fmt.Sprintf("--regid=%d", daemonUID),
			fmt.Sprintf("--groups=%d", socketGID), "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"},
			bin("paddockd"), "--config", e.cfg)
		c.Env = append([]string{"PATH=/usr/bin:/bin", "HOME=/nonexistent"}, env...)
	})
}

// runAs runs the CLI as cred (nil: root) with env, bounded by a minute: a
// call the daemon never answers fails the test instead of hanging it.
func (e *env) runAs(t *testing.T, cred *syscall.Credential, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin("paddock"), append([]string{"--socket", e.socket}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = append([]string{"PATH=/usr/bin:/bin", "HOME=/nonexistent"}, env...)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("paddock %s: no answer within a minute\nstderr: %s", strings.Join(args, " "), errb.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("paddock %s: %v", strings.Join(args, " "), err)
	}
	return result{out.String(), errb.String(), code}
}

// refused checks that r failed naming every want, and printed nothing raw.
func refused(t *testing.T, what string, r result, want ...string) {
	t.Helper()
	if r.code != 1 {
		t.Fatalf("%s: exit %d, want a refusal\nstdout: %s\nstderr: %s", what, r.code, r.stdout, r.stderr)
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("%s: the refusal does not name %q:\n%s", what, w, r.stderr)
		}
	}
	rawControls(t, what, r.stderr)
}

// rawControls fails when s holds a control character other than a newline
// or tab, or a direction override: what a terminal would act on.
func rawControls(t *testing.T, what, s string) {
	t.Helper()
	for _, r := range s {
		if r != '\n' && r != '\t' && (unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r)) {
			t.Fatalf("%s: raw %U reaches the terminal:\n%q", what, r, s)
		}
	}
}

// procFigures are what a leak or a big read shows of a process.
type procFigures struct {
	fds, threads int
	rssKB, hwmKB int
}

func figuresOf(t *testing.T, pid int) procFigures {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := procFigures{fds: len(ents)}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ":")
		n, _ := strconv.Atoi(strings.Fields(v + " 0")[0])
		switch k {
		case "Threads":
			f.threads = n
		case "VmRSS":
			f.rssKB = n
		case "VmHWM":
			f.hwmKB = n
		}
	}
	return f
}

// settledFDs waits (10 s at most) until the daemon holds want descriptors,
// or with want < 0 until its count holds still: it closes a connection a
// moment after the client goes.
func settledFDs(t *testing.T, pid, want int) procFigures {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	prev := figuresOf(t, pid)
	for {
		time.Sleep(100 * time.Millisecond)
		f := figuresOf(t, pid)
		if f.fds == want || want < 0 && f.fds == prev.fds || time.Now().After(deadline) {
			return f
		}
		prev = f
	}
}

// aliceLayout writes img as an OCI layout tagged ref in a new directory
// that alice owns (readable by all, as her home would be), and returns it.
func aliceLayout(t *testing.T, img v1.Image, ref string) string {
	t.Helper()
	parent, err := os.MkdirTemp("", "pdk-alice-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	lay := filepath.Join(parent, "layout")
	lp, err := layout.Write(lay, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	var opts []layout.Option
	if ref != "" {
		opts = append(opts, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref}))
	}
	if err := lp.AppendImage(img, opts...); err != nil {
		t.Fatal(err)
	}
	// Readable by all, as a layout in a home directory is (paddockd opens
	// a layout's files as its own user; go-containerregistry makes blobs
	// 0600).
	if err := filepath.Walk(parent, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chmod(p, map[bool]os.FileMode{true: 0o755, false: 0o644}[fi.IsDir()])
	}); err != nil {
		t.Fatal(err)
	}
	chownTree(t, parent, aliceUID, socketGID)
	return lay
}

func tinyImage(t *testing.T, body string) v1.Image {
	return imagetest.Image(t, &v1.Config{Cmd: []string{"/bin/true"}}, imagetest.LayerTar(t, imagetest.Entry{Name: "etc/", Type: '5'}, imagetest.Entry{Name: "etc/motd", Body: body}))
}

// Issue 10, finding 8: OCI layout directories are read beneath the
// descriptor the caller passed. A FIFO index.json, a sparse 512 MiB
// index.json, a blobs directory that is a symlink to files only the daemon
// may read, and another user's blob only the daemon's group may read are
// each refused naming the entry, with the daemon's descriptors and threads
// as they were and its RSS logged around the sparse file.
func TestTwoUsersLayoutImports(t *testing.T) {
	testenv.RequireRoot(t, "runs the daemon and clients as other uids")
	testenv.RequireTool(t, "debugfs", "e2fsprogs")
	e := newEnv(t, fmt.Sprintf("[api]\nsocket_group = \"%d\"\nadmin_group = \"%d\"\n", socketGID, adminGID))
	p := unprivilegedDaemon(t, e)
	pid := p.cmd.Process.Pid

	// A good layout of alice's imports: the baseline after it.
	good := aliceLayout(t, tinyImage(t, "alice"), "1")
	if out := e.runAs(t, alice, nil, "image", "import", good, "--name", "alice-app").ok(t, "alice imports her layout"); !strings.Contains(out, "alice-app:1") {
		t.Fatalf("alice's import: %s", out)
	}
	base := settledFDs(t, pid, -1)
	t.Logf("daemon after a good import: %d fds, %d threads, RSS %d KiB (peak %d KiB)", base.fds, base.threads, base.rssKB, base.hwmKB)

	// The content alice wants to reach: blobs in a directory only the
	// daemon may read.
	secretDir, err := os.MkdirTemp("", "pdk-daemon-only-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(secretDir) })
	secretSrc := aliceLayout(t, tinyImage(t, "the daemon's secret"), "1")
	if err := os.Rename(filepath.Join(secretSrc, "blobs"), filepath.Join(secretDir, "blobs")); err != nil {
		t.Fatal(err)
	}
	chownTree(t, secretDir, daemonUID, daemonUID)
	if err := filepath.Walk(secretDir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chmod(p, map[bool]os.FileMode{true: 0o700, false: 0o600}[fi.IsDir()])
	}); err != nil {
		t.Fatal(err)
	}

	bobLayout := aliceLayout(t, tinyImage(t, "bob's private"), "1")
	chownTree(t, filepath.Dir(bobLayout), bobUID, socketGID)

	cases := []struct {
		name  string
		lay   func() string
		names []string
	}{
		{"index.json is a FIFO", func() string {
			lay := aliceLayout(t, tinyImage(t, "fifo"), "1")
			idx := filepath.Join(lay, "index.json")
			os.Remove(idx)
			if err := unix.Mkfifo(idx, 0o644); err != nil {
				t.Fatal(err)
			}
			chownTree(t, lay, aliceUID, socketGID)
			return lay
		}, []string{"index.json", "FIFO"}},
		{"index.json is sparse, 512 MiB", func() string {
			lay := aliceLayout(t, tinyImage(t, "sparse"), "1")
			if err := os.Truncate(filepath.Join(lay, "index.json"), 512<<20); err != nil {
				t.Fatal(err)
			}
			return lay
		}, []string{"index.json", "536870912 bytes"}},
		{"blobs is a symlink to a daemon-only directory", func() string {
			lay := filepath.Dir(secretSrc)
			if err := os.Symlink(filepath.Join(secretDir, "blobs"), filepath.Join(secretSrc, "blobs")); err != nil {
				t.Fatal(err)
			}
			chownTree(t, lay, aliceUID, socketGID)
			return secretSrc
		}, []string{"blobs", "symbolic link"}},
		{"bob's blobs, readable by the daemon's group only", func() string {
			// bob once made his layout readable to paddockd only.
			if err := filepath.Walk(filepath.Join(bobLayout, "blobs"), func(p string, fi os.FileInfo, err error) error {
				if err != nil || fi.IsDir() {
					return err
				}
				if err := os.Chown(p, bobUID, daemonUID); err != nil {
					return err
				}
				return os.Chmod(p, 0o640)
			}); err != nil {
				t.Fatal(err)
			}
			return bobLayout
		}, []string{"blobs/sha256/", fmt.Sprintf("not readable by uid %d", aliceUID)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lay := tc.lay()
			before := figuresOf(t, pid)
			r := e.runAs(t, alice, nil, "image", "import", lay, "--name", "stolen")
			after := settledFDs(t, pid, base.fds)
			t.Logf("daemon RSS %d KiB before, %d KiB after (peak %d KiB); %d fds, %d threads", before.rssKB, after.rssKB, after.hwmKB, after.fds, after.threads)
			refused(t, "alice imports "+tc.name, r, tc.names...)
			if after.fds != base.fds {
				t.Errorf("daemon descriptors: %d at the baseline, %d after", base.fds, after.fds)
			}
		})
	}
	var imgs []api.Image
	if err := json.Unmarshal([]byte(e.runAs(t, nil, nil, "image", "ls", "--json").ok(t, "image ls")), &imgs); err != nil {
		t.Fatal(err)
	}
	for _, im := range imgs {
		if strings.Contains(strings.Join(im.Names, ","), "stolen") {
			t.Fatalf("a refused import was stored: %+v", im)
		}
	}
	// The daemon still serves, with no import stuck in it.
	end := settledFDs(t, pid, base.fds)
	t.Logf("daemon at the end: %d fds (baseline %d), %d threads (baseline %d)", end.fds, base.fds, end.threads, base.threads)
	if end.fds != base.fds {
		t.Fatalf("daemon leaked %d descriptors", end.fds-base.fds)
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// Issue 10, finding 9: an image's ref.name with terminal escapes is
// refused; a name already in the store (from an older paddockd) shows on
// another user's terminal as visible text, and JSON keeps it exact.
func TestTwoUsersHostileNames(t *testing.T) {
	testenv.RequireRoot(t, "runs the daemon and clients as other uids")
	testenv.RequireTool(t, "debugfs", "e2fsprogs")
	e := newEnv(t, fmt.Sprintf("[api]\nsocket_group = \"%d\"\nadmin_group = \"%d\"\n", socketGID, adminGID))
	imagetest.Seed(t, e.state, hostileName)
	unprivilegedDaemon(t, e)

	lay := aliceLayout(t, tinyImage(t, "escapes"), hostileName)
	refused(t, "alice imports an escape-laden ref.name", e.runAs(t, alice, nil, "image", "import", lay),
		"org.opencontainers.image.ref.name", `\x1b]0;owned\a`)
	refused(t, "alice names an import with escapes", e.runAs(t, alice, nil, "image", "import", lay, "--name", "app\x1b[2J"),
		`\x1b[2J`)

	out := e.runAs(t, bob, nil, "image", "ls").ok(t, "bob's image ls")
	rawControls(t, "bob's image ls", out)
	if !strings.Contains(out, `\x1b]0;owned\a\x1b[2J`) || !strings.Contains(out, `\u202eevil`) {
		t.Fatalf("bob's image ls does not show the stored name's escapes as text:\n%s", out)
	}
	var imgs []api.Image
	if err := json.Unmarshal([]byte(e.runAs(t, bob, nil, "image", "ls", "--json").ok(t, "image ls --json")), &imgs); err != nil {
		t.Fatal(err)
	}
	exact := false
	for _, im := range imgs {
		for _, n := range im.Names {
			exact = exact || n == hostileName+":latest"
		}
	}
	if !exact {
		t.Fatalf("image ls --json does not carry the name exactly: %+v", imgs)
	}
}

// Issue 10, finding 10: bob's pull from a registry that wants credentials
// fails without his own even though paddockd has some, and works with his
// docker config; an admin's pull uses paddockd's. Plain HTTP to a registry
// the config does not list is for admins only. Credentials are neither
// logged nor stored.
func TestTwoUsersRegistryCredentials(t *testing.T) {
	testenv.RequireRoot(t, "runs the daemon and clients as other uids")
	testenv.RequireTool(t, "debugfs", "e2fsprogs")
	const user, password = "bob", "s3cret-only-bob-knows"
	guarded, open := imagetest.AuthRegistry(t, user, password)
	imagetest.Push(t, open+"/private:1", tinyImage(t, "private"))

	dockerConfig := func(owner int) string {
		dir, err := os.MkdirTemp("", "pdk-docker-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		b, _ := json.Marshal(map[string]any{"auths": map[string]any{guarded: map[string]string{"username": user, "password": password}}})
		if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		chownTree(t, dir, owner, owner)
		return dir
	}
	e := newEnv(t, fmt.Sprintf("[api]\nsocket_group = \"%d\"\nadmin_group = \"%d\"\n", socketGID, adminGID))
	p := unprivilegedDaemon(t, e, "DOCKER_CONFIG="+dockerConfig(daemonUID))
	ref := guarded + "/private:1"

	// bob has no credentials of his own: the daemon's are not his.
	empty := t.TempDir()
	r := e.runAs(t, bob, []string{"DOCKER_CONFIG=" + empty}, "image", "pull", "-q", ref)
	refused(t, "bob pulls without credentials", r, "UNAUTHORIZED")
	// With his own docker config, he may.
	mine := []string{"DOCKER_CONFIG=" + dockerConfig(bobUID)}
	e.runAs(t, bob, mine, "image", "pull", "-q", ref).ok(t, "bob pulls with his own credentials")
	// An admin without credentials of her own pulls with the daemon's.
	e.runAs(t, carol, []string{"DOCKER_CONFIG=" + empty}, "image", "pull", "-q", ref).ok(t, "carol (admin) pulls with paddockd's credentials")
	// create --pull=always pulls with the caller's credentials too.
	e.runAs(t, bob, mine, "create", "bob-vm", "--image", ref, "--pull", "always").ok(t, "bob creates from a pull with his credentials")
	refused(t, "alice creates from a pull without credentials", e.runAs(t, alice, []string{"DOCKER_CONFIG=" + empty}, "create", "alice-vm", "--image", ref, "--pull", "always"), "UNAUTHORIZED")

	// Plain HTTP to an unlisted registry: admins only.
	refused(t, "bob marks a registry insecure", e.runAs(t, bob, mine, "image", "pull", "--insecure", ref), "PermissionDenied", "insecure_registries")
	e.runAs(t, carol, nil, "image", "pull", "-q", "--insecure", ref).ok(t, "carol (admin) marks a registry insecure")

	// Nothing of the password is logged or written anywhere the daemon keeps.
	if strings.Contains(p.stderr.String(), password) {
		t.Fatal("the daemon logged a password")
	}
	for _, dir := range []string{e.state, filepath.Join(e.dir, "cache"), filepath.Join(e.dir, "run")} {
		if err := filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
			if err != nil || !fi.Mode().IsRegular() {
				return err
			}
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			b, err := io.ReadAll(f)
			if err != nil {
				return err
			}
			if bytes.Contains(b, []byte(password)) {
				t.Errorf("%s holds the password", path)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// Issue 10, finding 9, guest side: a guest's process named with terminal
// escapes listens on a port; its owner's `ports` shows the name as visible
// text (JSON exact); `events` and `inspect` show a failure reason that
// carries a stored image's escape-laden name as text too.
func TestTwoUsersGuestStringsEscaped(t *testing.T) {
	testenv.RequireRoot(t, "runs clients as other uids")
	// A title change and a forged line, 15 bytes: a whole comm.
	const comm = "\x1b]0;own\a\nFORGED"
	e, _, ns, demo := bootEnv(t, fmt.Sprintf("[api]\nsocket_group = \"%d\"\nadmin_group = \"%d\"\n[vm]\nrun = \"on\"\nstart_timeout = \"90s\"\nstop_timeout = \"10s\"\n[stats]\ninterval = \"1s\"\n", socketGID, adminGID), nil)
	e.bootKit(t)
	reg, _, _ := strings.Cut(demo, "/")
	// The guest copies a listener to a file named with escapes and runs it.
	pushTo(t, reg+"/evil:1", imagetest.Image(t, &v1.Config{
		Entrypoint: []string{"/bin/sh", "-c", `cp /bin/services "/tmp/$N" && exec "/tmp/$N"`},
		Env:        []string{"PATH=/bin", "N=" + comm}},
		imagetest.BusyboxLayer(t, "sh", "cp"),
		imagetest.LayerTar(t, imagetest.Entry{Name: "bin/services", Body: string(servicesBinary(t)), Mode: 0o755})))
	e.runAs(t, alice, nil, "run", "--image", reg+"/evil:1", "--name", "evil", "--memory", "256MiB").ok(t, "alice runs the image")

	deadline := time.Now().Add(90 * time.Second)
	var ports []api.Port
	for {
		if err := json.Unmarshal([]byte(e.runAs(t, alice, nil, "ports", "evil", "--json").ok(t, "ports --json")), &ports); err != nil {
			t.Fatal(err)
		}
		if len(ports) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	for _, p := range ports {
		if p.Process != comm {
			t.Fatalf("ports --json: %+v, want each by %q exactly", ports, comm)
		}
	}
	if len(ports) == 0 {
		t.Fatal("the guest's listener never showed")
	}
	out := e.runAs(t, alice, nil, "ports", "evil").ok(t, "ports")
	rawControls(t, "alice's ports", out)
	if !strings.Contains(out, `\x1b]0;own\a\nFORGED`) || strings.Contains(out, "\nFORGED") {
		t.Fatalf("ports does not show the process name's escapes as text:\n%s", out)
	}
	rawControls(t, "alice's health", e.runAs(t, alice, nil, "health", "evil").ok(t, "health"))
	rawControls(t, "alice's stats", e.runAs(t, alice, nil, "stats", "evil").ok(t, "stats"))

	// A VM made from an image an older paddockd stored under an
	// escape-laden name; the image goes, the start fails naming it.
	legacy := imagetest.Seed(t, e.state, hostileName)
	e.runAs(t, alice, nil, "create", "legacy", "--image", hostileName, "--pull", "never").ok(t, "alice creates from the stored image")
	e.cli(t, nil, "image", "rm", "--force", legacy.Digest).ok(t, "the image goes")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	events := exec.CommandContext(ctx, bin("paddock"), "--socket", e.socket, "events", "legacy")
	events.SysProcAttr = &syscall.SysProcAttr{Credential: alice}
	events.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent"}
	stdout, err := events.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := events.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = events.Process.Kill(); _ = events.Wait() }()
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		buf := make([]byte, 64<<10)
		var acc string
		for {
			n, err := stdout.Read(buf)
			acc += string(buf[:n])
			for {
				l, rest, ok := strings.Cut(acc, "\n")
				if !ok {
					break
				}
				lines <- l
				acc = rest
			}
			if err != nil {
				return
			}
		}
	}()
	// The subscription is up once a change of ours comes through it.
	for i := 0; ; i++ {
		if i == 10 {
			t.Fatal("no event came through the subscription")
		}
		e.runAs(t, alice, nil, "set", "legacy", "--cpus", fmt.Sprint(2+i%2)).ok(t, "set")
		if waitLine(t, lines, "updated", 5*time.Second) != "" {
			break
		}
	}
	r := e.runAs(t, alice, nil, "start", "legacy")
	refused(t, "alice starts the VM whose image is gone", r, `\x1b]0;owned\a`)
	l := waitLine(t, lines, "error", 30*time.Second)
	rawControls(t, "alice's events", l)
	if !strings.Contains(l, `\x1b]0;owned\a\x1b[2J`) {
		t.Fatalf("events does not show the reason's escapes as text: %q", l)
	}
	out = e.runAs(t, alice, nil, "inspect", "legacy").ok(t, "inspect")
	rawControls(t, "alice's inspect", out)
	e.runAs(t, alice, nil, "rm", "--force", "evil", "legacy").ok(t, "alice removes her VMs")
	if l := e.leaks(t, ns); l.host()+l.dirs != 0 {
		t.Fatalf("left behind: %+v %v", l, l.detail)
	}
}

// waitLine returns the first line from lines holding sub, or "" when none
// comes within d.
func waitLine(t *testing.T, lines <-chan string, sub string, d time.Duration) string {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("the event stream ended")
			}
			if strings.Contains(l, sub) {
				return l
			}
		case <-timeout:
			return ""
		}
	}
}

// servicesBinary builds the static test listener (imaging/imagetest/services).
func servicesBinary(t *testing.T) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "services")
	b := exec.Command("go", "build", "-o", out, "../imaging/imagetest/services")
	b.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := b.CombinedOutput(); err != nil {
		t.Fatalf("build services: %v %s", err, msg)
	}
	bin, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}
