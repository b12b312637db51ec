package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/tartree"
)

func (c *cli) newCpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "cp (SRC VM:DST | VM:SRC DST)",
		Short: "Copy files and directories between the host and a running VM (read and written as you on the host)",
		Long: `Copy a file, a symbolic link (never followed) or a directory with
everything under it between the host and a running VM, as cp -r does:
copied to a directory that exists, it goes inside it; otherwise it becomes
DST, whose parent must exist. Paths in the VM are absolute.

On the host this command reads and writes the files as you, so every file
copied out is yours; entries from the VM that would reach out of DST,
device nodes and anything bigger than the free space are refused naming
the entry. In the VM, what is copied into a workspace's mount belongs to
the workspace's uid:gid, anything else to root; setuid and setgid bits
are dropped both ways. A host path holding ':' is written ./a:b.`,
		Example: "  paddock cp ./src web:/tmp/src\n  paddock cp web:/etc/hostname ./hostname",
		Args:    exactly(2, "a source and a destination, one of them VM:PATH"),
		RunE: func(_ *cobra.Command, a []string) error {
			srcVM, src, srcIn := splitVMPath(a[0])
			dstVM, dst, dstIn := splitVMPath(a[1])
			if srcIn == dstIn {
				return usageError{errors.New("one of SRC and DST must be VM:PATH, the other a host path")}
			}
			if dstIn {
				if !path.IsAbs(dst) {
					return usageError{fmt.Errorf("%s: a path in the VM must be absolute", a[1])}
				}
				return c.interruptible("not copied", func(ctx context.Context, cl *api.Client) error {
					return sendTree(ctx, src, func(ctx context.Context, name string, r *os.File) error {
						return cl.CopyIn(ctx, api.CopyIn{VM: dstVM, Path: dst, Name: name}, r)
					})
				})
			}
			if !path.IsAbs(src) {
				return usageError{fmt.Errorf("%s: a path in the VM must be absolute", a[0])}
			}
			name := path.Base(path.Clean(src))
			if name == "/" {
				return usageError{fmt.Errorf("%s: the root directory cannot be copied as a whole; name a directory under it", a[0])}
			}
			return c.interruptible("not copied", func(ctx context.Context, cl *api.Client) error {
				return receiveTree(ctx, dst, name, func(ctx context.Context, w *os.File) error {
					return cl.CopyOut(ctx, api.CopyIn{VM: srcVM, Path: src}, w)
				})
			})
		},
	}
}

// splitVMPath splits VM:PATH; a host path has no ':' before its first '/'.
func splitVMPath(arg string) (vm, p string, inVM bool) {
	i := strings.IndexByte(arg, ':')
	if i <= 0 || strings.Contains(arg[:i], "/") {
		return "", arg, false
	}
	return arg[:i], arg[i+1:], true
}

// sendTree archives the host path src as the caller into a pipe whose
// read end call passes to the daemon, with the name the copy has.
func sendTree(ctx context.Context, src string, call func(ctx context.Context, name string, r *os.File) error) error {
	abs, err := filepath.Abs(src)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(abs); err != nil {
		return err
	}
	name := filepath.Base(abs)
	if name == string(filepath.Separator) {
		return usageError{errors.New("the root directory cannot be copied as a whole; name a directory under it")}
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	archived := make(chan error, 1)
	go func() {
		err := tartree.Archive(ctx, abs, name, pw)
		_ = pw.Close() // a stream cut short is refused by the guest
		if err != nil {
			cancel(err)
		}
		archived <- err
	}()
	err = call(ctx, name, pr)
	_ = pr.Close() // the daemon has its own descriptor; this ends a blocked archiver
	if aerr := <-archived; aerr != nil && (err == nil || errors.Is(err, context.Canceled)) {
		return fmt.Errorf("reading %s: %w", src, aerr)
	}
	return err
}

// maxCopyEntries bounds the entries a copy out unpacks.
const maxCopyEntries = 10_000_000

// receiveTree unpacks, as the caller, the tar stream the daemon writes
// into the pipe call passes, for dst as cp does (tartree.Destination):
// entries must be name, name/..., no bigger in all than the free space.
func receiveTree(ctx context.Context, dst, name string, call func(ctx context.Context, w *os.File) error) error {
	root, rename, err := tartree.OpenDestination(dst, name)
	if err != nil {
		return err
	}
	defer root.Close()
	o := tartree.Options{Rename: rename, Replace: true, MaxEntries: maxCopyEntries}
	var st unix.Statfs_t
	if unix.Statfs(root.Name(), &st) == nil {
		o.MaxBytes = int64(st.Bavail) * st.Bsize
	}
	err = pipeFrom(ctx, call, func(ctx context.Context, r *bufio.Reader) error {
		return tartree.Extract(ctx, r, root, o)
	})
	if err != nil {
		return fmt.Errorf("copying to %s: %w", dst, err)
	}
	return nil
}

// pipeFrom hands call a pipe's write end for the daemon and unpacks what
// comes out of its read end, once something does (a refusal unpacks
// nothing); an unpacking failure cancels the call.
func pipeFrom(ctx context.Context, call func(ctx context.Context, w *os.File) error, unpack func(ctx context.Context, r *bufio.Reader) error) error {
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	type result struct {
		err  error
		none bool // nothing came
	}
	unpacked := make(chan result, 1)
	go func() {
		br := bufio.NewReaderSize(pr, 1<<20)
		var res result
		if _, err := br.Peek(1); err != nil {
			res.none = true // the call says why
		} else if res.err = unpack(ctx, br); res.err != nil {
			cancel(res.err) // the daemon stops writing
		}
		_ = pr.Close()
		unpacked <- res
	}()
	err = call(ctx, pw)
	_ = pw.Close() // the daemon has its own descriptor: the stream ends when both are closed
	if err != nil {
		_ = pr.Close()
	}
	res := <-unpacked
	switch {
	case res.err != nil && (err == nil || errors.Is(err, context.Canceled)):
		return res.err
	case err == nil && res.none:
		return errors.New("the daemon sent nothing")
	}
	return err
}
