package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// Issue 12, item 5: snapshot, restore, clone and resize against real VMs
// (QEMU, TCG), on a host without reflinks (qcow2 overlays). A snapshot
// taken before a VM changes the tree brings it back; a clone is instant
// and small, changes in it leave the source alone, and it keeps working
// after the source (whose layers it shares) is removed; a resize grows
// the file system the guest sees; snapshot is refused while a VM holds
// the workspace, naming it; nothing is left once all is removed.
func TestWorkspaceSnapshotClone(t *testing.T) {
	for _, n := range []string{"mke2fs", "debugfs", "e2fsck", "resize2fs"} {
		testenv.RequireTool(t, n, "e2fsprogs")
	}
	testenv.RequireTool(t, "qemu-img", "qemu-utils")
	testenv.RequireTool(t, "diff", "diffutils")
	e, _, ns, image := vmEnvImage(t, "", nil)
	src := filepath.Join(t.TempDir(), "src")
	for rel, body := range map[string]string{"a.txt": "original\n", "sub/data.txt": "seeded\n"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(src, rel)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, rel), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	e.cli(t, nil, "workspace", "create", "proj", "--from", src, "--size", "128MiB").ok(t, "workspace create proj")
	t.Logf("paddock workspace snapshot proj s1:\n%s", e.cli(t, nil, "workspace", "snapshot", "proj", "s1").ok(t, "workspace snapshot proj s1"))
	if ws := inspectWorkspace(t, e, "proj"); len(ws.Snapshots) != 1 || ws.Snapshots[0].Name != "s1" || ws.Snapshots[0].Size != 128<<20 {
		t.Fatalf("snapshots after snapshot s1: %+v", ws.Snapshots)
	}

	// A VM changes the tree; while it runs, a snapshot is refused naming it.
	e.cli(t, nil, "run", "--image", image, "--name", "w1", "--workspace", "proj", "--", "sleep", "100000").ok(t, "run w1 --workspace proj")
	if out, code := execOut(t, e, "w1", "", "sh", "-c", "echo changed > /workspace/a.txt && rm /workspace/sub/data.txt && sync"); code != 0 {
		t.Fatalf("change the tree in w1: %d %q", code, out)
	}
	if r := e.cli(t, nil, "workspace", "snapshot", "proj", "s2"); r.code == 0 || !strings.Contains(r.stderr, "attached to VM w1") {
		t.Fatalf("snapshot while attached: %d %s %s", r.code, r.stdout, r.stderr)
	}
	e.cli(t, nil, "stop", "w1").ok(t, "stop w1")
	changed := filepath.Join(t.TempDir(), "changed")
	e.cli(t, nil, "workspace", "export", "proj", "--to", changed).ok(t, "export proj after the change")
	if b, err := os.ReadFile(filepath.Join(changed, "a.txt")); err != nil || string(b) != "changed\n" {
		t.Fatalf("the guest's change is not in the export: %q %v", b, err)
	}

	// Restore s1: the original tree.
	e.cli(t, nil, "workspace", "restore", "proj", "s1").ok(t, "workspace restore proj s1")
	restored := filepath.Join(t.TempDir(), "restored")
	e.cli(t, nil, "workspace", "export", "proj", "--to", restored).ok(t, "export proj after restore")
	diffTrees(t, src, restored)

	// Clone: instant and small; a change in it leaves proj alone.
	began := time.Now()
	out := e.cli(t, nil, "workspace", "clone", "proj", "c1").ok(t, "workspace clone proj c1")
	t.Logf("workspace clone took %s:\n%s", time.Since(began), out)
	c1 := inspectWorkspace(t, e, "c1")
	if top := topLayer(t, e, c1.ID); top > 1<<20 {
		t.Fatalf("the clone takes %d bytes on disk right after clone, want <= 1 MiB", top)
	}
	e.cli(t, nil, "run", "--image", image, "--name", "w2", "--workspace", "c1", "--", "sleep", "100000").ok(t, "run w2 --workspace c1")
	if out, code := execOut(t, e, "w2", "", "sh", "-c", "echo in-the-clone > /workspace/a.txt && echo new > /workspace/new.txt && sync"); code != 0 {
		t.Fatalf("change the clone in w2: %d %q", code, out)
	}
	before := guestDiskSize(t, e, "w2")
	e.cli(t, nil, "stop", "w2").ok(t, "stop w2")
	again := filepath.Join(t.TempDir(), "again")
	e.cli(t, nil, "workspace", "export", "proj", "--to", again).ok(t, "export proj after the clone changed")
	diffTrees(t, src, again)

	// rm of the source: the clone shares its layers, which stay.
	e.cli(t, nil, "rm", "w1").ok(t, "rm w1")
	e.cli(t, nil, "workspace", "rm", "proj").ok(t, "workspace rm proj (its clone stays)")
	cloned := filepath.Join(t.TempDir(), "cloned")
	e.cli(t, nil, "workspace", "export", "c1", "--to", cloned).ok(t, "export c1 after its source is removed")
	for rel, want := range map[string]string{"a.txt": "in-the-clone\n", "new.txt": "new\n", "sub/data.txt": "seeded\n"} {
		if b, err := os.ReadFile(filepath.Join(cloned, rel)); err != nil || string(b) != want {
			t.Fatalf("c1 %s: %q %v, want %q", rel, b, err, want)
		}
	}

	// Resize: the guest sees a bigger file system.
	t.Logf("paddock workspace resize c1 256MiB:\n%s", e.cli(t, nil, "workspace", "resize", "c1", "256MiB").ok(t, "workspace resize c1 256MiB"))
	e.cli(t, nil, "start", "w2").ok(t, "start w2 after the resize")
	if after := guestDiskSize(t, e, "w2"); after < before+100<<20 {
		t.Fatalf("df in the guest: %d bytes after the resize, %d before", after, before)
	}
	if out, code := execOut(t, e, "w2", "", "cat", "/workspace/a.txt"); code != 0 || out != "in-the-clone\n" {
		t.Fatalf("after the resize: %d %q", code, out)
	}
	e.cli(t, nil, "stop", "w2").ok(t, "stop w2")
	e.cli(t, nil, "rm", "w2").ok(t, "rm w2")
	e.cli(t, nil, "workspace", "rm", "c1").ok(t, "workspace rm c1")
	if left := wsDirs(t, e); left != "" {
		t.Fatalf("left in the workspaces directory: %s", left)
	}
	if l := e.leaks(t, ns); l.host() != 0 {
		t.Fatalf("leaked %+v %v", l, l.detail)
	}
}

