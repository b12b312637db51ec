package workspace

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/paddock-vm/paddock/host/disk"
	"github.com/paddock-vm/paddock/internal/sbin"
	"github.com/paddock-vm/paddock/state"
)

// Layers are the tools that make and read a workspace's layers: qemu-img
// for qcow2 overlays and flattening, resize2fs and e2fsck for growing.
// Empty paths are looked up.
type Layers struct {
	QemuImg, Resize2fs, E2fsck string
	Log                        *slog.Logger
}

// How a new top layer was made.
const (
	TopReflink = "reflink"
	TopOverlay = "qcow2 overlay"
	TopCopy    = "sparse copy"
)

// NewTop makes a new writable top layer in dir over the frozen layer
// layer (a file in the store's .layers; size is the volume's size), in
// O(1) where the host allows: a reflink of a raw layer (btrfs, xfs), else
// a qcow2 overlay naming the layer as its backing file (written natively,
// or by qemu-img where the native writer refuses; either needs qemu-img
// on the host, which reads overlays back), else a sparse copy of a raw
// layer, logged. It returns the new file's name in dir and how it was
// made: over a reflink or a copy the top needs no backing. The new file
// appears whole or not at all.
func (l Layers) NewTop(ctx context.Context, dir, layer string, size int64) (name, how string, err error) {
	id := state.NewID()
	raw := state.LayerFormat(layer) == "raw"
	if raw {
		name = "top-" + id + ".ext4"
		err := disk.CloneFile(ctx, filepath.Join(dir, name), layer, true)
		if err == nil {
			return name, TopReflink, nil
		}
		if !errors.Is(err, disk.ErrUnsupported) {
			return "", "", fmt.Errorf("reflink of layer %s: %w", filepath.Base(layer), err)
		}
	}
	qemuImg, qerr := l.tool("qemu-img", l.QemuImg)
	if qerr == nil {
		name = "top-" + id + ".qcow2"
		if err := l.overlay(ctx, qemuImg, filepath.Join(dir, name), layer, size); err != nil {
			return "", "", fmt.Errorf("qcow2 overlay over layer %s: %w", filepath.Base(layer), err)
		}
		return name, TopOverlay, nil
	}
	if !raw {
		return "", "", qerr
	}
	l.logger().Warn("no reflink and no qemu-img: the new top layer is a sparse copy (slow, takes space)", "layer", filepath.Base(layer), "err", qerr)
	name = "top-" + id + ".ext4"
	if err := disk.CloneFile(ctx, filepath.Join(dir, name), layer, false); err != nil {
		return "", "", fmt.Errorf("sparse copy of layer %s: %w", filepath.Base(layer), err)
	}
	return name, TopCopy, nil
}

// overlay writes the qcow2 overlay top over layer: natively, else (a
// refusal, logged) with qemu-img create into a temporary file linked to
// top when complete.
func (l Layers) overlay(ctx context.Context, qemuImg, top, layer string, size int64) error {
	o := Overlay{Size: size, Backing: state.LayerRef(filepath.Base(layer)), BackingFormat: state.LayerFormat(layer)}
	err := WriteOverlay(top, o)
	if !errors.Is(err, ErrOverlayRefused) {
		return err
	}
	l.logger().Info("qcow2 overlay written by qemu-img", "layer", filepath.Base(layer), "why", err)
	tmp := filepath.Join(filepath.Dir(top), "."+filepath.Base(top)+".partial-"+state.NewID())
	defer os.Remove(tmp)
	if err := disk.Run(ctx, qemuImg, "create", "-q", "-f", "qcow2", "-F", o.BackingFormat,
		"-b", o.Backing, tmp, strconv.FormatInt(size, 10)); err != nil {
		return err
	}
	if err := disk.SyncFile(tmp); err != nil {
		return err
	}
	if err := os.Link(tmp, top); err != nil {
		return err
	}
	return state.SyncDir(filepath.Dir(top))
}

// Flatten writes the volume whose top layer is top (a qcow2 overlay and
// its backing chain, or a raw file) into out as one sparse raw file. It
// reads with -U (force-share): an attached workspace is read while its
// guest has it frozen and QEMU holds the image's lock; callers otherwise
// read only workspaces nothing holds.
func (l Layers) Flatten(ctx context.Context, top, out string) error {
	qemuImg, err := l.tool("qemu-img", l.QemuImg)
	if err != nil {
		return err
	}
	if err := disk.Run(ctx, qemuImg, "convert", "-U", "-f", state.LayerFormat(top), "-O", "raw", top, out); err != nil {
		_ = os.Remove(out)
		return fmt.Errorf("flatten %s: %w", filepath.Base(top), err)
	}
	return disk.SyncFile(out)
}

// Grow grows the raw volume raw and its ext4 file system to size bytes,
// offline: checked first (e2fsck -fp: a file system it cannot fix on its
// own is refused), then truncate and resize2fs.
func (l Layers) Grow(ctx context.Context, raw string, size int64) error {
	e2fsck, err := l.tool("e2fsck", l.E2fsck)
	if err != nil {
		return err
	}
	resize2fs, err := l.tool("resize2fs", l.Resize2fs)
	if err != nil {
		return err
	}
	// Exit 1: errors corrected, which preen may do; more is refused.
	if out, err := exec.CommandContext(ctx, e2fsck, "-fp", raw).CombinedOutput(); err != nil {
		var ee *exec.ExitError
		if ctx.Err() != nil || !errors.As(err, &ee) || ee.ExitCode() != 1 {
			return fmt.Errorf("check before growing: e2fsck: %w: %s", cmp.Or(ctx.Err(), err), bounded(out))
		}
	}
	if err := os.Truncate(raw, size); err != nil {
		return fmt.Errorf("grow: %w", err)
	}
	if err := disk.Run(ctx, resize2fs, raw, strconv.FormatInt(size/1024, 10)+"K"); err != nil {
		return fmt.Errorf("grow file system: %w", err)
	}
	return disk.SyncFile(raw)
}

func (l Layers) tool(name, given string) (string, error) {
	if given != "" {
		return given, nil
	}
	p, err := sbin.Look(name)
	if err != nil {
		return "", fmt.Errorf("%w: %s not found", disk.ErrUnsupported, name)
	}
	return p, nil
}

func (l Layers) logger() *slog.Logger {
	if l.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l.Log
}

// bounded is a tool's output for an error message.
func bounded(out []byte) string {
	s := strings.TrimSpace(string(out))
	if len(s) > 2048 {
		s = s[:2048] + "…"
	}
	return s
}
