package ext4fs

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"
)

// Options says what to write.
type Options struct {
	// Part, a slash path relative to the root ("" for the root), is written
	// alone as the stream's one top entry Name; nil writes the whole tree,
	// names relative to the root, the root itself left out (as
	// tartree.TarDir does).
	Part *string
	Name string
	// SkipEmptyLostFound leaves out an empty lost+found at the image's
	// root (mke2fs makes one).
	SkipEmptyLostFound bool
}

// Limits of a walk, against hostile images.
const (
	maxDirBytes  = 256 << 20 // one directory's blocks
	maxPathDepth = 4096
	maxFileSize  = 1 << 44 // ext4's own limit with 4 KiB blocks: 16 TiB
	maxLinkLen   = 4096
	// Names beyond one per inode (hardlinks) a walk accepts in all.
	maxExtraNames = 1 << 20
)

// ErrTooLarge: the files' sizes add up to more than a walk streams.
var ErrTooLarge = fmt.Errorf("too large to export")

// maxContentFactor bounds the bytes of content a walk streams, as a
// multiple of the volume's size.
const maxContentFactor = 4

// ErrNotFound: Part names nothing in the image.
var ErrNotFound = fmt.Errorf("no such file or directory")

// ErrLinkOnTheWay: Part goes through a symbolic link.
var ErrLinkOnTheWay = fmt.Errorf("a symbolic link on the way")

// entry is one tar entry the walk found; content is read in a second pass.
type entry struct {
	hdr  tar.Header
	ino  *inode
	exts []extent
}

