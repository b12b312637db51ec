// Package flatten applies the layers of an OCI image, in order, to an
// in-memory tree and emits the resulting root filesystem as one
// well-ordered tar stream.
//
// Semantics (OCI image spec "Applying changesets", as containerd does it):
//   - ".wh.NAME" removes NAME from lower layers; ".wh..wh..opq" hides all
//     lower-layer content of its directory. Both only affect lower layers,
//     so an entry whited out and re-created in one layer survives, in
//     either order. Other ".wh..wh.*" entries (aufs metadata) are ignored.
//   - The last entry for a path wins, within a layer and across layers. A
//     directory over a directory updates its metadata and keeps children;
//     anything else replaces the old subtree.
//   - Symlinks met as parent components are followed inside the image
//     root, never on the host: absolute targets restart at the image root,
//     ".." that climbs above the root is rejected (ErrPathEscape). This is
//     what makes usrmerge images ("bin -> usr/bin", then "bin/x") work.
//   - A hardlink shares the inode of its target at the time the link is
//     read; replacing or deleting the target later keeps the link's
//     content (overlayfs copy-up semantics).
//
// Output order: depth-first with sorted names, so every directory comes
// before its children; the first name of a multiply-linked inode carries
// the data and later names are hardlinks to it, with the data entry's
// mode, owner and mtime copied into the link header (mke2fs' tar reader
// applies link-header metadata to the shared inode).
//
// Memory holds metadata only (about 200 bytes per entry plus names,
// symlink targets and xattrs); file contents go to spill files in
// Options.ScratchDir (see spill).
package flatten

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Defaults for Options limits.
const (
	DefaultMaxEntries      = 1 << 20  // tar entries read over all layers
	DefaultMaxUnpackedSize = 16 << 30 // 16 GiB
)

// Options configures Flatten.
type Options struct {
	// ImageRef names the image in errors.
	ImageRef string
	// ScratchDir receives a private directory holding file contents until
	// the Result is closed; tmpfs is fastest, and a builder staging on the
	// same filesystem can hardlink instead of copying. Default os.TempDir().
	ScratchDir string
	// MaxEntries bounds the number of tar entries read over all layers
	// (whiteouts included). Default DefaultMaxEntries.
	MaxEntries int64
	// MaxUnpackedSize bounds what unpacking may cost, over all layers, on
	// two meters: the tree's size (file contents at their full length,
	// sparse holes included, even ones a later layer replaces; symlink
	// targets and xattrs), checked before an entry's content is read; and
	// every byte of the layer streams read (headers, padding, content and
	// what follows the end-of-archive marker), checked as it is read. Either
	// stops reading as soon as it would be crossed.
	// Default DefaultMaxUnpackedSize.
	MaxUnpackedSize int64

	// Entry, when set, sees every header as read (global PAX headers
	// aside) and may change it in place before it is applied, or refuse it
	// (an *EntryError passes through as it is).
	Entry func(*tar.Header) error
	// Root, when set, is the root directory's metadata (owner, mode,
	// mtime) before the first layer; a layer's "./" entry still replaces it.
	Root *tar.Header
	// Literal reads whiteout names (".wh.*") as the names they are: for a
	// tree that is not an image layer (a workspace).
	Literal bool
	// Applied, when set, sees every entry once it has been checked and
	// applied, in stream order: the header as Entry left it, and for a
	// regular file the spill file holding its content ("" when empty),
	// valid until the Result is closed or a later entry replaces the file
	// (as with Walk's ContentPath, its mode and times may be changed, never
	// its content).
	// A builder can start on the tree before the stream ends; it must
	// check for itself that the stream is one it can follow (parents
	// before children, no duplicates), since Flatten accepts any order.
	// An error stops Flatten and is returned as it is.
	Applied func(h *tar.Header, content string) error
	// Content, when set, is offered each non-empty regular file's content
	// before the spill: path is a spill path of its own, not yet made. It
	// returns false, having read nothing, to leave the content to the
	// spill; or true, having read exactly its h.Size bytes from r, and
	// then path is its content path (Applied's, Walk's) which the caller
	// must make (a file holding the content) before the Result is used
	// for anything but Applied: a builder that takes contents directly
	// keeps them only while it can follow the stream.
	Content func(h *tar.Header, r io.Reader, path string) (bool, error)
	// RequireEnd refuses a stream that ends without its end-of-archive
	// marker (two zero blocks) where an entry could start: one cut short
	// by a client that failed half-way.
	RequireEnd bool
}

