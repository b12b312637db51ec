package workspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/imaging/ext4"
	"github.com/paddock-vm/paddock/imaging/ext4/ext4fs"
	"github.com/paddock-vm/paddock/state"
	"github.com/paddock-vm/paddock/tartree"
)

// ExportSpec is how one volume is read.
type ExportSpec struct {
	Name string // the workspace's name, in errors
	// Part, a path relative to the volume's root ("" for the root), is
	// exported alone as the stream's one top entry PartName
	// (tartree.Archive; default the path's last element); nil exports
	// the whole tree, names relative to its root.
	Part       *string
	PartName   string
	ScratchDir string // where the tree is dumped; default os.TempDir()
	Tools      ext4.Tools
	// Layers flatten a qcow2 top (and its backing chain) into a raw file
	// in the scratch directory first, which debugfs can read.
	Layers Layers
}

// ErrNoScratch: the scratch directory has no room for the tree.
var ErrNoScratch = errors.New("not enough scratch space")

// Export writes the tree of the volume vol to w as a tar stream (no
// owners: whoever unpacks it owns the files). The volume is read without
// mounting it (a qcow2 top flattened into the scratch directory first):
// checked with e2fsck -n, then read directly (ext4fs: one read of each
// file, nothing written to scratch). A volume using what the direct reader
// does not read is dumped with debugfs into a scratch directory instead
// (removed always) and archived like TarDir. An empty lost+found at the
// root, which mke2fs makes, is left out; hardlinks stay links. The caller
// must make sure nothing writes the volume meanwhile; ctx bounds the whole
// read.
func Export(ctx context.Context, vol string, w io.Writer, spec ExportSpec) error {
	if _, err := os.Stat(vol); err != nil {
		return fmt.Errorf("workspace %s: %w", spec.Name, err)
	}
	dir, err := os.MkdirTemp(spec.ScratchDir, "paddock-export-")
	if err != nil {
		return fmt.Errorf("export scratch: %w", err)
	}
	defer removeTree(dir)
	if state.LayerFormat(vol) == "qcow2" {
		flat := filepath.Join(dir, "volume.raw")
		if err := spec.Layers.Flatten(ctx, vol, flat); err != nil {
			return fmt.Errorf("workspace %s: %w", spec.Name, err)
		}
		vol = flat
	}
	var sub, name string
	if spec.Part != nil {
		sub, name = path.Clean("/" + *spec.Part)[1:], spec.PartName
		switch {
		case name != "":
		case sub == "":
			name = spec.Name
		default:
			name = path.Base(sub)
		}
	}
	if err := ext4.Check(ctx, vol, spec.Tools); err != nil {
		return fmt.Errorf("workspace %s: %w", spec.Name, err)
	}
	opts := ext4fs.Options{Name: name, SkipEmptyLostFound: true}
	if spec.Part != nil {
		opts.Part = &sub
	}
	switch err := ext4fs.WriteTar(ctx, vol, w, opts); {
	case err == nil:
		return nil
	case errors.Is(err, ext4fs.ErrNotFound):
		return fmt.Errorf("workspace %s has no %s: %w", spec.Name, sub, errdefs.Wrap(errdefs.ErrInvalidArgument, err))
	case errors.Is(err, ext4fs.ErrLinkOnTheWay), errors.Is(err, ext4fs.ErrTooLarge):
		return fmt.Errorf("workspace %s: %w", spec.Name, errdefs.Wrap(errdefs.ErrInvalidArgument, err))
	case errors.Is(err, ext4fs.ErrCorrupt):
		return fmt.Errorf("workspace %s: %w: %w", spec.Name, ext4.ErrNotClean, err)
	case !errors.Is(err, ext4fs.ErrUnsupported):
		return fmt.Errorf("workspace %s: %w", spec.Name, err)
	}
	return dumpExport(ctx, vol, dir, sub, name, w, spec)
}

