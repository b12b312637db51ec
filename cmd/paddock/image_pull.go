package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newImagePullCommand() *cobra.Command {
	var insecure, quiet bool
	cmd := &cobra.Command{Use: "pull REF", Short: "Pull an image from a registry (linux/amd64)", Args: exactly(1, "one image reference")}
	cmd.Flags().BoolVar(&insecure, "insecure", false, "reach the registry over plain HTTP")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress; print the image's digest only")
	cmd.RunE = func(_ *cobra.Command, a []string) error {
		return c.importing(quiet, pullImage(api.PullIn{Ref: a[0], Insecure: insecure}))
	}
	return cmd
}

func pullImage(in api.PullIn) transferFunc {
	return func(ctx context.Context, cl *api.Client, p func(api.ImportProgress)) (*api.ImportOut, error) {
		return cl.PullImage(ctx, in, p)
	}
}
