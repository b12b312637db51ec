package daemon

import (
	"context"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/state"
	"github.com/paddock-vm/paddock/varlink"
	"github.com/paddock-vm/paddock/workspace"
)

func workspaceToAPI(w *actors.WorkspaceInfo) api.Workspace {
	return api.Workspace{ID: w.ID, Name: w.Name, OwnerUID: w.OwnerUID, Status: string(w.Status), Size: w.Size, Used: w.Used,
		UID: w.UID, GID: w.GID, Source: w.Source, Created: stamp(w.CreatedAt), Attached: holdersToAPI(w.Attached)}
}

func holdersToAPI(hs []actors.WorkspaceHolder) []api.WorkspaceHolder {
	out := make([]api.WorkspaceHolder, len(hs))
	for i, h := range hs {
		out[i] = api.WorkspaceHolder{VMID: h.VMID, VM: h.VMName, ReadOnly: h.ReadOnly}
	}
	return out
}

// buildWorkspace is the Workspaces actor's builder: the flattener and the
// ext4 builder, scratch space where image imports have theirs.
func (d *Daemon) buildWorkspace(ctx context.Context, r io.Reader, out string, ws state.Workspace) error {
	cfg := d.config()
	if err := os.MkdirAll(cfg.Images.ScratchDir, 0o750); err != nil {
		return fmt.Errorf("scratch dir %s: %w", cfg.Images.ScratchDir, err)
	}
	_, err := workspace.Build(ctx, r, out, workspace.Spec{Name: ws.Name, Size: ws.Size, UID: ws.UID, GID: ws.GID,
		ScratchDir: cfg.Images.ScratchDir, MaxEntries: cfg.Images.MaxEntries, Logger: d.log.With("actor", actors.NameWorkspaces, "workspace", ws.Name)})
	return err
}

func (d *Daemon) createWorkspace(ctx context.Context, c *varlink.Call) error {
	var in api.CreateWorkspaceIn
	if err := c.Decode(&in); err != nil {
		return err
	}
	if len(c.FDs) > 1 {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "source", Msg: fmt.Sprintf("CreateWorkspace takes at most one file descriptor (the tar stream), got %d", len(c.FDs))}
	}
	size := workspace.DefaultSize
	if in.Size != nil {
		size = *in.Size
	}
	if size < workspace.MinSize || size > workspace.MaxSize {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "size", Msg: fmt.Sprintf("workspace size %d is out of range: %d MiB to %d TiB", size, workspace.MinSize>>20, workspace.MaxSize>>40)}
	}
	uid, gid := uint32(workspace.DefaultUID), uint32(workspace.DefaultGID)
	if in.UID != nil {
		uid = *in.UID
	}
	if in.GID != nil {
		gid = *in.GID
	}
	if uid == 1<<32-1 || gid == 1<<32-1 {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "uid", Msg: "uid and gid must be below 4294967295"}
	}
	var tar *os.File
	if len(c.FDs) == 1 {
		// The caller opened the stream with its own rights; the daemon
		// reads only through it. Non-blocking, so that a build whose
		// deadline passes ends a read the caller leaves hanging.
		var st unix.Stat_t
		if err := unix.Fstat(int(c.FDs[0].Fd()), &st); err != nil {
			return fmt.Errorf("passed descriptor: %w", err)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG, unix.S_IFIFO, unix.S_IFSOCK:
		default:
			return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "source", Msg: fmt.Sprintf("the workspace's source %q must be a tar file or stream", in.Source)}
		}
		fd, err := unix.FcntlInt(c.FDs[0].Fd(), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			return fmt.Errorf("dup descriptor of %s: %w", in.Source, err)
		}
		if err := unix.SetNonblock(fd, true); err != nil {
			_ = unix.Close(fd)
			return fmt.Errorf("descriptor of %s: %w", in.Source, err)
		}
		tar = os.NewFile(uintptr(fd), in.Source)
	}
	m := actors.CreateWorkspace{Caller: d.auth.caller(c.Peer), Name: in.Name, Size: size, UID: uid, GID: gid, Source: in.Source}
	if tar != nil {
		m.Tar = tar
	}
	w, err := d.actors.CreateWorkspace(ctx, m)
	if err != nil {
		return workspaceError(err)
	}
	return c.Reply(api.WorkspaceOut{Workspace: workspaceToAPI(w)})
}

// workspaceError names what was wrong with the source as InvalidArgument;
// other classes keep theirs.
func workspaceError(err error) error {
	if _, ok := err.(*actors.Error); ok {
		return err
	}
	if errdefs.IsInvalidArgument(err) {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "source", Msg: err.Error()}
	}
	return err
}

func (d *Daemon) listWorkspaces(ctx context.Context, c *varlink.Call) error {
	if err := c.Decode(&struct{}{}); err != nil {
		return err
	}
	r, err := d.actors.WorkspaceRequest(ctx, &actors.ListWorkspaces{Caller: d.auth.caller(c.Peer)})
	if err != nil {
		return err
	}
	out := api.WorkspacesOut{Workspaces: []api.Workspace{}}
	for i := range r.Workspaces {
		out.Workspaces = append(out.Workspaces, workspaceToAPI(&r.Workspaces[i]))
	}
	return c.Reply(out)
}

func (d *Daemon) inspectWorkspace(ctx context.Context, c *varlink.Call) error {
	var in api.WorkspaceRef
	if err := c.Decode(&in); err != nil {
		return err
	}
	r, err := d.actors.WorkspaceRequest(ctx, &actors.GetWorkspace{Caller: d.auth.caller(c.Peer), Ref: in.Workspace})
	if err != nil {
		return err
	}
	return c.Reply(api.WorkspaceOut{Workspace: workspaceToAPI(r.Workspace)})
}

func (d *Daemon) removeWorkspace(ctx context.Context, c *varlink.Call) error {
	var in api.WorkspaceRef
	if err := c.Decode(&in); err != nil {
		return err
	}
	r, err := d.actors.WorkspaceRequest(ctx, &actors.RemoveWorkspace{Caller: d.auth.caller(c.Peer), Ref: in.Workspace})
	if err != nil {
		return err
	}
	return c.Reply(api.WorkspaceOut{Workspace: workspaceToAPI(r.Workspace)})
}
