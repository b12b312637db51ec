package main

import (
	"context"
	"errors"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newSetCommand() *cobra.Command {
	var f struct {
		memory, disk, autoStop string
		cpus                   int
	}
	cmd := &cobra.Command{Use: "set VM [--cpus N] [--memory SIZE] [--disk SIZE] [--auto-stop DUR|off]", Short: "Change a VM's spec (cpus, memory and disk only while stopped)", Args: exactly(1, "one VM name or id")}
	fs := cmd.Flags()
	fs.IntVar(&f.cpus, "cpus", 1, "virtual CPUs")
	fs.StringVar(&f.memory, "memory", "", "memory, e.g. 1GiB")
	fs.StringVar(&f.disk, "disk", "", "disk size (grow only)")
	fs.StringVar(&f.autoStop, "auto-stop", "", "idle time before auto-stop, or off")
	cmd.RunE = func(cmd *cobra.Command, a []string) error {
		in := api.SetIn{VM: a[0]}
		if cmd.Flags().Changed("cpus") {
			in.CPUs = &f.cpus
		}
		var err error
		if in.Memory, err = sizeFlag(cmd, "memory", f.memory); err != nil {
			return err
		}
		if in.DiskSize, err = sizeFlag(cmd, "disk", f.disk); err != nil {
			return err
		}
		if cmd.Flags().Changed("auto-stop") {
			in.AutoStop = &f.autoStop
		}
		if in.CPUs == nil && in.Memory == nil && in.DiskSize == nil && in.AutoStop == nil {
			return usageError{errors.New("set needs at least one of --cpus, --memory, --disk, --auto-stop")}
		}
		return c.call(func(ctx context.Context, cl *api.Client) error {
			vm, err := cl.Set(ctx, in)
			if err != nil {
				return err
			}
			return c.printVM(vm, vm.Name+" updated")
		})
	}
	return cmd
}
