package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newLogsCommand() *cobra.Command {
	var follow bool
	var tail int
	cmd := &cobra.Command{Use: "logs VM", Short: "Print a VM's console log", Args: exactly(1, "one VM")}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	cmd.Flags().IntVar(&tail, "tail", 0, "only the last N bytes")
	cmd.RunE = func(_ *cobra.Command, a []string) error {
		return c.stream(func(ctx context.Context, cl *api.Client) error {
			return cl.Logs(ctx, api.LogsIn{VM: a[0], Tail: tail}, follow, func(s string) error {
				_, err := fmt.Fprint(c.out, s)
				return err
			})
		})
	}
	return cmd
}
