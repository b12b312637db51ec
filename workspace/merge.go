package workspace

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/paddock-vm/paddock/imaging/flatten"
)

// PushDest is where a pushed tar stream goes in a volume, by cp's rules
// (as the agent applies them to an attached workspace): the stream's top
// entry Name goes inside Path when Path is a directory, else it becomes
// Path itself, whose parent must be a directory.
type PushDest struct {
	Path string // relative to the volume's root; "" or "/" for the root
	Name string // the stream's top entry: its entries are Name, Name/...
}

// Merge builds the volume out from two tar streams: base, the whole tree
// of the volume as it is (an Export), and push, unpacked at dst over it
// (files replaced, directories merged): a push into a workspace that no VM
// holds. The result is built like a creation's (owner, checks, size) and
// replaces out only when complete, so a failure leaves the old volume.
// Offline there is no guest to follow a symbolic link: one on the way to
// dst is refused, naming it.
func Merge(ctx context.Context, base, push io.Reader, dst PushDest, out string, spec Spec) (*Result, error) {
	m := &merger{spec: spec, dst: cleanRel(dst.Path), name: dst.Name, kinds: map[string]byte{}}
	if m.name == "" || m.name == "." || m.name == ".." || strings.ContainsAny(m.name, "/\x00") {
		return nil, fmt.Errorf("workspace %s: %q cannot name what is pushed", spec.Name, dst.Name)
	}
	layers := []flatten.Layer{
		flatten.ReaderLayer("the workspace's tree", base),
		{Digest: "the pushed stream", Open: func() (io.ReadCloser, error) {
			if m.refusal = m.resolve(); m.refusal != nil {
				return nil, m.refusal
			}
			m.pushing = true
			return io.NopCloser(push), nil
		}},
	}
	res, err := build(ctx, layers, out, spec, m.entry, false)
	if m.refusal != nil {
		return nil, fmt.Errorf("workspace %s: cannot push to %s: %w", spec.Name, m.dst, m.refusal)
	}
	return res, err
}

// pushRefusal is a destination a push cannot go to.
type pushRefusal struct{ reason string }

func (e *pushRefusal) Error() string { return e.reason }
func (e *pushRefusal) Unwrap() error { return ErrRefused }

// merger renames the pushed entries to where they go; it learns the kinds
// of dst and its parents as the base stream passes.
type merger struct {
	spec    Spec
	dst     string // clean, relative; "." for the root
	name    string
	kinds   map[string]byte // typeflags of dst and its parents in the base
	pushing bool
	target  string // the top entry's new name
	refusal error  // of the destination, once the base is read
}

// cleanRel is p relative to the root, clean; "." for the root.
func cleanRel(p string) string {
	if c := strings.TrimPrefix(path.Clean("/"+p), "/"); c != "" {
		return c
	}
	return "."
}

// onTheWay: p is dst or one of its parents.
func (m *merger) onTheWay(p string) bool {
	return p == m.dst || strings.HasPrefix(m.dst, p+"/")
}

func (m *merger) entry(h *tar.Header) error {
	if !m.pushing {
		if n := cleanRel(h.Name); m.onTheWay(n) {
			m.kinds[n] = h.Typeflag
		}
		return m.spec.entry(h)
	}
	n, ok := m.rename(h.Name)
	if !ok {
		return &flatten.EntryError{Path: h.Name, Err: ErrRefused, Reason: fmt.Sprintf("outside the pushed tree %s", m.name)}
	}
	h.Name = n
	if h.Typeflag == tar.TypeLink {
		if h.Linkname, ok = m.rename(h.Linkname); !ok {
			return &flatten.EntryError{Path: h.Name, Err: ErrRefused, Reason: fmt.Sprintf("a hard link to outside the pushed tree %s", m.name)}
		}
	}
	return m.spec.entry(h)
}

func (m *merger) rename(name string) (string, bool) {
	n := strings.TrimPrefix(path.Clean(name), "./")
	switch {
	case n == m.name:
		return m.target, true
	case strings.HasPrefix(n, m.name+"/"):
		return m.target + n[len(m.name):], true
	}
	return "", false
}

// resolve works out target from what the base said about dst's way.
func (m *merger) resolve() error {
	refuse := func(format string, a ...any) error {
		return &pushRefusal{reason: fmt.Sprintf(format, a...)}
	}
	parents := []string{}
	for p := m.dst; p != "."; p = path.Dir(p) {
		parents = append([]string{p}, parents...)
	}
	for i, p := range parents {
		k, seen := m.kinds[p]
		last := i == len(parents)-1
		switch {
		case k == tar.TypeSymlink:
			return refuse("%s is a symbolic link, which a push into a workspace no VM holds does not follow: push to the path it points at, or attach the workspace", p)
		case !seen && !last:
			return refuse("there is no directory %s in the workspace", p)
		case seen && k != tar.TypeDir && !last:
			return refuse("%s is not a directory", p)
		}
	}
	if k, seen := m.kinds[m.dst]; m.dst == "." || seen && k == tar.TypeDir {
		m.target = path.Join(m.dst, m.name)
	} else {
		m.target = m.dst // a new name, or a file replaced
	}
	return nil
}
