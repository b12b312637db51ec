package ext4

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/imaging/ext4/ext4fs"
	"github.com/paddock-vm/paddock/imaging/flatten"
)

// ErrNotStreamed: a Stream gave up (see its reason); the caller builds the
// image from the flattened tree instead (BuildFlattened).
var ErrNotStreamed = errors.New("the tree could not be built while it was read")

// Stream builds a fixed-size, single-owner image (a workspace) while its
// tree is still being read: mkfs makes an empty filesystem at once, and
// one debugfs process, fed on its standard input, creates each entry as
// flatten accepts it (flatten.Options.Applied: Add). A regular file's
// content is taken as flatten reads it (flatten.Options.Content: no spill
// file) and written into the blocks debugfs allocated for it by the
// filler (fill.go). Reading the stream and writing the image so overlap
// instead of following each other, as they must with mkfs.ext4 -d, which
// needs the whole tree staged first.
//
// It follows only a stream it can build exactly as BuildFlattened would:
// every parent a directory named earlier, no name twice, hardlinks to
// regular files earlier in the stream, no device nodes, fifos or xattrs,
// no command line debugfs cannot take, and a tree whose inode count keeps
// the filesystem's inode table at its default size. At the first entry
// that breaks this it gives up: debugfs is stopped, the contents taken
// so far are put at their content paths (from the image, or from memory),
// the partial image removed, and Finish returns ErrNotStreamed. Flatten
// goes on regardless
// (its checks decide what is refused), so the caller falls back on the
// flattened tree having lost only the work done so far.
//
// Owners, and regular files' modes, sizes and mtimes, are set after
// debugfs, in one pass (ext4fs.Patch); then
// e2fsck -fyD indexes directories and checks the result (what it repairs
// is logged, as Build does; a correct stream has none: see the tests).
type Stream struct {
	ctx    context.Context
	cancel context.CancelFunc
	opts   Options
	tools  Tools
	out    string
	img    string
	dir    string // scratch: mke2fs.conf, the empty file
	empty  string
	inodes int64 // -N: the default for the size (FixedInodes of an empty tree)
	start  time.Time

	cmd    *exec.Cmd
	stderr bytes.Buffer
	fill   *filler
	sc     *script
	queue  *chunkQueue
	fed    chan error // the feeder's result: writing the commands to debugfs
	fedErr error
	waited bool
	exited time.Time // debugfs', seen by wait

	flusher chan struct{} // closed: stop writeBack
	flushed chan struct{} // closed by writeBack when it stops

	kinds map[string]byte // clean path -> type ("" is the root)
	// the files whose content Content took, by content path and in order
	taken     map[string]*streamFile
	takenList []*streamFile
	// inodes: debugfs' choices, foreseen (nextIno)
	ipg    uint32            // inodes per group
	iused  []uint32          // inodes used in each group, from its start
	dirIno map[string]uint32 // clean path -> inode of each directory
	dirs   []dirMeta
	root   *tar.Header
	cwd    string
	n      int64 // inodes so far, the root included
	reason string
	done   bool
}

type dirMeta struct {
	path  string
	mtime int64
}

