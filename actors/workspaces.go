package actors

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/state"
)

// ErrWorkspaceNotFound: no workspace of that name the caller may see.
// Another user's workspace is not found, exactly like one that does not
// exist.
var ErrWorkspaceNotFound = errdefs.New(errdefs.ErrNotFound, "workspace not found")

// DefaultWorkspaceBuildTimeout bounds one workspace build (reading the
// caller's tar stream included).
const DefaultWorkspaceBuildTimeout = time.Hour

// WorkspaceBuild builds the volume of ws at out from the tar stream r (nil:
// empty) and returns the bytes it takes on the host. It runs off the
// Workspaces actor's mailbox, under ctx.
type WorkspaceBuild func(ctx context.Context, r io.Reader, out string, ws state.Workspace) error

// WorkspaceExport writes the tree of the volume vol of ws to w as a tar
// stream: all of it, or part of it (pull). It runs off the Workspaces
// actor's mailbox, under ctx, while the workspace is held detached.
type WorkspaceExport func(ctx context.Context, w io.Writer, vol string, ws state.Workspace, part *ExportPart) error

// WorkspaceMerge builds the volume of ws at out from base, its tree as it
// is (an export), with push unpacked at dir under the top name over it
// (PushWorkspace). It runs off the mailbox, under ctx.
type WorkspaceMerge func(ctx context.Context, base, push io.Reader, dir, name, out string, ws state.Workspace) error

// ExportPart is a path in a workspace (relative to its root; "" for the
// root) exported as a stream whose entries are Name, Name/...
type ExportPart struct{ Path, Name string }

// WorkspaceDeps is what the Workspaces actor needs. It reaches no VM in
// this slice; what it will need of them comes as messages or function
// values given at wiring time, never a pointer into the Manager.
type WorkspaceDeps struct {
	Store *state.WorkspaceStore
	Build WorkspaceBuild
	// Export reads a volume out (ExportWorkspace).
	Export WorkspaceExport
	// Merge pushes into a volume no VM holds (PushWorkspace).
	Merge WorkspaceMerge
	// Layers make new top layers (snapshot, restore, clone) and flatten
	// and grow volumes (resize).
	Layers WorkspaceLayers
	// Used reports the bytes a volume takes on the host.
	Used func(path string) int64
	// BuildTimeout bounds one build; default DefaultWorkspaceBuildTimeout.
	BuildTimeout time.Duration
	Log          *slog.Logger
	Events       *actor.PID
}

// WorkspaceInfo is a workspace as its caller sees it.
type WorkspaceInfo struct {
	state.Workspace
	Used int64 // bytes its volume takes on the host
	// Attached are the VMs it is attached to (starting, running or
	// stopping), by VM name.
	Attached []WorkspaceHolder
}

// WorkspaceHolder is a VM a workspace is attached to.
type WorkspaceHolder struct {
	VMID, VMName string
	ReadOnly     bool
}

// AttachWorkspaces claims a VM's workspaces for its start, answered with
// *AttachResult: every one or none. A workspace is attached read-write to
// one VM at a time, or read-only to any number: a claim that would break
// that is refused naming the VM that holds the workspace. Claiming again
// for the same VM replaces its claims (a re-adopted VM after a restart of
// paddockd). Only the VM owner's workspaces can be attached.
type AttachWorkspaces struct {
	VMID, VMName string
	Owner        uint32
	Mounts       []state.WorkspaceMount
}

// DetachWorkspaces drops every claim of a VM (answered with
// *AttachResult); a VM without claims is done.
type DetachWorkspaces struct{ VMID string }

// AttachResult answers AttachWorkspaces: the volume of each mount, in
// order (Device is left to the VM).
type AttachResult struct {
	Items []state.WorkspaceAttached
	Err   error
}

func (r *AttachResult) failure() error { return r.Err }

func (m *AttachWorkspaces) describe() string { return "attach of the workspaces of VM " + m.VMName }
func (m *DetachWorkspaces) describe() string { return "detach of the workspaces of VM " + m.VMID }

// crashWorkspaces makes the Workspaces actor panic (tests).
type crashWorkspaces struct{}

// claim is one VM's hold on a workspace.
type claim struct {
	vmName string
	ro     bool
}

// CreateWorkspace asks the Workspaces actor to build a workspace from Tar
// (nil: empty; closed by the actor when the build ends). It is answered on
// Done exactly once; CancelWorkspace{ID} withdraws it (the build stops and
// leaves nothing).
type CreateWorkspace struct {
	ID       uint64
	Caller   Caller
	Name     string
	Size     int64
	UID, GID uint32
	Source   string
	Tar      io.ReadCloser
	Done     chan WorkspaceResult
}

