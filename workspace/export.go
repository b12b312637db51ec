package workspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/imaging/ext4"
)

// ExportSpec is how one volume is read.
type ExportSpec struct {
	Name       string // the workspace's name, in errors
	ScratchDir string // where the tree is dumped; default os.TempDir()
	Tools      ext4.Tools
}

// ErrNoScratch: the scratch directory has no room for the tree.
var ErrNoScratch = errors.New("not enough scratch space")

// Export writes the tree of the volume vol to w as a tar stream (no
// owners: whoever unpacks it owns the files). The volume is read without
// mounting it: checked with e2fsck -n, dumped with debugfs into a scratch
// directory (removed always, whatever happens), then archived like
// TarDir. An empty lost+found at the root, which mke2fs makes, is left
// out. Hardlinks come out as separate copies. The caller must make sure
// nothing writes the volume meanwhile; ctx bounds the whole read.
func Export(ctx context.Context, vol string, w io.Writer, spec ExportSpec) error {
	if _, err := os.Stat(vol); err != nil {
		return fmt.Errorf("workspace %s: %w", spec.Name, err)
	}
	dir, err := os.MkdirTemp(spec.ScratchDir, "paddock-export-")
	if err != nil {
		return fmt.Errorf("export scratch: %w", err)
	}
	defer removeTree(dir)
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
	if err := TarDir(ctx, tree, w); err != nil {
		return fmt.Errorf("workspace %s: %w", spec.Name, err)
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
