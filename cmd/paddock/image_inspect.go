package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newImageInspectCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "inspect IMAGE", Short: "Show an image with its config (JSON)", Args: exactly(1, "one image")}
	return query(c, cmd, func(ctx context.Context, cl *api.Client, a []string) (*api.InspectImageOut, error) {
		return cl.InspectImage(ctx, a[0])
	}, func(out *api.InspectImageOut) error { return c.printJSON(out) })
}
