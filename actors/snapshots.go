package actors

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/state"
)

// WorkspaceLayers make and read the layers of workspaces
// (workspace.Layers; a fake in unit tests).
type WorkspaceLayers interface {
	// NewTop makes a writable top layer in dir over the frozen layer (a
	// path), and says how: "qcow2 overlay" tops keep the layer as backing.
	NewTop(ctx context.Context, dir, layer string, size int64) (name, how string, err error)
	// Flatten writes the volume whose top is top into the raw file out.
	Flatten(ctx context.Context, top, out string) error
	// Grow grows the raw volume raw and its file system to size.
	Grow(ctx context.Context, raw string, size int64) error
}

// topOverlay is how WorkspaceLayers.NewTop names a top that keeps its
// layer as backing (workspace.TopOverlay).
const topOverlay = "qcow2 overlay"

// layerTimeout bounds the layer work done on the Workspaces actor's
// mailbox: a hard link, then a reflink or a qcow2 overlay (milliseconds).
const layerTimeout = 30 * time.Second

// SnapshotWorkspace freezes a detached workspace's current state as the
// snapshot Snapshot; RestoreWorkspace brings a snapshot back (what was
// written since is dropped); CloneWorkspace makes the caller's new
// workspace Name from a snapshot of Ref (of its current state when
// Snapshot is empty). Each is answered with *WorkspaceResult, refused
// while the workspace is attached (naming the VM) or busy.
type (
	SnapshotWorkspace struct {
		Caller        Caller
		Ref, Snapshot string
	}
	RestoreWorkspace struct {
		Caller        Caller
		Ref, Snapshot string
	}
	CloneWorkspace struct {
		Caller              Caller
		Ref, Name, Snapshot string
	}
)

func (m *SnapshotWorkspace) describe() string { return "snapshot of workspace " + m.Ref }
func (m *RestoreWorkspace) describe() string  { return "restore of workspace " + m.Ref }
func (m *CloneWorkspace) describe() string    { return "clone of workspace " + m.Ref }

// ResizeWorkspace grows a detached workspace to Size bytes, off the
// mailbox (the volume is flattened into a new raw top, then grown). It is
// answered on Done exactly once; CancelWorkspace{ID} withdraws it.
type ResizeWorkspace struct {
	ID     uint64
	Caller Caller
	Ref    string
	Size   int64
	Done   chan WorkspaceResult
}

// commit saves next as ws's record, then drops what it no longer names:
// the old top and unneeded layers. A failed save drops next's new files
// and layers instead.
func (a *workspacesActor) commit(ws, next *state.Workspace) error {
	if err := a.d.Store.Save(next); err != nil {
		a.dropStrays(ws)
		a.sweepLayers()
		return err
	}
	*ws = *next
	a.dropStrays(ws)
	a.sweepLayers()
	return nil
}

// dropStrays removes the files of ws's directory its record does not name.
func (a *workspacesActor) dropStrays(ws *state.Workspace) {
	if _, err := a.d.Store.DropStrays(ws); err != nil {
		a.log.Warn("removing replaced workspace files (start-up sweeps them)", "workspace", ws.Name, "err", err)
	}
}

// sweepLayers removes the frozen layers no workspace names any more.
func (a *workspacesActor) sweepLayers() {
	if a.corrupt {
		return
	}
	live := make([]*state.Workspace, 0, len(a.ws))
	for _, ws := range a.ws {
		live = append(live, ws)
	}
	gone, err := a.d.Store.SweepLayers(live)
	if err != nil {
		a.log.Warn("removing unused workspace layers (start-up sweeps them)", "err", err)
	}
	if len(gone) > 0 {
		a.log.Info("unused workspace layers removed", "layers", strings.Join(gone, ", "))
	}
}

// MaxWorkspaceLayers bounds a workspace's chain of frozen layers under its
// top: each snapshot (or clone of the current state) adds one, and every
// read of the guest may walk them all.
const MaxWorkspaceLayers = 32

// freeze makes ws's current top a frozen layer and returns the chain it
// heads and ws's next record, whose new top is a layer over it. Nothing
// is saved: a crash leaves the old record and files the sweeps remove.
func (a *workspacesActor) freeze(ctx context.Context, ws *state.Workspace) ([]string, *state.Workspace, error) {
	if len(ws.Backing) >= MaxWorkspaceLayers {
		return nil, nil, &Error{Kind: ErrInvalidState, VM: ws.Name, Msg: fmt.Sprintf("workspace %s has %d layers, the most it may: flatten them first (paddock workspace resize %s %d)", ws.Name, len(ws.Backing), ws.Name, ws.Size)}
	}
	layer, err := a.d.Store.Freeze(ws)
	if err != nil {
		return nil, nil, err
	}
	failpoint("workspace-snapshot-frozen")
	chain := append([]string{layer}, ws.Backing...)
	next, err := a.newTop(ctx, ws, chain, ws.Size)
	if err != nil {
		a.sweepLayers()
		return nil, nil, err
	}
	return chain, next, nil
}

