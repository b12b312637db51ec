// Package flattentest builds layer tars in tests and holds the table of
// layer semantics shared by the flatten and ext4 tests.
package flattentest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/imaging/flatten"
)

// Entry is one tar entry of a test layer.
type Entry struct {
	Name         string
	Type         byte // tar typeflag; 0 means tar.TypeReg
	Body         string
	Mode         int64 // 0 means 0644 for files, 0755 for dirs; use NoPerm for 0000
	UID, GID     int
	Link         string // symlink or hardlink target
	Major, Minor int64
	Xattrs       map[string]string
	PAX          map[string]string // other PAX records, e.g. "comment"
	MTime        int64             // seconds; 0 means DefaultMTime
}

// NoPerm asks for mode 0000 (0 already means "default").
const NoPerm = -1

// DefaultMTime is the mtime of entries that do not set one.
const DefaultMTime = 1700000000

// File, Dir, Symlink, Hardlink, Whiteout and Opaque build common entries.
func File(name, body string, mode int64) Entry { return Entry{Name: name, Body: body, Mode: mode} }
func Dir(name string, mode int64) Entry        { return Entry{Name: name, Type: tar.TypeDir, Mode: mode} }
func Symlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeSymlink, Link: target}
}
func Hardlink(name, target string) Entry { return Entry{Name: name, Type: tar.TypeLink, Link: target} }
func Whiteout(name string) Entry {
	dir, base := splitLast(name)
	return Entry{Name: dir + ".wh." + base}
}
func Opaque(dir string) Entry { return Entry{Name: strings.TrimSuffix(dir, "/") + "/.wh..wh..opq"} }

func splitLast(p string) (string, string) {
	i := strings.LastIndex(p, "/")
	return p[:i+1], p[i+1:]
}

// Header returns the tar header for e.
func (e Entry) Header() *tar.Header {
	h := &tar.Header{
		Name:     e.Name,
		Typeflag: e.Type,
		Mode:     e.Mode,
		Uid:      e.UID,
		Gid:      e.GID,
		Linkname: e.Link,
		Devmajor: e.Major,
		Devminor: e.Minor,
		ModTime:  time.Unix(e.MTime, 0),
		Format:   tar.FormatPAX,
	}
	if h.Typeflag == 0 {
		h.Typeflag = tar.TypeReg
	}
	if e.MTime == 0 {
		h.ModTime = time.Unix(DefaultMTime, 0)
	}
	switch {
	case e.Mode == NoPerm:
		h.Mode = 0
	case e.Mode == 0 && (h.Typeflag == tar.TypeDir):
		h.Mode = 0o755
	case e.Mode == 0:
		h.Mode = 0o644
	}
	if h.Typeflag == tar.TypeReg {
		h.Size = int64(len(e.Body))
	}
	for k, v := range e.Xattrs {
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords["SCHILY.xattr."+k] = v
	}
	for k, v := range e.PAX {
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords[k] = v
	}
	return h
}

// Tar encodes entries as an uncompressed tar.
func Tar(t testing.TB, entries ...Entry) []byte {
	t.Helper()
	b, err := TarBytes(entries...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// MustTar is Tar for package-level tables; it panics on error.
func MustTar(entries ...Entry) []byte {
	b, err := TarBytes(entries...)
	if err != nil {
		panic(err)
	}
	return b
}

// TarBytes encodes entries as an uncompressed tar.
func TarBytes(entries ...Entry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.Header()
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("tar header %q: %w", e.Name, err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := io.WriteString(tw, e.Body); err != nil {
				return nil, fmt.Errorf("tar body %q: %w", e.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("tar close: %w", err)
	}
	return buf.Bytes(), nil
}

// LayerDigest is the label test layers get: "sha256:test-<n>".
func LayerDigest(i int) string { return fmt.Sprintf("sha256:test-layer-%d", i+1) }

// Layers turns entry lists into flatten layers labelled LayerDigest(i).
func Layers(t testing.TB, layers ...[]Entry) []flatten.Layer {
	t.Helper()
	out := make([]flatten.Layer, len(layers))
	for i, l := range layers {
		out[i] = flatten.ReaderLayer(LayerDigest(i), bytes.NewReader(Tar(t, l...)))
	}
	return out
}

// Node is one entry of a parsed flattened stream.
type Node struct {
	Hdr   *tar.Header
	Body  string
	Index int // position in the stream
}

// Parse reads a flattened stream into a map keyed by absolute path
// ("/", "/etc", …), checking the ordering guarantees on the way: no
// duplicates, parents before children, hardlink targets before links.
func Parse(t testing.TB, stream []byte) (map[string]*Node, []string) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(stream))
	nodes := map[string]*Node{}
	var order []string
	for i := 0; ; i++ {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("parse flattened stream: %v", err)
		}
		p := Abs(h.Name)
		if _, dup := nodes[p]; dup {
			t.Errorf("duplicate entry %q in flattened stream", p)
		}
		if p != "/" {
			parent := p[:strings.LastIndex(p, "/")]
			if parent == "" {
				parent = "/"
			}
			if pn := nodes[parent]; pn == nil || pn.Hdr.Typeflag != tar.TypeDir {
				t.Errorf("entry %q comes before its parent directory", p)
			}
		} else if i != 0 {
			t.Errorf("root entry is not first")
		}
		if h.Typeflag == tar.TypeLink {
			tn := nodes[Abs(h.Linkname)]
			if tn == nil || tn.Hdr.Typeflag == tar.TypeLink {
				t.Errorf("hardlink %q -> %q comes before its target (or points to a link)", p, h.Linkname)
			}
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read %q: %v", p, err)
		}
		nodes[p] = &Node{Hdr: h, Body: string(body), Index: i}
		order = append(order, p)
	}
	return nodes, order
}

// Abs turns a tar name into an absolute clean path.
func Abs(name string) string {
	name = strings.TrimPrefix(name, "./")
	name = strings.Trim(name, "/")
	if name == "" || name == "." {
		return "/"
	}
	return "/" + name
}

// Children lists the names directly below dir in a parsed stream.
func Children(nodes map[string]*Node, dir string) []string {
	var out []string
	prefix := strings.TrimSuffix(dir, "/") + "/"
	for p := range nodes {
		if p != "/" && strings.HasPrefix(p, prefix) && !strings.Contains(p[len(prefix):], "/") {
			out = append(out, p[len(prefix):])
		}
	}
	sort.Strings(out)
	return out
}