func inspectWorkspace(t *testing.T, e *env, ref string) api.Workspace {
	t.Helper()
	var ws api.Workspace
	if err := json.Unmarshal([]byte(e.cli(t, nil, "workspace", "inspect", ref, "--json").ok(t, "workspace inspect "+ref)), &ws); err != nil {
		t.Fatal(err)
	}
	return ws
}

// topLayer is the bytes a workspace's own files take on disk (st_blocks):
// its top layer, beside meta.json.
func topLayer(t *testing.T, e *env, id string) int64 {
	t.Helper()
	dir := filepath.Join(e.state, "workspaces", id)
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, de := range es {
		if de.Name() == "meta.json" {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dir, de.Name()), &st); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d bytes apparent, %d on disk", de.Name(), st.Size, st.Blocks*512)
		n += st.Blocks * 512
	}
	return n
}

// guestDiskSize is the size of /workspace as df in the guest reports it.
func guestDiskSize(t *testing.T, e *env, vm string) int64 {
	t.Helper()
	out, code := execOut(t, e, vm, "", "busybox", "df", "-k", "/workspace")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) < 2 {
		t.Fatalf("df in %s: %d %q", vm, code, out)
	}
	f := strings.Fields(lines[len(lines)-1])
	if len(f) < 2 {
		t.Fatalf("df in %s: %q", vm, out)
	}
	k, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		t.Fatalf("df in %s: %q", vm, out)
	}
	t.Logf("df /workspace in %s: %s", vm, lines[len(lines)-1])
	return k << 10
}