// MaxTrailingBytes bounds what may follow a layer's end-of-archive marker:
// tar writers pad to their record size (10 KiB by default, more with a
// larger blocking factor); anything longer is refused, unread.
const MaxTrailingBytes = 1 << 20

// Layer is one layer tar, uncompressed, applied in order.
type Layer struct {
	// Digest identifies the layer in errors (the manifest digest, or any label).
	Digest string
	// Open returns the uncompressed tar stream. It is called once, when the
	// layer's turn comes, and the stream is read to EOF (so that readers
	// that verify a digest at EOF get to do so; at most MaxTrailingBytes
	// follow the end-of-archive marker) and closed.
	Open func() (io.ReadCloser, error)
}

// ReaderLayer wraps an already-open uncompressed tar stream as a Layer.
func ReaderLayer(digest string, r io.Reader) Layer {
	return Layer{Digest: digest, Open: func() (io.ReadCloser, error) { return io.NopCloser(r), nil }}
}

// Summary describes the flattened tree. ext4.Build sizes the filesystem from it.
type Summary struct {
	Entries      int64 // tar entries in the flattened stream, root and hardlinks included
	Inodes       int64 // distinct inodes: entries minus the extra names of hardlinked inodes
	ContentBytes int64 // bytes of regular-file content, counted once per inode
	// Blocks estimates the 4 KiB blocks the tree needs in ext4: data, directory
	// blocks, symlink targets over 59 bytes, xattrs that do not fit in the inode.
	Blocks int64

	Dirs, Files, Symlinks, Hardlinks, Devices, Fifos int64

	Whiteouts int64 // whiteouts that removed something
	Opaques   int64 // opaque markers applied
	// LayerEntries and UnpackedBytes are what the limits were checked against.
	LayerEntries  int64
	UnpackedBytes int64
}

// Result is a flattened tree ready to be emitted. Close it to free the spill.
type Result struct {
	Summary Summary

	root  *node
	spill *spill
	gen   uint32
}

// Close releases the scratch space. The Result cannot be emitted afterwards.
func (r *Result) Close() error {
	if r.spill == nil {
		return nil
	}
	err := r.spill.Close()
	r.spill = nil
	return err
}

// Flatten reads the layers in order and returns the flattened tree. On
// error nothing is left in ScratchDir (after a crash, a "paddock-flatten-*"
// directory may be). Rejections are *EntryError.
func Flatten(ctx context.Context, layers []Layer, opts Options) (*Result, error) {
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = DefaultMaxEntries
	}
	if opts.MaxUnpackedSize <= 0 {
		opts.MaxUnpackedSize = DefaultMaxUnpackedSize
	}
	sp, err := newSpill(opts.ScratchDir)
	if err != nil {
		return nil, err
	}
	f := &flattener{opts: opts, spill: sp, root: newRoot()}
	if r := opts.Root; r != nil {
		f.root.ino = &inode{kind: kDir, mode: r.Mode & 0o7777, uid: r.Uid, gid: r.Gid, mtime: clampTime(r.ModTime), refs: 1}
	}
	for i, l := range layers {
		f.layer, f.digest, f.curName = i+1, l.Digest, ""
		if err := f.applyLayer(ctx, l); err != nil {
			sp.Close()
			return nil, err
		}
	}
	res := &Result{root: f.root, spill: sp}
	res.Summary = f.summarize()
	return res, nil
}

type kind uint8

const (
	kDir kind = iota + 1
	kReg
	kSymlink
	kChar
	kBlock
	kFifo
)

// inode is the metadata shared by all names of one file.
type inode struct {
	kind         kind
	mode         int64 // permission and setuid/setgid/sticky bits
	uid, gid     int
	mtime        int64 // seconds
	major, minor int64
	target       string            // symlink target
	xattrs       map[string]string // nil when none
	content      string            // spill file of a regular file ("" when empty)
	size         int64             // regular file size
	refs         int32             // names in the tree
	emittedAs    string            // first emitted name, for hardlinks
	gen          uint32            // emission/summary generation that set emittedAs
}

type node struct {
	name   string
	parent *node
	ino    *inode
	kids   map[string]*node // directories only
	// layer that last wrote this node; touched: last layer that wrote it or
	// anything below it. Whiteouts and opaque markers in layer L remove only
	// what was not touched in L.
	layer, touched int
}