// newTop is ws's next record with a new empty top layer over chain.
func (a *workspacesActor) newTop(ctx context.Context, ws *state.Workspace, chain []string, size int64) (*state.Workspace, error) {
	if a.d.Layers == nil {
		return nil, errorf(ErrNotYet, "workspace layers are not configured")
	}
	ctx, cancel := context.WithTimeout(ctx, layerTimeout)
	defer cancel()
	top, how, err := a.d.Layers.NewTop(ctx, a.d.Store.Dir(ws.ID), a.d.Store.Layer(chain[0]), size)
	if err != nil {
		return nil, fmt.Errorf("workspace %s: new top layer: %w", ws.Name, err)
	}
	next := *ws
	next.Top, next.Backing, next.Size = top, nil, size
	if how == topOverlay {
		next.Backing = slices.Clone(chain)
	}
	next.Snapshots = slices.Clone(ws.Snapshots)
	a.log.Debug("new workspace top layer", "workspace", ws.Name, "top", top, "how", how, "layers", len(next.Backing))
	return &next, nil
}

func (a *workspacesActor) snapshot(m *SnapshotWorkspace) *WorkspaceResult {
	ws, err := a.ioTarget(m.Caller, m.Ref)
	if err != nil {
		return &WorkspaceResult{Err: err}
	}
	if err := state.ValidateNewName(m.Snapshot); err != nil {
		return &WorkspaceResult{Err: &Error{Kind: ErrInvalidArgument, Field: "snapshot", Msg: "snapshot " + err.Error()}}
	}
	if ws.Snapshot(m.Snapshot) != nil {
		return &WorkspaceResult{Err: &Error{Kind: ErrNameInUse, Name: m.Snapshot, Msg: fmt.Sprintf("workspace %s has a snapshot named %q already", ws.Name, m.Snapshot)}}
	}
	chain, next, err := a.freeze(context.Background(), ws)
	if err != nil {
		return &WorkspaceResult{Err: err}
	}
	next.Snapshots = append(next.Snapshots, state.Snapshot{Name: m.Snapshot, Layers: chain, Size: ws.Size, CreatedAt: time.Now().UTC()})
	if err := a.commit(ws, next); err != nil {
		return &WorkspaceResult{Err: err}
	}
	a.log.Info("workspace snapshot taken", "workspace", ws.Name, "workspace_id", ws.ID, "snapshot", m.Snapshot, "layers", len(chain))
	info := a.info(ws)
	return &WorkspaceResult{Workspace: &info}
}

// snapshotOf is ws's snapshot name, or an error naming both.
func snapshotOf(ws *state.Workspace, name string) (*state.Snapshot, error) {
	if sn := ws.Snapshot(name); sn != nil {
		return sn, nil
	}
	return nil, &Error{Kind: ErrInvalidArgument, Field: "snapshot", Msg: fmt.Sprintf("workspace %s has no snapshot named %q (paddock workspace inspect %s lists them)", ws.Name, name, ws.Name)}
}

func (a *workspacesActor) restore(m *RestoreWorkspace) *WorkspaceResult {
	ws, err := a.ioTarget(m.Caller, m.Ref)
	if err != nil {
		return &WorkspaceResult{Err: err}
	}
	sn, err := snapshotOf(ws, m.Snapshot)
	if err != nil {
		return &WorkspaceResult{Err: err}
	}
	next, err := a.newTop(context.Background(), ws, sn.Layers, sn.Size)
	if err != nil {
		return &WorkspaceResult{Err: err}
	}
	if err := a.commit(ws, next); err != nil {
		return &WorkspaceResult{Err: err}
	}
	a.log.Info("workspace restored", "workspace", ws.Name, "workspace_id", ws.ID, "snapshot", m.Snapshot)
	info := a.info(ws)
	return &WorkspaceResult{Workspace: &info}
}

