package workspace_test

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
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/workspace"
)

// exported is a volume's tree as Export streams it: every entry's type,
// mode, mtime, link target and content digest, by name.
func exported(t *testing.T, vol string) map[string]string {
	t.Helper()
	var b bytes.Buffer
	if err := workspace.Export(context.Background(), vol, &b, workspace.ExportSpec{Name: "cmp", ScratchDir: t.TempDir()}); err != nil {
		t.Fatalf("export %s: %v", vol, err)
	}
	tr := tar.NewReader(&b)
	tree := map[string]string{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return tree
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		tree[strings.TrimSuffix(h.Name, "/")] = fmt.Sprintf("type %c mode %o mtime %d link %q size %d sha %x",
			h.Typeflag, h.Mode, h.ModTime.Unix(), h.Linkname, h.Size, sha256.Sum256(body))
	}
}

// A workspace is built while its stream is read (ext4.Stream) when the
// stream is one debugfs can follow entry by entry, and from the flattened
// tree otherwise; either way the volume holds exactly what the flattened
// tree's build makes of the same stream (NoStream), e2fsck finds it clean,
// and every inode belongs to the workspace's owner.
func TestBuildWhileReading(t *testing.T) {
	requireTools(t)
	old := time.Date(1999, 12, 31, 23, 59, 58, 0, time.UTC)
	future := time.Date(2100, 1, 2, 3, 4, 5, 0, time.UTC) // past 2038: ext4's extra epoch bits
	dir := func(name string, mode int64) entry {
		return entry{h: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: old}}
	}
	file := func(name string, mode int64, body string, when time.Time) entry {
		return entry{h: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, ModTime: when}, body: body}
	}
	symlink := func(name, target string) entry {
		return entry{h: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, ModTime: old}}
	}
	link := func(name, target string) entry {
		return entry{h: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, ModTime: old}}
	}
	big := strings.Repeat("0123456789abcdef", 1<<17) + "tail" // 2 MiB and a bit: flushed to debugfs at once
	zeros := func(blocks int) string { return strings.Repeat("\x00", blocks*4096) }
	// holes in the spill stay holes in the volume: data, 3 zero blocks, data, a zero block
	sparse := strings.Repeat("d", 4096) + zeros(3) + strings.Repeat("e", 4096) + zeros(1)
	project := []entry{
		{h: tar.Header{Typeflag: tar.TypeDir, Name: "./", Mode: 0o750, ModTime: old}},
		file("big.bin", 0o644, big, old),
		dir("src/", 0o755),
		dir("src/private/", 0o700),
		file("src/private/key", 0o600, "secret\n", old),
		file("src/private/write-only", 0o200, "w\n", old),
		file("src/run.sh", 0o755, "#!/bin/sh\n", future),
		file("src/setuid", 0o4755, "suid\n", old),
		file("src/sticky", 0o1644, "sticky\n", old),
		file("src/empty", 0o644, "", old),
		file("src/sparse", 0o644, sparse, old),
		file("src/zeros", 0o644, zeros(3), old),
		file("src/hole-first", 0o644, zeros(2)+"x", old),
		file(`src/odd "quoted" name #1 !x`, 0o644, "odd\n", old),
		file("src/ünïcödé-文件.txt", 0o644, "unicode\n", old),
		dir("src/.git/", 0o755),
		file("src/.git/HEAD", 0o644, "ref: refs/heads/main\n", old),
		file("src/-n", 0o644, "an option?\n", old),
		file("src/<12>", 0o644, "an inode number?\n", old),
		dir("src/-p/", 0o755),
		file("src/-p/-f", 0o644, "f\n", old),
		symlink("src/-s", `a "b" c`),
		symlink("src/rel", "run.sh"),
		symlink("src/abs", "/etc/passwd"),
		symlink("src/long", strings.Repeat("x", 200)),
		link("src/hard1", "src/run.sh"),
		link("hard2", "src/run.sh"),
		link("src/private/hard-key", "src/private/key"),
	}
	for _, tc := range []struct {
		name     string
		entries  []entry
		size     int64
		streamed bool
	}{
		{"a project tree", project, 1 << 30, true},
		{"no root entry", project[1:], 1 << 30, true},
		{"a duplicate name", append(append([]entry{}, project...), file("src/run.sh", 0o644, "replaced\n", old)), 1 << 30, false},
		{"a parent not named", []entry{file("a/b/c", 0o644, "c\n", old)}, 1 << 30, false},
		{"a child before its directory", []entry{dir("a/", 0o755), file("a/b/c", 0o644, "c\n", old), dir("a/b/", 0o700)}, 1 << 30, false},
		{"written through a symlink", []entry{dir("d/", 0o755), symlink("l", "d"), file("l/x", 0o644, "x\n", old)}, 1 << 30, false},
		{"a hardlink to a symlink", []entry{file("f", 0o644, "f\n", old), symlink("s", "f"), link("h", "s")}, 1 << 30, false},
		{"a small volume's inode table", project, 64 << 20, false},
		// more content than the stream holds in memory: reading waits for the writer
		{"more than the memory budget", budgetTree(), 1 << 30, true},
		// inodes are foreseen: past a group (8192 inodes at 1 GiB), and
		// from the group of a directory there
		{"inodes past the first group", groupsTree(), 1 << 30, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, scratch := t.TempDir(), t.TempDir()
			body, err := io.ReadAll(tarOf(t, tc.entries...))
			if err != nil {
				t.Fatal(err)
			}
			spec := workspace.Spec{Name: "s", Size: tc.size, UID: 1000, GID: 1000, ScratchDir: scratch}
			streamed := filepath.Join(dir, "streamed.ext4")
			res, err := workspace.Build(context.Background(), bytes.NewReader(body), streamed, spec)
			if err != nil {
				t.Fatal(err)
			}
			if res.Streamed != tc.streamed {
				t.Fatalf("Streamed = %v, want %v", res.Streamed, tc.streamed)
			}
			empty(t, scratch)
			spec.NoStream = true
			flat := filepath.Join(dir, "flattened.ext4")
			if res, err := workspace.Build(context.Background(), bytes.NewReader(body), flat, spec); err != nil || res.Streamed {
				t.Fatalf("NoStream: %+v, %v", res, err)
			}
			fsckClean(t, streamed)
			got, want := exported(t, streamed), exported(t, flat)
			if !reflect.DeepEqual(got, want) {
				for k, v := range want {
					if got[k] != v {
						t.Errorf("%s: streamed %q, flattened %q", k, got[k], v)
					}
				}
				for k, v := range got {
					if _, ok := want[k]; !ok {
						t.Errorf("%s: streamed %q, not in the flattened build", k, v)
					}
				}
			}
			for _, p := range []string{"/", "/src", "/src/run.sh", "/src/rel", "/hard2"} {
				if _, ok := got[strings.TrimPrefix(p, "/")]; !ok && p != "/" {
					continue
				}
				if in := stat(t, streamed, p); in.uid != "1000" || in.gid != "1000" {
					t.Errorf("%s owned by %s:%s, want 1000:1000", p, in.uid, in.gid)
				}
			}
			if tc.name == "a project tree" {
				// the data blocks only, as in the flattened build (none for zeros)
				for _, p := range []string{"/src/sparse", "/src/zeros", "/src/hole-first", "/big.bin"} {
					got := reBlocks.FindStringSubmatch(debugfs(t, streamed, "stat "+p))
					want := reBlocks.FindStringSubmatch(debugfs(t, flat, "stat "+p))
					if got == nil || want == nil || got[1] != want[1] || p == "/src/zeros" && got[1] != "0" {
						t.Errorf("%s: Blockcount %v, flattened %v", p, got, want)
					}
				}
				if in := stat(t, streamed, "/src/run.sh"); in.links != "3" {
					t.Errorf("run.sh has %s links, want 3", in.links)
				}
				if in := stat(t, streamed, "/"); in.mode != "0750" {
					t.Errorf("the root's mode is %s, want 0750", in.mode)
				}
			}
			if _, err := os.Stat(streamed); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A build cancelled while the volume is being built from the stream (or
// from the flattened tree) stops, returns the cancellation and leaves
// nothing: no volume, no partial image, no scratch.
func TestBuildCancelledWhileReading(t *testing.T) {
	requireTools(t)
	for _, size := range []int64{64 << 20, 1 << 30} {
		t.Run(fmt.Sprintf("%dMiB", size>>20), func(t *testing.T) {
			dir, scratch := t.TempDir(), t.TempDir()
			head, err := io.ReadAll(tarOf(t, entry{h: tar.Header{Typeflag: tar.TypeDir, Name: "d/"}},
				entry{h: tar.Header{Typeflag: tar.TypeReg, Name: "d/f"}, body: "content"}))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			// the entries without the end-of-archive marker, then a client
			// that sends nothing more until the call is cancelled
			r := &stalling{data: head[:len(head)-1024], ctx: ctx, stalled: cancel}
			_, err = workspace.Build(ctx, r, filepath.Join(dir, "volume.ext4"), workspace.Spec{Name: "c", Size: size, UID: 1000, GID: 1000, ScratchDir: scratch})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v, want the cancellation", err)
			}
			empty(t, dir)
			empty(t, scratch)
		})
	}
}

// budgetTree is 96 MiB of files of 6 MiB (two pieces each), random.
func budgetTree() []entry {
	rng := rand.New(rand.NewPCG(7, 8))
	buf := make([]byte, 8<<20)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	var es []entry
	for i := range 16 {
		es = append(es, entry{h: tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("f%02d", i), Mode: 0o644, ModTime: time.Unix(1e9, 0)},
			body: string(buf[i*100000 : i*100000+6<<20])})
	}
	return es
}

// groupsTree fills the first inode group from a/, then makes b/ and a
// file in each.
func groupsTree() []entry {
	at := time.Unix(1e9, 0)
	es := []entry{{h: tar.Header{Typeflag: tar.TypeDir, Name: "a/", Mode: 0o755, ModTime: at}}}
	for i := range 8300 {
		body := ""
		if i%1000 == 999 {
			body = fmt.Sprintf("file %d\n", i)
		}
		es = append(es, entry{h: tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("a/f%04d", i), Mode: 0o644, ModTime: at}, body: body})
	}
	return append(es,
		entry{h: tar.Header{Typeflag: tar.TypeDir, Name: "b/", Mode: 0o755, ModTime: at}},
		entry{h: tar.Header{Typeflag: tar.TypeReg, Name: "b/x", Mode: 0o644, ModTime: at}, body: "bx\n"},
		entry{h: tar.Header{Typeflag: tar.TypeSymlink, Name: "b/l", Linkname: "x", ModTime: at}},
		entry{h: tar.Header{Typeflag: tar.TypeReg, Name: "a/late", Mode: 0o644, ModTime: at}, body: "late\n"})
}

var reBlocks = regexp.MustCompile(`Blockcount: (\d+)`)

// stalling reads data, then calls stalled and blocks until ctx ends.
type stalling struct {
	data    []byte
	ctx     context.Context
	stalled func()
}

func (s *stalling) Read(p []byte) (int, error) {
	if len(s.data) > 0 {
		n := copy(p, s.data)
		s.data = s.data[n:]
		return n, nil
	}
	s.stalled()
	<-s.ctx.Done()
	return 0, s.ctx.Err()
}