func newRoot() *node {
	return &node{ino: &inode{kind: kDir, mode: 0o755, refs: 1}, kids: map[string]*node{}}
}

func (n *node) path() string {
	if n.parent == nil {
		return "/"
	}
	var parts []string
	for ; n.parent != nil; n = n.parent {
		parts = append(parts, n.name)
	}
	var b strings.Builder
	for i := len(parts) - 1; i >= 0; i-- {
		b.WriteByte('/')
		b.WriteString(parts[i])
	}
	return b.String()
}

type flattener struct {
	opts   Options
	spill  *spill
	root   *node
	layer  int
	digest string

	entries, unpacked  int64
	streamed           int64 // bytes of the layer streams read so far
	whiteouts, opaques int64
	curName            string // entry being applied, for errors
	content            string // spill file of the entry just applied
}

func (f *flattener) fail(err error) error {
	return NewEntryError(f.opts.ImageRef, f.digest, f.curName, err)
}

func (f *flattener) applyLayer(ctx context.Context, l Layer) error {
	if l.Open == nil {
		return fmt.Errorf("image %s: layer %s: no Open function", f.opts.ImageRef, l.Digest)
	}
	rc, err := l.Open()
	if err != nil {
		return fmt.Errorf("image %s: open layer %s: %w", f.opts.ImageRef, l.Digest, err)
	}
	defer rc.Close()
	m := &meter{ctx: ctx, r: rc, f: f}
	tr := tar.NewReader(m)
	prev := ""
	var next int64 // where the next header would start in this stream
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			// tar.Reader reads exactly what it needs, so m.n says where it
			// stopped; a proper end is two zero blocks past the last entry.
			if f.opts.RequireEnd && m.n-next < 2*512 {
				return &EntryError{ImageRef: f.opts.ImageRef, Layer: l.Digest, Path: prev, Err: ErrBadEntry,
					Reason: "the tar stream ends without its end-of-archive marker: it was cut short"}
			}
			break
		}
		if err != nil {
			if err := m.stopped(); err != nil {
				return err
			}
			return &EntryError{ImageRef: f.opts.ImageRef, Layer: l.Digest, Path: prev, Err: ErrBadEntry,
				Reason: fmt.Sprintf("corrupt tar after this entry: %v", err)}
		}
		prev = hdr.Name
		f.curName = hdr.Name
		next = m.n + hdr.Size + (512-hdr.Size%512)%512
		f.entries++
		if f.entries > f.opts.MaxEntries {
			return f.fail(rule(ErrTooManyEntries, "more than %d entries", f.opts.MaxEntries))
		}
		if f.opts.Entry != nil && hdr.Typeflag != tar.TypeXGlobalHeader {
			if err := f.opts.Entry(hdr); err != nil {
				return f.fail(err)
			}
		}
		f.content = ""
		if err := f.apply(hdr, tr); err != nil {
			if err := m.stopped(); err != nil {
				return err
			}
			var re *ruleError
			if errors.As(err, &re) {
				return f.fail(err)
			}
			return fmt.Errorf("image %s: layer %s: entry %q: %w", f.opts.ImageRef, l.Digest, hdr.Name, err)
		}
		if f.opts.Applied != nil && hdr.Typeflag != tar.TypeXGlobalHeader {
			if err := f.opts.Applied(hdr, f.content); err != nil {
				return err
			}
		}
	}
	// Read to EOF, so that readers verifying a digest at EOF get to do so;
	// but only a little: a bomb's zeros after the marker are refused unread.
	n, err := io.CopyN(io.Discard, m, MaxTrailingBytes+1)
	if err := m.stopped(); err != nil {
		return err
	}
	switch {
	case err == nil:
		return &EntryError{ImageRef: f.opts.ImageRef, Layer: l.Digest, Path: prev, Err: ErrBadEntry,
			Reason: fmt.Sprintf("more than %d bytes follow the end of the tar archive", MaxTrailingBytes)}
	case err != io.EOF:
		return fmt.Errorf("image %s: layer %s: reading %d bytes after the end of the tar archive: %w", f.opts.ImageRef, l.Digest, n, err)
	}
	return nil
}

// meter reads a layer stream for Flatten: it stops at the caller's
// cancellation and when the bytes read over all layers pass the limit.
type meter struct {
	ctx  context.Context
	r    io.Reader
	f    *flattener
	n    int64 // bytes read from this layer
	stop error // why reading stopped, when the meter stopped it
}

