package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

// lifecycleCommands adds run, kill and restart on top of the basic verbs.
func (c *cli) lifecycleCommands(create *cobra.Command) []*cobra.Command {
	run := &cobra.Command{
		Use:   "run [NAME] --image IMAGE [create flags]",
		Short: "Create a VM and start it",
		Args:  create.Args,
		RunE: func(cmd *cobra.Command, a []string) error {
			saved := c.out
			c.out = discard{}
			err := create.RunE(cmd, a)
			c.out = saved
			if err != nil {
				return err
			}
			name, _ := cmd.Flags().GetString("name")
			if len(a) == 1 {
				name = a[0]
			}
			return c.call(func(ctx context.Context, cl *api.Client) error {
				vm, err := cl.Start(ctx, name)
				if err != nil {
					return err
				}
				return c.printVM(vm, fmt.Sprintf("%s running (%s)", vm.Name, vm.ID[:12]))
			})
		},
	}
	run.Flags().AddFlagSet(create.Flags())
	kill := &cobra.Command{
		Use:   "kill VM...",
		Short: "Stop VMs at once, without a clean guest shutdown",
		Args:  args(1, "VM name or id"),
		RunE: func(_ *cobra.Command, a []string) error {
			return c.eachVM(a, func(ctx context.Context, cl *api.Client, ref string) (*api.VM, error) {
				return cl.Stop(ctx, ref, true)
			}, "killed")
		},
	}
	restart := &cobra.Command{
		Use:   "restart VM...",
		Short: "Stop and start VMs",
		Args:  args(1, "VM name or id"),
		RunE: func(_ *cobra.Command, a []string) error {
			return c.eachVM(a, func(ctx context.Context, cl *api.Client, ref string) (*api.VM, error) {
				if _, err := cl.Stop(ctx, ref, false); err != nil {
					return nil, err
				}
				return cl.Start(ctx, ref)
			}, "restarted")
		},
	}
	return []*cobra.Command{run, kill, restart}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
