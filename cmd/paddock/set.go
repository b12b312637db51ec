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
		run                    runFlags
		net                    netFlags
		reset                  []string
	}
	cmd := &cobra.Command{Use: "set VM [flags] [-- COMMAND [ARG...]]", Short: "Change a VM's spec (all but --auto-stop only while it is stopped)"}
	fs := cmd.Flags()
	fs.IntVar(&f.cpus, "cpus", 1, "virtual CPUs")
	fs.StringVar(&f.memory, "memory", "", "memory, e.g. 1GiB")
	fs.StringVar(&f.disk, "disk", "", "disk size (grow only)")
	fs.StringVar(&f.autoStop, "auto-stop", "", "idle time before auto-stop, or off")
	f.run.register(cmd, ` ("": the default)`)
	f.net.register(cmd, true)
	fs.StringSliceVar(&f.reset, "reset", nil, "return fields to the image's: entrypoint, cmd, workdir, user (kernel: to the default kit; network: to the daemon's default; ports: none published; workspaces: none attached)")
	cmd.RunE = func(cmd *cobra.Command, a []string) error {
		a, command, err := splitDash(cmd, a, 1)
		if err != nil {
			return err
		}
		if len(a) != 1 {
			return usageError{errors.New("set needs one VM name or id")}
		}
		in := api.SetIn{VM: a[0], Reset: f.reset}
		if cmd.Flags().Changed("cpus") {
			in.CPUs = &f.cpus
		}
		if in.Memory, err = sizeFlag(cmd, "memory", f.memory); err != nil {
			return err
		}
		if in.DiskSize, err = sizeFlag(cmd, "disk", f.disk); err != nil {
			return err
		}
		if cmd.Flags().Changed("auto-stop") {
			in.AutoStop = &f.autoStop
		}
		if in.RunIn, err = f.run.runIn(cmd, command); err != nil {
			return err
		}
		if in.NetIn, err = f.net.netIn(cmd); err != nil {
			return err
		}
		if in.CPUs == nil && in.Memory == nil && in.DiskSize == nil && in.AutoStop == nil && in.RunIn == (api.RunIn{}) && in.NetIn == (api.NetIn{}) && len(in.Reset) == 0 {
			return usageError{errors.New("set needs something to change: --cpus, --memory, --disk, --auto-stop, --kernel, --entrypoint, --workdir, --user, --workspace, -p, --network, --reset, or -- COMMAND")}
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
