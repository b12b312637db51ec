package ext4fs

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// debugfsAlloc runs cmds on img and returns the inode each write allocated.
func debugfsAlloc(t *testing.T, img string, cmds []string) []uint32 {
	t.Helper()
	cmd := exec.Command("debugfs", "-w", "-f", "-", img)
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("debugfs: %v\n%s", err, stderr.String())
	}
	if bad := regexp.MustCompile(`(?m)^[^d].*$`).FindAllString(stderr.String(), -1); len(bad) > 0 {
		t.Fatalf("debugfs: %q", bad)
	}
	var inos []uint32
	for _, m := range regexp.MustCompile(`Allocated inode: (\d+)`).FindAllStringSubmatch(string(out), -1) {
		n, _ := strconv.Atoi(m[1])
		inos = append(inos, uint32(n))
	}
	return inos
}

// fill writes data into ino's extents, as Stream's writer does.
func fill(t *testing.T, path string, ino uint32, data []byte) {
	t.Helper()
	img, err := open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.f.Close()
	in, err := img.inode(ino)
	if err != nil {
		t.Fatal(err)
	}
	in.size = int64(len(data)) // still 0 on disk: Patch sets it
	exts, err := img.extents(in)
	if err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, e := range exts {
		if !e.unwritten {
			t.Fatalf("inode %d: extent %+v written before Patch", ino, e)
		}
		from := int64(e.logical) * img.bs
		to := min(from+int64(e.length)*img.bs, int64(len(data)))
		if _, err := w.WriteAt(data[from:to], int64(e.physical)*img.bs); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPatch: files whose blocks debugfs allocated unwritten (fallocate)
// and that were filled directly read back as written once Patch has run,
// with the mode, size and mtime it set (past 2038 too), extent trees of
// depth 1 included (their blocks re-checksummed: e2fsck finds nothing).
func TestPatch(t *testing.T) {
	if _, err := exec.LookPath("debugfs"); err != nil {
		t.Skip("no debugfs")
	}
	for _, feat := range []string{"metadata_csum", "^metadata_csum"} {
		t.Run(feat, func(t *testing.T) {
			img := mkfs(t, "", "-O", feat)
			empty := t.TempDir() + "/empty"
			if err := os.WriteFile(empty, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			cmds := []string{"write " + empty + " small", "fallocate small 0 0",
				"write " + empty + " frag", "write " + empty + " spacer", "write " + empty + " e"}
			// alternate two files' allocations: frag gets 12 extents, a tree of depth 1
			for i := range 12 {
				cmds = append(cmds, fmt.Sprintf("fallocate frag %d %d", i*3, i*3+2), fmt.Sprintf("fallocate spacer %d %d", i, i))
			}
			cmds = append(cmds, "mkdir d")
			inos := debugfsAlloc(t, img, cmds)
			if len(inos) != 4 {
				t.Fatalf("allocated %v, want 4 inodes", inos)
			}
			small := []byte("hello\n")
			frag := bytes.Repeat([]byte("0123456789abcdef"), 36*4096/16)
			frag = frag[:len(frag)-100]
			spacer := bytes.Repeat([]byte{'s'}, 12*4096)
			fill(t, img, inos[0], small)
			fill(t, img, inos[1], frag)
			fill(t, img, inos[2], spacer)
			want := map[uint32]File{
				inos[0]: {Perm: 0o644, Size: int64(len(small)), Mtime: 981173106, Written: true},
				inos[1]: {Perm: 0o1755, Size: int64(len(frag)), Mtime: 4102628645, Written: true}, // 2100
				inos[2]: {Perm: 0o600, Size: int64(len(spacer)), Mtime: -1, Written: true},
				inos[3]: {Perm: 0o400, Size: 0, Mtime: 0},
			}
			if _, err := Patch(img, 1000, 1001, want); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
				t.Fatalf("e2fsck -fn: %v\n%s", err, out)
			}
			r, err := open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer r.f.Close()
			for ino, body := range map[uint32][]byte{inos[0]: small, inos[1]: frag, inos[2]: spacer, inos[3]: nil} {
				in, err := r.inode(ino)
				if err != nil {
					t.Fatal(err)
				}
				w := want[ino]
				if in.mode != sIFREG|w.Perm || in.size != w.Size || in.mtime != w.Mtime {
					t.Errorf("inode %d: mode %#o size %d mtime %d, want %#o %d %d", ino, in.mode, in.size, in.mtime, sIFREG|w.Perm, w.Size, w.Mtime)
				}
				exts, err := r.extents(in)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range exts {
					if e.unwritten {
						t.Errorf("inode %d: extent %+v still unwritten", ino, e)
					}
				}
				var got bytes.Buffer
				if err := r.content(in, exts, &got, make([]byte, 1<<16)); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got.Bytes(), body) {
					t.Errorf("inode %d: content differs (%d bytes, want %d)", ino, got.Len(), len(body))
				}
			}
			if out, _ := exec.Command("debugfs", "-R", "ex frag", img).CombinedOutput(); !strings.Contains(string(out), " 1/ 1 ") {
				t.Errorf("frag's extent tree is not of depth 1, the case is not tested:\n%s", out)
			}
		})
	}
}

// TestPatchRefuses: an inode to complete that is not a regular file in
// use is refused, naming it.
func TestPatchRefuses(t *testing.T) {
	img := mkfs(t, tree(t))
	for _, tc := range []struct {
		name string
		ino  uint32
		want string
	}{
		{"the root directory", rootIno, "inode 2: not a regular file"},
		{"a free inode", 60000, "not inodes in use"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Patch(img, 1, 1, map[uint32]File{tc.ino: {Perm: 0o644}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
