package flatten_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/imaging/flatten"
	ft "github.com/paddock-vm/paddock/imaging/flatten/flattentest"
)

// fuzzBase is a lower layer the fuzzed layer is applied on, so whiteouts,
// opaque markers, hardlinks and usrmerge writes have something to hit.
var fuzzBase = ft.MustTar(
	ft.Dir("usr/bin", 0), ft.Symlink("bin", "usr/bin"), ft.Symlink("abs", "/usr"), ft.Symlink("up", "../.."),
	ft.File("usr/bin/sh", "sh", 0o755), ft.Hardlink("usr/bin/sh2", "usr/bin/sh"), ft.Dir("etc", 0), ft.File("etc/passwd", "root", 0),
)

// FuzzFlatten feeds arbitrary bytes as the upper layer. Whatever the input,
// Flatten must not panic and must either reject it with an *EntryError (or a
// plain tar/IO error) or produce a stream that is well-ordered, free of
// unstorable names and consistent with its Summary. The seed corpus in
// testdata/fuzz/FuzzFlatten runs in plain "go test".
func FuzzFlatten(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	scratch := f.TempDir()
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() { // spill files are cheap on tmpfs
		if d, err := os.MkdirTemp("/dev/shm", "paddock-fuzz-"); err == nil {
			scratch = d
			f.Cleanup(func() { os.RemoveAll(d) })
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		layers := []flatten.Layer{
			flatten.ReaderLayer("sha256:base", bytes.NewReader(fuzzBase)),
			flatten.ReaderLayer("sha256:fuzz", bytes.NewReader(data)),
		}
		res, err := flatten.Flatten(context.Background(), layers, flatten.Options{MaxEntries: 2000, MaxUnpackedSize: 4 << 20, ScratchDir: scratch})
		if err != nil {
			var ee *flatten.EntryError
			if errors.As(err, &ee) && ee.Layer != "sha256:fuzz" {
				t.Fatalf("error blames layer %q: %v", ee.Layer, err)
			}
			return
		}
		defer res.Close()
		var buf bytes.Buffer
		if err := res.Emit(context.Background(), &buf); err != nil {
			t.Fatalf("Emit: %v", err)
		}
		nodes, order := ft.Parse(t, buf.Bytes()) // checks ordering
		if int64(len(order)) != res.Summary.Entries {
			t.Fatalf("Summary.Entries %d != %d emitted", res.Summary.Entries, len(order))
		}
		for p, n := range nodes {
			if _, err := flatten.CleanPath(n.Hdr.Name); err != nil && p != "/" {
				t.Fatalf("emitted unstorable name %q: %v", n.Hdr.Name, err)
			}
			if strings.Contains(p, "/.wh.") {
				t.Fatalf("emitted whiteout marker %q", p)
			}
			if n.Hdr.Typeflag == tar.TypeSymlink {
				if err := flatten.CheckLinkTarget(n.Hdr.Linkname); err != nil {
					t.Fatalf("emitted bad symlink %q: %v", p, err)
				}
			}
		}
	})
}

// fuzzSeeds are the test tables' layers plus a few hand-picked streams.
func fuzzSeeds() [][]byte {
	var seeds [][]byte
	for _, c := range ft.Cases() {
		for _, l := range c.Layers {
			seeds = append(seeds, ft.MustTar(l...))
		}
	}
	for _, h := range ft.HostileCases("/nonexistent-canary") {
		if h.Raw != nil {
			seeds = append(seeds, h.Raw...)
			continue
		}
		for _, l := range h.Layers {
			seeds = append(seeds, ft.MustTar(l...))
		}
	}
	seeds = append(seeds,
		ft.MustTar(ft.File("bin/new", "x", 0), ft.Whiteout("bin/sh"), ft.Opaque("etc"), ft.Hardlink("x", "usr/bin/sh2")),
		ft.MustTar(ft.File("abs/bin/y", "y", 0), ft.File("up/z", "z", 0)),
		nil, []byte("not a tar"),
	)
	// Big inputs make every mutation slow and bloat testdata; the limits
	// they exercise are covered by TestHostile.
	small := seeds[:0]
	for _, s := range seeds {
		if len(s) <= 64<<10 {
			small = append(small, s)
		}
	}
	return small
}

// TestWriteFuzzCorpus regenerates testdata/fuzz/FuzzFlatten from
// fuzzSeeds. Run: FLATTEN_WRITE_CORPUS=1 go test -run TestWriteFuzzCorpus ./imaging/flatten
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("FLATTEN_WRITE_CORPUS") == "" {
		t.Skip("set FLATTEN_WRITE_CORPUS=1 to regenerate the seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzFlatten")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range fuzzSeeds() {
		// Drop the end-of-archive zero blocks: archive/tar accepts a clean
		// EOF, and quoted zeros would quadruple the corpus size.
		for len(s) >= 512 && bytes.Count(s[len(s)-512:], []byte{0}) == 512 {
			s = s[:len(s)-512]
		}
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%03d", i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
