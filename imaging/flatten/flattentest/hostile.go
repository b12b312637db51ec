package flattentest

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/imaging/flatten"
)

// Hostile is one rejected image: the error must carry Sentinel, name Path
// (the entry as written in the tar) and the digest of layer Layer.
type Hostile struct {
	Name     string
	Layers   [][]Entry
	Raw      [][]byte // used instead of Layers when set
	Opts     flatten.Options
	Sentinel error
	Path     string
	Layer    int
}

// HostileCases is the table of images every importer must reject. canary
// is an absolute host directory the hostile links point at; callers check
// it stays untouched. Layer digests are LayerDigest(Hostile.Layer).
func HostileCases(canary string) []Hostile {
	long := strings.Repeat("d/", 2048) + "f"
	return []Hostile{
		{Name: "dotdot", Layers: [][]Entry{{File("../evil", "x", 0)}}, Sentinel: flatten.ErrPathEscape, Path: "../evil"},
		{Name: "dotdot-deep", Layers: [][]Entry{{File("a/../../evil", "x", 0)}}, Sentinel: flatten.ErrPathEscape, Path: "a/../../evil"},
		{Name: "dotdot-inside", Layers: [][]Entry{{Dir("a", 0), File("a/../b", "x", 0)}}, Sentinel: flatten.ErrPathEscape, Path: "a/../b"},
		{Name: "hardlink-escape", Layers: [][]Entry{{Hardlink("x", "../../etc/passwd")}}, Sentinel: flatten.ErrPathEscape, Path: "x"},
		{Name: "hardlink-abs-host", Layers: [][]Entry{{Hardlink("x", canary+"/file")}}, Sentinel: flatten.ErrBadLink, Path: "x"},
		{Name: "hardlink-missing", Layers: [][]Entry{{File("a", "a", 0)}, {Hardlink("x", "nope")}}, Sentinel: flatten.ErrBadLink, Path: "x", Layer: 1},
		{Name: "hardlink-whited-out", Layers: [][]Entry{{File("a", "a", 0)}, {Whiteout("a"), Hardlink("x", "a")}}, Sentinel: flatten.ErrBadLink, Path: "x", Layer: 1},
		{Name: "hardlink-to-dir", Layers: [][]Entry{{Dir("d", 0), Hardlink("x", "d")}}, Sentinel: flatten.ErrBadLink, Path: "x"},
		{Name: "write-through-escaping-symlink", Layers: [][]Entry{{Symlink("evil", "../../../..")}, {File("evil/passwd", "x", 0)}},
			Sentinel: flatten.ErrPathEscape, Path: "evil/passwd", Layer: 1},
		{Name: "write-through-dotdot-symlink", Layers: [][]Entry{{Dir("a", 0), Symlink("a/up", "../..")}, {File("a/up/x", "x", 0)}},
			Sentinel: flatten.ErrPathEscape, Path: "a/up/x", Layer: 1},
		{Name: "write-through-abs-symlink-to-host", Layers: [][]Entry{{Symlink("host", canary)}, {File("host/pwned", "x", 0)}},
			Sentinel: flatten.ErrBadLink, Path: "host/pwned", Layer: 1},
		{Name: "write-through-symlink-loop", Layers: [][]Entry{{Symlink("l1", "l2"), Symlink("l2", "/l1"), File("l1/x", "x", 0)}},
			Sentinel: flatten.ErrBadLink, Path: "l1/x"},
		{Name: "write-through-symlink-to-file", Layers: [][]Entry{{File("f", "x", 0), Symlink("s", "f"), File("s/x", "x", 0)}},
			Sentinel: flatten.ErrBadEntry, Path: "s/x"},
		{Name: "write-below-file", Layers: [][]Entry{{File("f", "x", 0)}, {File("f/x", "x", 0)}}, Sentinel: flatten.ErrBadEntry, Path: "f/x", Layer: 1},
		{Name: "whiteout-dotdot", Layers: [][]Entry{{File("a", "a", 0)}, {{Name: "d/.wh..."}}}, Sentinel: flatten.ErrPathEscape, Path: "d/.wh...", Layer: 1},
		{Name: "whiteout-outside", Layers: [][]Entry{{File("a", "a", 0)}, {{Name: "../.wh.etc"}}}, Sentinel: flatten.ErrPathEscape, Path: "../.wh.etc", Layer: 1},
		{Name: "whiteout-through-escaping-symlink", Layers: [][]Entry{{Symlink("up", "../..")}, {{Name: "up/.wh.etc"}}},
			Sentinel: flatten.ErrPathEscape, Path: "up/.wh.etc", Layer: 1},
		{Name: "whiteout-as-dir", Layers: [][]Entry{{File(".wh.x/y", "y", 0)}}, Sentinel: flatten.ErrBadName, Path: ".wh.x/y"},
		{Name: "whiteout-empty", Layers: [][]Entry{{{Name: "a/.wh."}}}, Sentinel: flatten.ErrBadName, Path: "a/.wh."},
		{Name: "newline", Layers: [][]Entry{{File("x\n!touch /tmp/pwned #", "x", 0)}}, Sentinel: flatten.ErrBadName, Path: "x\n!touch /tmp/pwned #"},
		{Name: "carriage-return", Layers: [][]Entry{{File("a/b\rc", "x", 0)}}, Sentinel: flatten.ErrBadName, Path: "a/b\rc"},
		{Name: "component-256", Layers: [][]Entry{{File("a/"+strings.Repeat("x", 256), "x", 0)}}, Sentinel: flatten.ErrBadName, Path: "a/" + strings.Repeat("x", 256)},
		{Name: "path-4097", Layers: [][]Entry{{File(long, "x", 0)}}, Sentinel: flatten.ErrBadName, Path: long},
		{Name: "symlink-target-newline", Layers: [][]Entry{{Symlink("s", "a\nb")}}, Sentinel: flatten.ErrBadName, Path: "s"},
		{Name: "symlink-target-too-long", Layers: [][]Entry{{Symlink("s", strings.Repeat("t", 4096))}}, Sentinel: flatten.ErrBadName, Path: "s"},
		{Name: "hardlink-target-newline", Layers: [][]Entry{{File("a", "a", 0), Hardlink("x", "a\n")}}, Sentinel: flatten.ErrBadName, Path: "x"},
		{Name: "xattr-no-namespace", Layers: [][]Entry{{{Name: "f", Xattrs: map[string]string{"bogus": "v"}}}}, Sentinel: flatten.ErrBadName, Path: "f"},
		{Name: "xattr-name-newline", Layers: [][]Entry{{{Name: "f", Xattrs: map[string]string{"user.a\nb": "v"}}}}, Sentinel: flatten.ErrBadName, Path: "f"},
		{Name: "xattr-too-big", Layers: [][]Entry{{{Name: "f", Xattrs: map[string]string{"user.big": strings.Repeat("v", 70000)}}}}, Sentinel: flatten.ErrTooLarge, Path: "f"},
		{Name: "root-as-file", Layers: [][]Entry{{{Name: ".", Type: tar.TypeReg}}}, Sentinel: flatten.ErrBadEntry, Path: "."},
		{Name: "device-out-of-range", Layers: [][]Entry{{{Name: "d", Type: tar.TypeChar, Major: 4096}}}, Sentinel: flatten.ErrBadEntry, Path: "d"},
		{Name: "uid-out-of-range", Layers: [][]Entry{{{Name: "u", UID: 1 << 32}}}, Sentinel: flatten.ErrBadEntry, Path: "u"},
		{Name: "unsupported-type", Layers: [][]Entry{{File("ok", "x", 0), {Name: "vol", Type: 'V'}}}, Sentinel: flatten.ErrBadEntry, Path: "vol"},
		{Name: "too-many-entries", Layers: [][]Entry{{File("1", "", 0), File("2", "", 0)}, {File("3", "", 0), File("4", "", 0)}},
			Opts: flatten.Options{MaxEntries: 3}, Sentinel: flatten.ErrTooManyEntries, Path: "4", Layer: 1},
		{Name: "too-large-cumulative", Layers: [][]Entry{{File("a", strings.Repeat("a", 600<<10), 0)}, {File("a", strings.Repeat("b", 600<<10), 0)}},
			Opts: flatten.Options{MaxUnpackedSize: 1 << 20}, Sentinel: flatten.ErrTooLarge, Path: "a", Layer: 1},
		{Name: "truncated", Raw: [][]byte{MustTar(File("a", strings.Repeat("a", 4096), 0))[:1024]}, Sentinel: flatten.ErrBadEntry, Path: "a"},
		{Name: "nul-in-pax-path", Raw: [][]byte{append(MustTar(File("ok", "x", 0))[:1024], PaxNUL()...)}, Sentinel: flatten.ErrBadEntry, Path: "ok"},
		// Bombs: what costs reading without growing the tree counts too.
		{Name: "sparse-16TiB", Raw: [][]byte{SparseTar("hole", 16<<40)}, Sentinel: flatten.ErrTooLarge, Path: "hole"},
		{Name: "trailing-garbage", Raw: [][]byte{append(MustTar(File("ok", "x", 0)), bytes.Repeat([]byte("junk"), flatten.MaxTrailingBytes/2)...)},
			Sentinel: flatten.ErrBadEntry, Path: "ok"},
		{Name: "zeros-after-end", Raw: [][]byte{MustTar(File("ok", "x", 0)), append(MustTar(File("z", "x", 0)), make([]byte, 4<<20)...)},
			Sentinel: flatten.ErrBadEntry, Path: "z", Layer: 1},
		{Name: "headers-over-limit", Layers: [][]Entry{{
			{Name: "a", PAX: map[string]string{"comment": strings.Repeat("c", 700<<10)}},
			{Name: "b", PAX: map[string]string{"comment": strings.Repeat("c", 700<<10)}},
		}}, Opts: flatten.Options{MaxUnpackedSize: 1 << 20}, Sentinel: flatten.ErrTooLarge, Path: "a"},
	}
}

