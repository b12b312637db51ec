package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

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
		UID: w.UID, GID: w.GID, Source: w.Source, Created: stamp(w.CreatedAt), Attached: holdersToAPI(w.Attached), Snapshots: snapshotsToAPI(w.Snapshots)}
}

func snapshotsToAPI(ss []state.Snapshot) []api.WorkspaceSnapshot {
	out := make([]api.WorkspaceSnapshot, len(ss))
	for i, s := range ss {
		out[i] = api.WorkspaceSnapshot{Name: s.Name, Size: s.Size, Created: stamp(s.CreatedAt)}
	}
	return out
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
		var err error
		if tar, err = passedStream(c.FDs[0], in.Source, "the workspace's source"); err != nil {
			return err
		}
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

// passedStream dups a passed descriptor (a file, a pipe or a socket: what
// is read or written is the caller's, opened with its rights) and makes it
// non-blocking, so that a deadline or a cancel ends a transfer the caller
// leaves hanging.
func passedStream(f *os.File, name, what string) (*os.File, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("passed descriptor: %w", err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFIFO, unix.S_IFSOCK:
	default:
		return nil, &actors.Error{Kind: actors.ErrInvalidArgument, Field: "source", Msg: fmt.Sprintf("%s %q must be a tar file or stream", what, name)}
	}
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return nil, fmt.Errorf("dup descriptor of %s: %w", name, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("descriptor of %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// exportWorkspaceTree is the Workspaces actor's exporter: a rootless read
// of the volume through scratch space where image imports have theirs.
func (d *Daemon) exportWorkspaceTree(ctx context.Context, w io.Writer, vol string, ws state.Workspace, part *actors.ExportPart) error {
	cfg := d.config()
	if err := os.MkdirAll(cfg.Images.ScratchDir, 0o750); err != nil {
		return fmt.Errorf("scratch dir %s: %w", cfg.Images.ScratchDir, err)
	}
	spec := workspace.ExportSpec{Name: ws.Name, ScratchDir: cfg.Images.ScratchDir, Layers: d.workspaceLayers()}
	if part != nil {
		spec.Part, spec.PartName = &part.Path, part.Name
	}
	return workspace.Export(ctx, vol, w, spec)
}

// mergeWorkspace pushes into a volume no VM holds (see workspace.Merge).
func (d *Daemon) mergeWorkspace(ctx context.Context, base, push io.Reader, dir, name, out string, ws state.Workspace) error {
	cfg := d.config()
	if err := os.MkdirAll(cfg.Images.ScratchDir, 0o750); err != nil {
		return fmt.Errorf("scratch dir %s: %w", cfg.Images.ScratchDir, err)
	}
	_, err := workspace.Merge(ctx, base, push, workspace.PushDest{Path: dir, Name: name}, out, workspace.Spec{Name: ws.Name, Size: ws.Size, UID: ws.UID, GID: ws.GID,
		ScratchDir: cfg.Images.ScratchDir, MaxEntries: cfg.Images.MaxEntries, Logger: d.log.With("actor", actors.NameWorkspaces, "workspace", ws.Name)})
	return err
}

func (d *Daemon) exportWorkspace(ctx context.Context, c *varlink.Call) error {
	var in api.WorkspaceRef
	if err := c.Decode(&in); err != nil {
		return err
	}
	// Another user's workspace is not found before anything else is said.
	wr, err := d.actors.WorkspaceRequest(ctx, &actors.GetWorkspace{Caller: d.auth.caller(c.Peer), Ref: in.Workspace})
	if err != nil {
		return err
	}
	if len(c.FDs) != 1 {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "output", Msg: fmt.Sprintf("ExportWorkspace takes one file descriptor (where the tar stream goes), got %d", len(c.FDs))}
	}
	out, err := passedStream(c.FDs[0], "export of "+in.Workspace, "the export's destination")
	if err != nil {
		return err
	}
	thaw, err := d.freezeHolder(ctx, c, wr.Workspace)
	if err != nil {
		_ = out.Close()
		return err
	}
	if thaw != nil {
		defer thaw()
		// The guest thaws by itself after exportFreezeMax: an export still
		// reading then would read a moving file system. End it before.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, exportFreezeMax-exportFreezeMargin)
		defer cancel()
	}
	w, err := d.actors.ExportWorkspace(ctx, actors.ExportWorkspace{Caller: d.auth.caller(c.Peer), Ref: in.Workspace, Out: out, Frozen: thaw != nil})
	if thaw != nil && errors.Is(err, context.DeadlineExceeded) {
		return &actors.Error{Kind: actors.ErrInvalidState, VM: in.Workspace,
			Msg: fmt.Sprintf("the export of workspace %s did not finish within %v, for which its running VM's file system can stay frozen: stop the VM to export it without that limit", in.Workspace, exportFreezeMax-exportFreezeMargin)}
	}
	if err != nil {
		return err
	}
	return c.Reply(api.WorkspaceOut{Workspace: workspaceToAPI(w)})
}

// exportFreezeMax bounds a guest's freeze for an export; the agent thaws by
// itself then, should paddockd be gone.
const exportFreezeMax = 5 * time.Minute

// exportFreezeMargin ends a frozen export this long before the agent's own
// thaw, for the thaw request and the last writes to the client.
const exportFreezeMargin = 15 * time.Second

// freezeHolder freezes the file system of the VM holding w read-write, if
// one does (FIFREEZE through its agent, which flushes the guest's writes
// and blocks new ones), so that the volume can be read consistently; the
// returned thaw (nil when nothing was frozen) ends it.
func (d *Daemon) freezeHolder(ctx context.Context, c *varlink.Call, w *actors.WorkspaceInfo) (thaw func(), err error) {
	held := false
	for _, h := range w.Attached {
		held = held || !h.ReadOnly
	}
	if !held {
		return nil, nil
	}
	r, mount, err := d.workspaceVM(ctx, c, w, true)
	if err != nil {
		return nil, err
	}
	if err := r.Agent.Freeze(ctx, mount, exportFreezeMax); err != nil {
		return nil, &actors.Error{Kind: actors.ErrInvalidState, VM: r.VM.Name,
			Msg: fmt.Sprintf("workspace %s is attached to VM %s, whose file system could not be frozen for a consistent export (%v): stop the VM first", w.Name, r.VM.Name, err)}
	}
	d.log.Info("workspace frozen for an export", "workspace", w.Name, "vm_id", r.VM.ID, "vm_name", r.VM.Name, "path", mount)
	return func() {
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := r.Agent.Thaw(tctx, mount); err != nil {
			d.log.Warn("thawing a workspace after its export failed; the agent thaws it by itself", "workspace", w.Name, "vm_id", r.VM.ID, "after", exportFreezeMax, "err", err)
		}
	}, nil
}

func (d *Daemon) importWorkspace(ctx context.Context, c *varlink.Call) error {
	var in api.ImportWorkspaceIn
	if err := c.Decode(&in); err != nil {
		return err
	}
	if _, err := d.actors.WorkspaceRequest(ctx, &actors.GetWorkspace{Caller: d.auth.caller(c.Peer), Ref: in.Workspace}); err != nil {
		return err
	}
	if len(c.FDs) != 1 {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "source", Msg: fmt.Sprintf("ImportWorkspace takes one file descriptor (the tar stream), got %d", len(c.FDs))}
	}
	tar, err := passedStream(c.FDs[0], in.Source, "the import's source")
	if err != nil {
		return err
	}
	w, err := d.actors.ImportWorkspace(ctx, actors.ImportWorkspace{Caller: d.auth.caller(c.Peer), Ref: in.Workspace, Source: in.Source, Tar: tar})
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

// workspaceLayers make and read the layers of snapshots, restores, clones
// and resizes.
func (d *Daemon) workspaceLayers() workspace.Layers {
	return workspace.Layers{Log: d.log.With("actor", actors.NameWorkspaces)}
}

// workspaceRequest decodes a call's parameters into in, sends the message
// msg(caller) makes of them to the Workspaces actor and replies with the
// workspace.
func workspaceRequest[In any](d *Daemon, ctx context.Context, c *varlink.Call, msg func(actors.Caller, *In) any) error {
	var in In
	if err := c.Decode(&in); err != nil {
		return err
	}
	r, err := d.actors.WorkspaceRequest(ctx, msg(d.auth.caller(c.Peer), &in))
	if err != nil {
		return err
	}
	return c.Reply(api.WorkspaceOut{Workspace: workspaceToAPI(r.Workspace)})
}

func (d *Daemon) snapshotWorkspace(ctx context.Context, c *varlink.Call) error {
	return workspaceRequest(d, ctx, c, func(cl actors.Caller, in *api.WorkspaceSnapshotIn) any {
		return &actors.SnapshotWorkspace{Caller: cl, Ref: in.Workspace, Snapshot: in.Snapshot}
	})
}

func (d *Daemon) restoreWorkspace(ctx context.Context, c *varlink.Call) error {
	return workspaceRequest(d, ctx, c, func(cl actors.Caller, in *api.WorkspaceSnapshotIn) any {
		return &actors.RestoreWorkspace{Caller: cl, Ref: in.Workspace, Snapshot: in.Snapshot}
	})
}

func (d *Daemon) cloneWorkspace(ctx context.Context, c *varlink.Call) error {
	return workspaceRequest(d, ctx, c, func(cl actors.Caller, in *api.CloneWorkspaceIn) any {
		return &actors.CloneWorkspace{Caller: cl, Ref: in.Workspace, Name: in.Name, Snapshot: in.Snapshot}
	})
}

func (d *Daemon) resizeWorkspace(ctx context.Context, c *varlink.Call) error {
	var in api.ResizeWorkspaceIn
	if err := c.Decode(&in); err != nil {
		return err
	}
	if in.Size < workspace.MinSize || in.Size > workspace.MaxSize {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "size", Msg: fmt.Sprintf("workspace size %d is out of range (%d MiB to %d TiB)", in.Size, workspace.MinSize>>20, workspace.MaxSize>>40)}
	}
	w, err := d.actors.ResizeWorkspace(ctx, actors.ResizeWorkspace{Caller: d.auth.caller(c.Peer), Ref: in.Workspace, Size: in.Size})
	if err != nil {
		return err
	}
	return c.Reply(api.WorkspaceOut{Workspace: workspaceToAPI(w)})
}
