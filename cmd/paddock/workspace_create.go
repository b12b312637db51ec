package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/tartree"
	"github.com/paddock-vm/paddock/workspace"
)

func (c *cli) newWorkspaceCreateCommand() *cobra.Command {
	var from, fromTar, gitSrc, size string
	var depth int
	var uid, gid uint32
	cmd := &cobra.Command{
		Use:   "create NAME [--from DIR | --from-tar FILE | --git URL[#REF] [--depth N]]",
		Short: "Create a workspace, empty or seeded from a directory, a tar file or a git repository (read as you, here)",
		Long: `Create a workspace: a persistent ext4 volume of --size holding a project tree.

The seed is read by this command, as you: a directory is walked and sent as a
tar stream, a tar file is opened, and git clones with your own environment
and credentials into a temporary directory (.git kept; #REF, a branch, tag
or commit, is checked out). The daemon reads nothing you could not. Every
file belongs to --uid:--gid in the workspace; setuid and setgid bits are
dropped.`,
		Args: exactly(1, "one name"),
	}
	cmd.Flags().StringVar(&from, "from", "", "seed from this directory")
	cmd.Flags().StringVar(&fromTar, "from-tar", "", "seed from this (uncompressed) tar file")
	cmd.Flags().StringVar(&gitSrc, "git", "", "seed from a git clone of URL[#REF]")
	cmd.Flags().IntVar(&depth, "depth", 0, "with --git: clone only this many commits")
	cmd.Flags().StringVar(&size, "size", "10GiB", "size of the volume (sparse: it takes only what is written)")
	cmd.Flags().Uint32Var(&uid, "uid", workspace.DefaultUID, "uid owning every file in the workspace (as the guest sees it)")
	cmd.Flags().Uint32Var(&gid, "gid", workspace.DefaultGID, "gid owning every file in the workspace")
	cmd.RunE = func(_ *cobra.Command, a []string) error {
		n := 0
		for _, s := range []string{from, fromTar, gitSrc} {
			if s != "" {
				n++
			}
		}
		if n > 1 {
			return usageError{errors.New("give at most one of --from, --from-tar and --git")}
		}
		if cmd.Flags().Changed("depth") && (gitSrc == "" || depth < 1) {
			return usageError{errors.New("--depth takes a positive number, with --git")}
		}
		in := api.CreateWorkspaceIn{Name: a[0]}
		var err error
		if in.Size, err = sizeFlag(cmd, "size", size); err != nil {
			return err
		}
		if cmd.Flags().Changed("uid") {
			in.UID = &uid
		}
		if cmd.Flags().Changed("gid") {
			in.GID = &gid
		}
		var w *api.Workspace
		err = c.interruptible("workspace "+a[0]+" not created", func(ctx context.Context, cl *api.Client) error {
			var err error
			switch {
			case fromTar != "":
				w, err = c.createFromTar(ctx, cl, in, fromTar)
			case from != "":
				w, err = c.createFromDir(ctx, cl, in, from, "dir:"+absPath(from))
			case gitSrc != "":
				w, err = c.createFromGit(ctx, cl, in, gitSrc, depth)
			default:
				w, err = cl.CreateWorkspace(ctx, in, nil)
			}
			return err
		})
		if err != nil {
			return err
		}
		return c.showWorkspace(w)
	}
	return cmd
}

// showWorkspace prints w's fields (or its JSON).
func (c *cli) showWorkspace(w *api.Workspace) error {
	return c.show(w, func() error { return c.workspaceFields(w) })
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// createFromTar passes the caller's own open tar file.
func (c *cli) createFromTar(ctx context.Context, cl *api.Client, in api.CreateWorkspaceIn, path string) (*api.Workspace, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || fi.IsDir() {
		return nil, fmt.Errorf("--from-tar %s: not a tar file (a directory goes with --from)", path)
	}
	in.Source = "tar:" + absPath(path)
	return cl.CreateWorkspace(ctx, in, f)
}

// createFromDir walks dir as the caller and streams it to the daemon
// through a pipe. The stream ends with its end-of-archive marker only when
// the whole tree was read: a failure cancels the call first, and the
// daemon refuses a stream cut short, so no partial workspace is made.
func (c *cli) createFromDir(ctx context.Context, cl *api.Client, in api.CreateWorkspaceIn, dir, source string) (*api.Workspace, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("--from %s: not a directory (a tar file goes with --from-tar)", dir)
	}
	in.Source = source
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	growPipe(pw)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	walked := make(chan error, 1)
	go func() {
		err := tartree.TarDir(ctx, dir, pw)
		if err != nil {
			cancel(err) // before the stream ends
		}
		_ = pw.Close()
		walked <- err
	}()
	w, err := cl.CreateWorkspace(ctx, in, pr)
	_ = pr.Close() // the daemon has its own descriptor
	if werr := <-walked; werr != nil {
		return nil, fmt.Errorf("reading %s: %w", dir, werr)
	}
	return w, err
}

// growPipe asks for a 1 MiB pipe buffer (the most an unprivileged
// process gets by default) instead of 64 KiB: the walk and the daemon
// then trade the tree in 16 times fewer reads, writes and wake-ups. A
// refusal leaves the pipe as it was.
func growPipe(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 1<<20) })
	}
}

// gitURL splits URL[#REF].
func gitURL(s string) (url, ref string) {
	if i := strings.LastIndexByte(s, '#'); i > 0 {
		return s[:i], s[i+1:]
	}
	return s, ""
}

var commitRE = regexp.MustCompile(`^[0-9a-f]{7,64}$`)

// createFromGit clones as the caller, with the caller's environment (and
// so its credentials), into a temporary directory, then streams it.
func (c *cli) createFromGit(ctx context.Context, cl *api.Client, in api.CreateWorkspaceIn, src string, depth int) (*api.Workspace, error) {
	url, ref := gitURL(src)
	if url == "" {
		return nil, usageError{errors.New("--git needs a URL")}
	}
	tmp, err := os.MkdirTemp("", "paddock-git-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	tree := filepath.Join(tmp, "tree")
	args := []string{"clone", "--quiet"}
	if depth > 0 {
		args = append(args, "--depth", strconv.Itoa(depth))
	}
	commit := ref != "" && commitRE.MatchString(ref)
	if ref != "" && !commit {
		args = append(args, "--branch", ref)
	}
	args = append(args, "--", url, tree)
	if err := c.git(ctx, "", args...); err != nil {
		return nil, fmt.Errorf("git clone %s: %w", url, err)
	}
	if commit {
		if err := c.git(ctx, tree, "checkout", "--quiet", "--detach", ref); err != nil {
			return nil, fmt.Errorf("git checkout %s: %w", ref, err)
		}
	}
	return c.createFromDir(ctx, cl, in, tree, "git:"+src)
}

func (c *cli) git(ctx context.Context, dir string, args ...string) error {
	cmd := exec.CommandContext(ctx, "git", append([]string{"-c", "advice.detachedHead=false"}, args...)...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = c.errOut, c.errOut
	return cmd.Run()
}