func (m *meter) Read(p []byte) (int, error) {
	if m.stop != nil {
		return 0, m.stop
	}
	if err := m.ctx.Err(); err != nil {
		m.stop = err
		return 0, err
	}
	// Never read past the limit: ask for at most one byte beyond it.
	room := m.f.opts.MaxUnpackedSize - m.f.streamed + 1
	if int64(len(p)) > room {
		p = p[:room]
	}
	n, err := m.r.Read(p)
	m.n += int64(n)
	m.f.streamed += int64(n)
	if m.f.streamed > m.f.opts.MaxUnpackedSize {
		m.stop = m.f.fail(rule(ErrTooLarge, "the layers' tar streams hold more than %d bytes (max_unpacked_size); reading stopped there",
			m.f.opts.MaxUnpackedSize))
		return 0, m.stop
	}
	return n, err
}

// stopped returns why the meter stopped reading (the caller's
// cancellation or the limit), or nil when it did not.
func (m *meter) stopped() error {
	if m.stop != nil {
		return m.stop
	}
	if err := m.ctx.Err(); err != nil {
		return err
	}
	return nil
}

// ext4 stores seconds as 32 bits plus 2 epoch bits: 1901-12-13 … 2446-05-10.
const (
	minTime = -(1 << 31)
	maxTime = 1<<34 - 1<<31 - 1
)

func clampTime(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return max(minTime, min(maxTime, t.Unix()))
}

const (
	whPrefix     = ".wh."
	opaqueMarker = ".wh..wh..opq"
)

func (f *flattener) apply(hdr *tar.Header, tr *tar.Reader) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil // global PAX records carry nothing we apply
	}
	p, err := CleanPath(hdr.Name)
	if err != nil {
		return err
	}
	var comps []string
	if p != "" {
		comps = strings.Split(p, "/")
	}
	// Whiteout markers and aufs metadata.
	for i, c := range comps {
		if f.opts.Literal || !strings.HasPrefix(c, whPrefix) {
			continue
		}
		if strings.HasPrefix(c, whPrefix+whPrefix) {
			if i == len(comps)-1 && c == opaqueMarker {
				return f.opaque(comps[:i], hdr)
			}
			return nil // aufs ".wh..wh.plnk" and friends: not content
		}
		if i != len(comps)-1 {
			return rule(ErrBadName, "whiteout marker %q used as a directory", c)
		}
		return f.whiteout(comps[:i], strings.TrimPrefix(c, whPrefix))
	}

	ino, err := f.newInode(hdr, tr)
	if err != nil {
		return err
	}
	mtime := clampTime(hdr.ModTime)
	if len(comps) == 0 {
		if ino == nil || ino.kind != kDir {
			return rule(ErrBadEntry, "the root can only be a directory")
		}
		ino.refs = 1
		f.root.ino = ino
		f.root.layer = f.layer
		f.touch(f.root)
		return nil
	}
	parent, err := f.walkDir(f.root, comps[:len(comps)-1], true, mtime, new(int))
	if err != nil {
		return err
	}
	name := comps[len(comps)-1]
	if ino == nil { // hardlink
		t, err := f.linkTarget(hdr.Linkname)
		if err != nil {
			return err
		}
		f.place(parent, name, t.ino)
		return nil
	}
	if old := parent.kids[name]; ino.kind == kDir && old != nil && old.ino.kind == kDir {
		ino.refs = 1
		old.ino = ino
		old.layer = f.layer
		f.touch(old)
		return nil
	}
	f.place(parent, name, ino)
	return nil
}

