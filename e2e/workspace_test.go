package e2e

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// Issue 12, first slice: workspaces created from a directory, a tar file and
// a git repository, by the CLI as the calling user, against a real daemon
// running as its own unprivileged uid; ls, inspect, rm; another user's
// workspace is not found, exactly like a missing one.
func TestWorkspaceCreateLsInspectRm(t *testing.T) {
	testenv.RequireRoot(t, "runs the daemon and clients as other uids")
	for _, n := range []string{"mke2fs", "debugfs", "e2fsck"} {
		testenv.RequireTool(t, n, "e2fsprogs")
	}
	testenv.RequireTool(t, "git", "git")
	e := newEnv(t, fmt.Sprintf("[api]\nsocket_group = \"%d\"\nadmin_group = \"%d\"\n", socketGID, adminGID))
	p := unprivilegedDaemon(t, e)

	// alice's tree: only alice can read private.txt, so whatever reaches the
	// workspace was read by the CLI as alice.
	home := aliceDir(t)
	src := filepath.Join(home, "src")
	files := map[string]string{"run.sh": "#!/bin/sh\necho hello from the workspace\n", "sub/deep/data.txt": "data\n",
		"private.txt": "alice's only\n", "suid": "not a real binary\n", "ünïcödé-文件.txt": "unicode\n"}
	for rel, body := range files {
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
	chownTree(t, home, aliceUID, socketGID)
	for rel, mode := range map[string]uint32{"run.sh": 0o755, "private.txt": 0o600, "suid": 0o4755} {
		if err := syscall.Chmod(filepath.Join(src, rel), mode); err != nil { // after the chown, which clears setuid
			t.Fatal(err)
		}
	}

	created := func(r result, what string) api.Workspace {
		t.Helper()
		var w api.Workspace
		if err := json.Unmarshal([]byte(r.ok(t, what)), &w); err != nil || w.ID == "" || w.Status != "ready" {
			t.Fatalf("%s: %v %s", what, err, r.stdout)
		}
		return w
	}
	dirWS := created(e.runAs(t, alice, nil, "workspace", "create", "proj", "--from", src, "--size", "256MiB", "--uid", "1000", "--gid", "1000", "--json"), "alice creates proj from a directory")
	if dirWS.Source != "dir:"+src || dirWS.Size != 256<<20 || dirWS.UID != 1000 || dirWS.GID != 1000 || dirWS.OwnerUID != aliceUID || dirWS.Used <= 0 {
		t.Fatalf("proj: %+v", dirWS)
	}
	vol := filepath.Join(e.state, "workspaces", dirWS.ID, "volume.ext4")
	if out, err := exec.Command(sbinTool(t, "e2fsck"), "-fn", vol).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", vol, err, out)
	}
	for _, tc := range []struct{ path, mode, links, target string }{
		{"/", "0755", "", ""}, {"/run.sh", "0755", "1", ""}, {"/private.txt", "0600", "1", ""}, {"/suid", "0755", "1", ""},
		{"/sub/deep/data.txt", "0644", "2", ""}, {"/hard.txt", "0644", "2", ""}, {"/ünïcödé-文件.txt", "0644", "1", ""},
		{"/link", "0777", "1", "sub/deep/data.txt"},
	} {
		st := wsStat(t, vol, tc.path)
		if st.mode != tc.mode || st.uid != "1000" || st.gid != "1000" || (tc.links != "" && st.links != tc.links) || st.target != tc.target {
			t.Errorf("proj%s: %+v, want mode %s owner 1000:1000 links %s target %q", tc.path, st, tc.mode, tc.links, tc.target)
		}
	}
	for rel, body := range files {
		if got := wsCat(t, vol, "/"+rel); got != body {
			t.Errorf("proj/%s holds %q, want %q", rel, got, body)
		}
	}

	// A tar file alice alone may read, passed by descriptor.
	tarPath := filepath.Join(home, "src.tar")
	if out, err := exec.Command("tar", "-C", src, "-cf", tarPath, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	chownTree(t, tarPath, aliceUID, socketGID)
	if err := os.Chmod(tarPath, 0o600); err != nil {
		t.Fatal(err)
	}
	tarWS := created(e.runAs(t, alice, nil, "workspace", "create", "fromtar", "--from-tar", tarPath, "--size", "128MiB", "--uid", "501", "--gid", "20", "--json"), "alice creates fromtar")
	tarVol := filepath.Join(e.state, "workspaces", tarWS.ID, "volume.ext4")
	if st := wsStat(t, tarVol, "/private.txt"); st.uid != "501" || st.gid != "20" || st.mode != "0600" {
		t.Errorf("fromtar/private.txt: %+v", st)
	}
	if st := wsStat(t, tarVol, "/"); st.uid != "501" || st.gid != "20" {
		t.Errorf("fromtar's root (the tar's ./ is root's): %+v", st)
	}
	if got := wsCat(t, tarVol, "/private.txt"); got != files["private.txt"] {
		t.Errorf("fromtar/private.txt holds %q", got)
	}

	// A git repository of alice's, cloned by the CLI as alice: v1 is the
	// first commit, main the second.
	repo := filepath.Join(home, "repo")
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", repo, "-c", "user.name=alice", "-c", "user.email=alice@example.com"}, args...)...)
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent", "GIT_CONFIG_NOSYSTEM=1"}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	if err := os.MkdirAll(repo, 0o755); err != nil {
		t.Fatal(err)
	}
	git("init", "-q", "-b", "main")
	if err := os.WriteFile(filepath.Join(repo, "version"), []byte("one\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	git("add", "version")
	git("commit", "-qm", "one")
	git("tag", "v1")
	if err := os.WriteFile(filepath.Join(repo, "version"), []byte("two\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	git("commit", "-qam", "two")
	chownTree(t, repo, aliceUID, socketGID)
	gitWS := created(e.runAs(t, alice, nil, "workspace", "create", "fromgit", "--git", "file://"+repo+"#v1", "--size", "128MiB", "--json"), "alice creates fromgit at v1")
	gitVol := filepath.Join(e.state, "workspaces", gitWS.ID, "volume.ext4")
	if got := wsCat(t, gitVol, "/version"); got != "one\n" {
		t.Errorf("fromgit#v1/version holds %q, want one", got)
	}
	if st := wsStat(t, gitVol, "/.git/HEAD"); st.uid != "1000" {
		t.Errorf("fromgit/.git/HEAD: %+v", st)
	}
	shallow := created(e.runAs(t, alice, nil, "workspace", "create", "shallow", "--git", "file://"+repo, "--depth", "1", "--size", "128MiB", "--json"), "alice creates shallow")
	if got := wsCat(t, filepath.Join(e.state, "workspaces", shallow.ID, "volume.ext4"), "/version"); got != "two\n" {
		t.Errorf("shallow/version holds %q, want two", got)
	}
	if got := wsCat(t, filepath.Join(e.state, "workspaces", shallow.ID, "volume.ext4"), "/.git/shallow"); len(strings.TrimSpace(got)) != 40 {
		t.Errorf("shallow/.git/shallow holds %q: not a depth-1 clone", got)
	}
	refused(t, "a ref that does not exist", e.runAs(t, alice, nil, "workspace", "create", "noref", "--git", "file://"+repo+"#nosuch"), "nosuch")

	// Hostile and too big: refused naming the entry, nothing left.
	dev := filepath.Join(home, "dev.tar")
	writeTar(t, dev, &tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755}, &tar.Header{Typeflag: tar.TypeChar, Name: "etc/kmsg", Devmajor: 1, Devminor: 11, Mode: 0o600})
	big := filepath.Join(home, "big.tar")
	writeTar(t, big, &tar.Header{Typeflag: tar.TypeReg, Name: "big.bin", Size: 100 << 20, Mode: 0o644})
	chownTree(t, home, aliceUID, socketGID)
	before := wsDirs(t, e)
	refused(t, "a device node", e.runAs(t, alice, nil, "workspace", "create", "dev", "--from-tar", dev), "etc/kmsg", "InvalidArgument")
	refused(t, "a tree bigger than the size", e.runAs(t, alice, nil, "workspace", "create", "big", "--from-tar", big, "--size", "64MiB"), "big.bin", "bigger than the size")
	if after := wsDirs(t, e); after != before {
		t.Errorf("refused creations left something: %s, was %s", after, before)
	}

	// ls and inspect: alice sees hers, bob none of them, an admin all.
	names := func(c *syscall.Credential) string {
		var ws []api.Workspace
		if err := json.Unmarshal([]byte(e.runAs(t, c, nil, "workspace", "ls", "--json").ok(t, "ls")), &ws); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, w := range ws {
			out = append(out, w.Name)
		}
		return strings.Join(out, ",")
	}
	if got := names(alice); got != "fromgit,fromtar,proj,shallow" {
		t.Fatalf("alice's ls: %s", got)
	}
	if got := names(bob); got != "" {
		t.Fatalf("bob's ls: %s", got)
	}
	ls := e.runAs(t, alice, nil, "workspace", "ls").ok(t, "alice's ls")
	t.Logf("alice's workspace ls:\n%s", ls)
	insp := e.runAs(t, alice, nil, "workspace", "inspect", "proj").ok(t, "alice inspects proj")
	t.Logf("alice's workspace inspect proj:\n%s", insp)
	for _, want := range []string{"256.0 MiB", "1000:1000", "dir:" + src, dirWS.ID, fmt.Sprint(aliceUID)} {
		if !strings.Contains(insp, want) {
			t.Errorf("inspect proj lacks %q", want)
		}
	}
	// bob: alice's name and id are nothing to him, and his own proj is his.
	for _, args := range [][]string{{"workspace", "inspect"}, {"workspace", "rm"}} {
		for _, refs := range [][2]string{{"proj", "nosuch"}, {dirWS.ID, missingID}} {
			theirs := e.runAs(t, bob, nil, append(args, refs[0])...)
			sameError(t, fmt.Sprintf("bob %v on alice's %s", args, refs[0]), theirs, refs[0], e.runAs(t, bob, nil, append(args, refs[1])...), refs[1])
			if !strings.Contains(theirs.stderr, "WorkspaceNotFound") || strings.Contains(theirs.stderr, fmt.Sprint(aliceUID)) {
				t.Errorf("bob %v %s: %s", args, refs[0], theirs.stderr)
			}
		}
	}
	bobs := created(e.runAs(t, bob, nil, "workspace", "create", "proj", "--json"), "bob creates his own proj")
	if bobs.ID == dirWS.ID || bobs.OwnerUID != bobUID || bobs.Size != 10<<30 {
		t.Fatalf("bob's proj: %+v", bobs)
	}
	if got := names(nil); got != "fromgit,fromtar,proj,proj,shallow" {
		t.Fatalf("the admin's ls: %s", got)
	}
	refused(t, "an admin names a name two users have", e.runAs(t, nil, nil, "workspace", "inspect", "proj"), dirWS.ID, bobs.ID)
	refused(t, "alice's second proj", e.runAs(t, alice, nil, "workspace", "create", "proj"), "NameInUse")

	// rm: alice's proj goes, with its directory; bob's stays.
	if out := e.runAs(t, alice, nil, "workspace", "rm", "proj").ok(t, "alice removes proj"); strings.TrimSpace(out) != "proj removed" {
		t.Errorf("rm said %q", out)
	}
	if _, err := os.Stat(filepath.Join(e.state, "workspaces", dirWS.ID)); !os.IsNotExist(err) {
		t.Errorf("proj's directory after rm: %v", err)
	}
	refused(t, "inspect after rm", e.runAs(t, alice, nil, "workspace", "inspect", "proj"), "WorkspaceNotFound")
	if w := created(e.runAs(t, bob, nil, "workspace", "inspect", "proj", "--json"), "bob's proj after alice's rm"); w.ID != bobs.ID {
		t.Fatalf("bob's proj: %+v", w)
	}
	p.waitLog(t, "workspace created", "workspace=proj", "workspace removed", "op=workspace-removed")

	// A restart serves what was there.
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("daemon exit %d", code)
	}
	unprivilegedDaemon(t, e)
	if got := names(nil); got != "fromgit,fromtar,proj,shallow" {
		t.Fatalf("after a restart: %s", got)
	}
}

// aliceDir is a directory alice owns, under one every test user may cross.
func aliceDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pdk-ws-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(dir, "alice")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	return home
}

// writeTar writes a tar of headers. A regular file's content is zeros,
// left as a hole: its header is written, and the file is truncated past its
// content and the end-of-archive marker; it must be the last entry.
func writeTar(t *testing.T, path string, hs ...*tar.Header) {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	var size int64
	for _, h := range hs {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			size = int64(b.Len()) + (h.Size+511)/512*512 + 2*512
			break
		}
	}
	if size == 0 {
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if size > 0 {
		if err := os.Truncate(path, size); err != nil {
			t.Fatal(err)
		}
	}
}

func wsDirs(t *testing.T, e *env) string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(e.state, "workspaces"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range es {
		if d.Name() != ".layers" {
			out = append(out, d.Name())
		}
	}
	// Frozen layers count by name: an empty layers directory is no leak.
	ls, err := os.ReadDir(filepath.Join(e.state, "workspaces", ".layers"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		out = append(out, ".layers/"+l.Name())
	}
	return strings.Join(out, ",")
}

func sbinTool(t *testing.T, name string) string {
	t.Helper()
	return testenv.RequireTool(t, name, "e2fsprogs")
}

type wsInode struct{ mode, uid, gid, links, target string }

var (
	wsModeRE   = regexp.MustCompile(`Mode:\s+(\d+)`)
	wsOwnerRE  = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)`)
	wsLinksRE  = regexp.MustCompile(`Links: (\d+)`)
	wsTargetRE = regexp.MustCompile(`Fast link dest: "(.*)"`)
)

func wsStat(t *testing.T, vol, path string) wsInode {
	t.Helper()
	out, err := exec.Command(sbinTool(t, "debugfs"), "-R", `stat "`+path+`"`, vol).CombinedOutput()
	m, o, l := wsModeRE.FindStringSubmatch(string(out)), wsOwnerRE.FindStringSubmatch(string(out)), wsLinksRE.FindStringSubmatch(string(out))
	if err != nil || m == nil || o == nil || l == nil {
		t.Fatalf("debugfs stat %s in %s: %v\n%s", path, vol, err, out)
	}
	in := wsInode{mode: m[1], uid: o[1], gid: o[2], links: l[1]}
	if tg := wsTargetRE.FindStringSubmatch(string(out)); tg != nil {
		in.target = tg[1]
	}
	return in
}

func wsCat(t *testing.T, vol, path string) string {
	t.Helper()
	cmd := exec.Command(sbinTool(t, "debugfs"), "-R", `cat "`+path+`"`, vol)
	out, err := cmd.Output() // debugfs' banner goes to stderr
	if err != nil {
		t.Fatalf("debugfs cat %s in %s: %v", path, vol, err)
	}
	return string(out)
}

// kill -9 of paddockd at each step of a workspace's creation leaves the old
// state (no workspace, nothing on disk) once it restarts, and the name
// is free again.
func TestWorkspaceCrashPoints(t *testing.T) {
	testenv.RequireRoot(t, "runs the daemon and clients as other uids")
	for _, n := range []string{"mke2fs", "debugfs", "e2fsck"} {
		testenv.RequireTool(t, n, "e2fsprogs")
	}
	e := newEnv(t, fmt.Sprintf("[api]\nsocket_group = \"%d\"\nadmin_group = \"%d\"\n", socketGID, adminGID))
	home := aliceDir(t)
	src := filepath.Join(home, "src")
	if err := os.MkdirAll(filepath.Join(src, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "sub", "f"), []byte("content\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	chownTree(t, home, aliceUID, socketGID)
	if len(actors.WorkspaceFailpoints) < 2 {
		t.Fatalf("workspace crash points: %v", actors.WorkspaceFailpoints)
	}
	for _, fp := range actors.WorkspaceFailpoints {
		p := unprivilegedDaemon(t, e, "PADDOCK_FAILPOINTS="+fp)
		if r := e.runAs(t, alice, nil, "workspace", "create", "w", "--from", src, "--size", "64MiB"); r.code == 0 {
			t.Fatalf("%s: create succeeded although the daemon died", fp)
		}
		p.wait(t, 30*time.Second)
		if left := wsDirs(t, e); left == "" {
			t.Fatalf("%s: the crash left no record: the crash point is not after the intent", fp)
		} else {
			t.Logf("%s: the crash left %s", fp, left)
		}
		p = unprivilegedDaemon(t, e)
		if out := e.runAs(t, alice, nil, "workspace", "ls", "--json").ok(t, fp+": ls"); strings.TrimSpace(out) != "[]" {
			t.Fatalf("%s: after the restart alice has %s", fp, out)
		}
		if left := wsDirs(t, e); left != "" {
			t.Fatalf("%s: the restart did not sweep %s", fp, left)
		}
		var w api.Workspace
		if err := json.Unmarshal([]byte(e.runAs(t, alice, nil, "workspace", "create", "w", "--from", src, "--size", "64MiB", "--json").ok(t, fp+": create again")), &w); err != nil || w.Status != "ready" {
			t.Fatalf("%s: create again: %+v %v", fp, w, err)
		}
		if got := wsCat(t, filepath.Join(e.state, "workspaces", w.ID, "volume.ext4"), "/sub/f"); got != "content\n" {
			t.Fatalf("%s: the new workspace holds %q", fp, got)
		}
		e.runAs(t, alice, nil, "workspace", "rm", "w").ok(t, fp+": rm")
		p.signal(t, syscall.SIGTERM)
		p.wait(t, 30*time.Second)
	}
}
