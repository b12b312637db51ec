package disk

import (
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/internal/testenv"
)

func requireTool(t testing.TB, name, pkg string) string {
	t.Helper()
	return testenv.RequireTool(t, name, pkg)
}

const motd = "paddock base image\n"

// makeBase builds an ext4 base of size bytes with mkfs.ext4 -d from a small
// tree: /etc/motd and /data/blob (dataSize random bytes).
func makeBase(t testing.TB, dir string, size, dataSize int64) string {
	t.Helper()
	mkfs := requireTool(t, "mkfs.ext4", "e2fsprogs")
	tree := filepath.Join(t.TempDir(), "tree")
	for _, d := range []string{"etc", "data", "empty"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(tree, "etc", "motd"), []byte(motd), 0o644); err != nil {
		t.Fatal(err)
	}
	blob, err := os.Create(filepath.Join(tree, "data", "blob"))
	if err != nil {
		t.Fatal(err)
	}
	r := rand.NewChaCha8([32]byte{1})
	if _, err := io.CopyN(blob, r, dataSize); err != nil {
		t.Fatal(err)
	}
	blob.Close()
	base := filepath.Join(dir, "rootfs.ext4")
	out, err := exec.Command(mkfs, "-q", "-F", "-b", "4096", "-I", "256", "-m", "0",
		"-E", "root_owner=0:0,assume_storage_prezeroed=1", "-d", tree, base, strconv.FormatInt(size/1024, 10)+"k").CombinedOutput()
	if err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	if err := os.Chmod(base, 0o444); err != nil {
		t.Fatal(err)
	}
	return base
}

// dirList is the sorted names in dir.
func dirList(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

// e2fsckClean fails the test unless e2fsck -fn finds nothing to fix.
func e2fsckClean(t testing.TB, img string) {
	t.Helper()
	e2fsck := requireTool(t, "e2fsck", "e2fsprogs")
	out, err := exec.Command(e2fsck, "-fn", img).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", img, err, out)
	}
}

var blockCountRE = regexp.MustCompile(`(?m)^Block count:\s+(\d+)$`)
var blockSizeRE = regexp.MustCompile(`(?m)^Block size:\s+(\d+)$`)

// fsSize is the ext4 file system's size in bytes (dumpe2fs -h).
func fsSize(t testing.TB, img string) int64 {
	t.Helper()
	dumpe2fs := requireTool(t, "dumpe2fs", "e2fsprogs")
	out, err := exec.Command(dumpe2fs, "-h", img).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs -h %s: %v\n%s", img, err, out)
	}
	c, s := blockCountRE.FindSubmatch(out), blockSizeRE.FindSubmatch(out)
	if c == nil || s == nil {
		t.Fatalf("dumpe2fs -h %s: no block count/size:\n%s", img, out)
	}
	n, _ := strconv.ParseInt(string(c[1]), 10, 64)
	b, _ := strconv.ParseInt(string(s[1]), 10, 64)
	return n * b
}

// debugfs runs one debugfs request and fails on an error message.
func debugfs(t testing.TB, img string, write bool, req string) string {
	t.Helper()
	dbg := requireTool(t, "debugfs", "e2fsprogs")
	args := []string{"-R", req, img}
	if write {
		args = append([]string{"-w"}, args...)
	}
	cmd := exec.Command(dbg, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("debugfs %v: %v\n%s", args, err, stderr.String())
	}
	// debugfs prints its banner on stderr and exits 0 on request errors.
	for _, l := range strings.Split(stderr.String(), "\n") {
		if l != "" && !strings.HasPrefix(l, "debugfs ") {
			t.Fatalf("debugfs %v: %s", args, stderr.String())
		}
	}
	return stdout.String()
}

// allocated is the bytes a file occupies on disk.
func allocated(t testing.TB, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}
