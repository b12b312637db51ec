package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

// newHostShutdownCommand is hidden: paddock-guests.service runs it as the
// host shuts down, and the daemon applies [vm] on_host_shutdown.
func (c *cli) newHostShutdownCommand() *cobra.Command {
	return &cobra.Command{
		Use:    "host-shutdown",
		Short:  "Apply vm.on_host_shutdown to every VM (run by paddock-guests.service as the host shuts down)",
		Hidden: true,
		Args:   exactly(0, "no arguments"),
		RunE: func(*cobra.Command, []string) error {
			return c.call(func(ctx context.Context, cl *api.Client) error {
				out, err := cl.HostShutdown(ctx)
				if err != nil {
					return err
				}
				return c.show(out, func() error {
					if out.Policy == "keep" {
						_, err := fmt.Fprintf(c.out, "on_host_shutdown = keep: %d VMs left running\n", out.Kept)
						return err
					}
					fmt.Fprintf(c.out, "stopped %d VMs cleanly: %s\n", len(out.Stopped), strings.Join(out.Stopped, " "))
					if len(out.Failed) > 0 {
						return fmt.Errorf("%d VMs did not stop cleanly: %s", len(out.Failed), strings.Join(out.Failed, " "))
					}
					return nil
				})
			})
		},
	}
}
