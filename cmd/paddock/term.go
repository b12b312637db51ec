package main

import (
	"bytes"
	"context"
	"io"
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

// stdio is what a relayed call passes the daemon in place of the
// terminal, files and pipes of the command: socket pair ends (see relay).
type stdio struct{ stdin, stdout, stderr *os.File }

// relayed runs fn with stdin, stdout and stderr relays (see stdinRelay and
// outputRelay) until it ends or SIGTERM (exec: also SIGINT, which a terminal
// in raw mode passes as a byte instead) ends it. The daemon takes only
// sockets for a session's streams: they are the one kind it can read and
// write with no thread waiting on them whatever a client does, and with
// them it never holds the user's terminal itself.
func (c *cli) relayed(detach bool, fn func(context.Context, *api.Client, stdio) error) error {
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
		stdout, drainOut, err := outputRelay(os.Stdout)
		if err != nil {
			return err
		}
		stderr, drainErr, err := outputRelay(os.Stderr)
		if err != nil {
			drainOut(ctx)
			return err
		}
		err = fn(ctx, cl, stdio{stdin, stdout, stderr})
		// The daemon closes its ends when the call ends: what it sent
		// before is copied out in full (unless a signal ends the wait).
		drainOut(ctx)
		drainErr(ctx)
		return err
	})
}

// outputRelay hands the daemon one end of a socket pair and copies what
// arrives on the other to dst. drain closes the handed end and waits until
// everything the daemon sent has been copied, or ctx ends.
func outputRelay(dst *os.File) (*os.File, func(context.Context), error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	remote, local := os.NewFile(uintptr(fds[0]), "output-relay"), os.NewFile(uintptr(fds[1]), "output-relay-local")
	_ = unix.Shutdown(fds[1], unix.SHUT_WR) // nothing goes back to the daemon
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(dst, local)
	}()
	return remote, func(ctx context.Context) {
		_ = remote.Close()
		select {
		case <-done:
		case <-ctx.Done():
		}
		_ = local.Close()
	}, nil
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
