package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/api"
)

// exitError carries a command's own exit code out of paddock exec.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// makeRaw puts a terminal in raw mode and returns how to restore it.
func makeRaw(fd int) (func(), error) {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, err
	}
	return func() { _ = unix.IoctlSetTermios(fd, unix.TCSETS, old) }, nil
}

func (c *cli) execCommands() []*cobra.Command {
	var env []string
	var workdir, user string
	var tty bool
	execCmd := &cobra.Command{
		Use:   "exec VM [flags] -- COMMAND [ARG...]",
		Short: "Run a command in a running VM (stdin, stdout, stderr and exit code are the command's)",
		Args:  args(2, "a VM and a command"),
		RunE: func(_ *cobra.Command, a []string) error {
			in := api.ExecIn{VM: a[0], Command: a[1:], Env: env, Workdir: workdir, User: user, TTY: tty}
			if tty {
				if ws, err := unix.IoctlGetWinsize(int(os.Stdout.Fd()), unix.TIOCGWINSZ); err == nil {
					in.Rows, in.Cols = int(ws.Row), int(ws.Col)
				}
				if restore, err := makeRaw(int(os.Stdin.Fd())); err == nil {
					defer restore()
				}
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cl, err := c.dial(ctx)
			if err != nil {
				return err
			}
			defer cl.Close()
			stdin, closeRelay, err := stdinRelay(false)
			if err != nil {
				return err
			}
			defer closeRelay()
			out, err := cl.Exec(ctx, in, stdin, os.Stdout, os.Stderr)
			if err != nil {
				return c.explain(err)
			}
			if out.Signal != 0 {
				return exitError{128 + out.Signal}
			}
			if out.ExitCode != 0 {
				return exitError{out.ExitCode}
			}
			return nil
		},
	}
	f := execCmd.Flags()
	f.StringArrayVarP(&env, "env", "e", nil, "environment KEY=VALUE (repeatable; replaces the image's)")
	f.StringVarP(&workdir, "workdir", "w", "", "working directory in the guest")
	f.StringVarP(&user, "user", "u", "", "user[:group] in the guest")
	f.BoolVarP(&tty, "tty", "t", false, "run on a pseudo-terminal")

	var follow bool
	var tail int
	logsCmd := &cobra.Command{
		Use:   "logs VM",
		Short: "Print a VM's console log",
		Args:  exact(1, "one VM"),
		RunE: func(_ *cobra.Command, a []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cl, err := c.dial(ctx)
			if err != nil {
				return err
			}
			defer cl.Close()
			err = cl.Logs(ctx, api.LogsIn{VM: a[0], Tail: tail}, follow, func(s string) error {
				_, err := fmt.Fprint(c.out, s)
				return err
			})
			if ctx.Err() != nil {
				return nil
			}
			return c.explain(err)
		},
	}
	logsCmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	logsCmd.Flags().IntVar(&tail, "tail", 0, "only the last N bytes")
	consoleCmd := &cobra.Command{
		Use:   "console VM",
		Short: "Attach to a VM's serial console (Ctrl-] detaches)",
		Args:  exact(1, "one VM"),
		RunE: func(_ *cobra.Command, a []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
			defer stop()
			if restore, err := makeRaw(int(os.Stdin.Fd())); err == nil {
				defer restore()
				fmt.Fprint(os.Stderr, "Connected to the console of "+a[0]+"; Ctrl-] detaches.\r\n")
			}
			cl, err := c.dial(ctx)
			if err != nil {
				return err
			}
			defer cl.Close()
			stdin, closeRelay, err := stdinRelay(true)
			if err != nil {
				return err
			}
			defer closeRelay()
			return c.explain(cl.Console(ctx, a[0], stdin, os.Stdout))
		},
	}
	return []*cobra.Command{execCmd, logsCmd, consoleCmd}
}

// exitCode maps a command's own exit status through.
func exitCode(err error) (int, bool) {
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code, true
	}
	return 0, false
}

// stdinRelay hands the daemon one end of a socket pair and copies our stdin
// into the other: the daemon never holds the terminal itself, so nothing of
// the user's keyboard is read after the command ends. With detach, Ctrl-]
// ends the relay (console sessions).
func stdinRelay(detach bool) (*os.File, func(), error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	remote, local := os.NewFile(uintptr(fds[0]), "stdin-relay"), os.NewFile(uintptr(fds[1]), "stdin-relay-local")
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := os.Stdin.Read(buf)
			if n > 0 {
				chunk := buf[:n]
				if detach {
					if i := bytes.IndexByte(chunk, 0x1d); i >= 0 {
						_, _ = local.Write(chunk[:i+1])
						break
					}
				}
				if _, werr := local.Write(chunk); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		_ = unix.Shutdown(int(local.Fd()), unix.SHUT_WR)
	}()
	return remote, func() { remote.Close(); local.Close() }, nil
}
