package ext4

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/imaging/flatten"
)

// stager unpacks a flattened tar stream into a scratch tree as the
// current user, for mkfs.ext4 -d. It keeps only structure and content:
// owners, special bits and device nodes are left to the debugfs pass.
//
// Every operation is an *at syscall on a directory fd with a single
// component, and directories are opened with O_NOFOLLOW: nothing is ever
// resolved through a symlink, even one a hostile stream planted. The
// stream must be well-ordered (parents before children, hardlink targets
// before links); anything else is rejected, not repaired.
type stager struct {
	ctx      context.Context
	imageRef string
	root     int      // fd of the tree root
	stack    []int    // fds of the directories along stackDir
	stackDir []string // components of the deepest open directory
	kinds    map[string]byte
	canon    map[string]string // debugfs-linked name -> first name of the inode
	uid, gid int               // owner mkfs -d will copy from every staged inode
	dirs     []dirTime
	buf      []byte
	zero     []byte
	script   *script
}

type dirTime struct {
	comps []string
	mtime int64
}

const (
	stagedDirBits  = 0o700 // owner rwx: mkfs must read and traverse
	stagedFileBits = 0o600 // owner rw: mkfs must read
)

func newStager(ctx context.Context, tree, imageRef string, sc *script) (*stager, error) {
	fd, err := unix.Open(tree, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open staging tree: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat staging tree: %w", err)
	}
	// New inodes get the root's gid too when it is setgid (inherited), and
	// the fsgid otherwise, which is the gid the root itself got.
	return &stager{
		ctx: ctx, imageRef: imageRef, root: fd, kinds: map[string]byte{"": tar.TypeDir}, canon: map[string]string{},
		uid: int(st.Uid), gid: int(st.Gid), buf: make([]byte, 1<<20), zero: make([]byte, 4096), script: sc,
	}, nil
}

func (s *stager) close() {
	s.popTo(0)
	unix.Close(s.root)
}

func (s *stager) popTo(n int) {
	for len(s.stack) > n {
		unix.Close(s.stack[len(s.stack)-1])
		s.stack = s.stack[:len(s.stack)-1]
	}
	s.stackDir = s.stackDir[:n]
}

// dirFD returns an fd for the directory comps, reusing the open chain:
// the stream is depth-first, so this is amortised one openat per directory.
// The chain holds one fd per level (at most MaxPathLen/2 = 2048).
func (s *stager) dirFD(comps []string) (int, error) {
	k := 0
	for k < len(comps) && k < len(s.stackDir) && comps[k] == s.stackDir[k] {
		k++
	}
	s.popTo(k)
	for _, c := range comps[k:] {
		parent := s.root
		if len(s.stack) > 0 {
			parent = s.stack[len(s.stack)-1]
		}
		fd, err := unix.Openat(parent, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, fmt.Errorf("open staged directory %q: %w", strings.Join(comps, "/"), err)
		}
		s.stack = append(s.stack, fd)
		s.stackDir = append(s.stackDir, c)
	}
	if len(s.stack) == 0 {
		return s.root, nil
	}
	return s.stack[len(s.stack)-1], nil
}

func (s *stager) fail(name string, err error) error {
	return flatten.NewEntryError(s.imageRef, "", name, err)
}

// run reads the whole stream.
func (s *stager) run(r io.Reader) error {
	tr := tar.NewReader(bufio.NewReaderSize(r, 1<<20))
	prev := ""
	for {
		if err := s.ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return s.fail(prev, fmt.Errorf("%w: corrupt tar after this entry: %v", flatten.ErrBadEntry, err))
		}
		prev = h.Name
		if err := s.entry(h, tr, ""); err != nil {
			return err
		}
	}
}

// walk stages a flattened tree directly, without a tar stream in between.
func (s *stager) walk(flat *flatten.Result) error {
	return flat.Walk(s.ctx, func(e flatten.Entry) error { return s.entry(e.Header, nil, e.ContentPath) })
}

