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
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/paddock-vm/paddock/imaging/flatten"
)

// ErrDebugfs: debugfs reported an error. It exits 0 even when commands
// fail or the image cannot be opened, so its stderr is the only signal.
var ErrDebugfs = errors.New("debugfs failed")

// maxLine keeps every command line below debugfs' fgets(BUFSIZ=8192)
// buffer: a longer line is split and its tail runs as a separate command
// (a tail starting with "!" runs /bin/sh).
const maxLine = 8000

// Fixup is one tar entry for ApplyOwnership.
type Fixup struct {
	Hdr *tar.Header
	// Create: the entry is not in the image yet and ApplyOwnership makes
	// it. Only char/block devices and fifos (mknod) and hardlinks (ln,
	// plus links_count on the target, which must have had exactly one
	// name) can be created. Otherwise the entry must exist.
	Create bool
	// Skip*: the image already has this attribute as Hdr says (for
	// example because mkfs.ext4 -d copied it from the staging tree).
	SkipOwner, SkipMode, SkipMtime bool
}

// OwnershipOptions configures ApplyOwnership.
type OwnershipOptions struct {
	ImageRef   string // names the image in errors
	ScratchDir string // command file and xattr value files go below it; default os.TempDir()
	Debugfs    string // path of debugfs; default looked up
}

// ApplyOwnership runs ONE debugfs pass over image that applies owners,
// modes, mtimes, device nodes, hardlinks to them and xattrs from the tar
// headers. Every name is validated again with flatten's rules before it
// reaches debugfs (rejections are *flatten.EntryError), every argument is
// quoted, xattr values are passed as files (ea_set -f), and any error line
// on debugfs' stderr fails the call.
func ApplyOwnership(ctx context.Context, image string, fixes []Fixup, opts OwnershipOptions) error {
	dbg, err := findTool("debugfs", opts.Debugfs)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(opts.ScratchDir, "paddock-debugfs-")
	if err != nil {
		return fmt.Errorf("debugfs scratch: %w", err)
	}
	defer os.RemoveAll(dir)
	s, err := newScript(dir, opts.ImageRef)
	if err != nil {
		return err
	}
	defer s.close()
	for _, fx := range fixes {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.add(fx); err != nil {
			return err
		}
	}
	if err := s.finish(); err != nil {
		return err
	}
	return runDebugfs(ctx, dbg, s.path, image)
}

// script writes a debugfs command file.
type script struct {
	dir, path string
	imageRef  string
	f         *os.File
	w         *bufio.Writer
	nvals     int
	lines     int
	links     map[string]int // created extra names per link target
	linkOrder []string
	closed    bool
	allOwned  bool // Options.Owner: owners are set after, all at once
}

func newScript(dir, imageRef string) (*script, error) {
	p := filepath.Join(dir, "fixup.cmd")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("debugfs command file: %w", err)
	}
	return &script{dir: dir, path: p, imageRef: imageRef, f: f, w: bufio.NewWriterSize(f, 1<<20), links: map[string]int{}}, nil
}

func (s *script) close() {
	if !s.closed && s.f != nil {
		s.f.Close()
		s.closed = true
	}
}

