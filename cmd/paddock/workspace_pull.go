package main

import (
	"context"
	"os"
	"path"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newWorkspacePullCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "pull WORKSPACE [PATH] DST",
		Short: "Copy a path of a workspace (default all of it) to the host (written as you)",
		Long: `Copy PATH of a workspace (default its whole tree, named after the
workspace) to DST on the host, as cp: into DST when it is a directory,
else as DST. This command writes the files as you. A workspace attached to
a running VM is read through its agent; a detached one offline from its
volume. Entries reaching out of DST and device nodes are refused naming
the entry.`,
		Args: rangeArgs(2, 3, "a workspace, maybe a path in it, and a destination"),
		RunE: func(_ *cobra.Command, a []string) error {
			in := api.WorkspaceCopyIn{Workspace: a[0], Name: a[0]}
			dst := a[len(a)-1]
			if len(a) == 3 {
				in.Path = a[1]
				if p := path.Clean("/" + a[1]); p != "/" {
					in.Name = path.Base(p)
				}
			}
			return c.interruptible("not copied", func(ctx context.Context, cl *api.Client) error {
				return receiveTree(ctx, dst, in.Name, func(ctx context.Context, w *os.File) error {
					_, err := cl.PullWorkspace(ctx, in, w)
					return err
				})
			})
		},
	}
}
