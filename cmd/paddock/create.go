package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

// vmFlags are create's flags; run takes them too.
type vmFlags struct {
	name, image, memory, disk, autoStop string
	cpus                                int
	env                                 []string
}

func (f *vmFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&f.name, "name", "", "VM name (DNS label)")
	fs.StringVar(&f.image, "image", "", "image name[:tag] or digest")
	fs.IntVar(&f.cpus, "cpus", 1, "virtual CPUs")
	fs.StringVar(&f.memory, "memory", "", "memory, e.g. 512MiB")
	fs.StringVar(&f.disk, "disk", "", "disk size, e.g. 4GiB")
	fs.StringVar(&f.autoStop, "auto-stop", "", "stop after this long idle, e.g. 30m, or off")
	fs.StringArrayVarP(&f.env, "env", "e", nil, "add KEY=VALUE to the image's environment (repeatable)")
}

// createIn turns the flags and the optional NAME argument into a request.
func (f *vmFlags) createIn(cmd *cobra.Command, a []string) (api.CreateIn, error) {
	in := api.CreateIn{Name: f.name, Image: f.image, Env: f.env}
	if len(a) == 1 {
		if in.Name != "" && in.Name != a[0] {
			return in, usageError{fmt.Errorf("name given twice: %q and --name %q", a[0], in.Name)}
		}
		in.Name = a[0]
	}
	if in.Name == "" || in.Image == "" {
		return in, usageError{errors.New(cmd.Name() + " needs a NAME and --image")}
	}
	if cmd.Flags().Changed("cpus") {
		in.CPUs = &f.cpus
	}
	var err error
	if in.Memory, err = sizeFlag(cmd, "memory", f.memory); err != nil {
		return in, err
	}
	if in.DiskSize, err = sizeFlag(cmd, "disk", f.disk); err != nil {
		return in, err
	}
	if cmd.Flags().Changed("auto-stop") {
		in.AutoStop = &f.autoStop
	}
	return in, nil
}

// creating makes create or run: then acts on the new VM.
func (c *cli) creating(cmd *cobra.Command, then func(context.Context, *api.Client, *api.VM) error) *cobra.Command {
	var f vmFlags
	f.register(cmd)
	cmd.Args = cobra.MaximumNArgs(1)
	cmd.RunE = func(cmd *cobra.Command, a []string) error {
		in, err := f.createIn(cmd, a)
		if err != nil {
			return err
		}
		return c.call(func(ctx context.Context, cl *api.Client) error {
			vm, err := cl.Create(ctx, in)
			if err != nil {
				return err
			}
			return then(ctx, cl, vm)
		})
	}
	return cmd
}

func (c *cli) newCreateCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "create [NAME] --image IMAGE", Short: "Create a VM from an image"}
	return c.creating(cmd, func(_ context.Context, _ *api.Client, vm *api.VM) error {
		return c.printVM(vm, vm.ID)
	})
}
