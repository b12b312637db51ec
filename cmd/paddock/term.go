package main

import (
	"bytes"
	"context"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/api"
)

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

// relayed runs fn with a stdin relay (see stdinRelay) until it ends or
// SIGTERM (exec: also SIGINT, which a terminal in raw mode passes as a byte
// instead) ends it.
func (c *cli) relayed(detach bool, fn func(context.Context, *api.Client, *os.File) error) error {
	sigs := []os.Signal{syscall.SIGTERM}
	if !detach {
		sigs = append(sigs, os.Interrupt)
	}
	ctx, stop := signal.NotifyContext(context.Background(), sigs...)
	defer stop()
	return c.with(ctx, func(ctx context.Context, cl *api.Client) error {
		stdin, closeRelay, err := stdinRelay(detach)
		if err != nil {
			return err
		}
		defer closeRelay()
		return fn(ctx, cl, stdin)
	})
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
