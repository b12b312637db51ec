package main

import (
	"context"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newExecCommand() *cobra.Command {
	var in api.ExecIn
	cmd := &cobra.Command{Use: "exec VM [flags] -- COMMAND [ARG...]", Short: "Run a command in a running VM (stdin, stdout, stderr and exit code are the command's)", Args: atLeast(2, "a VM and a command")}
	f := cmd.Flags()
	f.StringArrayVarP(&in.Env, "env", "e", nil, "environment KEY=VALUE (repeatable; replaces the image's)")
	f.StringVarP(&in.Workdir, "workdir", "w", "", "working directory in the guest")
	f.StringVarP(&in.User, "user", "u", "", "user[:group] in the guest (default: the user the entrypoint runs as)")
	f.BoolVarP(&in.TTY, "tty", "t", false, "run on a pseudo-terminal")
	cmd.RunE = func(_ *cobra.Command, a []string) error {
		in.VM, in.Command = a[0], a[1:]
		if in.TTY {
			if ws, err := unix.IoctlGetWinsize(int(os.Stdout.Fd()), unix.TIOCGWINSZ); err == nil {
				in.Rows, in.Cols = int(ws.Row), int(ws.Col)
			}
			if restore, err := makeRaw(int(os.Stdin.Fd())); err == nil {
				defer restore()
			}
		}
		var out *api.ExecOut
		err := c.relayed(false, func(ctx context.Context, cl *api.Client, s stdio) (err error) {
			out, err = cl.Exec(ctx, in, s.stdin, s.stdout, s.stderr)
			return err
		})
		switch {
		case err != nil:
			return err
		case out.Signal != 0:
			return exitError{128 + out.Signal}
		case out.ExitCode != 0:
			return exitError{out.ExitCode}
		}
		return nil
	}
	return cmd
}