// kill -9 of paddockd at each crash point of a snapshot and a clone (the
// top frozen but the record not yet saved; the clone's record written
// "creating" before its top exists): after the restart the workspace is
// as it was (no snapshot, no clone, the same tree), nothing of the cut
// operation is left on disk, and doing it again works.
func TestWorkspaceSnapshotCrashPoints(t *testing.T) {
	testenv.RequireRoot(t, "runs the daemon and clients as other uids")
	for _, n := range []string{"mke2fs", "debugfs", "e2fsck"} {
		testenv.RequireTool(t, n, "e2fsprogs")
	}
	testenv.RequireTool(t, "qemu-img", "qemu-utils")
	e := newEnv(t, fmt.Sprintf("[api]\nsocket_group = \"%d\"\nadmin_group = \"%d\"\n", socketGID, adminGID))
	home := aliceDir(t)
	src := filepath.Join(home, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("content\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	chownTree(t, home, aliceUID, socketGID)
	p := unprivilegedDaemon(t, e)
	e.runAs(t, alice, nil, "workspace", "create", "w", "--from", src, "--size", "64MiB").ok(t, "create w")
	p.signal(t, syscall.SIGTERM)
	p.wait(t, 30*time.Second)
	for i, c := range []struct {
		fp   string
		args []string
	}{
		{"workspace-snapshot-frozen", []string{"workspace", "snapshot", "w", "s1"}},
		{"workspace-clone-intent", []string{"workspace", "clone", "w", "c", "--snapshot", "s1"}},
		{"workspace-clone-intent", []string{"workspace", "clone", "w", "c"}},
	} {
		what := fmt.Sprintf("%s: %s", c.fp, strings.Join(c.args, " "))
		clean := wsFiles(t, e)
		p := unprivilegedDaemon(t, e, "PADDOCK_FAILPOINTS="+c.fp)
		if r := e.runAs(t, alice, nil, c.args...); r.code == 0 {
			t.Fatalf("%s succeeded although the daemon died", what)
		}
		p.wait(t, 30*time.Second)
		t.Logf("%s: the crash left %s", what, wsFiles(t, e))
		p = unprivilegedDaemon(t, e)
		if left := wsFiles(t, e); left != clean {
			t.Fatalf("%s: after the restart %s, want %s", what, left, clean)
		}
		if out := e.runAs(t, alice, nil, "workspace", "ls").ok(t, what+": ls"); strings.Contains(out, "\nc ") {
			t.Fatalf("%s: the cut clone is listed:\n%s", what, out)
		}
		out := filepath.Join(home, "out-"+strconv.Itoa(i))
		e.runAs(t, alice, nil, "workspace", "export", "w", "--to", out).ok(t, what+": export w")
		if b, err := os.ReadFile(filepath.Join(out, "f")); err != nil || string(b) != "content\n" {
			t.Fatalf("%s: w holds %q %v", what, b, err)
		}
		e.runAs(t, alice, nil, c.args...).ok(t, what+": again")
		if c.args[1] == "clone" {
			e.runAs(t, alice, nil, "workspace", "rm", "c").ok(t, what+": rm c")
		}
		p.signal(t, syscall.SIGTERM)
		p.wait(t, 30*time.Second)
	}
	_ = unprivilegedDaemon(t, e)
	e.runAs(t, alice, nil, "workspace", "rm", "w").ok(t, "rm w")
	if left := wsDirs(t, e); left != "" {
		t.Fatalf("left once every workspace is gone: %s", left)
	}
}

// wsFiles lists every directory and file under the workspaces directory
// (meta.json files left out: they change as records are saved).
func wsFiles(t *testing.T, e *env) string {
	t.Helper()
	root := filepath.Join(e.state, "workspaces")
	var out []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case rel == "." || d.Name() == "meta.json":
		case d.IsDir():
			out = append(out, rel+"/")
		default:
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(out, ",")
}
