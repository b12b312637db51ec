package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newConsoleCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "console VM", Short: "Attach to a VM's serial console (Ctrl-] detaches)", Args: exactly(1, "one VM")}
	cmd.RunE = func(_ *cobra.Command, a []string) error {
		if restore, err := makeRaw(int(os.Stdin.Fd())); err == nil {
			defer restore()
			fmt.Fprint(c.errOut, safef("Connected to the console of %s; Ctrl-] detaches.", a[0])+"\r\n")
		}
		return c.relayed(true, func(ctx context.Context, cl *api.Client, s stdio) error {
			return cl.Console(ctx, a[0], s.stdin, s.stdout)
		})
	}
	return cmd
}
