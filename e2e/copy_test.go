package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/paddock-vm/paddock/internal/testenv"
)

// Issue 12, item 3: paddock cp and workspace push/pull against real VMs
// (QEMU, TCG), run by alice. A tree (nested directories, symbolic links,
// an executable, a unicode name, a file of several flow-control windows)
// copied into her VM has the host's checksums inside and belongs to root
// there; copied back out it is the same tree (content, modes, link
// targets), every file alice's. Pushed into her workspace it belongs to
// the workspace's uid:gid; pulled back, attached and then detached
// (offline from the volume), it is the same tree again. Bob's copies from
// her VM and workspace are not found, word for word as for nothing.
func TestCopy(t *testing.T) {
	testenv.RequireRoot(t, "runs clients as other uids")
	for _, n := range []string{"mke2fs", "debugfs", "e2fsck"} {
		testenv.RequireTool(t, n, "e2fsprogs")
	}
	testenv.RequireTool(t, "diff", "diffutils")
	e, _, ns, demo := bootEnv(t, fmt.Sprintf("[api]\nsocket_group = \"%d\"\nadmin_group = \"%d\"\n", socketGID, adminGID), nil)
	e.bootKit(t)

	home := aliceDir(t)
	src := filepath.Join(home, "src")
	big := make([]byte, 700<<10)
	_, _ = rand.Read(big)
	files := map[string][]byte{"run.sh": []byte("#!/bin/sh\necho copied-script-ran\n"), "a/b/deep.txt": []byte("deep\n"),
		"ünïcödé 文件.txt": []byte("unicode\n"), "big.bin": big, "private.txt": []byte("alice's\n")}
	for rel, body := range files {
		p := filepath.Join(src, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{"rel-link": "a/b/deep.txt", "abs-link": "/etc/motd"} {
		if err := os.Symlink(target, filepath.Join(src, link)); err != nil {
			t.Fatal(err)
		}
	}
	for rel, mode := range map[string]os.FileMode{"run.sh": 0o755, "private.txt": 0o600} {
		if err := os.Chmod(filepath.Join(src, rel), mode); err != nil {
			t.Fatal(err)
		}
	}
	seed := filepath.Join(home, "seed")
	if err := os.MkdirAll(seed, 0o755); err != nil {
		t.Fatal(err)
	}
	chownTree(t, home, aliceUID, socketGID)
	var sums []string
	for rel, body := range files {
		s := sha256.Sum256(body)
		sums = append(sums, hex.EncodeToString(s[:])+"  ./"+rel)
	}
	sort.Strings(sums)

	e.cli(t, alice, "workspace", "create", "proj", "--from", seed, "--size", "64MiB", "--uid", "1000", "--gid", "1000").ok(t, "alice creates proj")
	e.cli(t, alice, "run", "--image", demo, "--name", "cpvm", "--workspace", "proj").ok(t, "alice runs cpvm with proj")

	// In: a new name in the guest becomes the copy.
	e.cli(t, alice, "cp", src, "cpvm:/tmp/in").ok(t, "cp into the VM")
	// As root: exec runs as the workspace's owner by default, and what cp
	// puts outside a workspace is root's (private.txt is 0600).
	out, code := execOutAs(t, e, "cpvm", "0:0", "sh", "-c", "cd /tmp/in && find . -type f -exec sha256sum {} +")
	got := strings.Split(strings.TrimSpace(out), "\n")
	sort.Strings(got)
	if code != 0 || strings.Join(got, "\n") != strings.Join(sums, "\n") {
		t.Fatalf("checksums in the guest (%d):\n%s\nwant:\n%s", code, out, strings.Join(sums, "\n"))
	}
	if out, code := execOutAs(t, e, "cpvm", "0:0", "sh", "-c", "/tmp/in/run.sh && readlink /tmp/in/abs-link && readlink /tmp/in/rel-link && stat -c '%u:%g %a' /tmp/in/big.bin /tmp/in/private.txt"); code != 0 ||
		out != "copied-script-ran\n/etc/motd\na/b/deep.txt\n0:0 644\n0:0 600\n" {
		t.Fatalf("the copy in the guest (%d):\n%s", code, out)
	}
	// Into a directory that exists: the copy goes inside it.
	e.cli(t, alice, "cp", filepath.Join(src, "a"), "cpvm:/tmp").ok(t, "cp into an existing directory")
	if out, code := execOut(t, e, "cpvm", "", "cat", "/tmp/a/b/deep.txt"); code != 0 || out != "deep\n" {
		t.Fatalf("cp into /tmp: %d %q", code, out)
	}

	// Out: the same tree, alice's.
	back := filepath.Join(home, "back")
	e.cli(t, alice, "cp", "cpvm:/tmp/in", back).ok(t, "cp out of the VM")
	diffTrees(t, src, back)
	ownedBy(t, back, aliceUID)
	e.cli(t, alice, "cp", "cpvm:/etc/motd", home).ok(t, "cp a file out into a directory")
	if b, err := os.ReadFile(filepath.Join(home, "motd")); err != nil || string(b) != "welcome to the paddock demo\n" {
		t.Fatalf("motd: %q %v", b, err)
	}
	refusedNaming(t, "cp of a missing guest path", e.cli(t, alice, "cp", "cpvm:/no/such", filepath.Join(home, "x")), "/no/such", "no such file")

	// Bob: alice's VM and workspace are not found, like nothing.
	bobOut := filepath.Join(t.TempDir(), "bob")
	theirs := e.cli(t, bob, "cp", "cpvm:/etc/motd", bobOut)
	none := e.cli(t, bob, "cp", "nosuchvm:/etc/motd", bobOut)
	if theirs.code == 0 || strings.ReplaceAll(theirs.stderr, "cpvm", "REF") != strings.ReplaceAll(none.stderr, "nosuchvm", "REF") {
		t.Fatalf("bob's cp from alice's VM: %d %q; from nothing: %q", theirs.code, theirs.stderr, none.stderr)
	}
	theirs = e.cli(t, bob, "workspace", "pull", "proj", bobOut)
	none = e.cli(t, bob, "workspace", "pull", "nosuchws", bobOut)
	if theirs.code == 0 || strings.ReplaceAll(theirs.stderr, "proj", "REF") != strings.ReplaceAll(none.stderr, "nosuchws", "REF") {
		t.Fatalf("bob's pull of alice's workspace: %d %q; of nothing: %q", theirs.code, theirs.stderr, none.stderr)
	}
	if _, err := os.Lstat(bobOut); err == nil {
		t.Fatal("bob's refused copies wrote something")
	}

	// Workspace, attached: through the agent at the mount, the
	// workspace's owner.
	e.cli(t, alice, "workspace", "push", "proj", src, "pushed").ok(t, "push into the attached workspace")
	if out, code := execOut(t, e, "cpvm", "", "sh", "-c", "stat -c %u:%g /workspace/pushed/run.sh /workspace/pushed/a/b"); code != 0 || out != "1000:1000\n1000:1000\n" {
		t.Fatalf("pushed files' owner (%d): %q", code, out)
	}
	pulled := filepath.Join(home, "pulled")
	e.cli(t, alice, "workspace", "pull", "proj", "pushed", pulled).ok(t, "pull from the attached workspace")
	diffTrees(t, src, pulled)
	ownedBy(t, pulled, aliceUID)

	// Detached: pulled offline from the volume.
	e.cli(t, alice, "stop", "cpvm").ok(t, "stop cpvm")
	offline := filepath.Join(home, "offline")
	e.cli(t, alice, "workspace", "pull", "proj", "pushed", offline).ok(t, "pull from the detached workspace")
	diffTrees(t, src, offline)
	ownedBy(t, offline, aliceUID)
	whole := filepath.Join(home, "whole")
	e.cli(t, alice, "workspace", "pull", "proj", whole).ok(t, "pull the whole detached workspace")
	diffTrees(t, src, filepath.Join(whole, "pushed"))
	// Detached: a push rebuilds the volume with the tree pushed in; the
	// guest then sees it owned by the workspace's uid.
	e.cli(t, alice, "workspace", "push", "proj", src, "offline-pushed").ok(t, "push into the detached workspace")
	again := filepath.Join(home, "again")
	e.cli(t, alice, "workspace", "pull", "proj", "offline-pushed", again).ok(t, "pull what was pushed offline")
	diffTrees(t, src, again)
	kept := filepath.Join(home, "kept")
	e.cli(t, alice, "workspace", "pull", "proj", "pushed", kept).ok(t, "pull what was there before")
	diffTrees(t, src, kept)
	refusedNaming(t, "offline push through a missing directory", e.cli(t, alice, "workspace", "push", "proj", src, "no/such/dir"), "no directory no")
	e.cli(t, alice, "start", "cpvm").ok(t, "start cpvm on the rebuilt workspace")
	if out, code := execOut(t, e, "cpvm", "", "sh", "-c", "stat -c %u:%g /workspace/offline-pushed/run.sh /workspace/pushed/run.sh"); code != 0 || out != "1000:1000\n1000:1000\n" {
		t.Fatalf("offline-pushed files in the guest (%d): %q", code, out)
	}
	e.cli(t, alice, "stop", "cpvm").ok(t, "stop cpvm")

	e.cli(t, alice, "rm", "cpvm").ok(t, "rm cpvm")
	e.cli(t, alice, "workspace", "rm", "proj").ok(t, "workspace rm")
	if l := e.leaks(t, ns); l.host() != 0 {
		t.Fatalf("leaked %+v %v", l, l.detail)
	}
}

// ownedBy: every entry under dir belongs to uid.
func ownedBy(t *testing.T, dir string, uid int) {
	t.Helper()
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != uid {
			t.Errorf("%s belongs to %v, want %d", p, fi.Sys(), uid)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
