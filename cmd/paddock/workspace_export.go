package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/tartree"
)

func (c *cli) newWorkspaceExportCommand() *cobra.Command {
	var file, dir string
	cmd := &cobra.Command{
		Use:   "export WORKSPACE (-o FILE.tar | --to DIR)",
		Short: "Copy the tree of a stopped workspace out, as a tar file or into a directory (written as you)",
		Long: `Copy the tree of a workspace out of its volume: into a tar file (-o) or
unpacked into a directory (--to, made if missing, and empty), both written
by this command as you, so every file is yours. No entry may reach out of
DIR.

A workspace attached to a VM cannot be exported (its guest may be writing
to it): stop the VM first.`,
		Args: exactly(1, "one workspace"),
	}
	cmd.Flags().StringVarP(&file, "output", "o", "", "write a tar file")
	cmd.Flags().StringVar(&dir, "to", "", "unpack into this directory")
	cmd.RunE = func(_ *cobra.Command, a []string) error {
		if (file == "") == (dir == "") {
			return usageError{errors.New("give one of -o FILE.tar and --to DIR")}
		}
		var w *api.Workspace
		err := c.interruptible("workspace "+a[0]+" not exported", func(ctx context.Context, cl *api.Client) error {
			var err error
			if file != "" {
				w, err = exportToFile(ctx, cl, a[0], file)
			} else {
				w, err = exportToDir(ctx, cl, a[0], dir)
			}
			return err
		})
		if err != nil {
			return err
		}
		to := file
		if to == "" {
			to = dir
		}
		return c.show(w, func() error {
			_, err := fmt.Fprintf(c.out, "exported %s to %s\n", w.Name, to)
			return err
		})
	}
	return cmd
}

// exportToFile has the daemon write into a temporary file beside path,
// renamed over path only when the export is complete.
func exportToFile(ctx context.Context, cl *api.Client, ref, path string) (*api.Workspace, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return nil, err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op once renamed
	w, err := cl.ExportWorkspace(ctx, ref, f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return nil, err
	}
	return w, nil
}

// exportToDir unpacks the daemon's stream, read through a pipe, into dir
// as the caller.
// (DIR is made only once the daemon sends something: a refusal leaves
// nothing behind.)
func exportToDir(ctx context.Context, cl *api.Client, ref, dir string) (*api.Workspace, error) {
	var w *api.Workspace
	err := pipeFrom(ctx, func(ctx context.Context, pw *os.File) (err error) {
		w, err = cl.ExportWorkspace(ctx, ref, pw)
		return err
	}, func(ctx context.Context, r *bufio.Reader) error {
		if err := tartree.Untar(ctx, r, dir); err != nil {
			return fmt.Errorf("unpacking into %s: %w", dir, err)
		}
		return nil
	})
	return w, err
}

func (c *cli) newWorkspaceImportCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "import WORKSPACE FILE.tar",
		Short: "Replace the tree of a stopped workspace with a tar file (read as you)",
		Long: `Replace the tree of a workspace with an uncompressed tar file, which this
command opens as you. The tree is checked and owned like create's (every
file --uid:--gid of the workspace, setuid and setgid dropped, the same
size) and built into a new volume that replaces the old one only when it
is complete: a failure keeps the old tree. A workspace attached to a VM
cannot be imported into: stop the VM first.`,
		Args: exactly(2, "a workspace and a tar file"),
	}
	cmd.RunE = func(_ *cobra.Command, a []string) error {
		f, err := os.Open(a[1])
		if err != nil {
			return err
		}
		defer f.Close()
		if fi, err := f.Stat(); err != nil || fi.IsDir() {
			return fmt.Errorf("%s: not a tar file", a[1])
		}
		var w *api.Workspace
		err = c.interruptible("workspace "+a[0]+" not imported", func(ctx context.Context, cl *api.Client) error {
			var err error
			w, err = cl.ImportWorkspace(ctx, api.ImportWorkspaceIn{Workspace: a[0], Source: "tar:" + absPath(a[1])}, f)
			return err
		})
		if err != nil {
			return err
		}
		return c.showWorkspace(w)
	}
	return cmd
}
