package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/bootkit"
	"github.com/paddock-vm/paddock/varlink"
)

func kernelToAPI(k *bootkit.Kit, def string) api.Kernel {
	return api.Kernel{Name: k.Name, Release: k.Release, Created: stamp(k.Created), Modules: len(k.Modules), Default: k.Name == def}
}

// findKit picks the boot kit a VM boots: the one it names; else the
// configured default (vm.kernel); else, when there is exactly one kit, that
// one. A miss names what there is and how to get one.
func findKit(stateDir, name, configured string) (*bootkit.Kit, error) {
	kits, err := bootkit.List(stateDir)
	if err != nil {
		return nil, err
	}
	var names []string
	var usable []*bootkit.Kit
	for _, k := range kits {
		names = append(names, k.Name)
		if k.Err == nil {
			usable = append(usable, k)
		}
	}
	want := name
	if want == "" {
		want = configured
	}
	for _, k := range kits {
		if k.Name == want {
			return k, k.Err
		}
	}
	if name == "" && len(usable) == 1 {
		return usable[0], nil
	}
	have := "there is none"
	if len(names) > 0 {
		have = "there are: " + strings.Join(names, ", ")
	}
	switch {
	case name != "":
		return nil, fmt.Errorf("no boot kit named %q (%s): %w", name, have, bootkit.ErrNotFound)
	case len(names) == 0:
		return nil, fmt.Errorf("no boot kit (import one: paddock kernel import VMLINUZ --modules DIR): %w", bootkit.ErrNotFound)
	}
	return nil, fmt.Errorf("no boot kit named %q, the default (vm.kernel), and %s: name one with --kernel: %w", configured, have, bootkit.ErrNotFound)
}

// defaultKit is the name of the kit a VM that names none boots ("" when
// there is none to pick).
func (d *Daemon) defaultKit() string {
	k, err := findKit(d.config().StateDir, "", d.config().VM.Kernel)
	if err != nil {
		return ""
	}
	return k.Name
}

// checkKit refuses a kit name that names no kit, before it is recorded.
func (d *Daemon) checkKit(name *string) error {
	if name == nil || *name == "" {
		return nil
	}
	if _, err := findKit(d.config().StateDir, *name, d.config().VM.Kernel); err != nil {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "kernel", Msg: err.Error()}
	}
	return nil
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
	if d.warmKVM != nil {
		d.warmKVM(kit.VmlinuxPath())
	}
	return c.Reply(api.KernelOut{Kernel: kernelToAPI(kit, d.defaultKit())})
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
	def := d.defaultKit()
	for _, k := range kits {
		if k.Err == nil {
			out.Kernels = append(out.Kernels, kernelToAPI(k, def))
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
