package disk

import (
	"errors"
	"fmt"
	"os"

	"github.com/paddock-vm/paddock/host/dm"
	"golang.org/x/sys/unix"
)

// checkDir: the layer directory is set and writable.
func checkDir(dir string) error {
	if dir == "" {
		return fmt.Errorf("%w: no VM directory configured", ErrUnsupported)
	}
	f, err := os.CreateTemp(dir, ".disk-probe-*")
	if err != nil {
		return fmt.Errorf("%w: cannot write in %s: %w", ErrUnsupported, dir, err)
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}

func probeCopy(opts Options) error {
	if err := checkDir(opts.Dir); err != nil {
		return err
	}
	_, err := findTool("resize2fs", opts.Resize2fs, "e2fsprogs")
	return err
}

// probeReflink clones a small temp file from the base directory into the
// VM directory, as Create will.
func probeReflink(opts Options) error {
	if err := checkDir(opts.Dir); err != nil {
		return err
	}
	baseDir := opts.BaseDir
	if baseDir == "" {
		baseDir = opts.Dir
	}
	src, err := os.CreateTemp(baseDir, ".disk-probe-*")
	if err != nil {
		return fmt.Errorf("%w: cannot write in %s: %w", ErrUnsupported, baseDir, err)
	}
	defer os.Remove(src.Name())
	defer src.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	dst, err := os.CreateTemp(opts.Dir, ".disk-probe-*")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	defer os.Remove(dst.Name())
	defer dst.Close()
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		if errors.Is(err, unix.EXDEV) {
			return fmt.Errorf("%w: %s and %s are on different file systems (FICLONE: %v)", ErrUnsupported, baseDir, opts.Dir, err)
		}
		return fmt.Errorf("%w: the file system of %s (%s) does not support reflinks (FICLONE: %v)", ErrUnsupported, opts.Dir, fsName(opts.Dir), err)
	}
	_, err = findTool("resize2fs", opts.Resize2fs, "e2fsprogs")
	return err
}

func probeQCOW2(opts Options) error {
	if !opts.QCOW2 {
		return fmt.Errorf("%w: the VMM does not read qcow2 (only QEMU does)", ErrUnsupported)
	}
	if err := checkDir(opts.Dir); err != nil {
		return err
	}
	_, err := findTool("qemu-img", opts.QemuImg, "qemu-utils")
	return err
}

func probeDM(opts Options) error {
	if err := checkDir(opts.Dir); err != nil {
		return err
	}
	f, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("%w: no loop devices: %w", ErrUnsupported, err)
	}
	f.Close()
	if err := dm.Probe("snapshot", "linear", "zero"); err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	_, err = findTool("resize2fs", opts.Resize2fs, "e2fsprogs")
	return err
}

// fsName names the file system under path, for probe reasons.
func fsName(path string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "unknown"
	}
	switch uint32(st.Type) {
	case unix.EXT4_SUPER_MAGIC:
		return "ext2/3/4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	}
	return fmt.Sprintf("magic %#x", st.Type)
}
