package disk

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"github.com/paddock-vm/paddock/state"
)

const (
	qcowFile = "disk.qcow2"
	// baseLink is a hard link to the image base inside the VM dir. It pins
	// the base (removing the image does not pull it from under the VM),
	// makes a qcow2 backing reference relative to the VM dir, and gives the
	// dm backend's base loop device a backing file that names its VM.
	baseLink = "disk.base"
)

// pinBase hard-links base into vmDir as disk.base and returns the link's
// path. Across file systems (or where hard links are refused) it returns
// base itself, and pinned is false.
func pinBase(base, vmDir string) (path string, pinned bool, err error) {
	link := filepath.Join(vmDir, baseLink)
	switch err := os.Link(base, link); {
	case err == nil:
		return link, true, nil
	case errors.Is(err, fs.ErrExist):
		return "", false, fmt.Errorf("disk: create %s: %w", link, fs.ErrExist)
	}
	abs, err := filepath.Abs(base)
	return abs, false, err
}

// dropFile removes name from d.Files.
func dropFile(d *Disk, name string) {
	out := d.Files[:0]
	for _, f := range d.Files {
		if f != name {
			out = append(out, f)
		}
	}
	d.Files = out
}

// qcow2Backend makes a qcow2 overlay backed by the raw base.
type qcow2Backend struct{ opts Options }

func (b *qcow2Backend) Name() string { return QCOW2 }

func (b *qcow2Backend) Plan(vmDir string) *Disk {
	p := filepath.Join(vmDir, qcowFile)
	return &Disk{Backend: QCOW2, Dir: vmDir, Path: p, Format: FormatQCOW2, Files: []string{p, filepath.Join(vmDir, baseLink)}}
}

func (b *qcow2Backend) Create(ctx context.Context, vmDir, base string, size int64) (*Disk, error) {
	if err := checkVMDir(vmDir); err != nil {
		return nil, err
	}
	baseSize, err := baseInfo(base)
	if err != nil {
		return nil, err
	}
	tool, err := findTool("qemu-img", b.opts.QemuImg, "qemu-utils")
	if err != nil {
		return nil, err
	}
	d := b.Plan(vmDir)
	d.Base, d.Size = base, layerSize(baseSize, size)
	d.GuestResize = d.Size > baseSize
	f, err := claim(d.Path)
	if err != nil {
		return nil, err
	}
	f.Close()
	u := &undo{ctx: ctx}
	u.add(removeFile(d.Path))
	backing, pinned, err := pinBase(base, vmDir)
	if err != nil {
		return nil, u.fail(err)
	}
	if pinned {
		u.add(removeFile(backing))
		// Relative to the overlay's directory, so the VM dir can move.
		backing = baseLink
	} else {
		dropFile(d, filepath.Join(vmDir, baseLink))
	}
	if err := run(ctx, tool, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", backing, d.Path, strconv.FormatInt(d.Size, 10)); err != nil {
		return nil, u.fail(fmt.Errorf("disk: qcow2 overlay: %w", err))
	}
	if err := syncFile(d.Path); err != nil {
		return nil, u.fail(err)
	}
	if err := state.SyncDir(vmDir); err != nil {
		return nil, u.fail(err)
	}
	return d, nil
}

func (b *qcow2Backend) Activate(ctx context.Context, d *Disk) (*Disk, error) {
	if err := checkFiles(d); err != nil {
		return nil, err
	}
	for _, f := range d.Files {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("disk: activate: %w", err)
		}
	}
	return d, nil
}

func (b *qcow2Backend) Deactivate(ctx context.Context, d *Disk) error { return checkFiles(d) }

func (b *qcow2Backend) Release(ctx context.Context, d *Disk) error {
	if err := checkFiles(d); err != nil {
		return err
	}
	return removeFiles(d)
}
