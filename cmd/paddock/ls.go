package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/config"
)

func (c *cli) newLsCommand() *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{Use: "ls", Aliases: []string{"list", "ps"}, Short: "List VMs", Args: exactly(0, "no arguments")}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print ids only")
	return query(c, cmd, func(ctx context.Context, cl *api.Client, _ []string) ([]api.VM, error) {
		return cl.List(ctx)
	}, func(vms []api.VM) error {
		if quiet {
			for _, vm := range vms {
				if err := say(c.out, "%s", vm.ID); err != nil {
					return err
				}
			}
			return nil
		}
		return table(c.out, "ID\tNAME\tSTATUS\tIMAGE\tCPUS\tMEMORY\tDISK\tCREATED", vms, func(vm api.VM) []string {
			return []string{short(vm.ID), orDash(vm.Name), vm.Status, orDash(vm.Spec.Image),
				fmt.Sprint(vm.Spec.CPUs), config.FormatSize(vm.Spec.Memory), config.FormatSize(vm.Spec.DiskSize), ago(vm.CreatedAt)}
		})
	})
}