func (a *workspacesActor) clone(ctx actor.Context, m *CloneWorkspace) *WorkspaceResult {
	src, err := a.ioTarget(m.Caller, m.Ref)
	if err != nil {
		return &WorkspaceResult{Err: err}
	}
	if err := state.ValidateNewName(m.Name); err != nil {
		return &WorkspaceResult{Err: &Error{Kind: ErrInvalidArgument, Field: "name", Msg: "workspace " + err.Error()}}
	}
	for _, ws := range a.ws {
		if ws.Name == m.Name && ws.OwnerUID == m.Caller.UID {
			return &WorkspaceResult{Err: &Error{Kind: ErrNameInUse, Name: m.Name, Msg: fmt.Sprintf("you have a workspace named %q already", m.Name)}}
		}
	}
	var (
		chain   []string
		srcNext *state.Workspace // the source's next record, after an implicit snapshot
	)
	size, source := src.Size, "clone:"+src.Name
	if m.Snapshot != "" {
		sn, err := snapshotOf(src, m.Snapshot)
		if err != nil {
			return &WorkspaceResult{Err: err}
		}
		chain, size, source = sn.Layers, sn.Size, source+"@"+sn.Name
	} else if chain, srcNext, err = a.freeze(context.Background(), src); err != nil {
		// An implicit snapshot: the source's current top is frozen, named
		// by the clone (and by the source's new top, if an overlay).
		return &WorkspaceResult{Err: err}
	}
	// Intent first: a "creating" record naming the chain (so no sweep
	// takes it) before the top is made; a crash leaves it to start-up.
	ws := &state.Workspace{ID: state.NewID(), Name: m.Name, OwnerUID: m.Caller.UID, Status: state.WorkspaceCreating,
		Size: size, UID: src.UID, GID: src.GID, Source: source, CreatedAt: time.Now().UTC(), Backing: slices.Clone(chain)}
	err = a.d.Store.Begin(ws)
	if err == nil {
		failpoint("workspace-clone-intent")
		a.ws[ws.ID] = ws
		if srcNext != nil {
			err = a.commit(src, srcNext)
		}
	} else if srcNext != nil {
		a.dropStrays(src)
		a.sweepLayers()
	}
	var next *state.Workspace
	if err == nil {
		next, err = a.newTop(context.Background(), ws, chain, size)
	}
	if err == nil {
		next.Status = state.WorkspaceReady
		err = a.commit(ws, next)
	}
	if err != nil {
		if _, ok := a.ws[ws.ID]; !ok {
			return &WorkspaceResult{Err: err} // not begun
		}
		delete(a.ws, ws.ID)
		if rerr := a.d.Store.Remove(ws.ID); rerr != nil {
			a.log.Warn("removing a workspace whose clone failed (start-up sweeps it)", "err", rerr)
		}
		a.sweepLayers()
		return &WorkspaceResult{Err: err}
	}
	a.log.Info("workspace cloned", "workspace", ws.Name, "workspace_id", ws.ID, "source", source, "layers", len(ws.Backing))
	a.emit(ctx, api.EventWorkspaceCreated, ws)
	info := a.info(ws)
	return &WorkspaceResult{Workspace: &info}
}

// resize grows a detached workspace off the mailbox: its volume is
// flattened into a new raw top, grown, and named by the record only when
// done (the old chain stays until then; snapshots keep theirs). The same
// size only flattens: one raw file, for Firecracker or a long chain.
func (a *workspacesActor) resize(ctx actor.Context, m *ResizeWorkspace) {
	ws, err := a.ioTarget(m.Caller, m.Ref)
	if err == nil && a.d.Layers == nil {
		err = errorf(ErrNotYet, "workspace layers are not configured")
	}
	if err == nil && m.Size < ws.Size {
		err = &Error{Kind: ErrInvalidArgument, Field: "size", Msg: fmt.Sprintf("workspace %s is %d MiB: a resize only grows it (asked %d MiB)", ws.Name, ws.Size>>20, m.Size>>20)}
	}
	if err != nil {
		m.Done <- WorkspaceResult{Err: err}
		return
	}
	top := "top-" + state.NewID() + ".ext4"
	layers, cur, out, size := a.d.Layers, a.d.Store.TopPath(ws), filepath.Join(a.d.Store.Dir(ws.ID), top), m.Size
	commit := func(next *state.Workspace) { next.Top, next.Backing, next.Size = top, nil, size }
	a.startIO(ctx, m.ID, ws, "resized", commit, m.Done, func(bctx context.Context) error {
		if err := layers.Flatten(bctx, cur, out); err != nil {
			return err
		}
		return layers.Grow(bctx, out, size)
	})
}

// ResizeWorkspace runs a resize through the Workspaces actor until it is
// done or ctx ends (which stops it; the old volume stays).
func (s *System) ResizeWorkspace(ctx context.Context, m ResizeWorkspace) (*WorkspaceInfo, error) {
	m.ID, m.Done = workspaceSeq.Add(1), make(chan WorkspaceResult, 1)
	return s.workspaceIO(ctx, &m, m.ID, m.Done)
}
