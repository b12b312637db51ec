package ext4_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/paddock-vm/paddock/imaging/ext4"
	"github.com/paddock-vm/paddock/imaging/flatten"
	ft "github.com/paddock-vm/paddock/imaging/flatten/flattentest"
)

// TestBuildSemantics builds a real ext4 for every layer-semantics case and
// checks it against the flattened stream entry by entry, then against the
// case's own expectations, then with e2fsck -fn.
func TestBuildSemantics(t *testing.T) {
	requireTools(t)
	for mode, m := range buildModes(t) {
		for _, c := range ft.Cases() {
			t.Run(mode+"/"+c.Name, func(t *testing.T) {
				t.Parallel()
				m := m // each subtest gets its own copy of the mode's options
				m.opts.ImageRef = "test/" + c.Name
				img, stream, res := build(t, ft.Layers(t, c.Layers...), m)
				if res.TarStdin != (mode == "tar-stdin") {
					t.Fatalf("built with TarStdin=%v in mode %s", res.TarStdin, mode)
				}
				lookup := compareWithStream(t, img, stream)
				ft.Check(t, c, lookup)
				fsckClean(t, img)
			})
		}
	}
}

// TestBuildResult checks sizing, sparseness, permissions and htree
// indexing of the output file.
func TestBuildResult(t *testing.T) {
	requireTools(t)
	var entries []ft.Entry
	entries = append(entries, ft.Dir("big", 0))
	for i := 0; i < 3000; i++ { // enough for e2fsck -D to index the directory
		entries = append(entries, ft.File("big/file-with-a-longish-name-"+strings.Repeat("x", i%7)+"-"+strconv.Itoa(i), "x", 0))
	}
	entries = append(entries, ft.File("zeros", string(make([]byte, 8<<20)), 0))
	img, _, res := build(t, ft.Layers(t, entries), buildMode{opts: ext4.Options{Tools: testTools(), FreeBytes: 1 << 30, Label: "paddock-root"}})
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o444 {
		t.Errorf("image mode %v, want read-only 0444", st.Mode())
	}
	if st.Size() != res.Size || res.Size < 1<<30 {
		t.Errorf("image size %d (result %d), want ≥ 1 GiB of requested free space", st.Size(), res.Size)
	}
	alloc := st.Sys().(*syscall.Stat_t).Blocks * 512
	if alloc > 40<<20 {
		t.Errorf("image allocates %d bytes; want sparse (8 MiB of zeros and free space unallocated)", alloc)
	}
	out := debugfsBatch(t, img, []string{"htree " + q("/big"), "stats"})
	if strings.Contains(out[0], "Not a hash-indexed directory") || !strings.Contains(out[0], "Root node dump") {
		t.Errorf("/big is not indexed after e2fsck -D:\n%.300s", out[0])
	}
	for _, re := range []string{`Filesystem volume name:\s+paddock-root\n`, `Block size:\s+4096\n`, `Inode size:\s+256\n`,
		`Reserved block count:\s+0\n`, `Filesystem features:.*metadata_csum`} {
		if !regexp.MustCompile(re).MatchString(out[1]) {
			t.Errorf("superblock does not match %q:\n%.1500s", re, out[1])
		}
	}
	// mke2fs rounds -N up to whole inode-table blocks per group
	if m := regexp.MustCompile(`Inode count:\s+(\d+)`).FindStringSubmatch(out[1]); m == nil {
		t.Error("no inode count in superblock")
	} else if n, _ := strconv.ParseInt(m[1], 10, 64); n < res.Inodes {
		t.Errorf("inode count %d < requested %d", n, res.Inodes)
	}
	t.Logf("size %d MiB, allocated %d KiB, inodes %d, fixup lines %d, timings %+v", res.Size>>20, alloc>>10, res.Inodes, res.FixupLines, res.Timings)
}

func TestSizeFor(t *testing.T) {
	for _, tc := range []struct {
		sum      flatten.Summary
		free     int64
		min, max int64
	}{
		{flatten.Summary{}, 0, 64 << 20, 80 << 20},
		// ~200 MB debootstrap-like tree: 1.1×208 MiB + 1.4 MiB + 64 + 16–32 journal
		{flatten.Summary{ContentBytes: 204_035_742, Blocks: 53_214, Inodes: 5_623}, 0, 300 << 20, 340 << 20},
		// 100k tiny files: the block estimate dominates content bytes
		{flatten.Summary{ContentBytes: 100_000 * 100, Blocks: 100_000, Inodes: 100_000}, 0, 440 << 20, 560 << 20},
		{flatten.Summary{}, 16 << 30, 16<<30 + 64<<20, 16<<30 + 256<<20},
	} {
		size, inodes := ext4.SizeFor(tc.sum, tc.free)
		if size < tc.min || size > tc.max || size%(1<<20) != 0 {
			t.Errorf("SizeFor(%+v, %d) = %d MiB, want %d–%d MiB", tc.sum, tc.free, size>>20, tc.min>>20, tc.max>>20)
		}
		if inodes < tc.sum.Inodes+4096 || inodes < size/16384 {
			t.Errorf("SizeFor(%+v) inodes = %d, too few", tc.sum, inodes)
		}
	}
}

// TestBuildCancel: a cancelled build leaves nothing behind.
func TestBuildCancel(t *testing.T) {
	requireTools(t)
	scratch, outDir := testDir(t), testDir(t)
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		tw.WriteHeader(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755})
		tw.WriteHeader(&tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1 << 30})
		buf := make([]byte, 1<<20)
		for i := range buf {
			buf[i] = 1
		}
		for i := 0; i < 1024; i++ {
			if i == 4 {
				cancel()
			}
			if _, err := tw.Write(buf); err != nil {
				return
			}
		}
	}()
	_, err := ext4.Build(ctx, pr, flatten.Summary{ContentBytes: 1 << 30, Inodes: 2}, filepath.Join(outDir, "img"),
		ext4.Options{Tools: testTools(), ScratchDir: scratch})
	pr.Close()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	assertEmpty(t, scratch, outDir)
}

func assertEmpty(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if ents, _ := os.ReadDir(d); len(ents) != 0 {
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Errorf("%s not empty after a failed build: %q", d, names)
		}
	}
}

// TestBuildTooSmall: when mkfs fails (the summary lies about the size) the
// error is ErrMkfs and nothing is left.
func TestBuildTooSmall(t *testing.T) {
	requireTools(t)
	scratch, outDir := testDir(t), testDir(t)
	stream := ft.Tar(t, ft.File("big", string(bytes.Repeat([]byte{7}, 100<<20)), 0))
	_, err := ext4.Build(context.Background(), bytes.NewReader(stream), flatten.Summary{Inodes: 2}, filepath.Join(outDir, "img"),
		ext4.Options{Tools: testTools(), ScratchDir: scratch})
	if !errors.Is(err, ext4.ErrMkfs) {
		t.Fatalf("err = %v, want ErrMkfs", err)
	}
	assertEmpty(t, scratch, outDir)
}

// TestProbe reports the installed mke2fs' capabilities.
func TestProbe(t *testing.T) {
	requireTools(t)
	mk := testTools().Mke2fs
	if mk == "" {
		mk = tool("mke2fs")
	}
	c, err := ext4.Probe(context.Background(), mk)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("mke2fs %d.%d.%d prezeroed=%v tar-stdin=%v", c.Version[0], c.Version[1], c.Version[2], c.Prezeroed, c.TarStdin)
	if c.Version[0] != 1 || c.Version[1] < 42 {
		t.Errorf("implausible version %v", c.Version)
	}
}
