package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// Issue 12's end-to-end scenario: a host git repository with history, a
// symlink, an executable script, a hardlink, unicode names, a 50 MB file
// and 10,000 small files → workspace create --git file://… → run
// --workspace: inside the guest every file's checksum equals the host's,
// every file belongs to the workspace uid, the script runs; a change made
// in the guest survives stop → start; a second read-write attach and rm
// while attached are refused; export --to DIR equals the expected tree.
func TestWorkspaceGitScenario(t *testing.T) {
	for _, n := range []string{"mke2fs", "debugfs", "e2fsck", "git"} {
		testenv.RequireTool(t, n, n)
	}
	repo := gitRepo(t)
	want := treeSums(t, repo)
	t.Logf("host repository: %d files", len(want))

	e, _, _, image := vmEnvImage(t, "", nil)
	t0 := time.Now()
	var ws api.Workspace
	out := e.cli(t, nil, "workspace", "create", "repo", "--git", "file://"+repo+"#main", "--size", "512MiB",
		"--uid", "1000", "--gid", "1000", "--json").ok(t, "workspace create --git")
	if err := json.Unmarshal([]byte(out), &ws); err != nil {
		t.Fatal(err)
	}
	t.Logf("workspace create --git: %s, %d bytes used on the host", time.Since(t0).Round(time.Millisecond), ws.Used)

	e.cli(t, nil, "run", "--image", image, "--name", "g", "--workspace", "repo", "--", "/bin/sh", "-c", "exec sleep 100000").ok(t, "run --workspace repo")
	t1 := time.Now()
	sums, code := execOut(t, e, "g", "", "sh", "-c", "cd /workspace && find . -path ./.git -prune -o -path ./lost+found -prune -o -type f -exec sha256sum {} +")
	if code != 0 {
		t.Fatalf("sha256sum in the guest: exit %d", code)
	}
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(sums), "\n") {
		sum, name, ok := strings.Cut(l, "  ")
		if !ok {
			t.Fatalf("sha256sum line %q", l)
		}
		got[strings.TrimPrefix(name, "./")] = sum
	}
	t.Logf("checksums of %d files in the guest: %s", len(got), time.Since(t1).Round(time.Millisecond))
	for name, sum := range want {
		if got[name] != sum {
			t.Errorf("%s: guest sha256 %q, host %q", name, got[name], sum)
		}
	}
	if len(got) != len(want) {
		t.Errorf("the guest has %d files, the host %d", len(got), len(want))
	}
	if out, code := execOut(t, e, "g", "", "sh", "-c", "find /workspace -path /workspace/lost+found -prune -o ! -user 1000 -print | head"); code != 0 || strings.TrimSpace(out) != "" {
		t.Errorf("files not owned by the workspace uid (exit %d):\n%s", code, out)
	}
	if out, code := execOut(t, e, "g", "", "/workspace/tools/run.sh"); code != 0 || !strings.Contains(out, "script ran as 1000") {
		t.Errorf("the script: exit %d: %q", code, out)
	}
	if out, code := execOut(t, e, "g", "", "sh", "-c", "test -L /workspace/latest && cat /workspace/latest && test -d /workspace/.git && cat /workspace/.git/HEAD"); code != 0 || !strings.Contains(out, "ref: refs/heads/main") {
		t.Errorf("symlink or .git: exit %d: %q", code, out)
	}

	// A change in the guest survives stop → start.
	if _, code := execOut(t, e, "g", "", "sh", "-c", "echo changed > /workspace/made-in-guest.txt && rm /workspace/small/00/000.txt && sync"); code != 0 {
		t.Fatal("change in the guest failed")
	}
	e.cli(t, nil, "stop", "g").ok(t, "stop")
	e.cli(t, nil, "start", "g").ok(t, "start")
	if out, code := execOut(t, e, "g", "", "sh", "-c", "cat /workspace/made-in-guest.txt; test ! -e /workspace/small/00/000.txt"); code != 0 || out != "changed\n" {
		t.Fatalf("after stop and start: exit %d %q", code, out)
	}
	// One read-write holder; rm while attached is refused.
	if r := e.cli(t, nil, "run", "--image", image, "--name", "g2", "--workspace", "repo"); r.code == 0 || !strings.Contains(r.stderr, "attached read-write to VM g") {
		t.Errorf("second read-write attach: exit %d %s", r.code, r.stderr)
	}
	if r := e.cli(t, nil, "workspace", "rm", "repo"); r.code == 0 || !strings.Contains(r.stderr, "g") {
		t.Errorf("rm while attached: exit %d %s", r.code, r.stderr)
	}
	e.cli(t, nil, "rm", "--force", "g2").ok(t, "rm g2")
	e.cli(t, nil, "stop", "g").ok(t, "stop")

	// Export equals the expected tree: the repository's, with the change.
	exp := filepath.Join(t.TempDir(), "expected")
	if out, err := exec.Command("cp", "-a", repo, exp).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v %s", err, out)
	}
	if err := os.RemoveAll(filepath.Join(exp, ".git")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(exp, "made-in-guest.txt"), []byte("changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(exp, "small", "00", "000.txt")); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "out")
	t2 := time.Now()
	e.cli(t, nil, "workspace", "export", "repo", "--to", dst).ok(t, "export")
	t.Logf("workspace export --to: %s", time.Since(t2).Round(time.Millisecond))
	if fi, err := os.Stat(filepath.Join(dst, ".git", "HEAD")); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("export lacks .git: %v", err)
	}
	if err := os.RemoveAll(filepath.Join(dst, ".git")); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(filepath.Join(dst, "lost+found"))
	diffTrees(t, exp, dst)
}

// gitRepo makes a repository with two commits on main holding the
// scenario's tree.
func gitRepo(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	write := func(rel string, body []byte, mode os.FileMode) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, body, mode); err != nil {
			t.Fatal(err)
		}
	}
	git := func(args ...string) {
		c := exec.Command("git", append([]string{"-C", dir}, args...)...)
		c.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.invalid",
			"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.invalid", "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir)
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	git("init", "-q", "-b", "main")
	write("README.md", []byte("# scenario\n"), 0o644)
	write("tools/run.sh", []byte("#!/bin/sh\necho \"script ran as $(id -u)\"\n"), 0o755)
	write("ünïcödé/文件.txt", []byte("unicode\n"), 0o644)
	git("add", "-A")
	git("commit", "-q", "-m", "first")
	rng := rand.New(rand.NewPCG(12, 34))
	big := make([]byte, 50<<20)
	for i := 0; i+8 <= len(big); i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			big[i+j] = byte(v >> (8 * j))
		}
	}
	write("data/big.bin", big, 0o644)
	for i := range 10000 {
		write(fmt.Sprintf("small/%02d/%03d.txt", i/100, i%100), []byte(fmt.Sprintf("file %d\n", i)), 0o644)
	}
	if err := os.Link(filepath.Join(dir, "README.md"), filepath.Join(dir, "hard.md")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("data/big.bin", filepath.Join(dir, "latest")); err != nil {
		t.Fatal(err)
	}
	git("add", "-A")
	git("commit", "-q", "-m", "second")
	return dir
}

// treeSums is the sha256 of every regular file under dir, .git aside.
func treeSums(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == ".git" {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = hex.EncodeToString(h.Sum(nil))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