// dumpExport is Export's general path: the volume dumped by debugfs into
// dir, its hardlinks linked again, archived like TarDir.
func dumpExport(ctx context.Context, vol, dir, sub, name string, w io.Writer, spec ExportSpec) error {
	// The dump takes at most what the volume takes on the host.
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil {
		if free, need := int64(st.Bavail)*int64(st.Bsize), Allocated(vol); need > free {
			return fmt.Errorf("workspace %s: %w: it takes up to %d MiB in %s, %d MiB are free", spec.Name, ErrNoScratch, need>>20, filepath.Dir(dir), free>>20)
		}
	}
	tree := filepath.Join(dir, "tree")
	if err := os.Mkdir(tree, 0o700); err != nil {
		return fmt.Errorf("export scratch: %w", err)
	}
	if err := ext4.Dump(ctx, vol, tree, spec.Tools); err != nil {
		return fmt.Errorf("workspace %s: %w", spec.Name, err)
	}
	_ = os.Remove(filepath.Join(tree, "lost+found")) // only when empty
	if err := relink(ctx, vol, tree, spec.Tools); err != nil {
		return fmt.Errorf("workspace %s: %w", spec.Name, err)
	}
	if spec.Part != nil {
		src := filepath.Join(tree, filepath.FromSlash(sub))
		if sub == "" {
			sub = "."
		}
		if _, err := os.Lstat(src); err != nil {
			return fmt.Errorf("workspace %s has no %s: %w", spec.Name, sub, errdefs.Wrap(errdefs.ErrInvalidArgument, err))
		}
		// Every element of the dump is the volume's own: a symbolic link
		// on the way would be the volume's link, followed on the host.
		if err := noLinkOnTheWay(tree, sub); err != nil {
			return fmt.Errorf("workspace %s: %w", spec.Name, err)
		}
		if err := tartree.Archive(ctx, src, name, w); err != nil {
			return fmt.Errorf("workspace %s: %w", spec.Name, err)
		}
		return nil
	}
	if err := tartree.TarDir(ctx, tree, w); err != nil {
		return fmt.Errorf("workspace %s: %w", spec.Name, err)
	}
	return nil
}

// relink makes the dump's copies of a hardlinked file links again, as the
// volume has them. Best effort: a copy that cannot be replaced (a
// read-only directory, for an unprivileged daemon) stays a copy.
func relink(ctx context.Context, vol, tree string, tools ext4.Tools) error {
	var dirs []string
	err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			rel, _ := filepath.Rel(tree, p)
			dirs = append(dirs, filepath.ToSlash(filepath.Join("/", rel)))
		}
		return nil
	})
	if err != nil {
		return err
	}
	inodes, err := ext4.Inodes(ctx, vol, dirs, tools)
	if err != nil {
		return err
	}
	groups := map[uint64][]string{}
	for p, ino := range inodes {
		groups[ino] = append(groups[ino], p)
	}
	for _, ps := range groups {
		if len(ps) < 2 {
			continue
		}
		sort.Strings(ps)
		first := filepath.Join(tree, filepath.FromSlash(ps[0]))
		if fi, err := os.Lstat(first); err != nil || !fi.Mode().IsRegular() {
			continue
		}
		for _, p := range ps[1:] {
			dst := filepath.Join(tree, filepath.FromSlash(p))
			if fi, err := os.Lstat(dst); err != nil || !fi.Mode().IsRegular() {
				continue
			}
			tmp := dst + ".paddock-link"
			if os.Link(first, tmp) != nil {
				continue
			}
			if os.Rename(tmp, dst) != nil {
				_ = os.Remove(tmp)
			}
		}
	}
	return nil
}

// removeTree removes dir even where the dump left directories without
// write or search permission for their owner.
func removeTree(dir string) {
	if os.RemoveAll(dir) == nil {
		return
	}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if d != nil && d.IsDir() {
			_ = os.Chmod(p, 0o700)
		}
		return nil
	})
	_ = os.RemoveAll(dir)
}

// noLinkOnTheWay refuses a path under tree whose directories on the way
// include a symbolic link (the last element may be one: it is archived
// as a link).
func noLinkOnTheWay(tree, sub string) error {
	parts := strings.Split(sub, "/")
	p := tree
	for _, part := range parts[:len(parts)-1] {
		p = filepath.Join(p, part)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return errdefs.Wrap(errdefs.ErrInvalidArgument, fmt.Errorf("%s: a symbolic link on the way to %s", strings.TrimPrefix(p, tree+"/"), sub))
		}
	}
	return nil
}