// checkHeader applies the rules on everything but the entry's own name
// (which goes through flatten.CleanPath): types, ids, device numbers,
// symlink targets, xattr names.
func checkHeader(h *tar.Header) error {
	switch h.Typeflag {
	case tar.TypeDir, tar.TypeReg, tar.TypeLink, tar.TypeFifo:
	case tar.TypeSymlink:
		if err := flatten.CheckLinkTarget(h.Linkname); err != nil {
			return err
		}
	case tar.TypeChar, tar.TypeBlock:
		if h.Devmajor < 0 || h.Devmajor >= 1<<12 || h.Devminor < 0 || h.Devminor >= 1<<20 {
			return fmt.Errorf("%w: device number %d:%d out of range", flatten.ErrBadEntry, h.Devmajor, h.Devminor)
		}
	default:
		return fmt.Errorf("%w: unsupported entry type %q", flatten.ErrBadEntry, h.Typeflag)
	}
	if h.Uid < 0 || h.Uid >= 1<<32-1 || h.Gid < 0 || h.Gid >= 1<<32-1 {
		return fmt.Errorf("%w: uid/gid %d/%d out of range", flatten.ErrBadEntry, h.Uid, h.Gid)
	}
	for k := range h.PAXRecords {
		if n, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if err := flatten.CheckXattrName(n); err != nil {
				return err
			}
		}
	}
	return nil
}

// entry stages one entry; content comes from src (a tar stream) or from
// contentPath (a flattened tree's spill file).
func (s *stager) entry(h *tar.Header, src io.Reader, contentPath string) error {
	clean, err := flatten.CleanPath(h.Name)
	if err == nil {
		err = checkHeader(h)
	}
	if err != nil {
		return s.fail(h.Name, err)
	}
	if clean == "" {
		if h.Typeflag != tar.TypeDir {
			return s.fail(h.Name, fmt.Errorf("%w: the root can only be a directory", flatten.ErrBadEntry))
		}
		// the root's metadata always goes through debugfs: mkfs sets root_owner
		return s.script.add(Fixup{Hdr: h})
	}
	if _, dup := s.kinds[clean]; dup {
		return s.fail(h.Name, fmt.Errorf("%w: duplicate entry (stream not flattened)", flatten.ErrBadEntry))
	}
	comps := strings.Split(clean, "/")
	parent := strings.Join(comps[:len(comps)-1], "/")
	if s.kinds[parent] != tar.TypeDir {
		return s.fail(h.Name, fmt.Errorf("%w: parent is not a directory earlier in the stream", flatten.ErrBadEntry))
	}
	base := comps[len(comps)-1]
	mode := h.Mode & 0o7777
	fx := Fixup{Hdr: h, SkipOwner: h.Uid == s.uid && h.Gid == s.gid, SkipMtime: hostTime(h.ModTime.Unix())}
	kind := h.Typeflag
	switch h.Typeflag {
	case tar.TypeDir:
		fd, err := s.dirFD(comps[:len(comps)-1])
		if err != nil {
			return err
		}
		staged := uint32(mode&0o777 | stagedDirBits)
		if err := unix.Mkdirat(fd, base, stagedDirBits); err != nil {
			return fmt.Errorf("stage %q: %w", h.Name, err)
		}
		if err := unix.Fchmodat(fd, base, staged, 0); err != nil { // umask-free
			return fmt.Errorf("stage %q: %w", h.Name, err)
		}
		fx.SkipMode = int64(staged) == mode
		s.dirs = append(s.dirs, dirTime{comps: comps, mtime: h.ModTime.Unix()})
	case tar.TypeReg:
		if err := s.file(h, src, contentPath, comps, base); err != nil {
			return err
		}
		fx.SkipMode = mode&0o777|stagedFileBits == mode
	case tar.TypeSymlink:
		fd, err := s.dirFD(comps[:len(comps)-1])
		if err != nil {
			return err
		}
		if err := unix.Symlinkat(h.Linkname, fd, base); err != nil {
			return fmt.Errorf("stage %q: %w", h.Name, err)
		}
		if err := setTime(fd, base, h.ModTime.Unix()); err != nil {
			return fmt.Errorf("stage %q: %w", h.Name, err)
		}
		fx.SkipMode = true // Linux symlinks are always 0777
	case tar.TypeLink:
		t, err := flatten.CleanPath(h.Linkname)
		if err != nil {
			return s.fail(h.Name, fmt.Errorf("hardlink target: %w", err))
		}
		tk := s.kinds[t]
		switch tk {
		case 0:
			return s.fail(h.Name, fmt.Errorf("%w: hardlink target %q is not earlier in the stream", flatten.ErrBadLink, h.Linkname))
		case tar.TypeDir:
			return s.fail(h.Name, fmt.Errorf("%w: hardlink target %q is a directory", flatten.ErrBadLink, h.Linkname))
		case tar.TypeReg:
			if err := s.link(t, comps); err != nil {
				return fmt.Errorf("stage %q: %w", h.Name, err)
			}
			kind = tar.TypeReg
		default:
			// mkfs -d splits hardlinked symlinks into separate inodes, and
			// devices are not staged: debugfs links these, always to the
			// first name so that links_count is counted on one path.
			if c, ok := s.canon[t]; ok {
				t = c
			}
			s.canon[clean] = t
			hh := *h
			hh.Linkname = t
			fx.Hdr, fx.Create = &hh, true
			kind = tk
		}
		s.kinds[clean] = kind
		if fx.Create {
			return s.script.add(fx)
		}
		return nil
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		fx.Create = true // an unprivileged user cannot mknod; debugfs can
	default:
		return s.fail(h.Name, fmt.Errorf("%w: unsupported entry type %q", flatten.ErrBadEntry, h.Typeflag))
	}
	s.kinds[clean] = kind
	if fx.Create || !fx.SkipOwner || !fx.SkipMode || !fx.SkipMtime || hasXattrs(h) {
		return s.script.add(fx)
	}
	return nil
}