// CancelWorkspace withdraws a CreateWorkspace, ExportWorkspace,
// ImportWorkspace or PushWorkspace.
type CancelWorkspace struct{ ID uint64 }

// ExportWorkspace asks for the tree of a workspace as a tar stream written
// to Out (closed by the actor when the export ends). It is answered on Done
// exactly once. While it runs the workspace cannot be attached, imported or
// removed. A workspace attached read-only is read as it is (nothing writes
// to it); one attached read-write is refused naming the VM (its guest may
// be writing) unless Frozen: the caller froze the guest's file system
// (FIFREEZE through the agent) for the export's duration.
type ExportWorkspace struct {
	ID     uint64
	Caller Caller
	Ref    string
	Frozen bool
	// Part is what to export (pull); nil for the whole tree.
	Part *ExportPart
	Out  io.WriteCloser
	Done chan WorkspaceResult
}

// ImportWorkspace replaces the tree of a detached workspace with the tar
// stream Tar (closed by the actor when the import ends), built like a
// creation's (same checks, owner, size) into a new volume that replaces
// the old one only when complete. Answered on Done exactly once; refused
// while attached, naming the VM.
type ImportWorkspace struct {
	ID     uint64
	Caller Caller
	Ref    string
	Source string
	Tar    io.ReadCloser
	Done   chan WorkspaceResult
}

// PushWorkspace unpacks the tar stream Tar (closed by the actor when the
// push ends) into a workspace no VM holds, at Path by cp's rules (its top
// entry is Name): the volume is rebuilt from its tree and the pushed one,
// checked and owned like a creation's, and replaces the old only when
// complete. Answered on Done exactly once; refused while attached (the
// push then goes through the guest).
type PushWorkspace struct {
	ID         uint64
	Caller     Caller
	Ref        string
	Path, Name string
	Tar        io.ReadCloser
	Done       chan WorkspaceResult
}

// workspaceIODone carries an export's or an import's end into the mailbox.
type workspaceIODone struct {
	id     uint64
	ws     *state.Workspace
	op     string
	commit func(*state.Workspace)
	done   chan WorkspaceResult
	err    error
}

// ListWorkspaces, GetWorkspace and RemoveWorkspace are answered with
// *WorkspaceResult. Each sees what its caller may see.
type (
	ListWorkspaces struct{ Caller Caller }
	GetWorkspace   struct {
		Caller Caller
		Ref    string
	}
	RemoveWorkspace struct {
		Caller Caller
		Ref    string
	}
)

func (m *ListWorkspaces) describe() string  { return "workspace list" }
func (m *GetWorkspace) describe() string    { return "lookup of workspace " + m.Ref }
func (m *RemoveWorkspace) describe() string { return "removal of workspace " + m.Ref }

// WorkspaceResult answers the workspace requests.
type WorkspaceResult struct {
	Workspace  *WorkspaceInfo
	Workspaces []WorkspaceInfo
	Err        error
}

func (r *WorkspaceResult) failure() error { return r.Err }

// workspaceBuilt carries a build's end back into the mailbox.
type workspaceBuilt struct {
	req *CreateWorkspace
	ws  *state.Workspace
	err error
}

type workspacesActor struct {
	d        WorkspaceDeps
	log      *slog.Logger
	ws       map[string]*state.Workspace // by id: ready and creating
	building map[uint64]context.CancelFunc
	// claims are the attachments: workspace id -> VM id -> claim. They
	// live in memory (kept across a restart of the actor); after a restart
	// of paddockd the VMs that still run claim theirs again when they are
	// re-adopted (before the daemon serves), and a VM that stopped
	// meanwhile releases its own.
	claims map[string]map[string]claim
	// busy are the workspaces being exported, imported, snapshotted,
	// restored, cloned or made by a clone: id -> what is done to it. Kept
	// across a restart of the actor, like claims: the goroutine doing it
	// reports its end to the new one.
	busy map[string]string
	// reserved are the records of clones being made (their names taken),
	// kept across a restart for those whose record is not on disk yet.
	reserved map[string]*state.Workspace
	// corrupt: some record could not be read, so the layers it names are
	// unknown and none is swept.
	corrupt bool
}

// workspacesKept is what a restarted Workspaces actor takes over: the
// claims and the work in flight, which only the actor's mailbox touches.
type workspacesKept struct {
	claims   map[string]map[string]claim
	busy     map[string]string
	reserved map[string]*state.Workspace
}

