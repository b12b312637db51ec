package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newRunCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "run [NAME] --image IMAGE [create flags] [-- COMMAND [ARG...]]", Short: "Create a VM and start it (the image pulled when missing)"}
	return c.creating(cmd, func(ctx context.Context, cl *api.Client, vm *api.VM) error {
		vm, err := cl.Start(ctx, vm.ID)
		if err != nil {
			return err
		}
		return c.printVM(vm, fmt.Sprintf("%s running (%s)", vm.Name, short(vm.ID)))
	})
}
