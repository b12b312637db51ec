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
// the rootless ext4 builder, at the exact size asked for: while the stream
// is read (ext4.Stream) when it can follow the stream, from the flattened
// tree otherwise.
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
	// NoStream builds from the flattened tree only, never while the
	// stream is read (for comparisons).
	NoStream bool
}

// Result describes a built volume.
type Result struct {
	Size      int64 // apparent size
	Allocated int64 // bytes it takes on the host
	Files     int64 // inodes of the tree, the root included
	Content   int64 // bytes of file content
	// Streamed: the volume was built while the tree was read (ext4.Stream),
	// not from the flattened tree after it.
	Streamed bool
}

// ErrRefused is an entry a workspace may not hold.
var ErrRefused = flatten.ErrBadEntry

// Build reads the tar stream r (nil: an empty workspace) and writes the
// volume to out (mode 0600, replaced atomically: a temporary file in out's
// directory is renamed only when complete). A tree that does not fit in
// spec.Size is refused before anything is written; a refused entry is a
// *flatten.EntryError naming it.
func Build(ctx context.Context, r io.Reader, out string, spec Spec) (*Result, error) {
	var layers []flatten.Layer
	if r != nil {
		layers = []flatten.Layer{flatten.ReaderLayer("", r)}
	}
	return build(ctx, layers, out, spec, spec.entry, true)
}

// build flattens layers (each entry through entry) and builds the volume.
// With stream, the volume is built while the layers are read
// (ext4.Stream), falling back on the flattened tree when the stream is
// not one it can follow.
func build(ctx context.Context, layers []flatten.Layer, out string, spec Spec, entry func(*tar.Header) error, stream bool) (*Result, error) {
	if spec.Size < MinSize || spec.Size > MaxSize {
		return nil, fmt.Errorf("%w: workspace size %d is out of range (%d MiB to %d TiB)", flatten.ErrBadEntry, spec.Size, MinSize>>20, MaxSize>>40)
	}
	root := &tar.Header{Typeflag: tar.TypeDir, Name: "./", Mode: 0o755, Uid: int(spec.UID), Gid: int(spec.GID), ModTime: time.Now()}
	log := spec.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := ext4.Options{ImageRef: "workspace " + spec.Name, ScratchDir: spec.ScratchDir, Size: spec.Size, Mode: 0o600,
		Label: "workspace", Tools: spec.Tools, Logger: spec.Logger, Owner: &ext4.Owner{UID: spec.UID, GID: spec.GID}}
	fopts := flatten.Options{ScratchDir: spec.ScratchDir, MaxEntries: spec.MaxEntries,
		MaxUnpackedSize: spec.Size, Entry: entry, Root: root, Literal: true, RequireEnd: true}
	var st *ext4.Stream
	if stream && !spec.NoStream && len(layers) > 0 {
		var err error
		if st, err = ext4.NewStream(ctx, out, root, opts); err != nil {
			log.Debug("workspace: not building while reading", "workspace", spec.Name, "err", err)
			st = nil
		} else {
			defer st.Abort() // a no-op once finished
			fopts.Applied, fopts.Content = st.Add, st.Content
		}
	}
	t := time.Now()
	res, err := flatten.Flatten(ctx, layers, fopts)
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
	log.Debug("workspace tree read", "workspace", spec.Name, "entries", res.Summary.Entries,
		"content", res.Summary.ContentBytes, "flatten", time.Since(t))
	if err := ext4.CheckFits(res.Summary, spec.Size); err != nil {
		return nil, fmt.Errorf("workspace %s: %w", spec.Name, err)
	}
	if st != nil {
		// once debugfs is done with the spill, free it while the image is
		// checked and synced
		built, err := st.Finish(res.Summary, func() { res.Close() })
		if err == nil {
			return &Result{Size: built.Size, Allocated: built.Allocated, Files: res.Summary.Inodes, Content: res.Summary.ContentBytes, Streamed: true}, nil
		}
		if !errors.Is(err, ext4.ErrNotStreamed) {
			return nil, err
		}
		log.Debug("workspace: building from the flattened tree", "workspace", spec.Name, "reason", st.Reason())
	}
	built, err := ext4.BuildFlattened(ctx, res, out, opts)
	if err != nil {
		return nil, err
	}
	return &Result{Size: built.Size, Allocated: built.Allocated, Files: res.Summary.Inodes, Content: res.Summary.ContentBytes}, nil
}

// entry makes a header what a workspace holds: owned by spec.UID:spec.GID,
// setuid and setgid bits stripped, xattrs and names of users dropped.
// Device nodes, fifos, sparse entries and types a project tree does not
// hold are refused, naming the entry.
func (spec Spec) entry(h *tar.Header) error {
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return &flatten.EntryError{Path: h.Name, Err: ErrRefused, Reason: "sparse tar entries are not supported"}
		}
	}
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink: // tar.Reader reports the old TypeRegA as TypeReg
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return &flatten.EntryError{Path: h.Name, Err: ErrRefused, Reason: "device nodes and fifos have no place in a workspace"}
	default:
		return &flatten.EntryError{Path: h.Name, Err: ErrRefused, Reason: fmt.Sprintf("unsupported entry type %q", h.Typeflag)}
	}
	h.Mode &= 0o1777
	h.Uid, h.Gid, h.Uname, h.Gname = int(spec.UID), int(spec.GID), "", ""
	h.PAXRecords = nil // xattrs come from its SCHILY.xattr records
	if h.Typeflag != tar.TypeReg {
		h.Size = 0
	}
	return nil
}

// Allocated is the bytes a file takes on the host (0 when it is gone).
func Allocated(path string) int64 {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}
