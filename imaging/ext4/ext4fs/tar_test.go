package ext4fs

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/tartree"
)

// tree makes a source tree with what a workspace holds: nested and large
// (htree) directories, a hardlink, fast and slow symbolic links, a sparse
// file of many extents (an extent tree of depth 1), an empty file, special
// modes, a fifo, a unicode name.
func tree(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tree")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "a/b/c"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "many"), 0o750))
	for i := range 3000 {
		must(os.WriteFile(filepath.Join(dir, "many", fmt.Sprintf("file-%04d.txt", i)), []byte(strings.Repeat("x", i%50)), 0o644))
	}
	rng := rand.New(rand.NewPCG(3, 4))
	big := make([]byte, 3<<20+17)
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	must(os.WriteFile(filepath.Join(dir, "a/big.bin"), big, 0o600))
	must(os.Link(filepath.Join(dir, "a/big.bin"), filepath.Join(dir, "a/b/hard.bin")))
	must(os.Symlink("../big.bin", filepath.Join(dir, "a/b/fast")))
	must(os.Symlink(strings.Repeat("long/", 30)+"target", filepath.Join(dir, "a/slow")))
	f, err := os.Create(filepath.Join(dir, "a/b/c/sparse"))
	must(err)
	for i := range 12 {
		_, err := f.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 5000), int64(i)*1<<20)
		must(err)
	}
	must(f.Truncate(13 << 20))
	must(f.Close())
	must(os.WriteFile(filepath.Join(dir, "empty"), nil, 0o640))
	must(os.WriteFile(filepath.Join(dir, "run.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "über-ünïcode ✓"), []byte("ü\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "sticky"), []byte("s"), 0o644))
	must(os.Chmod(filepath.Join(dir, "sticky"), 0o1755|os.ModeSetgid))
	must(syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600))
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	must(os.Chtimes(filepath.Join(dir, "run.sh"), old, old))
	return dir
}

func mkfs(t *testing.T, dir string, extra ...string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "vol.ext4")
	args := append([]string{"-q", "-F", "-t", "ext4", "-b", "4096"}, extra...)
	if dir != "" {
		args = append(args, "-d", dir)
	}
	if out, err := exec.Command("mkfs.ext4", append(args, img, "96M")...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return img
}

type row struct {
	name, link string
	typ        byte
	mode, size int64
	mtime      int64
	sum        [32]byte
}

func rows(t *testing.T, data []byte) []row {
	t.Helper()
	var out []row
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, row{h.Name, h.Linkname, h.Typeflag, h.Mode, h.Size, h.ModTime.Unix(), sha256.Sum256(b)})
	}
}

// TestWriteTarMatchesTheTree: the tar read from an image mkfs.ext4 -d made
// equals tartree's tar of the source tree, entry by entry and byte by byte.
func TestWriteTarMatchesTheTree(t *testing.T) {
	dir := tree(t)
	img := mkfs(t, dir)
	var want, got bytes.Buffer
	if err := tartree.TarDir(context.Background(), dir, &want); err != nil {
		t.Fatal(err)
	}
	if err := WriteTar(context.Background(), img, &got, Options{SkipEmptyLostFound: true}); err != nil {
		t.Fatal(err)
	}
	w, g := rows(t, want.Bytes()), rows(t, got.Bytes())
	if len(w) != len(g) {
		t.Fatalf("%d entries, want %d", len(g), len(w))
	}
	for i := range w {
		if w[i] != g[i] {
			t.Errorf("entry %d:\n got %+v\nwant %+v", i, g[i], w[i])
		}
	}
	// The sparse file's extent tree has depth 1 (more than the inode's 4).
	img2, err := open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer img2.f.Close()
	wk := &walker{img: img2, ctx: context.Background(), dirs: map[uint32]bool{}}
	n, err := wk.lookup("a/b/c/sparse")
	if err != nil {
		t.Fatal(err)
	}
	ino, _ := img2.inode(n)
	if depth := ino.block[6]; depth == 0 {
		t.Errorf("the sparse file's extent tree has depth 0: the test does not cover index nodes")
	}
}

func TestWriteTarPart(t *testing.T) {
	dir := tree(t)
	img := mkfs(t, dir)
	for _, tc := range []struct {
		part, name string
		want       []string
		err        error
	}{
		{part: "a/b", name: "out", want: []string{"out/", "out/c/", "out/c/sparse", "out/fast", "out/hard.bin"}},
		{part: "run.sh", name: "run.sh", want: []string{"run.sh"}},
		{part: "a/slow", name: "l", want: []string{"l"}},
		{part: "a/nothing", name: "x", err: ErrNotFound},
		{part: "run.sh/x", name: "x", err: ErrNotFound},
		{part: "a/b/fast/x", name: "x", err: ErrLinkOnTheWay},
	} {
		var buf bytes.Buffer
		p := tc.part
		err := WriteTar(context.Background(), img, &buf, Options{Part: &p, Name: tc.name})
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: %v, want %v", tc.part, err, tc.err)
			continue
		}
		if err != nil {
			if buf.Len() != 0 {
				t.Errorf("%s: %d bytes written before the error", tc.part, buf.Len())
			}
			continue
		}
		var names []string
		for _, r := range rows(t, buf.Bytes()) {
			names = append(names, r.name)
		}
		if strings.Join(names, " ") != strings.Join(tc.want, " ") {
			t.Errorf("%s: %q, want %q", tc.part, names, tc.want)
		}
	}
}

// TestWriteTarRefusesWhatItCannotRead: features it does not read are
// ErrUnsupported before anything is written.
func TestWriteTarRefusesWhatItCannotRead(t *testing.T) {
	dir := tree(t)
	for _, feat := range []string{"inline_data", "^extent,^64bit"} {
		img := mkfs(t, dir, "-O", feat)
		var buf bytes.Buffer
		err := WriteTar(context.Background(), img, &buf, Options{})
		if !errors.Is(err, ErrUnsupported) || buf.Len() != 0 {
			t.Errorf("-O %s: %v (%d bytes written), want ErrUnsupported and nothing", feat, err, buf.Len())
		}
	}
}

// TestWriteTarHostileImage: an image with random bytes changed in its
// metadata ends in an error or a stream, never a panic or a hang.
func TestWriteTarHostileImage(t *testing.T) {
	dir := tree(t)
	// Content costs time and tests nothing here: keep a little.
	for _, p := range []string{"a/big.bin", "a/b/hard.bin"} {
		if err := os.Truncate(filepath.Join(dir, p), 5000); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Truncate(filepath.Join(dir, "a/b/c/sparse"), 3<<20); err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(mkfs(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "bad.ext4")
	if err := os.WriteFile(img, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(5, 6))
	// Metadata is in the first blocks of the groups: superblock, group
	// descriptors, bitmaps, inode tables, directories.
	const meta = 4 << 20
	var errs int
	for i := range 300 {
		var at []int64
		for range 1 + i%8 {
			off := int64(rng.IntN(meta))
			at = append(at, off)
			if _, err := f.WriteAt([]byte{byte(rng.Uint32())}, off); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := WriteTar(ctx, img, io.Discard, Options{SkipEmptyLostFound: true})
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("case %d: the walk did not end", i)
		}
		if err != nil {
			errs++
		}
		for _, off := range at {
			if _, err := f.WriteAt(orig[off:off+1], off); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("%d of 300 damaged images refused", errs)
}
