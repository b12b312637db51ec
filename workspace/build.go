// Package workspace builds and seeds workspaces: named, owned, persistent
// raw sparse ext4 volumes holding a project tree, independent of any VM.
//
// Seeding is split between the CLI and the daemon. The CLI, as the calling
// user, turns a directory (or a git clone it made) into a tar stream
// (TarDir) and passes it by descriptor; the daemon reads nothing the caller
// could not. The daemon (Build) rewrites every entry to the workspace's
// owner with setuid/setgid stripped, refuses what a project tree has no
// business holding (device nodes, fifos), and builds the volume through
// the image flattener (escapes, bad links, names debugfs cannot encode) and
// the rootless ext4 builder, at the exact size asked for.
package workspace

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/imaging/ext4"
	"github.com/paddock-vm/paddock/imaging/flatten"
	"github.com/paddock-vm/paddock/tartree"
)

// Limits of a workspace's size.
const (
	MinSize     int64 = 64 << 20
	MaxSize     int64 = 16 << 40
	DefaultSize int64 = 10 << 30
	DefaultUID        = 1000
	DefaultGID        = 1000
)

// Spec is how one volume is built.
type Spec struct {
	Name       string // the workspace's name, in errors
	Size       int64  // exact size of the volume in bytes
	UID, GID   uint32 // every file's owner
	ScratchDir string // spill and staging; default os.TempDir()
	MaxEntries int64  // default flatten.DefaultMaxEntries
	Tools      ext4.Tools
	Logger     *slog.Logger
}

// Result describes a built volume.
type Result struct {
	Size      int64 // apparent size
	Allocated int64 // bytes it takes on the host
	Files     int64 // inodes of the tree, the root included
	Content   int64 // bytes of file content
}

// errBuildEnded is what the rewriter meets when the flattener stops reading.
var errBuildEnded = errors.New("workspace build ended")

// ErrRefused is an entry a workspace may not hold.
var ErrRefused = flatten.ErrBadEntry

// Build reads the tar stream r (nil: an empty workspace) and writes the
// volume to out (mode 0600, replaced atomically: a temporary file in out's
// directory is renamed only when complete). A tree that does not fit in
// spec.Size is refused before anything is written; a refused entry is a
// *flatten.EntryError naming it.
func Build(ctx context.Context, r io.Reader, out string, spec Spec) (*Result, error) {
	if spec.Size < MinSize || spec.Size > MaxSize {
		return nil, fmt.Errorf("%w: workspace size %d is out of range (%d MiB to %d TiB)", flatten.ErrBadEntry, spec.Size, MinSize>>20, MaxSize>>40)
	}
	pr, pw := io.Pipe()
	ferr := make(chan error, 1)
	go func() {
		err := rewrite(r, pw, spec)
		_ = pw.CloseWithError(err)
		ferr <- err
	}()
	res, err := flatten.Flatten(ctx, []flatten.Layer{flatten.ReaderLayer("", pr)},
		flatten.Options{ScratchDir: spec.ScratchDir, MaxEntries: spec.MaxEntries, MaxUnpackedSize: spec.Size})
	_ = pr.CloseWithError(errBuildEnded)
	if rerr := <-ferr; rerr != nil && !errors.Is(rerr, errBuildEnded) {
		// The rewriter's refusal names the entry; what the flattener made of
		// the stream ending there says less.
		var ee *flatten.EntryError
		if errors.As(rerr, &ee) || err == nil {
			err = rerr
		}
	}
	if err != nil {
		if res != nil {
			res.Close()
		}
		if errors.Is(err, flatten.ErrTooLarge) {
			return nil, fmt.Errorf("workspace %s: the tree is bigger than the size (%d MiB): %w", spec.Name, spec.Size>>20, err)
		}
		return nil, fmt.Errorf("workspace %s: %w", spec.Name, err)
	}
	defer res.Close()
	if err := ext4.CheckFits(res.Summary, spec.Size); err != nil {
		return nil, fmt.Errorf("workspace %s: %w", spec.Name, err)
	}
	built, err := ext4.BuildFlattened(ctx, res, out, ext4.Options{ImageRef: "workspace " + spec.Name, ScratchDir: spec.ScratchDir,
		Size: spec.Size, Mode: 0o600, Label: "workspace", Tools: spec.Tools, Logger: spec.Logger})
	if err != nil {
		return nil, err
	}
	return &Result{Size: built.Size, Allocated: built.Allocated, Files: res.Summary.Inodes, Content: res.Summary.ContentBytes}, nil
}

