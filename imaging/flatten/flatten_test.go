package flatten_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/paddock-vm/paddock/imaging/flatten"
	ft "github.com/paddock-vm/paddock/imaging/flatten/flattentest"
)

func flattenToStream(t *testing.T, layers []flatten.Layer, opts flatten.Options) ([]byte, flatten.Summary) {
	t.Helper()
	res, err := flatten.Flatten(context.Background(), layers, opts)
	if err != nil {
		t.Fatalf("Flatten: %v", err)
	}
	defer res.Close()
	var buf bytes.Buffer
	if err := res.Emit(context.Background(), &buf); err != nil {
		t.Fatalf("Emit: %v", err)
	}
	return buf.Bytes(), res.Summary
}

// TestSemantics checks every layer-semantics case on the emitted stream;
// the ext4 tests check the same cases on a built filesystem.
func TestSemantics(t *testing.T) {
	for _, c := range ft.Cases() {
		t.Run(c.Name, func(t *testing.T) {
			stream, sum := flattenToStream(t, ft.Layers(t, c.Layers...), flatten.Options{ScratchDir: t.TempDir()})
			nodes, order := ft.Parse(t, stream)
			ft.Check(t, c, ft.StreamLookup(nodes))
			if sum.Entries != int64(len(order)) {
				t.Errorf("Summary.Entries = %d, stream has %d", sum.Entries, len(order))
			}
			links := int64(0)
			for _, n := range nodes {
				if n.Hdr.Typeflag == tar.TypeLink {
					links++
				}
				if n.Hdr.Uname != "" || n.Hdr.Gname != "" {
					t.Errorf("%q carries user/group names", n.Hdr.Name)
				}
			}
			if sum.Hardlinks != links || sum.Inodes != sum.Entries-links {
				t.Errorf("Summary hardlinks/inodes = %d/%d, stream has %d links of %d entries", sum.Hardlinks, sum.Inodes, links, sum.Entries)
			}
		})
	}
}

func TestSummaryAndDeterminism(t *testing.T) {
	layers := func() []flatten.Layer {
		return ft.Layers(t,
			[]ft.Entry{ft.Dir("etc", 0), ft.File("etc/a", strings.Repeat("x", 5000), 0), ft.File("b", "bb", 0), ft.Hardlink("c", "b"),
				ft.Symlink("long", strings.Repeat("l", 70)), {Name: "dev/null", Type: tar.TypeChar, Major: 1, Minor: 3},
				{Name: "fifo", Type: tar.TypeFifo}},
			[]ft.Entry{ft.Whiteout("etc/a"), ft.Opaque("etc")},
		)
	}
	s1, sum := flattenToStream(t, layers(), flatten.Options{})
	s2, _ := flattenToStream(t, layers(), flatten.Options{})
	if !bytes.Equal(s1, s2) {
		t.Error("two flattenings of the same layers differ")
	}
	want := flatten.Summary{
		Entries: 8, Inodes: 7, ContentBytes: 2, Dirs: 3, Files: 1, Symlinks: 1, Hardlinks: 1, Devices: 1, Fifos: 1,
		Whiteouts: 1, Opaques: 1, LayerEntries: 9,
	}
	got := sum
	got.Blocks, got.UnpackedBytes = 0, 0
	if got != want {
		t.Errorf("Summary = %+v\nwant      %+v", got, want)
	}
	// 3 dirs + 1 data block + 1 long symlink block
	if sum.Blocks != 5 {
		t.Errorf("Blocks = %d, want 5", sum.Blocks)
	}
	if sum.UnpackedBytes != 5000+2+70 {
		t.Errorf("UnpackedBytes = %d, want %d", sum.UnpackedBytes, 5000+2+70)
	}
}

// TestLargeSparseContent pushes contents through the spill, including zero
// runs that are stored as holes and content that a later layer drops.
func TestLargeSparseContent(t *testing.T) {
	big := make([]byte, 3<<20+123)
	for i := 0; i < len(big); i += 7 {
		if (i/(1<<20))%2 == 0 { // alternate 1 MiB data / 1 MiB zeros
			big[i] = byte(i)
		}
	}
	layers := ft.Layers(t,
		[]ft.Entry{ft.File("dropped", string(big), 0), ft.File("big", string(big), 0), ft.File("zeros", string(make([]byte, 1<<20)), 0)},
		[]ft.Entry{ft.Whiteout("dropped"), ft.File("small", "s", 0)},
	)
	stream, _ := flattenToStream(t, layers, flatten.Options{ScratchDir: t.TempDir()})
	nodes, _ := ft.Parse(t, stream)
	if n := nodes["/big"]; n == nil || n.Body != string(big) {
		t.Error("big file content differs after spilling")
	}
	if n := nodes["/zeros"]; n == nil || n.Body != string(make([]byte, 1<<20)) {
		t.Error("zero file content differs after spilling")
	}
	if nodes["/dropped"] != nil {
		t.Error("whited-out file emitted")
	}
}

func TestCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := flatten.Flatten(ctx, ft.Layers(t, []ft.Entry{ft.File("a", "a", 0)}), flatten.Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Flatten with cancelled context: %v", err)
	}
}

// TestV1Layers feeds gzip, zstd and uncompressed layers through
// go-containerregistry's tarball layers.
func TestV1Layers(t *testing.T) {
	raw1 := ft.Tar(t, ft.File("a", "one", 0), ft.File("b", "bee", 0))
	raw2 := ft.Tar(t, ft.Whiteout("b"), ft.File("c", "sea", 0))
	raw3 := ft.Tar(t, ft.File("d", "dee", 0))
	opener := func(b []byte) tarball.Opener {
		return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	}
	gz, err := tarball.LayerFromOpener(opener(raw1)) // compressed on demand by Compressed()
	if err != nil {
		t.Fatal(err)
	}
	gzBytes := readAll(t, gz.Compressed)
	gzl, err := tarball.LayerFromOpener(opener(gzBytes))
	if err != nil {
		t.Fatal(err)
	}
	zl, err := tarball.LayerFromOpener(opener(raw2), tarball.WithCompression("zstd"))
	if err != nil {
		t.Fatal(err)
	}
	zBytes := readAll(t, zl.Compressed)
	if !bytes.HasPrefix(zBytes, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
		t.Fatalf("zstd layer does not start with the zstd magic")
	}
	zl2, err := tarball.LayerFromOpener(opener(zBytes))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := tarball.LayerFromOpener(opener(raw3))
	if err != nil {
		t.Fatal(err)
	}
	layers, err := flatten.V1Layers([]v1.Layer{gzl, zl2})
	if err != nil {
		t.Fatal(err)
	}
	layers = append(layers, flatten.V1Layer(plain, "plain"))
	stream, _ := flattenToStream(t, layers, flatten.Options{})
	nodes, _ := ft.Parse(t, stream)
	ft.Check(t, ft.Case{Name: "v1", Want: []ft.Want{ft.Reg("/a", "one"), ft.Reg("/c", "sea"), ft.Reg("/d", "dee")}, Absent: []string{"/b"}},
		ft.StreamLookup(nodes))
	if !strings.HasPrefix(layers[0].Digest, "sha256:") {
		t.Errorf("layer label %q is not a digest", layers[0].Digest)
	}
}

func readAll(t *testing.T, open func() (io.ReadCloser, error)) []byte {
	t.Helper()
	rc, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCleanPath(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		err      error
	}{
		{"./etc/passwd", "etc/passwd", nil},
		{"/etc//x/./y/", "etc/x/y", nil},
		{"./", "", nil},
		{"a/../b", "", flatten.ErrPathEscape},
		{"../x", "", flatten.ErrPathEscape},
		{"a\x00b", "", flatten.ErrBadName},
		{"a\nb", "", flatten.ErrBadName},
		{"a\rb", "", flatten.ErrBadName},
		{"", "", flatten.ErrBadName},
		{strings.Repeat("x", 255), strings.Repeat("x", 255), nil},
		{strings.Repeat("x", 256), "", flatten.ErrBadName},
		{strings.Repeat("d/", 2047) + "f", strings.Repeat("d/", 2047) + "f", nil}, // 4096 bytes absolute
		{strings.Repeat("d/", 2048) + "f", "", flatten.ErrBadName},
		{"\xff\xfe", "\xff\xfe", nil},
	} {
		got, err := flatten.CleanPath(tc.in)
		if !errors.Is(err, tc.err) || (tc.err == nil && got != tc.want) {
			t.Errorf("CleanPath(%.40q) = %.40q, %v; want %.40q, %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// TestWalk: Walk reports the stream's headers with a content file for each
// non-empty regular inode (first name only) that holds exactly its bytes.
func TestWalk(t *testing.T) {
	layers := ft.Layers(t, []ft.Entry{ft.File("a", "alpha", 0), ft.File("empty", "", 0), ft.Hardlink("b", "a"), ft.Symlink("s", "a")})
	res, err := flatten.Flatten(context.Background(), layers, flatten.Options{ScratchDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	got := map[string]string{}
	err = res.Walk(context.Background(), func(e flatten.Entry) error {
		c := "-"
		if e.ContentPath != "" {
			b, err := os.ReadFile(e.ContentPath)
			if err != nil {
				return err
			}
			c = string(b)
		}
		got[e.Header.Name+" "+string(e.Header.Typeflag)] = c
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"./ 5": "-", "a 0": "alpha", "b 1": "-", "empty 0": "-", "s 2": "-"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Walk saw %v, want %v", got, want)
	}
	res.Close()
	if err := res.Walk(context.Background(), func(flatten.Entry) error { return nil }); err == nil {
		t.Error("Walk after Close succeeded")
	}
}