// WriteTar checks the image at path and writes its tree (or opts.Part) to
// w as a tar stream, without owners (whoever unpacks it owns the files):
// directories before their children, names sorted, hardlinked regular files
// as one content and links to it, sockets left out (tar has no type for
// them). Every structure is read and checked before the first byte is
// written, so ErrUnsupported, ErrCorrupt, ErrNotFound and ErrLinkOnTheWay
// leave w untouched; ctx bounds the whole.
func WriteTar(ctx context.Context, imagePath string, w io.Writer, opts Options) error {
	img, err := open(imagePath)
	if err != nil {
		return err
	}
	defer img.f.Close()
	wk := &walker{img: img, ctx: ctx, dirs: map[uint32]bool{}, links: map[uint32]string{}, names: map[uint32]uint32{}}
	start, name := uint32(rootIno), ""
	if opts.Part != nil {
		if start, err = wk.lookup(*opts.Part); err != nil {
			return err
		}
		name = opts.Name
		if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
			return fmt.Errorf("%q cannot name what is copied", name)
		}
	}
	ino, err := img.inode(start)
	if err != nil {
		return err
	}
	wk.skipLostFound = opts.SkipEmptyLostFound
	if err := wk.walk(ino, name, 0); err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	tw := tar.NewWriter(bw)
	buf := make([]byte, 1<<20)
	for i := range wk.entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		e := &wk.entries[i]
		if err := tw.WriteHeader(&e.hdr); err != nil {
			return fmt.Errorf("%s: %w", e.hdr.Name, err)
		}
		if e.hdr.Typeflag == tar.TypeReg && e.hdr.Size > 0 {
			if err := img.content(e.ino, e.exts, tw, buf); err != nil {
				return fmt.Errorf("%s: %w", e.hdr.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

type walker struct {
	img           *image
	ctx           context.Context
	dirs          map[uint32]bool   // directories on the walk, against cycles
	links         map[uint32]string // hardlinked regular files: first name
	names         map[uint32]uint32 // names seen of each non-directory
	entries       []entry
	skipLostFound bool
	content       int64 // bytes of regular files so far
}

// dirent is one name in a directory.
type dirent struct {
	name string
	ino  uint32
}

// readDir lists the names of directory ino (".", ".." left out), sorted.
func (wk *walker) readDir(ino *inode) ([]dirent, error) {
	img := wk.img
	if ino.size > maxDirBytes || ino.size%img.bs != 0 {
		return nil, corrupt("directory inode %d: size %d", ino.num, ino.size)
	}
	exts, err := img.extents(ino)
	if err != nil {
		return nil, err
	}
	data := make([]byte, ino.size)
	for _, e := range exts {
		if e.unwritten {
			continue
		}
		off := int64(e.logical) * img.bs
		n := min(int64(e.length)*img.bs, ino.size-off)
		if _, err := img.f.ReadAt(data[off:off+n], int64(e.physical)*img.bs); err != nil {
			return nil, corrupt("directory inode %d: %v", ino.num, err)
		}
	}
	le := binary.LittleEndian
	var out []dirent
	for blk := int64(0); blk < ino.size; blk += img.bs {
		b := data[blk : blk+img.bs]
		for p := 0; p < len(b); {
			if len(b)-p < 8 {
				return nil, corrupt("directory inode %d: entry past its block", ino.num)
			}
			num, recLen, nameLen := le.Uint32(b[p:]), int(le.Uint16(b[p+4:])), int(b[p+6])
			if recLen < 8 || recLen%4 != 0 || p+recLen > len(b) || 8+nameLen > recLen {
				return nil, corrupt("directory inode %d: entry of length %d", ino.num, recLen)
			}
			name := string(b[p+8 : p+8+nameLen])
			p += recLen
			if num == 0 || name == "." || name == ".." {
				continue // free space, an htree node, the checksum tail
			}
			if nameLen == 0 || strings.ContainsAny(name, "/\x00") {
				return nil, corrupt("directory inode %d: entry name %q", ino.num, name)
			}
			if num > img.inodes {
				return nil, corrupt("directory inode %d: %q names inode %d", ino.num, name, num)
			}
			out = append(out, dirent{name: name, ino: num})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	for i := 1; i < len(out); i++ {
		if out[i].name == out[i-1].name {
			return nil, corrupt("directory inode %d: %q twice", ino.num, out[i].name)
		}
	}
	return out, nil
}

// lookup finds the inode of a slash path below the root; only its last
// element may be a symbolic link.
func (wk *walker) lookup(p string) (uint32, error) {
	p = path.Clean("/" + p)[1:]
	cur := uint32(rootIno)
	if p == "" {
		return cur, nil
	}
	parts := strings.Split(p, "/")
	for i, part := range parts {
		ino, err := wk.img.inode(cur)
		if err != nil {
			return 0, err
		}
		if ino.mode&sIFMT == sIFLNK {
			return 0, fmt.Errorf("%s: %w to %s", strings.Join(parts[:i], "/"), ErrLinkOnTheWay, p)
		}
		if ino.mode&sIFMT != sIFDIR {
			return 0, fmt.Errorf("%s: %w", strings.Join(parts[:i+1], "/"), ErrNotFound)
		}
		ents, err := wk.readDir(ino)
		if err != nil {
			return 0, err
		}
		k := sort.Search(len(ents), func(j int) bool { return ents[j].name >= part })
		if k == len(ents) || ents[k].name != part {
			return 0, fmt.Errorf("%s: %w", strings.Join(parts[:i+1], "/"), ErrNotFound)
		}
		cur = ents[k].ino
	}
	return cur, nil
}

// walk records ino as name (the root of a whole-tree walk has no name and
// no entry) and, for a directory, its children.
func (wk *walker) walk(ino *inode, name string, depth int) error {
	if err := wk.ctx.Err(); err != nil {
		return err
	}
	if len(wk.entries) > int(wk.img.inodes)+maxExtraNames {
		return corrupt("more than %d names", int(wk.img.inodes)+maxExtraNames)
	}
	if depth > maxPathDepth {
		return corrupt("directories nested deeper than %d", maxPathDepth)
	}
	if ino.mode&sIFMT != sIFDIR {
		// A name more than the inode's link count: a hostile image
		// multiplying entries (the stream would grow without bound).
		wk.names[ino.num]++
		if wk.names[ino.num] > max(uint32(ino.links), 1) {
			return corrupt("inode %d has more names than its %d links (%s)", ino.num, ino.links, name)
		}
	}
	h := tar.Header{Name: name, Mode: int64(ino.mode & 0o7777), ModTime: time.Unix(ino.mtime, ino.mtimeNs), Format: tar.FormatPAX}
	e := entry{ino: ino}
	switch ino.mode & sIFMT {
	case sIFDIR:
		if wk.dirs[ino.num] {
			return corrupt("directory inode %d is linked twice (%s)", ino.num, name)
		}
		wk.dirs[ino.num] = true
		ents, err := wk.readDir(ino)
		if err != nil {
			return err
		}
		if name != "" {
			h.Typeflag, h.Name = tar.TypeDir, name+"/"
			e.hdr = h
			wk.entries = append(wk.entries, e)
		}
		for _, d := range ents {
			child, err := wk.img.inode(d.ino)
			if err != nil {
				return err
			}
			if ino.num == rootIno && d.name == "lost+found" && wk.skipLostFound && child.mode&sIFMT == sIFDIR {
				if sub, err := wk.readDir(child); err == nil && len(sub) == 0 {
					continue
				}
			}
			cn := d.name
			if name != "" {
				cn = name + "/" + d.name
			}
			if err := wk.walk(child, cn, depth+1); err != nil {
				return err
			}
		}
		return nil
	case sIFREG:
		// Holes stream as zeros: a guest could make a 16 TiB file of one
		// block. What all files hold together is bounded by a multiple of
		// the volume (sparse files beyond it are not worth a stream).
		wk.content += ino.size
		if ino.size > maxFileSize || wk.content > maxContentFactor*int64(wk.img.blocks)*wk.img.bs {
			return fmt.Errorf("%s: %w: its files hold more than %d times the volume's size (%d bytes, with holes counted)",
				name, ErrTooLarge, maxContentFactor, wk.content)
		}
		if ino.links > 1 {
			if first, ok := wk.links[ino.num]; ok {
				h.Typeflag, h.Linkname = tar.TypeLink, first
				e.hdr = h
				wk.entries = append(wk.entries, e)
				return nil
			}
			wk.links[ino.num] = name
		}
		exts, err := wk.img.extents(ino)
		if err != nil {
			return err
		}
		h.Typeflag, h.Size = tar.TypeReg, ino.size
		e.exts = exts
	case sIFLNK:
		t, err := wk.linkTarget(ino)
		if err != nil {
			return err
		}
		h.Typeflag, h.Linkname = tar.TypeSymlink, t
	case sIFCHR:
		h.Typeflag = tar.TypeChar
	case sIFBLK:
		h.Typeflag = tar.TypeBlock
	case sIFIFO:
		h.Typeflag = tar.TypeFifo
	case sIFSOCK:
		return nil // tar has no type for it: left out, as tar does
	default:
		return corrupt("%s: inode %d has mode %#o", name, ino.num, ino.mode)
	}
	if name == "" {
		return corrupt("the root is not a directory")
	}
	e.hdr = h
	wk.entries = append(wk.entries, e)
	return nil
}

// linkTarget reads a symbolic link's target: in the inode when short
// ("fast"), else in its one data block.
func (wk *walker) linkTarget(ino *inode) (string, error) {
	if ino.size == 0 || ino.size > maxLinkLen {
		return "", corrupt("symbolic link inode %d: length %d", ino.num, ino.size)
	}
	if ino.flags&flagExtents == 0 {
		if ino.size >= int64(len(ino.block)) {
			return "", fmt.Errorf("%w: symbolic link inode %d in a block map", ErrUnsupported, ino.num)
		}
		return string(ino.block[:ino.size]), nil
	}
	exts, err := wk.img.extents(ino)
	if err != nil {
		return "", err
	}
	var sb strings.Builder
	if err := wk.img.content(ino, exts, &sb, make([]byte, wk.img.bs)); err != nil {
		return "", err
	}
	t := sb.String()
	if strings.ContainsRune(t, 0) {
		return "", corrupt("symbolic link inode %d: NUL in its target", ino.num)
	}
	return t, nil
}