func hasXattrs(h *tar.Header) bool {
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			return true
		}
	}
	return false
}

// file stages a regular file. A spilled content (contentPath) is
// hardlinked into the tree when it is on the same filesystem: the contents
// are then written once in the whole import. Otherwise the content is
// copied; zero 4 KiB blocks become holes, which mkfs -d keeps as holes.
func (s *stager) file(h *tar.Header, src io.Reader, contentPath string, comps []string, base string) error {
	dfd, err := s.dirFD(comps[:len(comps)-1])
	if err != nil {
		return err
	}
	if contentPath != "" {
		err := unix.Linkat(unix.AT_FDCWD, contentPath, dfd, base, 0)
		if err == nil {
			if err := unix.Fchmodat(dfd, base, uint32(h.Mode&0o777|stagedFileBits), 0); err != nil {
				return fmt.Errorf("stage %q: %w", h.Name, err)
			}
			return setTime(dfd, base, h.ModTime.Unix())
		}
		if !errors.Is(err, unix.EXDEV) && !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EMLINK) {
			return fmt.Errorf("stage %q: %w", h.Name, err)
		}
		f, err := os.Open(contentPath)
		if err != nil {
			return fmt.Errorf("stage %q: %w", h.Name, err)
		}
		defer f.Close()
		src = f
	}
	fd, err := unix.Openat(dfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, stagedFileBits)
	if err != nil {
		return fmt.Errorf("stage %q: %w", h.Name, err)
	}
	defer unix.Close(fd)
	var off, end int64
	for off < h.Size {
		if err := s.ctx.Err(); err != nil {
			return err
		}
		if src == nil {
			return s.fail(h.Name, fmt.Errorf("%w: content missing", flatten.ErrBadEntry))
		}
		n, err := io.ReadFull(src, s.buf[:min(int64(len(s.buf)), h.Size-off)])
		if err != nil {
			return s.fail(h.Name, fmt.Errorf("%w: content truncated: %v", flatten.ErrBadEntry, err))
		}
		e, err := writeSparse(fd, s.buf[:n], off, s.zero)
		if err != nil {
			return fmt.Errorf("stage %q: %w", h.Name, err)
		}
		end = max(end, e)
		off += int64(n)
	}
	if end < h.Size { // trailing hole; ftruncate on ext4 is not free, skip it otherwise
		if err := unix.Ftruncate(fd, h.Size); err != nil {
			return fmt.Errorf("stage %q: %w", h.Name, err)
		}
	}
	if err := unix.Fchmod(fd, uint32(h.Mode&0o777|stagedFileBits)); err != nil {
		return fmt.Errorf("stage %q: %w", h.Name, err)
	}
	if err := setTime(dfd, base, h.ModTime.Unix()); err != nil {
		return fmt.Errorf("stage %q: %w", h.Name, err)
	}
	return nil
}

