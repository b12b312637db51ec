package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/config"
)

func (c *cli) newWorkspaceResizeCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "resize WORKSPACE SIZE", Short: "Grow a detached workspace and its file system to SIZE (e.g. 20GiB; never shrinks; its size now only flattens its layers into one raw file)", Args: exactly(2, "a workspace and a size")}
	cmd.RunE = func(_ *cobra.Command, a []string) error {
		size, err := config.ParseSize(a[1])
		if err != nil {
			return usageError{err}
		}
		var w *api.Workspace
		err = c.interruptible("workspace "+a[0]+" not resized", func(ctx context.Context, cl *api.Client) error {
			w, err = cl.ResizeWorkspace(ctx, a[0], size)
			return err
		})
		if err != nil {
			return err
		}
		return c.showWorkspace(w)
	}
	return cmd
}