func newWorkspacesKept() *workspacesKept {
	return &workspacesKept{claims: map[string]map[string]claim{}, busy: map[string]string{}, reserved: map[string]*state.Workspace{}}
}

// newWorkspacesActor serves workspaces with what kept holds.
func newWorkspacesActor(d WorkspaceDeps, kept *workspacesKept) actor.Actor {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.BuildTimeout <= 0 {
		d.BuildTimeout = DefaultWorkspaceBuildTimeout
	}
	return &workspacesActor{d: d, log: d.Log.With("actor", NameWorkspaces), claims: kept.claims, busy: kept.busy, reserved: kept.reserved}
}

func (a *workspacesActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.ws, a.building = map[string]*state.Workspace{}, map[uint64]context.CancelFunc{}
		if a.d.Store == nil {
			return
		}
		// Work still in flight (a restart after a panic) keeps its files:
		// it commits or drops them when it ends.
		inFlight := map[string]bool{}
		for id := range a.busy {
			inFlight[id] = true
		}
		ready, swept, corrupt, err := a.d.Store.LoadAllExcept(inFlight)
		if err != nil {
			a.log.Error("loading workspaces", "err", err)
		}
		for _, s := range swept {
			a.log.Info("swept what a crash left of a workspace", "workspace_id", strings.TrimPrefix(s, ".deleted-"))
		}
		a.corrupt = len(corrupt) > 0
		for _, err := range corrupt {
			a.log.Warn("workspace record unreadable: left on disk, not served", "err", err)
		}
		for _, ws := range ready {
			a.ws[ws.ID] = ws
		}
		for id, ws := range a.reserved {
			if _, ok := a.ws[id]; !ok {
				cp := *ws
				a.ws[id] = &cp
			}
		}
	case *actor.Stopping:
		for _, c := range a.building {
			c()
		}
	case *Ping:
		ctx.Respond(&Pong{From: NameWorkspaces})
	case *crashWorkspaces:
		panic("injected panic in the workspaces actor")
	case *CreateWorkspace:
		a.create(ctx, m)
	case *workspaceBuilt:
		a.built(ctx, m)
	case *ExportWorkspace:
		a.export(ctx, m)
	case *ImportWorkspace:
		a.importTree(ctx, m)
	case *PushWorkspace:
		a.push(ctx, m)
	case *workspaceIODone:
		a.ioDone(m)
	case *CancelWorkspace:
		if c, ok := a.building[m.ID]; ok {
			c()
		}
	case *ListWorkspaces:
		if a.d.Store == nil {
			ctx.Respond(&WorkspaceResult{Err: errorf(ErrNotYet, "workspaces are not configured")})
			return
		}
		out := []WorkspaceInfo{}
		for _, ws := range a.ws {
			if m.Caller.May(ws.OwnerUID) {
				out = append(out, a.info(ws))
			}
		}
		sort.Slice(out, func(i, j int) bool {
			if out[i].Name != out[j].Name {
				return out[i].Name < out[j].Name
			}
			return out[i].ID < out[j].ID
		})
		ctx.Respond(&WorkspaceResult{Workspaces: out})
	case *GetWorkspace:
		ws, err := a.lookup(m.Caller, m.Ref)
		if err != nil {
			ctx.Respond(&WorkspaceResult{Err: err})
			return
		}
		info := a.info(ws)
		ctx.Respond(&WorkspaceResult{Workspace: &info})
	case *RemoveWorkspace:
		ctx.Respond(a.remove(ctx, m))
	case *SnapshotWorkspace:
		a.snapshot(ctx, m)
	case *RestoreWorkspace:
		a.restore(ctx, m)
	case *CloneWorkspace:
		a.clone(ctx, m)
	case *layerDone:
		a.layerDone(ctx, m)
	case *ResizeWorkspace:
		a.resize(ctx, m)
	case *AttachWorkspaces:
		ctx.Respond(a.attach(m))
	case *DetachWorkspaces:
		a.detach(m.VMID)
		ctx.Respond(&AttachResult{})
	}
}

