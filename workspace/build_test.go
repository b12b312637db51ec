package workspace_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/imaging/ext4"
	"github.com/paddock-vm/paddock/imaging/flatten"
	"github.com/paddock-vm/paddock/internal/sbin"
	"github.com/paddock-vm/paddock/internal/testenv"
	"github.com/paddock-vm/paddock/tartree"
	"github.com/paddock-vm/paddock/workspace"
)

func requireTools(t *testing.T) {
	t.Helper()
	for _, n := range []string{"mke2fs", "debugfs", "e2fsck"} {
		testenv.RequireTool(t, n, "e2fsprogs")
	}
}

func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := sbin.Look(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// debugfs runs one read-only request against img.
func debugfs(t *testing.T, img, req string) string {
	t.Helper()
	out, err := exec.Command(tool(t, "debugfs"), "-R", req, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v\n%s", req, err, out)
	}
	return string(out)
}

type inode struct {
	typ, mode, uid, gid, links, target string
	mtime                              string
}

var (
	reType   = regexp.MustCompile(`Type: (\S+)\s+Mode:\s+(\d+)`)
	reOwner  = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)`)
	reLinks  = regexp.MustCompile(`Links: (\d+)`)
	reTarget = regexp.MustCompile(`Fast link dest: "(.*)"`)
	reMtime  = regexp.MustCompile(`mtime: (0x[0-9a-f]+)`)
)

func stat(t *testing.T, img, path string) inode {
	t.Helper()
	out := debugfs(t, img, "stat \""+path+"\"")
	var in inode
	m := reType.FindStringSubmatch(out)
	o := reOwner.FindStringSubmatch(out)
	l := reLinks.FindStringSubmatch(out)
	mt := reMtime.FindStringSubmatch(out)
	if m == nil || o == nil || l == nil || mt == nil {
		t.Fatalf("stat %s:\n%s", path, out)
	}
	in.typ, in.mode, in.uid, in.gid, in.links, in.mtime = m[1], m[2], o[1], o[2], l[1], mt[1]
	if tg := reTarget.FindStringSubmatch(out); tg != nil {
		in.target = tg[1]
	}
	return in
}

// writeFile writes rel under src with the raw mode bits (04755 is setuid)
// and mtime when, making its directories.
func writeFile(t *testing.T, src, rel, data string, mode os.FileMode, when time.Time) {
	t.Helper()
	p := filepath.Join(src, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Chmod(p, uint32(mode)); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, when, when); err != nil {
		t.Fatal(err)
	}
}

func fsckClean(t *testing.T, img string) {
	t.Helper()
	if out, err := exec.Command(tool(t, "e2fsck"), "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
}

// A workspace built from a directory (through TarDir, as the CLI sends it)
// holds the tree as it is, every file owned by the workspace's uid:gid,
// setuid and setgid stripped; modes, link targets, hardlinks, contents and
// mtimes kept.
func TestBuildFromDirectory(t *testing.T) {
	requireTools(t)
	src := t.TempDir()
	when := time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)
	write := func(rel, data string, mode os.FileMode) { writeFile(t, src, rel, data, mode, when) }
	write("run.sh", "#!/bin/sh\necho hello\n", 0o755)
	write("sub/deep/data.txt", "some data\n", 0o640)
	write("suid", "not really a binary\n", 0o4755)
	write("ünïcödé-文件.txt", "unicode\n", 0o644)
	// A project's own names, not layer whiteouts.
	write(".wh.keep", "kept\n", 0o644)
	write("sub/.wh..wh..opq", "kept too\n", 0o644)
	if err := os.Link(filepath.Join(src, "sub/deep/data.txt"), filepath.Join(src, "hard.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/deep/data.txt", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(src, "sgid-dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Chmod(filepath.Join(src, "sgid-dir"), 0o2775); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{".wh.keep", "sub/.wh..wh..opq", "run.sh", "sub/deep/data.txt", "suid", "ünïcödé-文件.txt", "sub/deep", "sub", "sgid-dir"} {
		if err := os.Chtimes(filepath.Join(src, p), when, when); err != nil {
			t.Fatal(err)
		}
	}
	if fi, err := os.Stat(filepath.Join(src, "suid")); err != nil || fi.Mode()&os.ModeSetuid == 0 {
		t.Fatalf("the source's suid file is not setuid: %v %v", fi.Mode(), err)
	}
	var tarball bytes.Buffer
	if err := tartree.TarDir(context.Background(), src, &tarball); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "volume.ext4")
	res, err := workspace.Build(context.Background(), &tarball, out, workspace.Spec{Name: "proj", Size: 128 << 20, UID: 1234, GID: 2345, ScratchDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 128<<20 || fi.Mode().Perm() != 0o600 || res.Size != 128<<20 {
		t.Errorf("volume: size %d mode %v (result %+v), want 128 MiB 0600", fi.Size(), fi.Mode(), res)
	}
	if res.Allocated <= 0 || res.Allocated >= 64<<20 {
		t.Errorf("volume allocates %d bytes: not sparse", res.Allocated)
	}
	fsckClean(t, out)
	mtime := "0x" + strings.TrimLeft(strings.ToLower(hex32(when.Unix())), "")
	for _, tc := range []struct {
		path, typ, mode, links, target string
		mtime                          bool
	}{
		{"/", "directory", "0755", "", "", false},
		{"/run.sh", "regular", "0755", "1", "", true},
		{"/sub", "directory", "0755", "", "", true},
		{"/sub/deep/data.txt", "regular", "0640", "2", "", true},
		{"/hard.txt", "regular", "0640", "2", "", true},
		{"/suid", "regular", "0755", "1", "", true},
		{"/sgid-dir", "directory", "0775", "", "", true},
		{"/ünïcödé-文件.txt", "regular", "0644", "1", "", true},
		{"/link", "symlink", "0777", "1", "sub/deep/data.txt", false},
		{"/.wh.keep", "regular", "0644", "1", "", true},
		{"/sub/.wh..wh..opq", "regular", "0644", "1", "", true},
	} {
		in := stat(t, out, tc.path)
		if in.typ != tc.typ || in.mode != tc.mode || in.uid != "1234" || in.gid != "2345" || (tc.links != "" && in.links != tc.links) || in.target != tc.target {
			t.Errorf("%s: %+v, want %s mode %s owner 1234:2345 links %q target %q", tc.path, in, tc.typ, tc.mode, tc.links, tc.target)
		}
		if tc.mtime && in.mtime != mtime {
			t.Errorf("%s: mtime %s, want %s", tc.path, in.mtime, mtime)
		}
	}
	if a, b := debugfs(t, out, "stat /hard.txt"), debugfs(t, out, "stat /sub/deep/data.txt"); reInode.FindString(a) != reInode.FindString(b) {
		t.Errorf("hard.txt and sub/deep/data.txt are not one inode")
	}
	for path, want := range map[string]string{"/run.sh": "#!/bin/sh\necho hello\n", "/hard.txt": "some data\n", "/ünïcödé-文件.txt": "unicode\n"} {
		if got := debugfs(t, out, "cat \""+path+"\""); !strings.Contains(got, want) {
			t.Errorf("%s holds %q, want %q", path, got, want)
		}
	}
}

var reInode = regexp.MustCompile(`Inode: \d+`)

func hex32(v int64) string {
	const digits = "0123456789abcdef"
	b := make([]byte, 8)
	for i := 7; i >= 0; i-- {
		b[i] = digits[v&0xf]
		v >>= 4
	}
	return strings.TrimLeft(string(b), "0")
}

// An empty workspace needs no source.
func TestBuildEmpty(t *testing.T) {
	requireTools(t)
	out := filepath.Join(t.TempDir(), "volume.ext4")
	if _, err := workspace.Build(context.Background(), nil, out, workspace.Spec{Name: "empty", Size: 64 << 20, UID: 1000, GID: 1000, ScratchDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	fsckClean(t, out)
	if in := stat(t, out, "/"); in.uid != "1000" || in.gid != "1000" || in.mode != "0755" {
		t.Fatalf("root: %+v", in)
	}
}

type entry struct {
	h    tar.Header
	body string
}

func tarOf(t *testing.T, es ...entry) io.Reader {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		h := e.h
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &b
}

// Hostile entries are refused naming the entry, and nothing is left: no
// volume, no partial file, no scratch.
func TestBuildRefusesHostileEntries(t *testing.T) {
	requireTools(t)
	reg := func(name string) entry { return entry{h: tar.Header{Typeflag: tar.TypeReg, Name: name}, body: "x"} }
	for _, tc := range []struct {
		name    string
		entries []entry
		culprit string
		want    error
	}{
		{"dot-dot escape", []entry{reg("../outside")}, "../outside", flatten.ErrPathEscape},
		{"escape deep", []entry{reg("a/../../outside")}, "a/../../outside", flatten.ErrPathEscape},
		{"symlink escape written through", []entry{{h: tar.Header{Typeflag: tar.TypeSymlink, Name: "up", Linkname: "../../.."}}, reg("up/etc/passwd")}, "up/etc/passwd", flatten.ErrPathEscape},
		{"hardlink escape", []entry{{h: tar.Header{Typeflag: tar.TypeLink, Name: "h", Linkname: "../../etc/shadow"}}}, "h", nil},
		{"char device", []entry{{h: tar.Header{Typeflag: tar.TypeChar, Name: "dev/kmsg", Devmajor: 1, Devminor: 11}}}, "dev/kmsg", flatten.ErrBadEntry},
		{"block device", []entry{{h: tar.Header{Typeflag: tar.TypeBlock, Name: "sda", Devmajor: 8}}}, "sda", flatten.ErrBadEntry},
		{"fifo", []entry{{h: tar.Header{Typeflag: tar.TypeFifo, Name: "pipe"}}}, "pipe", flatten.ErrBadEntry},
		{"newline in a name", []entry{reg("evil\nname")}, `evil\nname`, flatten.ErrBadName},
		{"cut short at an entry boundary", nil, "end-of-archive marker", flatten.ErrBadEntry},
	} {
		// 64 MiB: built from the flattened tree; 1 GiB: while the stream is
		// read, up to the hostile entry (a leading file makes sure of it)
		for _, size := range []int64{64 << 20, 1 << 30} {
			t.Run(fmt.Sprintf("%s/%dMiB", tc.name, size>>20), func(t *testing.T) {
				dir, scratch := t.TempDir(), t.TempDir()
				out := filepath.Join(dir, "volume.ext4")
				stream := tarOf(t, append([]entry{reg("first")}, tc.entries...)...)
				if tc.entries == nil {
					// A whole file, then nothing: no end-of-archive marker.
					b, _ := io.ReadAll(tarOf(t, reg("a"), reg("b")))
					stream = bytes.NewReader(b[:2*512])
				}
				_, err := workspace.Build(context.Background(), stream, out, workspace.Spec{Name: "bad", Size: size, UID: 1000, GID: 1000, ScratchDir: scratch})
				var ee *flatten.EntryError
				if !errors.As(err, &ee) || !strings.Contains(err.Error(), tc.culprit) {
					t.Fatalf("err = %v, want an entry error naming %q", err, tc.culprit)
				}
				if tc.want != nil && !errors.Is(err, tc.want) {
					t.Fatalf("err = %v, want %v", err, tc.want)
				}
				empty(t, dir)
				empty(t, scratch)
			})
		}
	}
}

// A tree bigger than the size is refused before anything is written, by
// its declared size (the content is never read) or by what the filesystem
// would need.
func TestBuildRefusesTooBig(t *testing.T) {
	requireTools(t)
	for _, tc := range []struct {
		name string
		size int64
	}{{"over the size", 100 << 20}, {"over what fits", 62 << 20}} {
		t.Run(tc.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			read := make(chan int64, 1)
			go func() {
				tw := tar.NewWriter(pw)
				_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "big", Size: tc.size, Mode: 0o644})
				n, _ := io.Copy(tw, io.LimitReader(zeros{}, tc.size))
				_ = tw.Close()
				pw.Close()
				read <- n
			}()
			dir, scratch := t.TempDir(), t.TempDir()
			out := filepath.Join(dir, "volume.ext4")
			_, err := workspace.Build(context.Background(), pr, out, workspace.Spec{Name: "big", Size: 64 << 20, UID: 1000, GID: 1000, ScratchDir: scratch})
			pr.Close()
			if err == nil || !(errors.Is(err, flatten.ErrTooLarge) || errors.Is(err, ext4.ErrTooSmall)) {
				t.Fatalf("err = %v, want too big", err)
			}
			t.Log(err)
			<-read
			empty(t, dir)
			empty(t, scratch)
		})
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func empty(t *testing.T, dir string) {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		t.Errorf("left behind in %s: %s", dir, e.Name())
	}
}
