package actors

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/errdefs"
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

// layerTimeout bounds the layer work of a snapshot, restore or clone, done
// off the Workspaces actor's mailbox: a hard link, a record, then a
// reflink or a qcow2 overlay (milliseconds; qemu-img where the native
// writer refuses).
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

// sweepLayers removes the frozen layers no workspace names any more. Not
// while layer work is in flight: the layers it is making are named by no
// record yet (its end sweeps).
func (a *workspacesActor) sweepLayers() {
	if a.corrupt || a.layerWork() {
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

// layerOps are the busy marks of layer work: the workspace snapshotted,
// restored or cloned, and the one a clone makes.
var layerOps = map[string]bool{opSnapshot: true, opRestore: true, opClone: true, opCloneNew: true}

const (
	opSnapshot = "snapshotted"
	opRestore  = "restored"
	opClone    = "cloned"
	opCloneNew = "created"
)

func (a *workspacesActor) layerWork() bool {
	for _, op := range a.busy {
		if layerOps[op] {
			return true
		}
	}
	return false
}

// newTops is what layer work made: new top layers over chain.
type newTops struct {
	chain []string
	// top and how: the workspace's new top (snapshot, restore, and the
	// source of a clone of its current state); cloneTop, cloneHow: the
	// clone's.
	top, how, cloneTop, cloneHow string
}

// layerDone carries the end of layer work into the mailbox. Its functions
// take the actor (a restarted one, maybe) and find the workspaces by id.
type layerDone struct {
	what   string // "snapshot of workspace proj", for errors
	id     uint64
	sender *actor.PID
	busy   []string
	tops   newTops
	err    error
	commit func(a *workspacesActor, ctx actor.Context, tops newTops) *WorkspaceResult
	fail   func(a *workspacesActor)
}

// startLayers runs the file work of a snapshot, restore or clone off the
// mailbox, under layerTimeout, with the workspaces busy held busy (as op:
// a second request on them is refused until it ends); its end comes back
// as a layerDone, which commits the records and answers the request.
func (a *workspacesActor) startLayers(ctx actor.Context, busy map[string]string, work func(context.Context) (newTops, error), done *layerDone) {
	done.id, done.sender = workspaceSeq.Add(1), ctx.Sender()
	for id, op := range busy {
		a.busy[id] = op
		done.busy = append(done.busy, id)
	}
	bctx, cancel := context.WithTimeout(context.Background(), layerTimeout)
	a.building[done.id] = cancel
	self, root := ctx.Self(), ctx.ActorSystem().Root
	go func() {
		tops, err := work(bctx)
		if err == nil && bctx.Err() != nil {
			err = bctx.Err()
		}
		done.tops, done.err = tops, err
		root.Send(self, done)
	}()
}

func (a *workspacesActor) layerDone(ctx actor.Context, m *layerDone) {
	if c, ok := a.building[m.id]; ok {
		c()
		delete(a.building, m.id)
	}
	for _, id := range m.busy {
		delete(a.busy, id)
		delete(a.reserved, id)
	}
	var res *WorkspaceResult
	if m.err == nil {
		res = m.commit(a, ctx, m.tops)
	} else {
		err := m.err
		if errors.Is(err, context.DeadlineExceeded) {
			err = errdefs.Newf(errdefs.ErrDeadlineExceeded, "%s: not done within %s", m.what, layerTimeout)
		} else if errors.Is(err, context.Canceled) {
			err = errdefs.Newf(errdefs.ErrCanceled, "%s: canceled (paddockd is stopping)", m.what)
		}
		m.fail(a)
		a.log.Warn("workspace layer work failed", "err", err)
		res = &WorkspaceResult{Err: err}
	}
	a.sweepLayers()
	if m.sender != nil {
		ctx.Send(m.sender, res)
	}
}

// nextTop is ws's next record with the new top top (made how) over chain.
func nextTop(ws *state.Workspace, chain []string, top, how string, size int64) *state.Workspace {
	next := *ws
	next.Top, next.Backing, next.Size = top, nil, size
	if how == topOverlay {
		next.Backing = slices.Clone(chain)
	}
	next.Snapshots = slices.Clone(ws.Snapshots)
	return &next
}

// layersFor refuses layer work on a chain already at its bound, or without
// layers configured.
func (a *workspacesActor) layersFor(ws *state.Workspace) error {
	if a.d.Layers == nil {
		return errorf(ErrNotYet, "workspace layers are not configured")
	}
	if len(ws.Backing) >= MaxWorkspaceLayers {
		return &Error{Kind: ErrInvalidState, VM: ws.Name, Msg: fmt.Sprintf("workspace %s has %d layers, the most it may: flatten them first (paddock workspace resize %s %d)", ws.Name, len(ws.Backing), ws.Name, ws.Size)}
	}
	return nil
}

// freeze makes ws's current top a frozen layer (off the mailbox: ws is a
// copy) and returns the chain it heads. Nothing is saved: a crash leaves
// the old record and a layer the sweeps remove.
func freeze(store *state.WorkspaceStore, ws *state.Workspace) ([]string, error) {
	layer, err := store.Freeze(ws)
	if err != nil {
		return nil, err
	}
	failpoint("workspace-snapshot-frozen")
	return append([]string{layer}, ws.Backing...), nil
}

// makeTop makes a new top layer for ws over chain (off the mailbox).
func makeTop(ctx context.Context, layers WorkspaceLayers, store *state.WorkspaceStore, ws *state.Workspace, chain []string, size int64) (top, how string, err error) {
	top, how, err = layers.NewTop(ctx, store.Dir(ws.ID), store.Layer(chain[0]), size)
	if err != nil {
		return "", "", fmt.Errorf("workspace %s: new top layer: %w", ws.Name, err)
	}
	return top, how, nil
}

// lookupID is a workspace by id for the end of layer work: a workspace
// held busy cannot be removed meanwhile, so one missing is an error.
func (a *workspacesActor) lookupID(id string) (*state.Workspace, error) {
	if ws, ok := a.ws[id]; ok {
		return ws, nil
	}
	return nil, errdefs.Newf(errdefs.ErrInternal, "workspace %s vanished during layer work", id)
}

func (a *workspacesActor) snapshot(ctx actor.Context, m *SnapshotWorkspace) {
	ws, err := a.ioTarget(m.Caller, m.Ref)
	if err == nil {
		if verr := state.ValidateNewName(m.Snapshot); verr != nil {
			err = &Error{Kind: ErrInvalidArgument, Field: "snapshot", Msg: "snapshot " + verr.Error()}
		} else if ws.Snapshot(m.Snapshot) != nil {
			err = &Error{Kind: ErrNameInUse, Name: m.Snapshot, Msg: fmt.Sprintf("workspace %s has a snapshot named %q already", ws.Name, m.Snapshot)}
		} else {
			err = a.layersFor(ws)
		}
	}
	if err != nil {
		ctx.Respond(&WorkspaceResult{Err: err})
		return
	}
	cur, store, layers, name := *ws, a.d.Store, a.d.Layers, m.Snapshot
	a.startLayers(ctx, map[string]string{ws.ID: opSnapshot}, func(bctx context.Context) (newTops, error) {
		chain, err := freeze(store, &cur)
		if err != nil {
			return newTops{}, err
		}
		top, how, err := makeTop(bctx, layers, store, &cur, chain, cur.Size)
		return newTops{chain: chain, top: top, how: how}, err
	}, &layerDone{
		what: "snapshot of workspace " + cur.Name,
		commit: func(a *workspacesActor, ctx actor.Context, t newTops) *WorkspaceResult {
			ws, err := a.lookupID(cur.ID)
			if err != nil {
				return &WorkspaceResult{Err: err}
			}
			next := nextTop(ws, t.chain, t.top, t.how, ws.Size)
			next.Snapshots = append(next.Snapshots, state.Snapshot{Name: name, Layers: t.chain, Size: ws.Size, CreatedAt: time.Now().UTC()})
			if err := a.commit(ws, next); err != nil {
				return &WorkspaceResult{Err: err}
			}
			a.log.Info("workspace snapshot taken", "workspace", ws.Name, "workspace_id", ws.ID, "snapshot", name, "layers", len(t.chain), "how", t.how)
			info := a.info(ws)
			return &WorkspaceResult{Workspace: &info}
		},
		fail: func(a *workspacesActor) { a.dropStraysOf(cur.ID) },
	})
}

// dropStraysOf drops the files of workspace id its record does not name
// (what failed layer work made).
func (a *workspacesActor) dropStraysOf(id string) {
	if ws, ok := a.ws[id]; ok {
		a.dropStrays(ws)
	}
}

// snapshotOf is ws's snapshot name, or an error naming both.
func snapshotOf(ws *state.Workspace, name string) (*state.Snapshot, error) {
	if sn := ws.Snapshot(name); sn != nil {
		return sn, nil
	}
	return nil, &Error{Kind: ErrInvalidArgument, Field: "snapshot", Msg: fmt.Sprintf("workspace %s has no snapshot named %q (paddock workspace inspect %s lists them)", ws.Name, name, ws.Name)}
}

func (a *workspacesActor) restore(ctx actor.Context, m *RestoreWorkspace) {
	ws, err := a.ioTarget(m.Caller, m.Ref)
	var sn *state.Snapshot
	if err == nil {
		sn, err = snapshotOf(ws, m.Snapshot)
	}
	if err == nil && a.d.Layers == nil {
		err = errorf(ErrNotYet, "workspace layers are not configured")
	}
	if err != nil {
		ctx.Respond(&WorkspaceResult{Err: err})
		return
	}
	cur, store, layers, snap := *ws, a.d.Store, a.d.Layers, *sn
	snap.Layers = slices.Clone(sn.Layers)
	a.startLayers(ctx, map[string]string{ws.ID: opRestore}, func(bctx context.Context) (newTops, error) {
		top, how, err := makeTop(bctx, layers, store, &cur, snap.Layers, snap.Size)
		return newTops{chain: snap.Layers, top: top, how: how}, err
	}, &layerDone{
		what: "restore of workspace " + cur.Name,
		commit: func(a *workspacesActor, ctx actor.Context, t newTops) *WorkspaceResult {
			ws, err := a.lookupID(cur.ID)
			if err != nil {
				return &WorkspaceResult{Err: err}
			}
			if err := a.commit(ws, nextTop(ws, t.chain, t.top, t.how, snap.Size)); err != nil {
				return &WorkspaceResult{Err: err}
			}
			a.log.Info("workspace restored", "workspace", ws.Name, "workspace_id", ws.ID, "snapshot", snap.Name, "how", t.how)
			info := a.info(ws)
			return &WorkspaceResult{Workspace: &info}
		},
		fail: func(a *workspacesActor) { a.dropStraysOf(cur.ID) },
	})
}

// clone makes the caller's new workspace from a snapshot of the source or
// from its current state (an implicit snapshot: the source's top is
// frozen, named by the clone and by the source's new top). Its name is
// taken at once (listed "creating"); the files are made off the mailbox:
// the frozen layer, the clone's "creating" record (the intent: a crash
// from there leaves it to start-up), the new tops; the records are saved
// when all is made.
func (a *workspacesActor) clone(ctx actor.Context, m *CloneWorkspace) {
	fail := func(err error) { ctx.Respond(&WorkspaceResult{Err: err}) }
	src, err := a.ioTarget(m.Caller, m.Ref)
	if err != nil {
		fail(err)
		return
	}
	if err := state.ValidateNewName(m.Name); err != nil {
		fail(&Error{Kind: ErrInvalidArgument, Field: "name", Msg: "workspace " + err.Error()})
		return
	}
	for _, ws := range a.ws {
		if ws.Name == m.Name && ws.OwnerUID == m.Caller.UID {
			fail(&Error{Kind: ErrNameInUse, Name: m.Name, Msg: fmt.Sprintf("you have a workspace named %q already", m.Name)})
			return
		}
	}
	var chain []string // known now when cloning a snapshot
	size, source := src.Size, "clone:"+src.Name
	if m.Snapshot != "" {
		sn, err := snapshotOf(src, m.Snapshot)
		if err != nil {
			fail(err)
			return
		}
		chain, size, source = slices.Clone(sn.Layers), sn.Size, source+"@"+sn.Name
		if a.d.Layers == nil {
			fail(errorf(ErrNotYet, "workspace layers are not configured"))
			return
		}
	} else if err := a.layersFor(src); err != nil {
		fail(err)
		return
	}
	ws := &state.Workspace{ID: state.NewID(), Name: m.Name, OwnerUID: m.Caller.UID, Status: state.WorkspaceCreating,
		Size: size, UID: src.UID, GID: src.GID, Source: source, CreatedAt: time.Now().UTC(), Backing: chain}
	a.ws[ws.ID] = ws
	a.reserved[ws.ID] = ws
	cur, rec, store, layers := *src, *ws, a.d.Store, a.d.Layers
	a.log.Info("workspace cloning", "workspace", ws.Name, "workspace_id", ws.ID, "source", source)
	a.startLayers(ctx, map[string]string{src.ID: opClone, ws.ID: opCloneNew}, func(bctx context.Context) (newTops, error) {
		var t newTops
		chain := rec.Backing
		if chain == nil {
			var err error
			if chain, err = freeze(store, &cur); err != nil {
				return t, err
			}
		}
		t.chain = chain
		rec.Backing = chain // named by the intent, though start-up sweeps both
		if err := store.Begin(&rec); err != nil {
			return t, err
		}
		failpoint("workspace-clone-intent")
		if m.Snapshot == "" {
			top, how, err := makeTop(bctx, layers, store, &cur, chain, cur.Size)
			if err != nil {
				return t, err
			}
			t.top, t.how = top, how
		}
		top, how, err := makeTop(bctx, layers, store, &rec, chain, size)
		t.cloneTop, t.cloneHow = top, how
		return t, err
	}, &layerDone{
		what: "clone of workspace " + cur.Name,
		commit: func(a *workspacesActor, ctx actor.Context, t newTops) *WorkspaceResult {
			src, err := a.lookupID(cur.ID)
			var ws *state.Workspace
			if err == nil {
				ws, err = a.lookupID(rec.ID)
			}
			if err == nil {
				ws.Backing = slices.Clone(t.chain) // so no sweep takes it
				if t.top != "" {
					err = a.commit(src, nextTop(src, t.chain, t.top, t.how, src.Size))
				}
			}
			if err == nil {
				next := nextTop(ws, t.chain, t.cloneTop, t.cloneHow, ws.Size)
				next.Status = state.WorkspaceReady
				err = a.commit(ws, next)
			}
			if err != nil {
				a.dropClone(rec.ID)
				return &WorkspaceResult{Err: err}
			}
			a.log.Info("workspace cloned", "workspace", ws.Name, "workspace_id", ws.ID, "source", ws.Source, "layers", len(ws.Backing), "how", t.cloneHow)
			a.emit(ctx, api.EventWorkspaceCreated, ws)
			info := a.info(ws)
			return &WorkspaceResult{Workspace: &info}
		},
		fail: func(a *workspacesActor) {
			a.dropStraysOf(cur.ID)
			a.dropClone(rec.ID)
		},
	})
}

// dropClone takes away a clone that was not made.
func (a *workspacesActor) dropClone(id string) {
	delete(a.ws, id)
	if err := a.d.Store.Remove(id); err != nil {
		a.log.Warn("removing a workspace whose clone failed (start-up sweeps it)", "err", err)
	}
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