// attach claims m's workspaces for m's VM, all or none.
func (a *workspacesActor) attach(m *AttachWorkspaces) *AttachResult {
	if len(m.Mounts) == 0 {
		a.detach(m.VMID)
		return &AttachResult{}
	}
	if a.d.Store == nil {
		return &AttachResult{Err: errorf(ErrNotYet, "workspaces are not configured")}
	}
	var items []state.WorkspaceAttached
	for _, mt := range m.Mounts {
		ws, ok := a.ws[mt.ID]
		if !ok || ws.OwnerUID != m.Owner || ws.Status != state.WorkspaceReady {
			return &AttachResult{Err: &Error{Kind: ErrWorkspaceNotFound, VM: mt.Name,
				Msg: fmt.Sprintf("VM %s names workspace %s, which no longer exists (paddock set %s --workspace ... to change it)", m.VMName, mt.Name, m.VMName)}}
		}
		if op := a.busy[ws.ID]; op != "" {
			return &AttachResult{Err: &Error{Kind: ErrInvalidState, VM: ws.Name,
				Msg: fmt.Sprintf("workspace %s is being %s: start VM %s when that is done", ws.Name, op, m.VMName)}}
		}
		for vmID, c := range a.claims[ws.ID] {
			if vmID == m.VMID {
				continue
			}
			switch {
			case !c.ro:
				return &AttachResult{Err: &Error{Kind: ErrInvalidState, VM: ws.Name,
					Msg: fmt.Sprintf("workspace %s is attached read-write to VM %s: stop it first, or attach the workspace read-only once it is free", ws.Name, c.vmName)}}
			case !mt.ReadOnly:
				return &AttachResult{Err: &Error{Kind: ErrInvalidState, VM: ws.Name,
					Msg: fmt.Sprintf("workspace %s is attached read-only to VM %s: a read-write attach needs it free (attach it read-only with :ro, or stop %s)", ws.Name, c.vmName, c.vmName)}}
			}
		}
		items = append(items, state.WorkspaceAttached{WorkspaceMount: mt, Volume: a.d.Store.TopPath(ws), Format: ws.TopFormat(), UID: ws.UID, GID: ws.GID})
	}
	a.detach(m.VMID)
	for _, it := range items {
		if a.claims[it.ID] == nil {
			a.claims[it.ID] = map[string]claim{}
		}
		a.claims[it.ID][m.VMID] = claim{vmName: m.VMName, ro: it.ReadOnly}
	}
	a.log.Info("workspaces attached", "vm_id", m.VMID, "vm_name", m.VMName, "workspaces", len(items))
	return &AttachResult{Items: items}
}

func (a *workspacesActor) detach(vmID string) {
	for id, cs := range a.claims {
		if _, ok := cs[vmID]; ok {
			delete(cs, vmID)
			a.log.Info("workspace detached", "workspace_id", id, "vm_id", vmID)
		}
		if len(cs) == 0 {
			delete(a.claims, id)
		}
	}
}

// holders are the VMs ws is attached to, by name.
func (a *workspacesActor) holders(id string) []WorkspaceHolder {
	var out []WorkspaceHolder
	for vmID, c := range a.claims[id] {
		out = append(out, WorkspaceHolder{VMID: vmID, VMName: c.vmName, ReadOnly: c.ro})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VMName < out[j].VMName })
	return out
}

func (a *workspacesActor) info(ws *state.Workspace) WorkspaceInfo {
	i := WorkspaceInfo{Workspace: *ws, Attached: a.holders(ws.ID)}
	if ws.Status == state.WorkspaceReady && a.d.Used != nil {
		i.Used = a.d.Used(a.d.Store.TopPath(ws))
	}
	return i
}

// lookup resolves ref as c sees it: c's own workspace of that name, else
// the exact id of one c may see, else (admins) the name if only one
// workspace has it. Anything else is not found, exactly like another
// user's workspace.
func (a *workspacesActor) lookup(c Caller, ref string) (*state.Workspace, error) {
	if a.d.Store == nil {
		return nil, errorf(ErrNotYet, "workspaces are not configured")
	}
	for _, ws := range a.ws {
		if ws.Name == ref && ws.OwnerUID == c.UID {
			return ws, nil
		}
	}
	if ws, ok := a.ws[ref]; ok && c.May(ws.OwnerUID) {
		return ws, nil
	}
	if c.Admin {
		var hits []*state.Workspace
		for _, ws := range a.ws {
			if ws.Name == ref {
				hits = append(hits, ws)
			}
		}
		switch len(hits) {
		case 1:
			return hits[0], nil
		case 0:
		default:
			ids := make([]string, len(hits))
			for i, ws := range hits {
				ids[i] = fmt.Sprintf("%s (uid %d)", ws.ID, ws.OwnerUID)
			}
			sort.Strings(ids)
			return nil, &Error{Kind: ErrInvalidArgument, Field: "workspace", Msg: fmt.Sprintf("%d workspaces are named %q: give an id: %s", len(hits), ref, strings.Join(ids, ", "))}
		}
	}
	return nil, &Error{Kind: ErrWorkspaceNotFound, VM: ref, Msg: fmt.Sprintf("no workspace named %q", ref)}
}