// writeSparse writes the non-zero 4 KiB blocks of chunk at pos (aligned)
// and returns the end offset of the last data written (0 if none).
func writeSparse(fd int, chunk []byte, pos int64, zero []byte) (int64, error) {
	isZero := func(j int) bool { return j+4096 <= len(chunk) && bytes.Equal(chunk[j:j+4096], zero) }
	var end int64
	for i := 0; i < len(chunk); {
		j := i
		for j < len(chunk) && !isZero(j) {
			j = min(j+4096, len(chunk))
		}
		for w := i; w < j; {
			n, err := unix.Pwrite(fd, chunk[w:j], pos+int64(w))
			if err != nil {
				return 0, err
			}
			w += n
		}
		if j > i {
			end = pos + int64(j)
		}
		for isZero(j) {
			j += 4096
		}
		i = j
	}
	return end, nil
}

// link makes comps a hardlink of the staged regular file target.
func (s *stager) link(target string, comps []string) error {
	tcomps := strings.Split(target, "/")
	// open the target's directory outside the stack (it is usually
	// elsewhere), walking with O_NOFOLLOW like dirFD
	tfd, err := unix.Dup(s.root)
	if err != nil {
		return err
	}
	for _, c := range tcomps[:len(tcomps)-1] {
		nfd, err := unix.Openat(tfd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(tfd)
		if err != nil {
			return err
		}
		tfd = nfd
	}
	defer unix.Close(tfd)
	dfd, err := s.dirFD(comps[:len(comps)-1])
	if err != nil {
		return err
	}
	return unix.Linkat(tfd, tcomps[len(tcomps)-1], dfd, comps[len(comps)-1], 0) // 0: never follow
}

// finishDirs sets directory mtimes once nothing is created below them any more.
func (s *stager) finishDirs() error {
	for i := len(s.dirs) - 1; i >= 0; i-- {
		d := s.dirs[i]
		fd, err := s.dirFD(d.comps[:len(d.comps)-1])
		if err != nil {
			return err
		}
		if err := setTime(fd, d.comps[len(d.comps)-1], d.mtime); err != nil {
			return fmt.Errorf("stage directory mtime %q: %w", strings.Join(d.comps, "/"), err)
		}
	}
	s.popTo(0)
	return nil
}

// setTime sets atime and mtime (mkfs -d copies both, in whole seconds)
// without following a symlink.
func setTime(dirfd int, name string, sec int64) error {
	ts := []unix.Timespec{{Sec: sec}, {Sec: sec}}
	return unix.UtimesNanoAt(dirfd, name, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// hostTime reports whether every host filesystem stores sec exactly; the
// kernel silently clamps times a filesystem cannot hold (XFS without
// bigtime stops in 2038), so others go through debugfs instead.
func hostTime(sec int64) bool { return sec >= -(1<<31) && sec < 1<<31 }