// rewrite copies the tar stream r to w with every entry owned by
// spec.UID:spec.GID, setuid and setgid bits stripped, xattrs and names of
// users dropped, and a root directory first (so the root is the owner's
// even when the stream has none). Device nodes, fifos and entry types a
// project tree does not hold are refused, naming the entry.
func rewrite(r io.Reader, w io.Writer, spec Spec) error {
	tw := tar.NewWriter(w)
	root := &tar.Header{Typeflag: tar.TypeDir, Name: "./", Mode: 0o755, Uid: int(spec.UID), Gid: int(spec.GID), ModTime: time.Now(), Format: tar.FormatPAX}
	if err := tw.WriteHeader(root); err != nil {
		return err
	}
	if r != nil {
		// A stream that ends where an entry could start, without its
		// end-of-archive marker (two zero blocks), was cut short: a client
		// that failed half-way. tar.Reader reads exactly what it needs, so
		// the count says where the next header starts.
		cr := &tartree.Counter{R: r}
		tr := tar.NewReader(cr)
		var next int64
		for {
			h, err := tr.Next()
			if err == io.EOF {
				if cr.N-next < 2*512 {
					return &flatten.EntryError{Err: flatten.ErrBadEntry, Reason: "the tar stream ends without its end-of-archive marker: it was cut short"}
				}
				break
			}
			if err != nil {
				return &flatten.EntryError{Err: flatten.ErrBadEntry, Reason: "the tar stream is malformed: " + err.Error()}
			}
			for k := range h.PAXRecords {
				if strings.HasPrefix(k, "GNU.sparse.") {
					return &flatten.EntryError{Path: h.Name, Err: ErrRefused, Reason: "sparse tar entries are not supported"}
				}
			}
			out := &tar.Header{Name: h.Name, Linkname: h.Linkname, Size: h.Size, Mode: h.Mode & 0o1777, Uid: int(spec.UID), Gid: int(spec.GID),
				ModTime: h.ModTime, Format: tar.FormatPAX}
			switch h.Typeflag {
			case tar.TypeReg: // tar.Reader reports the old TypeRegA as this
				out.Typeflag = tar.TypeReg
			case tar.TypeDir, tar.TypeSymlink, tar.TypeLink:
				out.Typeflag = h.Typeflag
			case tar.TypeXGlobalHeader:
				continue
			case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
				return &flatten.EntryError{Path: h.Name, Err: ErrRefused, Reason: "device nodes and fifos have no place in a workspace"}
			default:
				return &flatten.EntryError{Path: h.Name, Err: ErrRefused, Reason: fmt.Sprintf("unsupported entry type %q", h.Typeflag)}
			}
			if out.Typeflag != tar.TypeReg {
				out.Size = 0
			}
			if err := tw.WriteHeader(out); err != nil {
				return &flatten.EntryError{Path: h.Name, Err: flatten.ErrBadName, Reason: err.Error()}
			}
			var copied int64
			if out.Typeflag == tar.TypeReg {
				if copied, err = io.Copy(tw, tr); err != nil {
					if errors.Is(err, errBuildEnded) {
						return err // the flattener stopped reading: its error says why
					}
					return &flatten.EntryError{Path: h.Name, Err: flatten.ErrBadEntry, Reason: "reading its content: " + err.Error()}
				}
			}
			next = cr.N + (h.Size - copied) + (512-h.Size%512)%512
		}
	}
	return tw.Close()
}

// counter counts the bytes read through it.

// Allocated is the bytes a file takes on the host (0 when it is gone).
func Allocated(path string) int64 {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}
