package e2e

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// Issue 12, item 4: export and import against a real daemon running as its
// own unprivileged uid. A workspace made from alice's directory and
// exported into another of hers is the same tree (diff -r, modes, link
// targets), every file hers; -o writes a tar she owns; an import of a
// changed tar shows in the next export; bob's export or import of alice's
// workspace is not found, like one that does not exist; the daemon's
// scratch is left empty.
func TestWorkspaceExportImport(t *testing.T) {
	testenv.RequireRoot(t, "runs the daemon and clients as other uids")
	for _, n := range []string{"mke2fs", "debugfs", "e2fsck"} {
		testenv.RequireTool(t, n, "e2fsprogs")
	}
	testenv.RequireTool(t, "diff", "diffutils")
	testenv.RequireTool(t, "tar", "tar")
	e := newEnv(t, fmt.Sprintf("[api]\nsocket_group = \"%d\"\nadmin_group = \"%d\"\n", socketGID, adminGID))
	unprivilegedDaemon(t, e)

	home := aliceDir(t)
	src := filepath.Join(home, "src")
	for rel, body := range map[string]string{"run.sh": "#!/bin/sh\necho hello\n", "sub/deep/data.txt": "data\n",
		"private.txt": "alice's only\n", "ünïcödé-文件.txt": "unicode\n", "ro/inside.txt": "in a read-only dir\n"} {
		path := filepath.Join(src, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Link(filepath.Join(src, "sub/deep/data.txt"), filepath.Join(src, "hard.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/deep/data.txt", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/no/such/target", filepath.Join(src, "dangling")); err != nil {
		t.Fatal(err)
	}
	chownTree(t, home, aliceUID, socketGID)
	for rel, mode := range map[string]os.FileMode{"run.sh": 0o755, "private.txt": 0o600, "ro": 0o555} {
		if err := os.Chmod(filepath.Join(src, rel), mode); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = os.Chmod(filepath.Join(src, "ro"), 0o755) })

	var w api.Workspace
	if err := json.Unmarshal([]byte(e.runAs(t, alice, nil, "workspace", "create", "proj", "--from", src, "--size", "128MiB", "--json").ok(t, "alice creates proj")), &w); err != nil {
		t.Fatal(err)
	}

	// --to: the same tree, every file alice's.
	out := filepath.Join(home, "out")
	t.Log(strings.TrimSpace(e.runAs(t, alice, nil, "workspace", "export", "proj", "--to", out).ok(t, "alice exports proj --to")))
	t.Cleanup(func() { _ = os.Chmod(filepath.Join(out, "ro"), 0o755) })
	diffTrees(t, src, out)
	err := filepath.Walk(out, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != aliceUID {
			t.Errorf("%s belongs to uid %d, not alice (%d)", p, st.Uid, aliceUID)
		}
		if fi.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
			t.Errorf("%s: %s", p, fi.Mode())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if a, errA := os.Stat(filepath.Join(out, "hard.txt")); errA != nil {
		t.Error(errA)
	} else if b, errB := os.Stat(filepath.Join(out, "sub/deep/data.txt")); errB != nil || !os.SameFile(a, b) {
		t.Errorf("hard.txt and sub/deep/data.txt are not one file: %v", errB)
	}
	refused(t, "export into a directory that is not empty", e.runAs(t, alice, nil, "workspace", "export", "proj", "--to", out), "not empty")

	// -o: a tar file of hers, the same entries.
	tarPath := filepath.Join(home, "proj.tar")
	e.runAs(t, alice, nil, "workspace", "export", "proj", "-o", tarPath).ok(t, "alice exports proj -o")
	if fi, err := os.Stat(tarPath); err != nil || fi.Sys().(*syscall.Stat_t).Uid != aliceUID {
		t.Fatalf("the tar: %v %+v", err, fi)
	}
	listing, err := exec.Command("tar", "-tvf", tarPath).CombinedOutput()
	if err != nil {
		t.Fatalf("tar -tvf: %v\n%s", err, listing)
	}
	t.Logf("tar -tvf proj.tar:\n%s", listing)
	for _, want := range []string{"run.sh", "link -> sub/deep/data.txt", "ünïcödé-文件.txt", "ro/inside.txt", "-rw------- 0/0"} {
		if !strings.Contains(string(listing), want) {
			t.Errorf("the tar lacks %q", want)
		}
	}
	if strings.Contains(string(listing), "lost+found") {
		t.Error("the tar holds lost+found")
	}

	// Import of a changed tar: the next export shows the change.
	changed := filepath.Join(home, "changed.tar")
	appendToTar(t, tarPath, changed, "added.txt", "added by an import\n")
	chownTree(t, home, aliceUID, socketGID)
	imp := e.runAs(t, alice, nil, "workspace", "import", "proj", changed, "--json").ok(t, "alice imports the changed tar")
	var after api.Workspace
	if err := json.Unmarshal([]byte(imp), &after); err != nil || after.ID != w.ID || after.Source != "tar:"+changed {
		t.Fatalf("after the import: %v %+v", err, after)
	}
	out2 := filepath.Join(home, "out2")
	e.runAs(t, alice, nil, "workspace", "export", "proj", "--to", out2).ok(t, "alice exports proj after the import")
	t.Cleanup(func() { _ = os.Chmod(filepath.Join(out2, "ro"), 0o755) })
	if b, err := os.ReadFile(filepath.Join(out2, "added.txt")); err != nil || string(b) != "added by an import\n" {
		t.Fatalf("added.txt after the import: %q %v", b, err)
	}
	if err := os.Remove(filepath.Join(out2, "added.txt")); err != nil {
		t.Fatal(err)
	}
	diffTrees(t, src, out2)

	// A refused import keeps the tree.
	bad := filepath.Join(home, "bad.tar")
	writeTar(t, bad, &tar.Header{Typeflag: tar.TypeReg, Name: "../escape", Mode: 0o644})
	chownTree(t, home, aliceUID, socketGID)
	refused(t, "an import of a hostile tar", e.runAs(t, alice, nil, "workspace", "import", "proj", bad), "../escape")
	out3 := filepath.Join(home, "out3")
	e.runAs(t, alice, nil, "workspace", "export", "proj", "--to", out3).ok(t, "alice exports proj after a refused import")
	t.Cleanup(func() { _ = os.Chmod(filepath.Join(out3, "ro"), 0o755) })
	if _, err := os.Stat(filepath.Join(out3, "added.txt")); err != nil {
		t.Fatalf("the tree after a refused import: %v", err)
	}

	// bob: alice's workspace is not found, by name or id, like nothing.
	bobDir := t.TempDir()
	if err := os.Chown(bobDir, int(bobUID), -1); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(filepath.Dir(bobDir), 0o755)
	for _, refs := range [][2]string{{"proj", "nosuch"}, {w.ID, missingID}} {
		theirs := e.runAs(t, bob, nil, "workspace", "export", refs[0], "-o", filepath.Join(bobDir, "x.tar"))
		sameError(t, "bob exports alice's "+refs[0], theirs, refs[0], e.runAs(t, bob, nil, "workspace", "export", refs[1], "-o", filepath.Join(bobDir, "x.tar")), refs[1])
		if !strings.Contains(theirs.stderr, "not found") && !strings.Contains(theirs.stderr, "WorkspaceNotFound") {
			t.Errorf("bob's export of %s: %s", refs[0], theirs.stderr)
		}
		t.Logf("bob's export of alice's %s: %s", refs[0], strings.TrimSpace(theirs.stderr))
		theirs = e.runAs(t, bob, nil, "workspace", "import", refs[0], "/dev/null")
		if theirs.code == 0 || !strings.Contains(theirs.stderr, "WorkspaceNotFound") {
			t.Errorf("bob's import into %s: %d %s", refs[0], theirs.code, theirs.stderr)
		}
	}
	if es, _ := os.ReadDir(bobDir); len(es) != 0 {
		t.Errorf("bob's failed exports left %v", es)
	}

	// The daemon's scratch is empty.
	scratch := filepath.Join(e.dir, "cache", "scratch")
	if es, err := os.ReadDir(scratch); err != nil || len(es) != 0 {
		t.Errorf("scratch %s: %v %v", scratch, es, err)
	}
}

// diffTrees: diff -r finds nothing, and modes and link targets agree.
func diffTrees(t *testing.T, a, b string) {
	t.Helper()
	if out, err := exec.Command("diff", "-r", "--no-dereference", a, b).CombinedOutput(); err != nil {
		t.Fatalf("diff -r %s %s: %v\n%s", a, b, err, out)
	}
	err := filepath.Walk(a, func(p string, fa os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(a, p)
		fb, err := os.Lstat(filepath.Join(b, rel))
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		if rel != "." && fa.Mode() != fb.Mode() {
			t.Errorf("%s: mode %s, want %s", rel, fb.Mode(), fa.Mode())
		}
		if fa.Mode()&os.ModeSymlink != 0 {
			ta, _ := os.Readlink(p)
			tb, _ := os.Readlink(filepath.Join(b, rel))
			if ta != tb {
				t.Errorf("%s: link to %q, want %q", rel, tb, ta)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// appendToTar copies the tar at from to to with one more file.
func appendToTar(t *testing.T, from, to, name, body string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	f, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr, tw := tar.NewReader(in), tar.NewWriter(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body))}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(body)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

// Export of a workspace a running VM holds read-write freezes the guest's
// file system for the export (FIFREEZE through the agent): what the guest
// wrote and never synced is in it, and the guest writes again right after.
// Import while attached is refused naming the VM; once stopped, the export
// holds what the guest wrote.
func TestWorkspaceExportAttached(t *testing.T) {
	for _, n := range []string{"mke2fs", "debugfs", "e2fsck"} {
		testenv.RequireTool(t, n, "e2fsprogs")
	}
	e, _, ns, image := vmEnvImage(t, "", nil)
	src := filepath.Join(t.TempDir(), "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "seeded.txt"), []byte("seeded\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.cli(t, nil, "workspace", "create", "proj", "--from", src, "--size", "128MiB").ok(t, "workspace create proj")
	// A snapshot makes the top a qcow2 overlay: the export reads the chain
	// that QEMU holds (qemu-img -U), not only a raw file.
	e.cli(t, nil, "workspace", "snapshot", "proj", "s0").ok(t, "workspace snapshot proj s0")
	e.cli(t, nil, "run", "--image", image, "--name", "w1", "--workspace", "proj", "--", "sleep", "100000").ok(t, "run --workspace proj")
	// No sync: the freeze flushes it.
	if out, code := execOut(t, e, "w1", "", "sh", "-c", "echo made-in-the-guest > /workspace/guest.txt"); code != 0 {
		t.Fatalf("write in the guest: %d %q", code, out)
	}
	tarPath := filepath.Join(t.TempDir(), "x.tar")
	live := filepath.Join(t.TempDir(), "live")
	e.cli(t, nil, "workspace", "export", "proj", "--to", live).ok(t, "export while attached")
	if b, err := os.ReadFile(filepath.Join(live, "guest.txt")); err != nil || string(b) != "made-in-the-guest\n" {
		t.Errorf("export while attached: guest.txt %q %v", b, err)
	}
	e.cli(t, nil, "workspace", "export", "proj", "-o", tarPath).ok(t, "export -o while attached")
	if out, code := execOut(t, e, "w1", "", "sh", "-c", "echo after > /workspace/after.txt && sync && cat /workspace/after.txt"); code != 0 || out != "after\n" {
		t.Fatalf("the guest writes after the export (thawed): %d %q", code, out)
	}
	writeTar(t, tarPath, &tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o755})
	refusedNaming(t, "import while attached", e.cli(t, nil, "workspace", "import", "proj", tarPath), "attached to VM w1", "stop it")

	e.cli(t, nil, "stop", "w1").ok(t, "stop w1")
	out := filepath.Join(t.TempDir(), "out")
	e.cli(t, nil, "workspace", "export", "proj", "--to", out).ok(t, "export once stopped")
	for name, want := range map[string]string{"seeded.txt": "seeded\n", "guest.txt": "made-in-the-guest\n"} {
		if b, err := os.ReadFile(filepath.Join(out, name)); err != nil || string(b) != want {
			t.Errorf("%s: %q %v", name, b, err)
		}
	}
	e.cli(t, nil, "workspace", "import", "proj", tarPath).ok(t, "import once stopped")
	e.cli(t, nil, "start", "w1").ok(t, "start w1 after the import")
	if out, code := execOut(t, e, "w1", "", "ls", "/workspace"); code != 0 || !strings.Contains(out, "d") || strings.Contains(out, "guest.txt") {
		t.Fatalf("the guest after the import: %d %q", code, out)
	}
	e.cli(t, nil, "stop", "w1").ok(t, "stop w1")
	e.cli(t, nil, "rm", "w1").ok(t, "rm w1")
	e.cli(t, nil, "workspace", "rm", "proj").ok(t, "workspace rm")
	if l := e.leaks(t, ns); l.host() != 0 {
		t.Fatalf("leaked %+v %v", l, l.detail)
	}
}
