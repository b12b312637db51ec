package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/bootkit"
	"github.com/paddock-vm/paddock/varlink"
)

func (d *Daemon) kernelToAPI(k *bootkit.Kit) api.Kernel {
	return api.Kernel{Name: k.Name, Release: k.Release, Created: stamp(k.Created), Modules: len(k.Modules), Default: k.Name == d.config().VM.Kernel}
}

func (d *Daemon) requireAdmin(c *varlink.Call, what string) error {
	if !d.auth.caller(c.Peer).Admin {
		return &actors.Error{Kind: actors.ErrPermissionDenied, Msg: fmt.Sprintf("%s is for admins (uid %d is not one)", what, c.Peer.UID)}
	}
	return nil
}

func (d *Daemon) importKernel(ctx context.Context, c *varlink.Call) error {
	var in api.ImportKernelIn
	if err := c.Decode(&in); err != nil {
		return err
	}
	if err := d.requireAdmin(c, "importing a kernel"); err != nil {
		return err
	}
	if in.Name == "" {
		in.Name = "default"
	}
	if err := bootkit.ValidName(in.Name); err != nil {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "name", Msg: err.Error()}
	}
	if len(c.FDs) != 2 {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "kernel", Msg: fmt.Sprintf("ImportKernel needs two file descriptors (kernel file, modules directory), got %d", len(c.FDs))}
	}
	// The kernel file is often readable by root only: copy it through the
	// passed descriptor rather than reopening its path.
	tmp, err := os.CreateTemp(d.config().Images.ScratchDir, "vmlinuz-")
	if err != nil {
		if err := os.MkdirAll(d.config().Images.ScratchDir, 0o750); err != nil {
			return err
		}
		if tmp, err = os.CreateTemp(d.config().Images.ScratchDir, "vmlinuz-"); err != nil {
			return err
		}
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := io.Copy(tmp, io.NewSectionReader(c.FDs[0], 0, 1<<30)); err != nil {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "kernel", Msg: fmt.Sprintf("read kernel %s: %v", in.Kernel, err)}
	}
	fi, err := c.FDs[1].Stat()
	if err != nil || !fi.IsDir() {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "modules", Msg: fmt.Sprintf("modules %s: not a directory", in.Modules)}
	}
	// The module tree is read by paddockd's own user (it is world-readable
	// on every distribution); its name carries the kernel release.
	modules, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", c.FDs[1].Fd()))
	if err != nil {
		return fmt.Errorf("modules %s: %w", in.Modules, err)
	}
	kit, err := bootkit.Import(ctx, tmp.Name(), modules, in.Name, d.config().StateDir)
	if err != nil {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "kernel", Msg: fmt.Sprintf("boot kit from %s and %s: %v", in.Kernel, in.Modules, err)}
	}
	d.log.Info("boot kit imported", "kernel_name", kit.Name, "release", kit.Release, "modules", len(kit.Modules))
	return c.Reply(api.KernelOut{Kernel: d.kernelToAPI(kit)})
}

func (d *Daemon) listKernels(_ context.Context, c *varlink.Call) error {
	if err := c.Decode(&struct{}{}); err != nil {
		return err
	}
	kits, err := bootkit.List(d.config().StateDir)
	if err != nil {
		return err
	}
	out := api.KernelsOut{Kernels: []api.Kernel{}}
	for _, k := range kits {
		if k.Err == nil {
			out.Kernels = append(out.Kernels, d.kernelToAPI(k))
		}
	}
	return c.Reply(out)
}

func (d *Daemon) removeKernel(_ context.Context, c *varlink.Call) error {
	var in api.NameIn
	if err := c.Decode(&in); err != nil {
		return err
	}
	if err := d.requireAdmin(c, "removing a kernel"); err != nil {
		return err
	}
	if err := bootkit.Remove(d.config().StateDir, in.Name); err != nil {
		if errors.Is(err, bootkit.ErrNotFound) {
			return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "name", Msg: fmt.Sprintf("no boot kit named %q", in.Name)}
		}
		return err
	}
	return c.Reply(nil)
}
