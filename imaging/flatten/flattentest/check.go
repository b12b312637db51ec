package flattentest

import (
	"archive/tar"
	"fmt"
	"testing"
)

// Got is what a builder's output holds at one path.
type Got struct {
	Type         byte
	Mode         int64
	UID, GID     int
	Body         string
	Target       string
	Major, Minor int64
	ID           string // inode identity: equal for all names of one inode
	Xattrs       map[string]string
	MTime        int64
}

// Lookup returns what is at path, or nil if nothing is.
type Lookup func(path string) (*Got, error)

// Check asserts the case's expectations against a builder's output.
func Check(t testing.TB, c Case, get Lookup) {
	t.Helper()
	for _, w := range c.Want {
		g, err := get(w.Path)
		if err != nil {
			t.Errorf("%s: %q: %v", c.Name, w.Path, err)
			continue
		}
		if g == nil {
			t.Errorf("%s: %q missing", c.Name, w.Path)
			continue
		}
		errf := func(what string, got, want any) {
			t.Errorf("%s: %q: %s = %v, want %v", c.Name, w.Path, what, got, want)
		}
		if g.Type != w.Type {
			errf("type", string(g.Type), string(w.Type))
		}
		if w.Mode != Any && g.Mode != w.Mode {
			errf("mode", fmt.Sprintf("%#o", g.Mode), fmt.Sprintf("%#o", w.Mode))
		}
		if w.UID != Any && g.UID != w.UID {
			errf("uid", g.UID, w.UID)
		}
		if w.GID != Any && g.GID != w.GID {
			errf("gid", g.GID, w.GID)
		}
		if w.Body != nil && g.Body != *w.Body {
			errf("content", fmt.Sprintf("%q", g.Body), fmt.Sprintf("%q", *w.Body))
		}
		if w.Target != "" && g.Target != w.Target {
			errf("symlink target", fmt.Sprintf("%q", g.Target), fmt.Sprintf("%q", w.Target))
		}
		if w.Type == tar.TypeChar || w.Type == tar.TypeBlock {
			if g.Major != w.Major || g.Minor != w.Minor {
				errf("device", fmt.Sprintf("%d:%d", g.Major, g.Minor), fmt.Sprintf("%d:%d", w.Major, w.Minor))
			}
		}
		if w.MTime != 0 && g.MTime != w.MTime {
			errf("mtime", g.MTime, w.MTime)
		}
		for k, v := range w.Xattrs {
			if gv, ok := g.Xattrs[k]; !ok || gv != v {
				errf("xattr "+k, fmt.Sprintf("%q (present %v)", gv, ok), fmt.Sprintf("%q", v))
			}
		}
		if w.SameAs != "" {
			o, err := get(w.SameAs)
			if err != nil || o == nil {
				t.Errorf("%s: %q: hardlink partner %q missing (%v)", c.Name, w.Path, w.SameAs, err)
			} else if o.ID != g.ID {
				errf("inode identity vs "+w.SameAs, g.ID, o.ID)
			}
		}
	}
	for _, p := range c.Absent {
		g, err := get(p)
		if err != nil {
			t.Errorf("%s: %q: %v", c.Name, p, err)
		} else if g != nil {
			t.Errorf("%s: %q exists (type %q), want absent", c.Name, p, string(g.Type))
		}
	}
}

// StreamLookup serves Lookup from a parsed flattened stream: hardlinks
// report their target's inode, identified by the target's path.
func StreamLookup(nodes map[string]*Node) Lookup {
	return func(path string) (*Got, error) {
		n := nodes[path]
		if n == nil {
			return nil, nil
		}
		id := path
		if n.Hdr.Typeflag == tar.TypeLink {
			id = Abs(n.Hdr.Linkname)
			n = nodes[id]
			if n == nil {
				return nil, fmt.Errorf("hardlink target %q missing", id)
			}
		}
		h := n.Hdr
		g := &Got{Type: h.Typeflag, Mode: h.Mode & 0o7777, UID: h.Uid, GID: h.Gid, Body: n.Body, Target: h.Linkname,
			Major: h.Devmajor, Minor: h.Devminor, ID: id, MTime: h.ModTime.Unix()}
		if h.Typeflag != tar.TypeSymlink {
			g.Target = ""
		}
		for k, v := range h.PAXRecords {
			if len(k) > len("SCHILY.xattr.") && k[:len("SCHILY.xattr.")] == "SCHILY.xattr." {
				if g.Xattrs == nil {
					g.Xattrs = map[string]string{}
				}
				g.Xattrs[k[len("SCHILY.xattr."):]] = v
			}
		}
		return g, nil
	}
}