// newInode validates hdr and builds its inode (reading regular content into
// the spill). It returns nil for hardlinks, which share their target's inode.
func (f *flattener) newInode(hdr *tar.Header, tr *tar.Reader) (*inode, error) {
	ino := &inode{
		mode:  hdr.Mode & 0o7777,
		uid:   hdr.Uid,
		gid:   hdr.Gid,
		mtime: clampTime(hdr.ModTime),
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		ino.kind = kDir
	case tar.TypeReg, tar.TypeGNUSparse, tar.TypeCont:
		ino.kind = kReg
	case tar.TypeSymlink:
		ino.kind = kSymlink
		if err := CheckLinkTarget(hdr.Linkname); err != nil {
			return nil, err
		}
		ino.target = hdr.Linkname
		ino.mode = 0o777 // Linux ignores symlink permissions and always shows 0777
	case tar.TypeLink:
		if _, err := CleanPath(hdr.Linkname); err != nil {
			return nil, hardlinkRule(err)
		}
		return nil, nil
	case tar.TypeChar, tar.TypeBlock:
		ino.kind = kChar
		if hdr.Typeflag == tar.TypeBlock {
			ino.kind = kBlock
		}
		// Linux dev_t: 12-bit major, 20-bit minor.
		if hdr.Devmajor < 0 || hdr.Devmajor >= 1<<12 || hdr.Devminor < 0 || hdr.Devminor >= 1<<20 {
			return nil, rule(ErrBadEntry, "device number %d:%d out of range", hdr.Devmajor, hdr.Devminor)
		}
		ino.major, ino.minor = hdr.Devmajor, hdr.Devminor
	case tar.TypeFifo:
		ino.kind = kFifo
	default:
		return nil, rule(ErrBadEntry, "unsupported entry type %q", hdr.Typeflag)
	}
	// ext4 stores 32-bit ids; (u32)-1 means "no change" to chown.
	if hdr.Uid < 0 || hdr.Uid >= 1<<32-1 || hdr.Gid < 0 || hdr.Gid >= 1<<32-1 {
		return nil, rule(ErrBadEntry, "uid/gid %d/%d out of range", hdr.Uid, hdr.Gid)
	}
	meta := int64(len(ino.target))
	var xsize int64
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		if err := CheckXattrName(name); err != nil {
			return nil, err
		}
		xsize += int64(len(name) + len(v))
		if xsize > MaxXattrBytes {
			return nil, rule(ErrTooLarge, "xattrs of more than %d bytes", MaxXattrBytes)
		}
		if ino.xattrs == nil {
			ino.xattrs = map[string]string{}
		}
		ino.xattrs[name] = v
	}
	meta += xsize
	size := int64(0)
	if ino.kind == kReg {
		if hdr.Size < 0 {
			return nil, rule(ErrBadEntry, "negative size")
		}
		size = hdr.Size
	}
	if f.unpacked+meta+size > f.opts.MaxUnpackedSize {
		return nil, rule(ErrTooLarge, "unpacking %d more bytes would exceed %d (max_unpacked_size; already %d)",
			meta+size, f.opts.MaxUnpackedSize, f.unpacked)
	}
	f.unpacked += meta + size
	if ino.kind == kReg {
		var p string
		var err error
		taken := false
		if f.opts.Content != nil && size > 0 {
			p = f.spill.next()
			if taken, err = f.opts.Content(hdr, tr, p); err != nil {
				if errors.Is(err, io.ErrUnexpectedEOF) {
					return nil, rule(ErrBadEntry, "content truncated")
				}
				return nil, err
			}
		}
		if !taken {
			p, err = f.spill.write(tr, size)
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, rule(ErrBadEntry, "content truncated")
			}
			return nil, err
		}
		ino.content, ino.size = p, size
		f.content = p
	}
	return ino, nil
}

func hardlinkRule(err error) error {
	var re *ruleError
	if errors.As(err, &re) {
		return &ruleError{sentinel: re.sentinel, reason: "hardlink target: " + re.reason}
	}
	return err
}

// walkDir resolves comps below dir to a directory, following symlinks
// inside the image root. Missing components are created as implicit
// directories when create is set (tar streams often omit parents);
// otherwise a missing component yields (nil, nil). comps may contain ".."
// and "." only when they come from a symlink target.
func (f *flattener) walkDir(dir *node, comps []string, create bool, mtime int64, hops *int) (*node, error) {
	for _, c := range comps {
		switch c {
		case "", ".":
			continue
		case "..":
			if dir.parent == nil {
				return nil, rule(ErrPathEscape, "climbs above the image root")
			}
			dir = dir.parent
			continue
		}
		child := dir.kids[c]
		if child == nil {
			if !create {
				return nil, nil
			}
			child = f.place(dir, c, &inode{kind: kDir, mode: 0o755, mtime: mtime})
		}
		switch child.ino.kind {
		case kDir:
			dir = child
		case kSymlink:
			*hops++
			if *hops > 40 {
				return nil, rule(ErrBadLink, "too many levels of symbolic links at %q", child.path())
			}
			start := child.parent
			if strings.HasPrefix(child.ino.target, "/") {
				start = f.root
			}
			next, err := f.walkDir(start, strings.Split(child.ino.target, "/"), false, mtime, hops)
			if errors.Is(err, ErrPathEscape) {
				return nil, rule(ErrPathEscape, "symlink %q -> %q climbs above the image root", child.path(), child.ino.target)
			}
			if err != nil {
				return nil, err
			}
			if next == nil {
				if !create {
					return nil, nil
				}
				return nil, rule(ErrBadLink, "symlink %q -> %q points to a missing directory", child.path(), child.ino.target)
			}
			dir = next
		default:
			return nil, rule(ErrBadEntry, "%q is not a directory", child.path())
		}
	}
	return dir, nil
}

