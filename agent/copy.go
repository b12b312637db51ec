package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"syscall"

	"github.com/paddock-vm/paddock/tartree"
)

// maxExtractEntries bounds the entries one extract unpacks.
const maxExtractEntries = 10_000_000

// funcProc is a stream run by the agent itself (archive, extract) behind
// the Proc interface, so it travels like an exec session: same framing,
// same flow control, same teardown.
type funcProc struct {
	stdin  io.WriteCloser
	stdout io.ReadCloser
	cancel context.CancelFunc
	done   chan struct{}
	st     ExitStatus
}

// startFunc runs fn in its own goroutine; fn's error becomes the exit
// status (code 1 and the error).
func startFunc(stdin io.WriteCloser, stdout io.ReadCloser, fn func(ctx context.Context) error) *funcProc {
	ctx, cancel := context.WithCancel(context.Background())
	p := &funcProc{stdin: stdin, stdout: stdout, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer cancel()
		if err := fn(ctx); err != nil {
			p.st = ExitStatus{Code: 1, Error: err.Error()}
		}
	}()
	return p
}

func (p *funcProc) PID() int              { return 0 }
func (p *funcProc) Stdin() io.WriteCloser { return p.stdin }
func (p *funcProc) Stdout() io.ReadCloser { return p.stdout }
func (p *funcProc) Stderr() io.ReadCloser { return nil }
func (p *funcProc) Wait() ExitStatus      { <-p.done; return p.st }

// Signal ends the stream for any signal: there is no process to deliver
// it to, and the only one sent to a stream that is in the way is a kill.
func (p *funcProc) Signal(syscall.Signal) error {
	p.cancel()
	if p.stdin != nil {
		_ = p.stdin.Close()
	}
	if p.stdout != nil {
		_ = p.stdout.Close()
	}
	return nil
}

func (p *funcProc) Resize(int, int) error { return errors.New("not a terminal") }

// guestPath checks a path the host names in the guest: absolute, clean
// enough to name one thing.
func guestPath(op, p string) (string, error) {
	if !path.IsAbs(p) || len(p) > 4096 {
		return "", badRequest("%s: %q is not an absolute path", op, p)
	}
	c := path.Clean(p)
	if c == "/" {
		return "", badRequest("%s: the root directory cannot be copied as a whole; name a directory under it", op)
	}
	return c, nil
}

// startArchive streams a tar of req.Path on stdout.
func startArchive(req ArchiveRequest) (Proc, error) {
	p, err := guestPath("archive", req.Path)
	if err != nil {
		return nil, err
	}
	if _, err := os.Lstat(p); err != nil {
		return nil, &Error{Code: CodeNotFound, Message: err.Error()}
	}
	name := req.Name
	if name == "" {
		name = path.Base(p)
	}
	pr, pw := io.Pipe()
	return startFunc(nil, pr, func(ctx context.Context) error {
		err := tartree.Archive(ctx, p, name, pw)
		pw.CloseWithError(err) // without the end-of-archive marker
		return err
	}), nil
}

// startExtract unpacks stdin for req.Path, every entry owned by
// owner(the directory it goes into); see ExtractRequest.
func startExtract(req ExtractRequest, owner func(dir string) (int, int)) (Proc, error) {
	p, err := guestPath("extract", req.Path)
	if err != nil {
		return nil, err
	}
	root, rename, err := tartree.OpenDestination(p, req.Name)
	if err != nil {
		return nil, &Error{Code: CodeNotFound, Message: err.Error()}
	}
	o := tartree.Options{Rename: rename, Replace: true, MaxEntries: maxExtractEntries}
	if owner != nil {
		uid, gid := owner(root.Name())
		o.Chown = &tartree.Owner{UID: uid, GID: gid}
	}
	pr, pw := io.Pipe()
	return startFunc(pw, nil, func(ctx context.Context) error {
		defer root.Close()
		err := tartree.Extract(ctx, pr, root, o)
		if err != nil {
			err = fmt.Errorf("copying into %s: %w", p, err)
		}
		pr.CloseWithError(errors.Join(err, io.ErrClosedPipe)) // the host's further input is refused
		return err
	}), nil
}
