package flatten

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// Entry is one entry of the flattened tree, as Walk reports it.
type Entry struct {
	// Header is the tar header Emit writes: Name relative to the root
	// ("./" for the root, "dir/" for directories), numeric owner only,
	// xattrs as PAX SCHILY.xattr records; hardlinks carry their target's
	// mode, owner and mtime.
	Header *tar.Header
	// ContentPath is a file holding a regular file's content (empty for
	// empty files and non-regular entries). It stays valid until Close.
	// Callers may hardlink it, or change its mode and times, but must not
	// write to it.
	ContentPath string
}

// Walk calls fn for every entry of the flattened tree in stream order:
// root first, then depth-first in byte order of names, so parents come
// before children and a hardlink's target before the link.
func (r *Result) Walk(ctx context.Context, fn func(Entry) error) error {
	if r.spill == nil {
		return errors.New("flatten: walk after Close")
	}
	r.gen++
	w := &walker{ctx: ctx, gen: r.gen, fn: fn}
	return w.walk(r.root, "")
}

// Emit writes the flattened tree to w as a tar stream (see Walk and Entry
// for order and headers). It may be called more than once until Close.
func (r *Result) Emit(ctx context.Context, w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	tw := tar.NewWriter(bw)
	buf := make([]byte, 1<<20)
	err := r.Walk(ctx, func(e Entry) error {
		if err := tw.WriteHeader(e.Header); err != nil {
			return fmt.Errorf("flatten: write header %q: %w", e.Header.Name, err)
		}
		if e.ContentPath == "" {
			return nil
		}
		f, err := os.Open(e.ContentPath)
		if err != nil {
			return fmt.Errorf("flatten: content of %q: %w", e.Header.Name, err)
		}
		defer f.Close()
		if _, err := io.CopyBuffer(tw, io.LimitReader(f, e.Header.Size), buf); err != nil {
			return fmt.Errorf("flatten: write content of %q: %w", e.Header.Name, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("flatten: finish tar stream: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("flatten: write tar stream: %w", err)
	}
	return nil
}

// WriteTo implements io.WriterTo (without cancellation; see Emit).
func (r *Result) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	err := r.Emit(context.Background(), cw)
	return cw.n, err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

type walker struct {
	ctx context.Context
	gen uint32
	fn  func(Entry) error
}

func (w *walker) walk(n *node, name string) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	ino := n.ino
	hdr := &tar.Header{
		Name:    name,
		Mode:    ino.mode,
		Uid:     ino.uid,
		Gid:     ino.gid,
		ModTime: time.Unix(ino.mtime, 0),
	}
	if ino.kind != kDir && ino.gen == w.gen {
		// Later name of an inode already walked: a hardlink to the first.
		hdr.Typeflag, hdr.Linkname = tar.TypeLink, ino.emittedAs
		return w.fn(Entry{Header: hdr})
	}
	ino.gen, ino.emittedAs = w.gen, name
	for k, v := range ino.xattrs {
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords["SCHILY.xattr."+k] = v
	}
	e := Entry{Header: hdr}
	switch ino.kind {
	case kDir:
		hdr.Typeflag = tar.TypeDir
		if name == "" {
			hdr.Name = "./"
		} else {
			hdr.Name = name + "/"
		}
	case kReg:
		hdr.Typeflag, hdr.Size = tar.TypeReg, ino.size
		e.ContentPath = ino.content
	case kSymlink:
		hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, ino.target, 0o777
	case kChar, kBlock:
		hdr.Typeflag = tar.TypeChar
		if ino.kind == kBlock {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor, hdr.Devminor = ino.major, ino.minor
	case kFifo:
		hdr.Typeflag = tar.TypeFifo
	}
	if err := w.fn(e); err != nil {
		return err
	}
	if ino.kind == kDir {
		prefix := name
		if prefix != "" {
			prefix += "/"
		}
		for _, c := range sortedKids(n) {
			if err := w.walk(c, prefix+c.name); err != nil {
				return err
			}
		}
	}
	return nil
}

// summarize walks the final tree once to count what Build needs for sizing.
func (f *flattener) summarize() Summary {
	s := Summary{Whiteouts: f.whiteouts, Opaques: f.opaques, LayerEntries: f.entries, UnpackedBytes: f.unpacked}
	const gen = ^uint32(0) // distinct from emission generations
	var walk func(n *node)
	walk = func(n *node) {
		s.Entries++
		ino := n.ino
		if ino.kind != kDir && ino.gen == gen {
			s.Hardlinks++
			return
		}
		ino.gen = gen
		s.Inodes++
		if xattrBlock(ino.xattrs) {
			s.Blocks++
		}
		switch ino.kind {
		case kDir:
			s.Dirs++
			// ext4 dirents: 8 bytes + name rounded to 4; "." and ".." take
			// 24; a 4 KiB block holds 4084 bytes with metadata_csum.
			used := int64(24)
			for name := range n.kids {
				used += 8 + int64((len(name)+3)&^3)
			}
			s.Blocks += (used + 4083) / 4084
			for _, c := range n.kids {
				walk(c)
			}
		case kReg:
			s.Files++
			s.ContentBytes += ino.size
			s.Blocks += (ino.size + 4095) / 4096
		case kSymlink:
			s.Symlinks++
			if len(ino.target) >= 60 { // shorter targets live in the inode
				s.Blocks++
			}
		case kChar, kBlock:
			s.Devices++
		case kFifo:
			s.Fifos++
		}
	}
	walk(f.root)
	// Reset so that the first Emit (gen 1) does not see stale marks.
	var reset func(n *node)
	reset = func(n *node) {
		n.ino.gen = 0
		for _, c := range n.kids {
			reset(c)
		}
	}
	reset(f.root)
	return s
}

// xattrBlock reports whether xattrs overflow the ~96 bytes free in a
// 256-byte inode and need a block of their own.
func xattrBlock(x map[string]string) bool {
	if len(x) == 0 {
		return false
	}
	used := 4
	for k, v := range x {
		used += 16 + (len(k)+3)&^3 + (len(v)+3)&^3
	}
	return used > 96
}
