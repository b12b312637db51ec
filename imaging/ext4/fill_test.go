package ext4

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/imaging/ext4/ext4fs"
)

// TestFiller: the filler follows debugfs' output (inodes, extents) to
// put each file's content in its blocks, and stops at what does not
// match the commands it was told of: a write out of order, no inode, an
// extent outside the image or not the file's data blocks.
func TestFiller(t *testing.T) {
	const ok = `debugfs 1.47.0 (5-Feb-2023)
debugfs: cd "/d"
debugfs: write "/e" "a"
Allocated inode: 12
debugfs: fallocate <12> 0 1
debugfs: ex -l <12>
Level Entries       Logical        Physical Length Flags
 0/ 0   1/  1     0 -     1    100 -    101      2 Uninit
#
debugfs: write "/e" "b"
Allocated inode: 13
`
	for _, tc := range []struct {
		name, out string
		blocks    uint64 // image size in blocks; default 1000
		want      string // in the error; "" for none
	}{
		{name: "in order", out: ok},
		{name: "extents split", out: strings.Replace(ok, " 0/ 0   1/  1     0 -     1    100 -    101      2 Uninit",
			" 1/ 1   1/  2     0 -     0    100 -    100      1 Uninit\n 1/ 1   2/  2     1 -     1    300 -    300      1 Uninit", 1)},
		{name: "a write out of order", out: strings.Replace(ok, `write "/e" "a"`, `write "/e" "x"`, 1), want: "out of order"},
		{name: "no inode", out: strings.Replace(ok, "Allocated inode: 12\n", "", 1), want: "created no inode"},
		{name: "an inode twice", out: strings.Replace(ok, "13", "12", 1), want: `allocated inode "12" for "write \"/e\" \"b\"", not 13`},
		{name: "an inode not foreseen", out: strings.Replace(ok, "Allocated inode: 12", "Allocated inode: 14", 1), want: `inode "14"`},
		{name: "a file left out", out: ok[:strings.Index(ok, `debugfs: write "/e" "b"`)], want: "debugfs ran 2 of 3 commands"},
		{name: "outside the image", out: ok, blocks: 101, want: "outside the image"},
		{name: "too few blocks", out: strings.Replace(ok, "0 -     1    100 -    101      2", "0 -     0    100 -    100      1", 1), want: "do not map its data blocks"},
		{name: "a written extent", out: strings.Replace(ok, " Uninit", " Foo", 1), want: "extent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "img")
			if err := os.WriteFile(img, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			blocks := tc.blocks
			if blocks == 0 {
				blocks = 1000
			}
			f, err := newFiller(context.Background(), img, int64(blocks)*fillBlock)
			if err != nil {
				t.Fatal(err)
			}
			content := filepath.Join(dir, "a")
			body := strings.Repeat("x", fillBlock) + "tail"
			if err := os.WriteFile(content, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			a := &streamFile{write: `write "/e" "a"`, path: content, ino: 12, meta: ext4fs.File{Perm: 0o644, Size: int64(len(body)), Written: true}}
			f.push(event{file: a})
			f.push(event{piece: &piece{file: a, ex: `ex -l <12>`, hi: 2, data: []blockRange{{0, 2}}}})
			f.push(event{file: &streamFile{write: `write "/e" "b"`, ino: 13, meta: ext4fs.File{Perm: 0o600}}})
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			go func() { w.WriteString(tc.out); w.Close() }()
			f.run(r)
			<-f.done
			if tc.want != "" {
				if f.err == nil || !strings.Contains(f.err.Error(), tc.want) {
					t.Fatalf("err = %v, want %q", f.err, tc.want)
				}
				return
			}
			if f.err != nil {
				t.Fatal(f.err)
			}
			if len(f.files) != 2 || f.files[12].meta.Size != int64(len(body)) || f.files[13].meta.Perm != 0o600 {
				t.Errorf("files %+v", f.files)
			}
			data, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			second := int64(101)
			if strings.Contains(tc.out, "300 -") {
				second = 300
			}
			if got := string(data[100*fillBlock : 101*fillBlock]); got != body[:fillBlock] {
				t.Errorf("first block %.20q…", got)
			}
			if got := string(data[second*fillBlock : second*fillBlock+4]); got != "tail" {
				t.Errorf("second block %q", got)
			}
		})
	}
}

// TestDataRanges: the blocks of a spill file that hold data, holes left
// out; a partial last block counts, zeros or not.
func TestDataRanges(t *testing.T) {
	z := func(blocks int) string { return strings.Repeat("\x00", blocks*fillBlock) }
	d := func(blocks int) string { return strings.Repeat("d", blocks*fillBlock) }
	for _, tc := range []struct {
		name string
		body string
		want []blockRange
	}{
		{"all data", d(3) + "x", []blockRange{{0, 4}}},
		{"a hole inside", d(1) + z(2) + d(1), []blockRange{{0, 1}, {3, 4}}},
		{"a hole first", z(2) + "x", []blockRange{{2, 3}}},
		{"a hole last", d(1) + z(2), []blockRange{{0, 1}}},
		{"only zeros", z(3), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "c")
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			// written as the spill writes: zero blocks skipped
			for off := 0; off < len(tc.body); off += fillBlock {
				blk := tc.body[off:min(off+fillBlock, len(tc.body))]
				if len(blk) == fillBlock && blk == z(1) {
					continue
				}
				if _, err := f.WriteAt([]byte(blk), int64(off)); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.Truncate(int64(len(tc.body))); err != nil {
				t.Fatal(err)
			}
			f.Close()
			got, err := dataRanges(p, int64(len(tc.body)))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestPieceBufs: every piece size has a class, a buffer returned is
// reused for a size of its class, and one of another capacity is not kept.
func TestPieceBufs(t *testing.T) {
	if 4096<<(bufClasses-1) != pieceSize {
		t.Fatalf("%d classes do not reach pieceSize %d", bufClasses, pieceSize)
	}
	for _, n := range []int64{1, 4096, 4097, 15000, 1 << 20, pieceSize - 1, pieceSize} {
		b := getBuf(n)
		if int64(len(b)) != n || cap(b) < len(b) || bufClass(int64(cap(b))) != bufClass(n) {
			t.Errorf("getBuf(%d): len %d cap %d", n, len(b), cap(b))
		}
		putBuf(b)
	}
	putBuf(make([]byte, 5000)) // not a class size: dropped
	if b := getBuf(5000); cap(b) != 8192 {
		t.Errorf("getBuf(5000) has cap %d, want 8192", cap(b))
	}
}

// TestExExtent: leaf lines of ex -l, numbers wider than their columns
// included; other lines are not extents.
func TestExExtent(t *testing.T) {
	for _, tc := range []struct {
		line  string
		want  [5]uint64
		flags string
		ok    bool
	}{
		{" 0/ 0   1/  1     0 -     3   4247 -   4250      4 Uninit", [5]uint64{0, 3, 4247, 4250, 4}, "Uninit", true},
		{" 1/ 1  21/ 21  2000 -  2050   6247 -   6297     51 Uninit", [5]uint64{2000, 2050, 6247, 6297, 51}, "Uninit", true},
		{" 1/ 1 100/340 123456 - 123999 98765432 - 98765975    544", [5]uint64{123456, 123999, 98765432, 98765975, 544}, "", true},
		{"Level Entries       Logical        Physical Length Flags", [5]uint64{}, "", false},
		{" 0/ 1   1/  1     0 - 4294967295   4298               0", [5]uint64{}, "", false}, // an index node
		{"debugfs: ex -l \"./a - b\"", [5]uint64{}, "", false},
	} {
		v, flags, ok := exExtent(tc.line)
		if ok != tc.ok || ok && (v != tc.want || flags != tc.flags) {
			t.Errorf("%q: %v %q %v, want %v %q %v", tc.line, v, flags, ok, tc.want, tc.flags, tc.ok)
		}
	}
}