// SparseTar is a layer holding one PAX 1.0 sparse file of logical size
// size whose only data is its last byte: a few KiB that read as size bytes.
// archive/tar cannot write sparse files, so the headers are made by hand.
func SparseTar(name string, size int64) []byte {
	var recs string
	for _, kv := range [][2]string{{"GNU.sparse.major", "1"}, {"GNU.sparse.minor", "0"},
		{"GNU.sparse.name", name}, {"GNU.sparse.realsize", strconv.FormatInt(size, 10)}} {
		rec := " " + kv[0] + "=" + kv[1] + "\n"
		n := len(rec) + 1
		for len(strconv.Itoa(n))+len(rec) != n {
			n++
		}
		recs += strconv.Itoa(n) + rec
	}
	sparseMap := pad512([]byte(fmt.Sprintf("1\n%d\n1\n", size-1)))
	var out []byte
	out = append(out, rawHeader("PaxHeaders/"+name, 'x', len(recs))...)
	out = append(out, pad512([]byte(recs))...)
	out = append(out, rawHeader("GNUSparseFile.0/"+name, '0', len(sparseMap)+1)...)
	out = append(out, sparseMap...)
	out = append(out, pad512([]byte{'x'})...)
	return append(out, make([]byte, 1024)...)
}

func pad512(b []byte) []byte {
	return append(b, make([]byte, (512-len(b)%512)%512)...)
}