// NewStream makes the empty image (in out's directory, as Build does) and
// starts debugfs. opts.Size and opts.Owner are required; root is the root
// directory's metadata unless the stream has a "./" entry. On error
// nothing is left.
func NewStream(ctx context.Context, out string, root *tar.Header, opts Options) (_ *Stream, err error) {
	if opts.Size <= 0 || opts.Owner == nil {
		return nil, errors.New("ext4 stream: a size and an owner are required")
	}
	if FixedInodes(flatten.Summary{Inodes: 2}, opts.Size) != FixedInodes(flatten.Summary{}, opts.Size) {
		return nil, fmt.Errorf("%w: at %d MiB, the default inode table has no room for the tree's own", ErrNotStreamed, opts.Size>>20)
	}
	tools, err := opts.Tools.resolve()
	if err != nil {
		return nil, err
	}
	caps, err := Probe(ctx, tools.Mke2fs)
	if err != nil {
		return nil, err
	}
	s := &Stream{opts: opts, tools: tools, out: out, root: root, kinds: map[string]byte{"": tar.TypeDir}, cwd: "/", taken: map[string]*streamFile{}, dirIno: map[string]uint32{"": 2},
		inodes: FixedInodes(flatten.Summary{}, opts.Size), start: time.Now(), n: 1}
	s.ctx, s.cancel = context.WithCancel(ctx)
	defer func() {
		if err != nil {
			s.Abort()
		}
	}()
	if s.dir, err = os.MkdirTemp(opts.ScratchDir, "paddock-ext4-"); err != nil {
		return nil, fmt.Errorf("ext4 scratch: %w", err)
	}
	s.empty = filepath.Join(s.dir, "empty")
	if err := os.WriteFile(s.empty, nil, 0o600); err != nil {
		return nil, fmt.Errorf("ext4 scratch: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".partial-")
	if err != nil {
		return nil, fmt.Errorf("create image: %w", err)
	}
	s.img = tmp.Name()
	err = tmp.Truncate(opts.Size)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("size image: %w", err)
	}
	conf := filepath.Join(s.dir, "mke2fs.conf")
	if err := os.WriteFile(conf, []byte(mke2fsConf), 0o600); err != nil {
		return nil, fmt.Errorf("mke2fs config: %w", err)
	}
	ext := "root_owner=0:0"
	if caps.Prezeroed {
		ext += ",assume_storage_prezeroed=1"
	}
	args := []string{"-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0",
		"-N", strconv.FormatInt(s.inodes, 10), "-E", ext}
	if opts.Label != "" {
		args = append(args, "-L", opts.Label)
	}
	if opts.UUID != "" {
		args = append(args, "-U", opts.UUID)
	}
	env := append(os.Environ(), "MKE2FS_CONFIG="+conf, "LC_ALL=C")
	if err := run(s.ctx, ErrMkfs, env, nil, tools.Mke2fs, append(args, s.img)...); err != nil {
		return nil, err
	}

	if s.ipg, s.iused, err = ext4fs.InodeGeometry(s.img); err != nil {
		return nil, fmt.Errorf("image %s: %w", opts.ImageRef, err)
	}
	s.cmd = exec.CommandContext(s.ctx, tools.Debugfs, "-w", "-f", "-", s.img)
	s.cmd.Env = append(os.Environ(), "DEBUGFS_PAGER=__none__", "PAGER=__none__", "LC_ALL=C")
	s.cmd.Stderr = &limitWriter{w: &s.stderr, n: 1 << 20}
	if s.fill, err = newFiller(s.ctx, s.img, opts.Size); err != nil {
		return nil, err
	}
	// the filler's own pipe (not StdoutPipe, which Wait closes): it reads
	// to the end, then writes the last contents
	outR, outW, err := os.Pipe()
	if err != nil {
		s.fill.img.Close()
		return nil, fmt.Errorf("debugfs output: %w", err)
	}
	s.cmd.Stdout = outW // echoed commands, "Allocated inode: N", extents
	stdin, err := s.cmd.StdinPipe()
	if err == nil {
		err = s.cmd.Start()
	}
	outW.Close()
	if err != nil {
		outR.Close()
		s.fill.img.Close()
		return nil, fmt.Errorf("start debugfs: %w", err)
	}
	go s.fill.run(outR)
	s.queue = newChunkQueue()
	s.fed = make(chan error, 1)
	go func() {
		err := s.queue.drain(stdin)
		if cerr := stdin.Close(); err == nil {
			err = cerr
		}
		s.fed <- err
	}()
	s.flusher = make(chan struct{})
	s.flushed = make(chan struct{})
	go s.writeBack()
	// commands go to debugfs 8 KiB (some 60 files) at a time: it keeps
	// up with the stream instead of taking bursts, and has less left to do
	// once the stream ends (64 KiB left it some 50 ms behind)
	s.sc = &script{imageRef: opts.ImageRef, w: bufio.NewWriterSize(s.queue, 8<<10), links: map[string]int{}, allOwned: true, dir: s.dir}
	return s, nil
}

// Reason says why the stream gave up ("" while it has not).
func (s *Stream) Reason() string { return s.reason }

// giveUp stops debugfs, puts the contents Content took where flatten's
// Result expects them (restore) and removes the partial image; Add and
// Content ignore what follows and Finish returns ErrNotStreamed.
func (s *Stream) giveUp(format string, args ...any) {
	if s.reason != "" {
		return
	}
	s.reason = fmt.Sprintf(format, args...)
	if !s.done {
		s.halt()
		if err := s.restore(); err != nil {
			s.reason += fmt.Sprintf(" (and restoring the contents read: %v)", err)
		}
	}
	s.Abort()
}

// halt stops debugfs and waits for it and the filler.
func (s *Stream) halt() {
	s.cancel()
	if s.queue != nil {
		s.queue.close()
	}
	if s.cmd != nil && s.cmd.Process != nil {
		s.stopWriteBack()
		_, _ = s.wait()
	}
}

// Abort stops debugfs and removes everything the Stream made. It may be
// called more than once, and after Finish (which it then leaves alone).
func (s *Stream) Abort() {
	if s.done {
		return
	}
	s.done = true
	s.halt()
	if s.img != "" {
		os.Remove(s.img)
	}
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
	if s.reason == "" {
		s.reason = "aborted"
	}
}

// Add creates one entry, as flatten.Options.Applied: h as the Entry hook
// left it, content its spill file. It never fails: what it cannot follow
// makes it give up, and flatten's own checks refuse what is bad.
func (s *Stream) Add(h *tar.Header, content string) error {
	if s.done {
		return nil
	}
	if err := s.add(h, content); err != nil {
		s.giveUp("entry %q: %v", h.Name, err)
	}
	return nil
}

var errNotFollowed = errors.New("not streamed")

// prepare checks that h is an entry the Stream can follow and counts its
// inode; clean is "" for the root (whose metadata it keeps).
func (s *Stream) prepare(h *tar.Header) (clean, parent, base string, err error) {
	if clean, err = flatten.CleanPath(h.Name); err != nil {
		return "", "", "", err
	}
	if hasXattrs(h) {
		return "", "", "", fmt.Errorf("%w: xattrs", errNotFollowed)
	}
	if clean == "" {
		if h.Typeflag != tar.TypeDir {
			return "", "", "", fmt.Errorf("%w: the root is not a directory", errNotFollowed)
		}
		s.root = h
		return "", "", "", nil
	}
	if _, dup := s.kinds[clean]; dup {
		return "", "", "", fmt.Errorf("%w: a second entry of the name", errNotFollowed)
	}
	parent, base = "", clean
	if i := strings.LastIndexByte(clean, '/'); i >= 0 {
		parent, base = clean[:i], clean[i+1:]
	}
	if s.kinds[parent] != tar.TypeDir {
		return "", "", "", fmt.Errorf("%w: the parent is not a directory named earlier", errNotFollowed)
	}
	if h.Typeflag != tar.TypeLink {
		s.n++
		if s.n+s.n/4+4096 > s.inodes {
			return "", "", "", fmt.Errorf("%w: more inodes than the default inode table is sized for", errNotFollowed)
		}
	}
	return clean, parent, base, nil
}

func (s *Stream) add(h *tar.Header, content string) error {
	if sf := s.taken[content]; sf != nil && content != "" {
		return nil // made by Content
	}
	clean, parent, base, err := s.prepare(h)
	if err != nil || clean == "" {
		return err
	}
	p := "/" + clean
	switch h.Typeflag {
	case tar.TypeDir:
		if err := s.chdir(h.Name, "/"+parent); err != nil {
			return err
		}
		ino, err := s.nextIno(parent)
		if err != nil {
			return err
		}
		s.dirIno[clean] = ino
		if err := s.sc.line(h.Name, "mkdir", quote(base)); err != nil {
			return err
		}
		if err := s.sc.add(Fixup{Hdr: h, SkipMtime: true, SkipMode: h.Mode&0o7777 == 0o755}); err != nil {
			return err
		}
		s.dirs = append(s.dirs, dirMeta{path: p, mtime: h.ModTime.Unix()})
	case tar.TypeReg:
		if h.Size < 0 || h.Size > 0 && content == "" {
			return fmt.Errorf("%w: content of %d bytes missing", errNotFollowed, h.Size)
		}
		if err := s.chdir(h.Name, "/"+parent); err != nil {
			return err
		}
		// created empty; its blocks allocated unwritten and listed for the
		// filler (see fill.go); mode, size and mtime set by ext4fs.Patch
		sf, write, err := s.newFile(h, parent, base, content)
		if err != nil {
			return err
		}
		if err := s.sc.line(h.Name, write); err != nil {
			return err
		}
		if content != "" {
			data, err := dataRanges(content, h.Size)
			if err != nil {
				return err
			}
			if err := s.addPiece(h.Name, base, &piece{file: sf, hi: uint64(h.Size+fillBlock-1) / fillBlock, data: data}); err != nil {
				return err
			}
		}
		if h.Size >= 1<<20 {
			// let debugfs start on a large file while the next is read
			if err := s.sc.w.Flush(); err != nil {
				return err
			}
		}
	case tar.TypeSymlink:
		if err := flatten.CheckLinkTarget(h.Linkname); err != nil {
			return err
		}
		if err := s.chdir(h.Name, "/"+parent); err != nil {
			return err
		}
		if _, err := s.nextIno(parent); err != nil {
			return err
		}
		if err := s.sc.line(h.Name, "symlink", quote(base), quote(h.Linkname)); err != nil {
			return err
		}
		if err := s.sc.add(Fixup{Hdr: h, SkipMode: true}); err != nil {
			return err
		}
	case tar.TypeLink:
		t, err := flatten.CleanPath(h.Linkname)
		if err != nil {
			return err
		}
		if s.kinds[t] != tar.TypeReg {
			return fmt.Errorf("%w: hardlink target %q is not a regular file earlier in the stream", errNotFollowed, h.Linkname)
		}
		if err := s.chdir(h.Name, "/"); err != nil {
			return err
		}
		if err := s.sc.add(Fixup{Hdr: h, Create: true}); err != nil {
			return err
		}
		s.kinds[clean] = tar.TypeReg
		return nil
	default:
		return fmt.Errorf("%w: entry type %q", errNotFollowed, h.Typeflag)
	}
	s.kinds[clean] = h.Typeflag
	return nil
}

// Content takes a regular file's content as flatten reads it
// (flatten.Options.Content), with no spill file: it creates the file,
// then reads the content a piece at a time into memory (bounded: see
// filler.acquire) and allocates each piece's data blocks for the filler
// to write. It declines what it does not follow, and everything once it
// has given up; giving up while it reads, it puts what it read and the
// rest at path.
func (s *Stream) Content(h *tar.Header, r io.Reader, path string) (bool, error) {
	if s.done || h.Typeflag != tar.TypeReg || h.Size <= 0 {
		return false, nil
	}
	clean, parent, base, err := s.prepare(h)
	if err == nil && clean == "" {
		err = fmt.Errorf("%w: the root is not a directory", errNotFollowed)
	}
	if err == nil {
		err = s.chdir(h.Name, "/"+parent)
	}
	var sf *streamFile
	if err == nil {
		var write string
		if sf, write, err = s.newFile(h, parent, base, path); err == nil {
			err = s.sc.line(h.Name, write)
		}
	}
	if err != nil {
		s.giveUp("entry %q: %v", h.Name, err)
		return false, nil
	}
	s.kinds[clean] = tar.TypeReg
	s.taken[path] = sf
	s.takenList = append(s.takenList, sf)
	for lo := uint64(0); int64(lo)*fillBlock < h.Size; {
		off := int64(lo) * fillBlock
		k := min(pieceSize, h.Size-off)
		if err := s.fill.acquire(k, s.sc.w.Flush); err != nil {
			s.giveUp("entry %q: %v", h.Name, err)
			return true, s.rest(sf, r, off)
		}
		p := &piece{file: sf, lo: lo, hi: lo + uint64(k+fillBlock-1)/fillBlock, buf: getBuf(k)}
		if _, err := io.ReadFull(r, p.buf); err != nil {
			s.fill.release(k)
			return false, err
		}
		lo = p.hi
		if p.data = blockData(p.buf, p.lo); len(p.data) == 0 {
			s.fill.release(k) // all holes
			putBuf(p.buf)
			p.buf = nil
			continue
		}
		if err := s.addPiece(h.Name, base, p); err != nil {
			s.giveUp("entry %q: %v", h.Name, err)
			return true, s.rest(sf, r, int64(lo)*fillBlock)
		}
	}
	if h.Size >= 1<<20 {
		// let debugfs start on a large file while the next is read
		if err := s.sc.w.Flush(); err != nil {
			return false, err
		}
	}
	return true, nil
}

// newFile announces a regular file to the filler; the caller writes its
// write command (the filler's copy is the parser's from then on).
func (s *Stream) newFile(h *tar.Header, parent, base, path string) (*streamFile, string, error) {
	ino, err := s.nextIno(parent)
	if err != nil {
		return nil, "", err
	}
	write := "write " + quote(s.empty) + " " + quote(base)
	sf := &streamFile{write: write, path: path, ino: ino,
		meta: ext4fs.File{Perm: uint16(h.Mode & 0o7777), Size: h.Size, Mtime: h.ModTime.Unix()}}
	s.fill.push(event{file: sf})
	return sf, write, nil
}

// nextIno is the inode debugfs will give what is made next, in parent:
// libext2fs takes the first free inode from the start of the parent's
// group on, wrapping, and in a new image never freed, a group's inodes in
// use are its first ones (ext4fs.InodeGeometry). Commands then name a
// file by its inode ("<N>"), which debugfs finds without a directory
// lookup (and a checksum of the directory's blocks). The filler checks
// each against what debugfs says it allocated (a write's "Allocated
// inode"); a directory foreseen wrong shows in its files'.
func (s *Stream) nextIno(parent string) (uint32, error) {
	dir, ok := s.dirIno[parent]
	if !ok || dir == 0 {
		return 0, fmt.Errorf("%w: no inode for the directory", errNotFollowed)
	}
	n := uint32(len(s.iused))
	g0 := (dir - 1) / s.ipg
	for i := range n {
		if g := (g0 + i) % n; s.iused[g] < s.ipg {
			s.iused[g]++
			return g*s.ipg + s.iused[g], nil
		}
	}
	return 0, fmt.Errorf("%w: no free inode", errNotFollowed)
}

// addPiece allocates p's data blocks (unwritten) and has debugfs list
// them for the filler. The file is debugfs' cwd.
func (s *Stream) addPiece(name, base string, p *piece) error {
	if len(p.data) == 0 {
		return nil
	}
	p.file.meta.Written = true
	p.file.pieces = append(p.file.pieces, p)
	rel := fmt.Sprintf("<%d>", p.file.ino)
	p.ex = "ex -l " + rel
	s.fill.push(event{piece: p})
	for _, r := range p.data {
		if err := s.sc.line(name, fmt.Sprintf("fallocate %s %d %d", rel, r.start, r.end-1)); err != nil {
			return err
		}
	}
	if err := s.sc.line(name, p.ex); err != nil {
		return err
	}
	// a comment, echoed as it is: the end of ex's output, so that the
	// filler need not wait for the next command to write the piece
	return s.sc.line(name, "#")
}

// restore makes, for each file whose content Content took, its content
// path: from the image for the pieces written, from memory for the
// others. Debugfs and the filler must have stopped.
func (s *Stream) restore() error {
	if len(s.takenList) == 0 {
		return nil
	}
	img, err := os.Open(s.img)
	if err != nil {
		return err
	}
	defer img.Close()
	buf := make([]byte, 1<<20)
	for _, sf := range s.takenList {
		if err := restoreFile(img, sf, buf); err != nil {
			return fmt.Errorf("content of inode %d: %w", sf.ino, err)
		}
	}
	return nil
}

func restoreFile(img *os.File, sf *streamFile, buf []byte) error {
	out, err := os.OpenFile(sf.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	size := sf.meta.Size
	for _, p := range sf.pieces {
		switch {
		case p.written:
			for _, e := range p.exts {
				from := int64(e.logical) * fillBlock
				end := min(from+int64(e.length)*fillBlock, size)
				for pos := from; pos < end; {
					k := min(int64(len(buf)), end-pos)
					if _, err := img.ReadAt(buf[:k], int64(e.physical)*fillBlock+pos-from); err != nil {
						return err
					}
					if _, err := out.WriteAt(buf[:k], pos); err != nil {
						return err
					}
					pos += k
				}
			}
		case p.buf != nil:
			base := int64(p.lo) * fillBlock
			for _, r := range p.data {
				from, end := int64(r.start)*fillBlock, min(int64(r.end)*fillBlock, base+int64(len(p.buf)))
				if _, err := out.WriteAt(p.buf[from-base:end-base], from); err != nil {
					return err
				}
			}
		}
	}
	if err := out.Truncate(size); err != nil {
		return err
	}
	return out.Close()
}

// rest writes what is left of a content Content was reading when it gave
// up, from off on, at its path (restored), zero blocks left holes.
func (s *Stream) rest(sf *streamFile, r io.Reader, off int64) error {
	out, err := os.OpenFile(sf.path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("content of inode %d: %w", sf.ino, err)
	}
	defer out.Close()
	buf := make([]byte, 1<<20)
	for off < sf.meta.Size {
		k := min(int64(len(buf)), sf.meta.Size-off)
		if _, err := io.ReadFull(r, buf[:k]); err != nil {
			return err
		}
		for _, br := range blockData(buf[:k], uint64(off)/fillBlock) {
			from, end := int64(br.start)*fillBlock, min(int64(br.end)*fillBlock, off+k)
			if _, err := out.WriteAt(buf[from-off:end-off], from); err != nil {
				return fmt.Errorf("content of inode %d: %w", sf.ino, err)
			}
		}
		off += k
	}
	return out.Close()
}

// blockData lists the blocks of buf, a content's bytes from block lo on,
// that are not all zeros; a partial last block is data, zeros or not (as
// the spill would keep it).
func blockData(buf []byte, lo uint64) []blockRange {
	var out []blockRange
	var zero [fillBlock]byte
	for i := 0; i < len(buf); i += fillBlock {
		blk := buf[i:min(i+fillBlock, len(buf))]
		if len(blk) == fillBlock && bytes.Equal(blk, zero[:]) {
			continue
		}
		b := lo + uint64(i/fillBlock)
		if n := len(out); n > 0 && out[n-1].end == b {
			out[n-1].end++
			continue
		}
		out = append(out, blockRange{b, b + 1})
	}
	return out
}

// chdir makes dir debugfs' cwd. Entries are created by their base name in
// their parent as the cwd: "write" creates its argument literally in the
// cwd, and mkdir, symlink and ln resolve "/name" against the cwd, not the
// root (an empty parent path is the cwd). sif takes absolute paths.
func (s *Stream) chdir(name, dir string) error {
	if s.cwd == dir {
		return nil
	}
	s.cwd = dir
	return s.sc.line(name, "cd", quote(dir))
}

// Finish completes the image once flatten has read the whole stream (sum
// is its Summary): directory and root metadata, link counts, owners,
// e2fsck -fyD; then it is renamed to out (mode opts.Mode, default 0444).
// A tree that does not fit is refused with ErrTooSmall as Build refuses
// it; a stream given up on returns ErrNotStreamed. Either way, on error
// nothing is left.
//
// release, when set, is called on a goroutine of its own once debugfs has
// read every content file (the caller frees them while the image is
// checked and synced); Finish returns only after it has returned.
func (s *Stream) Finish(sum flatten.Summary, release func()) (res *Result, err error) {
	if s.done {
		return nil, fmt.Errorf("%w: %s", ErrNotStreamed, s.reason)
	}
	defer func() {
		if err != nil {
			s.Abort()
		}
	}()
	if err := CheckFits(sum, s.opts.Size); err != nil {
		return nil, err
	}
	if FixedInodes(sum, s.opts.Size) != s.inodes {
		s.giveUp("the tree needs an inode table of %d inodes, not %d", FixedInodes(sum, s.opts.Size), s.inodes)
		return nil, fmt.Errorf("%w: %s", ErrNotStreamed, s.reason)
	}
	if s.root != nil {
		r := *s.root
		r.Name = "./"
		if err := s.sc.add(Fixup{Hdr: &r, SkipOwner: true}); err != nil {
			return nil, err
		}
	}
	for _, d := range s.dirs {
		if err := s.sc.line(d.path, "sif", quote(d.path), "mtime", fmt.Sprintf("@%d", d.mtime)); err != nil {
			return nil, err
		}
	}
	if err := s.sc.finish(); err != nil {
		return nil, err
	}
	s.queue.close()
	t0 := time.Now()
	s.stopWriteBack()
	ferr, werr := s.wait()
	filled := time.Now()
	waited := filled.Sub(t0)
	if ctxErr := s.ctx.Err(); ctxErr != nil {
		return nil, ctxErr
	}
	if ferr != nil || werr != nil {
		// the build from the flattened tree says what is wrong, if anything
		s.giveUp("debugfs: %v %v: %s", ferr, werr, firstLines(s.stderr.String(), 5))
		return nil, fmt.Errorf("%w: %s", ErrNotStreamed, s.reason)
	}
	if bad := debugfsErrors(s.stderr.String()); len(bad) > 0 {
		s.giveUp("debugfs: %d error lines, first: %s", len(bad), firstLines(strings.Join(bad, "\n"), 5))
		return nil, fmt.Errorf("%w: %s", ErrNotStreamed, s.reason)
	}
	if err := s.fill.err; err != nil {
		s.giveUp("contents: %v", err)
		return nil, fmt.Errorf("%w: %s", ErrNotStreamed, s.reason)
	}
	// From here on the stream is not given up: the content files are done with.
	log := s.opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if release != nil {
		released := make(chan struct{})
		go func() {
			defer close(released)
			release()
		}()
		defer func() {
			t := time.Now()
			<-released
			log.Debug("ext4 stream: contents released", "image", s.opts.ImageRef, "waited", time.Since(t))
		}()
	}
	res = &Result{Path: s.out, Size: s.opts.Size, Inodes: s.inodes, FixupLines: s.sc.lines}
	res.Timings.Debugfs = time.Since(s.start)
	t := time.Now()
	files := make(map[uint32]ext4fs.File, len(s.fill.files))
	for ino, sf := range s.fill.files {
		files[ino] = sf.meta
	}
	if _, err := ext4fs.Patch(s.img, s.opts.Owner.UID, s.opts.Owner.GID, files); err != nil {
		return nil, fmt.Errorf("image %s: set owners and file metadata: %w", s.opts.ImageRef, err)
	}
	if res.FsckFixes, err = fsck(s.ctx, s.tools.E2fsck, s.img); err != nil {
		return nil, fmt.Errorf("image %s: %w", s.opts.ImageRef, err)
	}
	if len(res.FsckFixes) > 0 {
		log.Warn("e2fsck repaired the new image", "image", s.opts.ImageRef, "fixes", res.FsckFixes)
	}
	res.Timings.Fsck = time.Since(t)
	mode := s.opts.Mode
	if mode == 0 {
		mode = 0o444
	}
	t = time.Now()
	if err := finishFile(s.img, s.out, mode); err != nil {
		return nil, err
	}
	sync := time.Since(t)
	s.done = true
	os.RemoveAll(s.dir)
	if st, err := os.Stat(s.out); err == nil {
		res.Allocated = allocated(st)
	}
	res.Timings.Total = time.Since(s.start)
	log.Debug("ext4 image built while the tree was read", "image", s.opts.ImageRef, "path", s.out, "size", res.Size,
		"allocated", res.Allocated, "fixup_lines", res.FixupLines, "debugfs_done", res.Timings.Debugfs, "debugfs_wait", waited,
		"debugfs_exit", s.exited.Sub(t0), "filled", filled.Sub(t0),
		"debugfs_cpu", s.cmd.ProcessState.UserTime()+s.cmd.ProcessState.SystemTime(),
		"fsck", res.Timings.Fsck, "sync", sync, "total", res.Timings.Total)
	return res, nil
}

// writeBack starts the disk writes of what debugfs wrote so far, every
// 100 ms, without waiting for them: the image is written out while the
// stream is still read, and the fsync at the end (debugfs' own on exit,
// then finishFile's) finds little left to write.
func (s *Stream) writeBack() {
	defer close(s.flushed)
	fd, err := unix.Open(s.img, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return // only an optimisation: the fsyncs make the image durable
	}
	defer unix.Close(fd)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-s.flusher:
			return
		case <-s.ctx.Done():
			return
		case <-tick.C:
			_ = unix.SyncFileRange(fd, 0, 0, unix.SYNC_FILE_RANGE_WRITE)
		}
	}
}

