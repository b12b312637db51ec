package main

import (
	"context"
	"os"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newWorkspacePushCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "push WORKSPACE SRC [PATH]",
		Short: "Copy a host file or directory into a workspace attached to a running VM (read as you)",
		Long: `Copy a file, a symbolic link or a directory with everything under it from
the host into a workspace, as cp: to PATH in the workspace (default its
root) when that is a directory, else as PATH. This command reads SRC as
you. The workspace must be attached read-write to a running VM: the copy
goes through its agent at the workspace's mount, every file the
workspace's uid:gid, setuid and setgid dropped. A stopped workspace's
whole tree is replaced with 'workspace import'.`,
		Args: rangeArgs(2, 3, "a workspace, a source and maybe a path in it"),
		RunE: func(_ *cobra.Command, a []string) error {
			in := api.WorkspaceCopyIn{Workspace: a[0]}
			if len(a) == 3 {
				in.Path = a[2]
			}
			return c.interruptible("not copied", func(ctx context.Context, cl *api.Client) error {
				return sendTree(ctx, a[1], func(ctx context.Context, name string, r *os.File) error {
					in.Name = name
					_, err := cl.PushWorkspace(ctx, in, r)
					return err
				})
			})
		},
	}
}