// linkTarget finds the node a hardlink points to. Parent components are
// resolved like any path; the last one is not followed (link(2) semantics).
func (f *flattener) linkTarget(linkname string) (*node, error) {
	p, err := CleanPath(linkname)
	if err != nil {
		return nil, hardlinkRule(err)
	}
	if p == "" {
		return nil, rule(ErrBadLink, "hardlink to the root directory")
	}
	comps := strings.Split(p, "/")
	parent, err := f.walkDir(f.root, comps[:len(comps)-1], false, 0, new(int))
	if err != nil {
		return nil, hardlinkRule(err)
	}
	var t *node
	if parent != nil {
		t = parent.kids[comps[len(comps)-1]]
	}
	if t == nil {
		return nil, rule(ErrBadLink, "hardlink target %q does not exist", linkname)
	}
	if t.ino.kind == kDir {
		return nil, rule(ErrBadLink, "hardlink target %q is a directory", linkname)
	}
	return t, nil
}

// place puts a new node for ino at parent/name, replacing what was there.
func (f *flattener) place(parent *node, name string, ino *inode) *node {
	ino.refs++ // before removing the old node: it may hold the same inode
	if old := parent.kids[name]; old != nil {
		f.remove(old)
	}
	n := &node{name: name, parent: parent, ino: ino, layer: f.layer, touched: f.layer}
	if ino.kind == kDir {
		n.kids = map[string]*node{}
	}
	parent.kids[name] = n
	f.touch(parent)
	return n
}

// touch marks n and its ancestors as written in the current layer. An
// ancestor already marked has all of its own ancestors marked too.
func (f *flattener) touch(n *node) {
	for ; n != nil && n.touched != f.layer; n = n.parent {
		n.touched = f.layer
	}
}

// remove unlinks n and releases the content of inodes left without names.
func (f *flattener) remove(n *node) {
	delete(n.parent.kids, n.name)
	f.release(n)
}

func (f *flattener) release(n *node) {
	for _, c := range n.kids {
		f.release(c)
	}
	n.ino.refs--
	if n.ino.refs == 0 && n.ino.kind == kReg {
		f.spill.release(n.ino.content)
	}
}

// removeLower removes what lower layers put at or below n, keeping what
// the current layer wrote.
func (f *flattener) removeLower(n *node) {
	if n.touched < f.layer {
		f.remove(n)
		return
	}
	for _, c := range n.kids {
		f.removeLower(c)
	}
}

func (f *flattener) whiteout(parentComps []string, name string) error {
	switch name {
	case "":
		return rule(ErrBadName, "whiteout without a name")
	case ".":
		return rule(ErrBadName, "whiteout of '.'")
	case "..":
		return rule(ErrPathEscape, "whiteout of '..'")
	}
	parent, err := f.walkDir(f.root, parentComps, false, 0, new(int))
	if err != nil || parent == nil {
		return err
	}
	if n := parent.kids[name]; n != nil {
		f.removeLower(n)
		f.whiteouts++
	}
	return nil
}

func (f *flattener) opaque(dirComps []string, hdr *tar.Header) error {
	dir, err := f.walkDir(f.root, dirComps, true, clampTime(hdr.ModTime), new(int))
	if err != nil {
		return err
	}
	f.touch(dir)
	for _, c := range dir.kids {
		f.removeLower(c)
	}
	f.opaques++
	return nil
}

// sortedKids returns n's children in byte order, for a deterministic stream.
func sortedKids(n *node) []*node {
	kids := make([]*node, 0, len(n.kids))
	for _, c := range n.kids {
		kids = append(kids, c)
	}
	sort.Slice(kids, func(i, j int) bool { return kids[i].name < kids[j].name })
	return kids
}