func (a *workspacesActor) create(ctx actor.Context, m *CreateWorkspace) {
	fail := func(err error) {
		if m.Tar != nil {
			_ = m.Tar.Close()
		}
		m.Done <- WorkspaceResult{Err: err}
	}
	if a.d.Store == nil || a.d.Build == nil {
		fail(errorf(ErrNotYet, "workspaces are not configured"))
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
	ws := &state.Workspace{ID: state.NewID(), Name: m.Name, OwnerUID: m.Caller.UID, Status: state.WorkspaceCreating,
		Size: m.Size, UID: m.UID, GID: m.GID, Source: m.Source, CreatedAt: time.Now().UTC()}
	// Intent first: a crash from here on leaves a "creating" record that
	// start-up sweeps with whatever the build left.
	if err := a.d.Store.Begin(ws); err != nil {
		fail(err)
		return
	}
	failpoint("workspace-create-intent")
	a.ws[ws.ID] = ws
	bctx, cancel := context.WithTimeout(context.Background(), a.d.BuildTimeout)
	a.building[m.ID] = cancel
	log := a.log.With("workspace", ws.Name, "workspace_id", ws.ID, "owner_uid", ws.OwnerUID)
	log.Info("building workspace", "size", ws.Size, "source", ws.Source, "uid", ws.UID, "gid", ws.GID)
	self, root, build, out, snapshot := ctx.Self(), ctx.ActorSystem().Root, a.d.Build, a.d.Store.Volume(ws.ID), *ws
	go func() {
		var r io.Reader
		if m.Tar != nil {
			r = m.Tar
			// A reader blocked on the caller's stream ends when the build's
			// context does.
			stop := context.AfterFunc(bctx, func() { _ = m.Tar.Close() })
			defer stop()
		}
		err := build(bctx, r, out, snapshot)
		if bctx.Err() != nil {
			// Canceled or out of time: that, not what the build made of
			// its stream being closed under it, is why.
			err = bctx.Err()
		}
		if m.Tar != nil {
			_ = m.Tar.Close()
		}
		root.Send(self, &workspaceBuilt{req: m, ws: ws, err: err})
	}()
}

func (a *workspacesActor) built(ctx actor.Context, m *workspaceBuilt) {
	if c, ok := a.building[m.req.ID]; ok {
		c()
		delete(a.building, m.req.ID)
	}
	ws := m.ws
	log := a.log.With("workspace", ws.Name, "workspace_id", ws.ID, "owner_uid", ws.OwnerUID)
	err := m.err
	if err == nil {
		failpoint("workspace-create-built")
		ws.Status = state.WorkspaceReady
		err = a.d.Store.Save(ws)
	}
	if err != nil {
		if errors.Is(err, context.Canceled) {
			err = errdefs.Newf(errdefs.ErrCanceled, "workspace %s: creation canceled", ws.Name)
		} else if errors.Is(err, context.DeadlineExceeded) {
			err = errdefs.Newf(errdefs.ErrDeadlineExceeded, "workspace %s: not built within %s", ws.Name, a.d.BuildTimeout)
		}
		delete(a.ws, ws.ID)
		if rerr := a.d.Store.Remove(ws.ID); rerr != nil {
			log.Warn("removing a workspace whose build failed (start-up sweeps it)", "err", rerr)
		}
		log.Warn("workspace not created", "err", err)
		m.req.Done <- WorkspaceResult{Err: err}
		return
	}
	info := a.info(ws)
	log.Info("workspace created", "used", info.Used)
	a.emit(ctx, api.EventWorkspaceCreated, ws)
	m.req.Done <- WorkspaceResult{Workspace: &info}
}

func (a *workspacesActor) remove(ctx actor.Context, m *RemoveWorkspace) *WorkspaceResult {
	ws, err := a.lookup(m.Caller, m.Ref)
	if err != nil {
		return &WorkspaceResult{Err: err}
	}
	if ws.Status != state.WorkspaceReady {
		return &WorkspaceResult{Err: &Error{Kind: ErrInvalidState, VM: m.Ref, Status: state.Status(ws.Status), Msg: fmt.Sprintf("workspace %s is being created", m.Ref)}}
	}
	if err := a.detached(ws, m.Ref); err != nil {
		return &WorkspaceResult{Err: err}
	}
	if err := a.d.Store.Remove(ws.ID); err != nil {
		return &WorkspaceResult{Err: err}
	}
	delete(a.ws, ws.ID)
	a.sweepLayers()
	a.log.Info("workspace removed", "workspace", ws.Name, "workspace_id", ws.ID, "owner_uid", ws.OwnerUID)
	a.emit(ctx, api.EventWorkspaceRemoved, ws)
	info := WorkspaceInfo{Workspace: *ws}
	return &WorkspaceResult{Workspace: &info}
}

// detached refuses a workspace attached to a VM (naming it) or being
// exported or imported.
func (a *workspacesActor) detached(ws *state.Workspace, ref string) error {
	if op := a.busy[ws.ID]; op != "" {
		return &Error{Kind: ErrInvalidState, VM: ref, Msg: fmt.Sprintf("workspace %s is being %s: try again when that is done", ws.Name, op)}
	}
	if hs := a.holders(ws.ID); len(hs) > 0 {
		names := make([]string, len(hs))
		for i, h := range hs {
			names[i] = h.VMName
		}
		return &Error{Kind: ErrInvalidState, VM: ref,
			Msg: fmt.Sprintf("workspace %s is attached to VM %s: stop it first", ws.Name, strings.Join(names, ", "))}
	}
	return nil
}

// export runs an ExportWorkspace off the mailbox, the workspace held busy.
func (a *workspacesActor) export(ctx actor.Context, m *ExportWorkspace) {
	fail := func(err error) {
		_ = m.Out.Close()
		m.Done <- WorkspaceResult{Err: err}
	}
	if a.d.Export == nil {
		fail(errorf(ErrNotYet, "workspaces are not configured"))
		return
	}
	ws, err := a.readTarget(m.Caller, m.Ref, m.Frozen)
	if err != nil {
		fail(err)
		return
	}
	run, vol, snapshot := a.d.Export, a.d.Store.TopPath(ws), *ws
	a.startIO(ctx, m.ID, ws, "exported", nil, m.Done, func(bctx context.Context) error {
		stop := context.AfterFunc(bctx, func() { _ = m.Out.Close() })
		defer stop()
		err := run(bctx, m.Out, vol, snapshot, m.Part)
		if cerr := m.Out.Close(); err == nil && !errors.Is(cerr, os.ErrClosed) {
			err = cerr
		}
		return err
	})
}

// importTree runs an ImportWorkspace off the mailbox, the workspace held
// busy: the build writes a new volume beside the old and renames it over.
func (a *workspacesActor) importTree(ctx actor.Context, m *ImportWorkspace) {
	build, source := a.d.Build, m.Source
	a.newTop(ctx, m.ID, m.Caller, m.Ref, m.Tar, m.Done, "imported", build != nil,
		func(next *state.Workspace) { next.Source = source },
		func(bctx context.Context, ws state.Workspace, _, out string) error {
			return build(bctx, m.Tar, out, ws)
		})
}

// push runs a PushWorkspace off the mailbox, the workspace held busy: its
// tree is exported into the merge, which writes a new raw top beside the
// old chain.
func (a *workspacesActor) push(ctx actor.Context, m *PushWorkspace) {
	export, merge := a.d.Export, a.d.Merge
	a.newTop(ctx, m.ID, m.Caller, m.Ref, m.Tar, m.Done, "pushed", merge != nil && export != nil, nil,
		func(bctx context.Context, ws state.Workspace, vol, out string) error {
			pr, pw := io.Pipe()
			exported := make(chan error, 1)
			go func() {
				err := export(bctx, pw, vol, ws, nil)
				pw.CloseWithError(err)
				exported <- err
			}()
			err := merge(bctx, pr, m.Tar, m.Path, m.Name, out, ws)
			pr.CloseWithError(errPushEnded) // an export still writing stops
			if xerr := <-exported; xerr != nil && !errors.Is(xerr, errPushEnded) {
				return fmt.Errorf("reading the workspace's tree: %w", xerr) // the cause of the merge's failure
			}
			return err
		})
}

// newTop runs work off the mailbox on a detached workspace held busy: it
// reads tar and writes a new raw top at out beside the current chain (vol
// its top); the record names the new top (and no backing) only once it is
// complete, and the old chain goes; the snapshots stay. tar is closed in
// every case, and when the work's context ends.
func (a *workspacesActor) newTop(ctx actor.Context, id uint64, c Caller, ref string, tar io.ReadCloser, done chan WorkspaceResult, verb string, configured bool,
	commit func(*state.Workspace), work func(bctx context.Context, ws state.Workspace, vol, out string) error) {
	fail := func(err error) {
		if tar != nil {
			_ = tar.Close()
		}
		done <- WorkspaceResult{Err: err}
	}
	if !configured || tar == nil {
		fail(errorf(ErrNotYet, "workspaces are not configured"))
		return
	}
	ws, err := a.ioTarget(c, ref)
	if err != nil {
		fail(err)
		return
	}
	top := "top-" + state.NewID() + ".ext4"
	snapshot, vol, out := *ws, a.d.Store.TopPath(ws), filepath.Join(a.d.Store.Dir(ws.ID), top)
	a.startIO(ctx, id, ws, verb, func(next *state.Workspace) {
		next.Top, next.Backing = top, nil
		if commit != nil {
			commit(next)
		}
	}, done, func(bctx context.Context) error {
		stop := context.AfterFunc(bctx, func() { _ = tar.Close() })
		defer stop()
		defer tar.Close()
		return work(bctx, snapshot, vol, out)
	})
}

var errPushEnded = errors.New("the push ended")

// readTarget is the workspace an export names: ready, not busy, and
// attached read-write to no VM unless frozen (see ExportWorkspace).
func (a *workspacesActor) readTarget(c Caller, ref string, frozen bool) (*state.Workspace, error) {
	ws, err := a.lookup(c, ref)
	if err != nil {
		return nil, err
	}
	if ws.Status != state.WorkspaceReady {
		return nil, &Error{Kind: ErrInvalidState, VM: ref, Status: state.Status(ws.Status), Msg: fmt.Sprintf("workspace %s is being created", ref)}
	}
	if op := a.busy[ws.ID]; op != "" {
		return nil, a.detached(ws, ref)
	}
	for _, h := range a.holders(ws.ID) {
		if !h.ReadOnly && !frozen {
			return nil, a.detached(ws, ref)
		}
	}
	return ws, nil
}

// ioTarget is the workspace an import names: ready, detached, not busy.
func (a *workspacesActor) ioTarget(c Caller, ref string) (*state.Workspace, error) {
	ws, err := a.lookup(c, ref)
	if err != nil {
		return nil, err
	}
	if ws.Status != state.WorkspaceReady {
		return nil, &Error{Kind: ErrInvalidState, VM: ref, Status: state.Status(ws.Status), Msg: fmt.Sprintf("workspace %s is being created", ref)}
	}
	if err := a.detached(ws, ref); err != nil {
		return nil, err
	}
	return ws, nil
}

// startIO runs run off the mailbox with ws held busy as op; when it
// succeeds, commit (if any) changes the record, which is saved.
func (a *workspacesActor) startIO(ctx actor.Context, id uint64, ws *state.Workspace, op string, commit func(*state.Workspace), done chan WorkspaceResult, run func(context.Context) error) {
	a.busy[ws.ID] = op
	bctx, cancel := context.WithTimeout(context.Background(), a.d.BuildTimeout)
	a.building[id] = cancel
	a.log.Info("workspace "+strings.TrimSuffix(op, "ed")+"ing", "workspace", ws.Name, "workspace_id", ws.ID, "owner_uid", ws.OwnerUID)
	self, root := ctx.Self(), ctx.ActorSystem().Root
	go func() {
		err := run(bctx)
		if bctx.Err() != nil {
			err = bctx.Err()
		}
		root.Send(self, &workspaceIODone{id: id, ws: ws, op: op, commit: commit, done: done, err: err})
	}()
}

func (a *workspacesActor) ioDone(m *workspaceIODone) {
	if c, ok := a.building[m.id]; ok {
		c()
		delete(a.building, m.id)
	}
	delete(a.busy, m.ws.ID)
	ws := m.ws
	log := a.log.With("workspace", ws.Name, "workspace_id", ws.ID, "owner_uid", ws.OwnerUID)
	err := m.err
	if errors.Is(err, context.Canceled) {
		err = errdefs.Newf(errdefs.ErrCanceled, "workspace %s: not %s: canceled", ws.Name, m.op)
	} else if errors.Is(err, context.DeadlineExceeded) {
		err = errdefs.Newf(errdefs.ErrDeadlineExceeded, "workspace %s: not %s within %s", ws.Name, m.op, a.d.BuildTimeout)
	}
	if cur, ok := a.ws[ws.ID]; ok && m.commit != nil {
		if err == nil {
			next := *cur
			m.commit(&next)
			err = a.commit(cur, &next)
		} else {
			a.dropStrays(cur)
		}
		ws = cur
	}
	if err != nil {
		log.Warn("workspace not "+m.op, "err", err)
		m.done <- WorkspaceResult{Err: err}
		return
	}
	info := a.info(ws)
	log.Info("workspace "+m.op, "used", info.Used)
	m.done <- WorkspaceResult{Workspace: &info}
}

func (a *workspacesActor) emit(ctx actor.Context, kind api.EventKind, ws *state.Workspace) {
	if a.d.Events == nil {
		return
	}
	status := string(ws.Status)
	if kind == api.EventWorkspaceRemoved {
		status = "removed"
	}
	ctx.Send(a.d.Events, &emit{Owner: ws.OwnerUID, Event: api.Event{Kind: kind, Workspace: ws.Name, WorkspaceID: ws.ID, Status: status}})
}

var workspaceSeq atomic.Uint64

// CreateWorkspace runs a workspace creation through the Workspaces actor
// until it is done or ctx ends (which cancels the build; nothing is left).
func (s *System) CreateWorkspace(ctx context.Context, m CreateWorkspace) (*WorkspaceInfo, error) {
	m.ID, m.Done = workspaceSeq.Add(1), make(chan WorkspaceResult, 1)
	s.sys.Root.Send(s.Workspaces, &m)
	select {
	case r := <-m.Done:
		return r.Workspace, r.Err
	case <-ctx.Done():
		s.sys.Root.Send(s.Workspaces, &CancelWorkspace{ID: m.ID})
		return nil, ctx.Err()
	}
}

// ExportWorkspace runs an export through the Workspaces actor until it is
// done or ctx ends (which stops it).
func (s *System) ExportWorkspace(ctx context.Context, m ExportWorkspace) (*WorkspaceInfo, error) {
	m.ID, m.Done = workspaceSeq.Add(1), make(chan WorkspaceResult, 1)
	return s.workspaceIO(ctx, &m, m.ID, m.Done)
}

// PushWorkspace runs a push into a detached workspace through the
// Workspaces actor until it is done or ctx ends (which stops it; the old
// tree stays).
func (s *System) PushWorkspace(ctx context.Context, m PushWorkspace) (*WorkspaceInfo, error) {
	m.ID, m.Done = workspaceSeq.Add(1), make(chan WorkspaceResult, 1)
	return s.workspaceIO(ctx, &m, m.ID, m.Done)
}

// ImportWorkspace runs an import through the Workspaces actor until it is
// done or ctx ends (which stops it; the old tree stays).
func (s *System) ImportWorkspace(ctx context.Context, m ImportWorkspace) (*WorkspaceInfo, error) {
	m.ID, m.Done = workspaceSeq.Add(1), make(chan WorkspaceResult, 1)
	return s.workspaceIO(ctx, &m, m.ID, m.Done)
}

func (s *System) workspaceIO(ctx context.Context, msg any, id uint64, done chan WorkspaceResult) (*WorkspaceInfo, error) {
	s.sys.Root.Send(s.Workspaces, msg)
	select {
	case r := <-done:
		return r.Workspace, r.Err
	case <-ctx.Done():
		s.sys.Root.Send(s.Workspaces, &CancelWorkspace{ID: id})
		return nil, ctx.Err()
	}
}

// WorkspaceRequest sends a workspace request to the Workspaces actor.
func (s *System) WorkspaceRequest(ctx context.Context, msg any) (*WorkspaceResult, error) {
	return request[*WorkspaceResult](ctx, s.sys.Root, s.Workspaces, msg)
}

// WorkspaceRef is a workspace a create or set names: the caller's own, by
// name or id, mounted at Path (state.DefaultWorkspacePath when empty).
type WorkspaceRef struct {
	Workspace string
	Path      string
	ReadOnly  bool
}

// ResolveWorkspaces resolves refs to the caller's own workspaces (ids, for
// the VM's spec). Only the caller's own can be named: another user's
// workspace is not found, an admin's included.
func (s *System) ResolveWorkspaces(ctx context.Context, c Caller, refs []WorkspaceRef) ([]state.WorkspaceMount, error) {
	out := make([]state.WorkspaceMount, 0, len(refs))
	for _, r := range refs {
		res, err := s.WorkspaceRequest(ctx, &GetWorkspace{Caller: c, Ref: r.Workspace})
		if err != nil {
			return nil, err
		}
		ws := res.Workspace
		if ws.OwnerUID != c.UID {
			return nil, &Error{Kind: ErrWorkspaceNotFound, VM: r.Workspace, Msg: fmt.Sprintf("no workspace named %q", r.Workspace)}
		}
		if ws.Status != state.WorkspaceReady {
			return nil, &Error{Kind: ErrInvalidState, VM: r.Workspace, Msg: fmt.Sprintf("workspace %s is being created", ws.Name)}
		}
		out = append(out, state.WorkspaceMount{ID: ws.ID, Name: ws.Name, Path: cmp.Or(r.Path, state.DefaultWorkspacePath), ReadOnly: r.ReadOnly})
	}
	return out, nil
}