// PaxNUL is a PAX header whose path record contains a NUL byte, followed
// by the file it describes. archive/tar refuses to write one, so the
// headers are assembled by hand.
func PaxNUL() []byte {
	rec := "path=a\x00b\n"
	rec = strconv.Itoa(len(rec)+3) + " " + rec
	var out []byte
	out = append(out, rawHeader("PaxHeaders/x", 'x', len(rec))...)
	body := make([]byte, 512)
	copy(body, rec)
	out = append(out, body...)
	out = append(out, rawHeader("x", '0', 0)...)
	return append(out, make([]byte, 1024)...)
}

func rawHeader(name string, typ byte, size int) []byte {
	h := make([]byte, 512)
	copy(h[0:], name)
	copy(h[100:], "0000644\x00")
	copy(h[108:], "0000000\x00")
	copy(h[116:], "0000000\x00")
	copy(h[124:], fmt.Sprintf("%011o\x00", size))
	copy(h[136:], "00000000000\x00")
	h[156] = typ
	copy(h[257:], "ustar\x0000")
	copy(h[148:], "        ")
	sum := 0
	for _, b := range h {
		sum += int(b)
	}
	copy(h[148:], fmt.Sprintf("%06o\x00 ", sum))
	return h
}

// HostileLayers returns the layers of h labelled LayerDigest(i).
func HostileLayers(t testing.TB, h Hostile) []flatten.Layer {
	t.Helper()
	if h.Raw == nil {
		return Layers(t, h.Layers...)
	}
	var ls []flatten.Layer
	for i, r := range h.Raw {
		ls = append(ls, flatten.ReaderLayer(LayerDigest(i), bytes.NewReader(r)))
	}
	return ls
}

// Canary creates a host directory hostile links point at and returns a
// check that it is untouched.
func Canary(t testing.TB) (string, func()) {
	t.Helper()
	canary := filepath.Join(t.TempDir(), "canary")
	if err := os.MkdirAll(canary, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(canary, "file"), []byte("canary"), 0o644); err != nil {
		t.Fatal(err)
	}
	return canary, func() {
		ents, _ := os.ReadDir(canary)
		if len(ents) != 1 || ents[0].Name() != "file" {
			t.Errorf("host canary %s changed: %v", canary, ents)
		}
		if b, _ := os.ReadFile(filepath.Join(canary, "file")); string(b) != "canary" {
			t.Errorf("host canary file changed: %q", b)
		}
	}
}

// AssertRejected checks the shape of a rejection: an *EntryError with the
// case's sentinel, entry path and layer digest, named in the message too.
func AssertRejected(t testing.TB, err error, h Hostile, imageRef string) {
	t.Helper()
	var ee *flatten.EntryError
	if !errors.As(err, &ee) {
		t.Fatalf("error %v (%T) is not an *EntryError", err, err)
	}
	if !errors.Is(err, h.Sentinel) {
		t.Errorf("error %v is not %v", err, h.Sentinel)
	}
	if ee.Path != h.Path {
		t.Errorf("EntryError.Path = %.60q, want %.60q", ee.Path, h.Path)
	}
	if want := LayerDigest(h.Layer); ee.Layer != want {
		t.Errorf("EntryError.Layer = %q, want %q", ee.Layer, want)
	}
	msg := err.Error()
	if !strings.Contains(msg, strconv.Quote(h.Path)) || !strings.Contains(msg, LayerDigest(h.Layer)) || !strings.Contains(msg, imageRef) {
		t.Errorf("message %.200q does not name path, layer and image", msg)
	}
}
