package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/paddock-vm/paddock/state"
	"golang.org/x/sys/unix"
)

// rawFile is the layer of the reflink and copy backends.
const rawFile = "disk.raw"

// fileBackend makes the layer as one raw file: a clone (reflink or sparse
// copy) of the base, grown with truncate + resize2fs.
type fileBackend struct {
	name  string
	opts  Options
	clone func(ctx context.Context, dst, src *os.File, size int64) error
}

func (b *fileBackend) Name() string { return b.name }

func (b *fileBackend) Plan(vmDir string) *Disk {
	p := filepath.Join(vmDir, rawFile)
	return &Disk{Backend: b.name, Dir: vmDir, Path: p, Format: FormatRaw, Files: []string{p}}
}

func (b *fileBackend) Create(ctx context.Context, vmDir, base string, size int64) (*Disk, error) {
	if err := checkVMDir(vmDir); err != nil {
		return nil, err
	}
	baseSize, err := baseInfo(base)
	if err != nil {
		return nil, err
	}
	d := b.Plan(vmDir)
	d.Base, d.Size = base, layerSize(baseSize, size)
	var tool string
	if d.Size > baseSize {
		if tool, err = findTool("resize2fs", b.opts.Resize2fs, "e2fsprogs"); err != nil {
			return nil, err
		}
	}
	src, err := os.Open(base)
	if err != nil {
		return nil, fmt.Errorf("disk: base: %w", err)
	}
	defer src.Close()
	dst, err := claim(d.Path)
	if err != nil {
		return nil, err
	}
	u := &undo{ctx: ctx}
	u.add(removeFile(d.Path))
	err = b.clone(ctx, dst, src, baseSize)
	if err == nil && d.Size > baseSize {
		err = dst.Truncate(d.Size)
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, u.fail(fmt.Errorf("disk: %s of %s: %w", b.name, base, err))
	}
	if d.Size > baseSize {
		if err := resize2fs(ctx, tool, d.Path, d.Size); err != nil {
			return nil, u.fail(err)
		}
	}
	if err := syncFile(d.Path); err != nil {
		return nil, u.fail(err)
	}
	if err := state.SyncDir(vmDir); err != nil {
		return nil, u.fail(err)
	}
	return d, nil
}

func (b *fileBackend) Activate(ctx context.Context, d *Disk) (*Disk, error) {
	if err := checkFiles(d); err != nil {
		return nil, err
	}
	if _, err := os.Stat(d.Path); err != nil {
		return nil, fmt.Errorf("disk: activate: %w", err)
	}
	return d, nil
}

func (b *fileBackend) Deactivate(ctx context.Context, d *Disk) error { return checkFiles(d) }

func (b *fileBackend) Release(ctx context.Context, d *Disk) error {
	if err := checkFiles(d); err != nil {
		return err
	}
	return removeFiles(d)
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("disk: sync: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("disk: fsync %s: %w", path, err)
	}
	return nil
}

// reflinkFile shares src's extents with dst (FICLONE).
func reflinkFile(ctx context.Context, dst, src *os.File, size int64) error {
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		if noReflink(err) {
			return fmt.Errorf("%w: FICLONE: %w", ErrUnsupported, err)
		}
		return fmt.Errorf("FICLONE: %w", err)
	}
	return nil
}

// noReflink: the errors of a file system (or pair of them) without reflinks.
func noReflink(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) ||
		errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.ENOSYS)
}

// sparseCopyFile copies src's data extents into dst and leaves its holes as
// holes: SEEK_DATA/SEEK_HOLE to find the extents, copy_file_range to move
// them in the kernel, and a read/write loop that skips zero blocks where
// copy_file_range cannot work (across file systems, old kernels).
func sparseCopyFile(ctx context.Context, dst, src *os.File, size int64) error {
	if err := dst.Truncate(size); err != nil {
		return err
	}
	sfd := int(src.Fd())
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(sfd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			// No SEEK_DATA here: everything is data.
			data = off
		}
		end, err := unix.Seek(sfd, data, unix.SEEK_HOLE)
		if err != nil || end > size {
			end = size
		}
		if err := copyRange(ctx, dst, src, data, end-data); err != nil {
			return err
		}
		off = end
	}
	return nil
}

const copyChunk = 64 << 20

// copyRange copies [off, off+n) from src to the same offset in dst.
func copyRange(ctx context.Context, dst, src *os.File, off, n int64) error {
	roff, woff := off, off
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		c, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &woff, int(min(n, copyChunk)), 0)
		if err != nil || c == 0 {
			if err != nil && !errors.Is(err, unix.EXDEV) && !errors.Is(err, unix.EOPNOTSUPP) &&
				!errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("copy_file_range: %w", err)
			}
			return copyRangeRW(ctx, dst, src, roff, n)
		}
		n -= int64(c)
	}
	return nil
}

// copyRangeRW is the read/write fallback; all-zero blocks stay holes.
func copyRangeRW(ctx context.Context, dst, src *os.File, off, n int64) error {
	buf := make([]byte, 1<<20)
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		m, err := src.ReadAt(buf[:min(n, int64(len(buf)))], off)
		if m == 0 && err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		for b := 0; b < m; b += 4096 {
			blk := buf[b:min(b+4096, m)]
			if allZero(blk) {
				continue
			}
			if _, err := dst.WriteAt(blk, off+int64(b)); err != nil {
				return err
			}
		}
		off += int64(m)
		n -= int64(m)
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// CloneFile makes dst (new, mode 0600) a copy of src: with reflink, a
// FICLONE (shared extents, no data moves; ErrUnsupported where the file
// system has none), else a sparse copy. A failure leaves no dst.
func CloneFile(ctx context.Context, dst, src string, reflink bool) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("disk: clone: %w", err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return fmt.Errorf("disk: clone: %w", err)
	}
	out, err := claim(dst)
	if err != nil {
		return err
	}
	clone := sparseCopyFile
	if reflink {
		clone = reflinkFile
	}
	err = clone(ctx, out, in, st.Size())
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(dst)
		return err
	}
	return nil
}

// Run executes a helper tool (qemu-img, resize2fs...) under ctx; a failure
// carries its output, bounded.
func Run(ctx context.Context, name string, args ...string) error { return run(ctx, name, args...) }

// SyncFile fsyncs the file at path.
func SyncFile(path string) error { return syncFile(path) }