// quote makes s one debugfs argument: inside double quotes everything is
// literal (spaces, tabs, backslashes, '#', '!') except '"', which is doubled.
func quote(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func (s *script) line(name string, args ...string) error {
	l := strings.Join(args, " ")
	if len(l) >= maxLine {
		return flatten.NewEntryError(s.imageRef, "", name,
			&lineError{fmt.Sprintf("debugfs command of %d bytes (max %d)", len(l), maxLine)})
	}
	s.lines++
	s.w.WriteString(l)
	return s.w.WriteByte('\n')
}

// lineError classifies an over-long command as ErrBadName.
type lineError struct{ reason string }

func (e *lineError) Error() string { return e.reason }
func (e *lineError) Unwrap() error { return flatten.ErrBadName }

func typeBits(t byte) (uint32, bool) {
	switch t {
	case tar.TypeDir:
		return 0o040000, true
	case tar.TypeReg:
		return 0o100000, true
	case tar.TypeSymlink:
		return 0o120000, true
	case tar.TypeChar:
		return 0o020000, true
	case tar.TypeBlock:
		return 0o060000, true
	case tar.TypeFifo:
		return 0o010000, true
	}
	return 0, false
}

func (s *script) add(fx Fixup) error {
	h := fx.Hdr
	fail := func(err error) error { return flatten.NewEntryError(s.imageRef, "", h.Name, err) }
	clean, err := flatten.CleanPath(h.Name)
	if err != nil {
		return fail(err)
	}
	p := "/" + clean
	if h.Typeflag == tar.TypeLink {
		if !fx.Create {
			return nil // an existing hardlink shares its target's inode: nothing to apply
		}
		t, err := flatten.CleanPath(h.Linkname)
		if err != nil {
			return fail(fmt.Errorf("hardlink target: %w", err))
		}
		if t == "" || clean == "" {
			return fail(fmt.Errorf("%w: hardlink to or at the root", flatten.ErrBadLink))
		}
		target := "/" + t
		if s.links[target] == 0 {
			s.linkOrder = append(s.linkOrder, target)
		}
		s.links[target]++
		// keep the cwd at "/": ln resolves a top-level destination against it
		return s.line(h.Name, "ln", quote(target), quote(p))
	}
	bits, ok := typeBits(h.Typeflag)
	if !ok {
		return fail(fmt.Errorf("%w: unsupported entry type %q", flatten.ErrBadEntry, h.Typeflag))
	}
	if fx.Create {
		if clean == "" {
			return fail(fmt.Errorf("%w: cannot create the root", flatten.ErrBadEntry))
		}
		parent, base := "/", clean
		if i := strings.LastIndexByte(clean, '/'); i >= 0 {
			parent, base = "/"+clean[:i], clean[i+1:]
		}
		var node []string
		var newDev int64 = -1
		switch h.Typeflag {
		case tar.TypeChar, tar.TypeBlock:
			maj, min := h.Devmajor, h.Devminor
			if maj < 0 || maj >= 1<<12 || min < 0 || min >= 1<<20 {
				return fail(fmt.Errorf("%w: device number %d:%d out of range", flatten.ErrBadEntry, maj, min))
			}
			if maj > 255 || min > 255 {
				// debugfs mknod takes at most 65535:65535 and writes the old
				// encoding; store the kernel's new encoding (i_block[0] = 0,
				// i_block[1] = new_encode_dev) with sif instead.
				newDev = min&0xff | maj<<8 | (min&^0xff)<<12
				maj, min = 0, 0
			}
			node = []string{"c", fmt.Sprint(maj), fmt.Sprint(min)}
			if h.Typeflag == tar.TypeBlock {
				node[0] = "b"
			}
		case tar.TypeFifo:
			node = []string{"p"}
		default:
			return fail(fmt.Errorf("%w: ApplyOwnership only creates devices, fifos and hardlinks", flatten.ErrBadEntry))
		}
		// mknod does not resolve paths: it creates its argument literally
		// in the cwd. So cd to the parent and back to "/" (mkdir, ln and
		// write resolve top-level paths against the cwd).
		if err := s.line(h.Name, "cd", quote(parent)); err != nil {
			return err
		}
		if err := s.line(h.Name, append([]string{"mknod", quote(base)}, node...)...); err != nil {
			return err
		}
		if err := s.line(h.Name, "cd", quote("/")); err != nil {
			return err
		}
		if newDev >= 0 {
			if err := s.line(h.Name, "sif", quote(p), "block[1]", fmt.Sprint(newDev)); err != nil {
				return err
			}
		}
		// mknod leaves root:root, mode type|0000, the current time.
		fx.SkipOwner = h.Uid == 0 && h.Gid == 0
		fx.SkipMode, fx.SkipMtime = false, false
	}
	if h.Uid < 0 || h.Uid >= 1<<32-1 || h.Gid < 0 || h.Gid >= 1<<32-1 {
		return fail(fmt.Errorf("%w: uid/gid %d/%d out of range", flatten.ErrBadEntry, h.Uid, h.Gid))
	}
	qp := quote(p)
	if !fx.SkipOwner && !s.allOwned {
		if err := s.line(h.Name, "sif", qp, "uid", fmt.Sprint(h.Uid)); err != nil {
			return err
		}
		if err := s.line(h.Name, "sif", qp, "gid", fmt.Sprint(h.Gid)); err != nil {
			return err
		}
	}
	if !fx.SkipMode {
		if err := s.line(h.Name, "sif", qp, "mode", fmt.Sprintf("0%o", bits|uint32(h.Mode&0o7777))); err != nil {
			return err
		}
	}
	if !fx.SkipMtime {
		if err := s.line(h.Name, "sif", qp, "mtime", fmt.Sprintf("@%d", h.ModTime.Unix())); err != nil {
			return err
		}
	}
	return s.xattrs(h, qp)
}

// xattrs writes each value to a file and sets it with ea_set -f: an
// inline value goes through C unescaping (backslashes, quotes break).
func (s *script) xattrs(h *tar.Header, qp string) error {
	var names []string
	for k := range h.PAXRecords {
		if n, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		if err := flatten.CheckXattrName(n); err != nil {
			return flatten.NewEntryError(s.imageRef, "", h.Name, err)
		}
		s.nvals++
		vf := filepath.Join(s.dir, fmt.Sprintf("xattr-%d", s.nvals))
		if err := os.WriteFile(vf, []byte(h.PAXRecords["SCHILY.xattr."+n]), 0o600); err != nil {
			return fmt.Errorf("xattr value file: %w", err)
		}
		// paths start with "/" and names with a namespace, so ea_set's
		// getopt never takes them for options.
		if err := s.line(h.Name, "ea_set", "-f", quote(vf), qp, quote(n)); err != nil {
			return err
		}
	}
	return nil
}

// finish sets link counts (debugfs ln does not) and flushes the file.
func (s *script) finish() error {
	for _, t := range s.linkOrder {
		if err := s.line(t, "sif", quote(t), "links_count", fmt.Sprint(1+s.links[t])); err != nil {
			return err
		}
	}
	if err := s.w.Flush(); err != nil {
		return fmt.Errorf("debugfs command file: %w", err)
	}
	s.closed = true
	if s.f == nil {
		return nil
	}
	if err := s.f.Close(); err != nil {
		return fmt.Errorf("debugfs command file: %w", err)
	}
	return nil
}

var debugfsBanner = regexp.MustCompile(`^debugfs \d+\.\d+[^ ]* \(.*\)$`)

// runDebugfs executes the command file read-write against image.
func runDebugfs(ctx context.Context, dbg, cmdFile, image string) error {
	cmd := exec.CommandContext(ctx, dbg, "-w", "-f", cmdFile, image)
	cmd.Env = append(os.Environ(), "DEBUGFS_PAGER=__none__", "PAGER=__none__", "LC_ALL=C")
	var stderr bytes.Buffer
	cmd.Stderr = &limitWriter{w: &stderr, n: 1 << 20}
	cmd.Stdout = io.Discard // echoed commands and "Allocated inode: N"
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: %v: %s", ErrDebugfs, err, firstLines(stderr.String(), 5))
	}
	if bad := debugfsErrors(stderr.String()); len(bad) > 0 {
		return fmt.Errorf("%w: %d error lines, first: %s", ErrDebugfs, len(bad), firstLines(strings.Join(bad, "\n"), 5))
	}
	return nil
}

func firstLines(s string, n int) string {
	ls := strings.SplitN(strings.TrimSpace(s), "\n", n+1)
	if len(ls) > n {
		ls = append(ls[:n], "…")
	}
	return strings.Join(ls, " | ")
}

// limitWriter keeps the first n bytes and discards the rest.
type limitWriter struct {
	w io.Writer
	n int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}