func (s *Stream) stopWriteBack() {
	if s.flusher != nil {
		select {
		case <-s.flusher:
		default:
			close(s.flusher)
		}
		<-s.flushed
	}
}

// wait waits, once, for the feeder and debugfs to end.
func (s *Stream) wait() (fed, exited error) {
	if s.waited {
		return s.fedErr, nil
	}
	s.waited = true
	s.fedErr = <-s.fed
	exited = s.cmd.Wait()
	s.exited = time.Now()
	<-s.fill.done
	return s.fedErr, exited
}

// debugfsErrors are the lines of debugfs' stderr other than its banner.
func debugfsErrors(stderr string) []string {
	var bad []string
	for _, l := range strings.Split(strings.TrimRight(stderr, "\n"), "\n") {
		if l != "" && !debugfsBanner.MatchString(l) {
			bad = append(bad, l)
		}
	}
	return bad
}

// chunkQueue hands command chunks from the flattener to the goroutine
// feeding debugfs without making the flattener wait for debugfs: reading
// the stream goes on while debugfs copies what was read before.
type chunkQueue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	chunks [][]byte
	closed bool
}

func newChunkQueue() *chunkQueue {
	q := &chunkQueue{}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// Write queues a copy of p.
func (q *chunkQueue) Write(p []byte) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 0, errors.New("debugfs is gone")
	}
	q.chunks = append(q.chunks, bytes.Clone(p))
	q.cond.Signal()
	return len(p), nil
}

func (q *chunkQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.cond.Broadcast()
	q.mu.Unlock()
}

// drain writes the chunks to w until the queue is closed and empty.
func (q *chunkQueue) drain(w io.Writer) error {
	for {
		q.mu.Lock()
		for len(q.chunks) == 0 && !q.closed {
			q.cond.Wait()
		}
		chunks := q.chunks
		q.chunks = nil
		closed := q.closed
		q.mu.Unlock()
		for _, c := range chunks {
			if _, err := w.Write(c); err != nil {
				return err
			}
		}
		if closed && len(chunks) == 0 {
			return nil
		}
	}
}
