package actors

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/config"
	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/state"
)

var (
	wsAlice = Caller{UID: 1001}
	wsBob   = Caller{UID: 1002}
)

// fakeBuild writes what it reads to the volume; gate, when set, holds the
// build until it is closed or the build's context ends; fail fails it.
type fakeBuild struct {
	gate chan struct{}
	fail error
	// exportGate, when set, holds an export until it is closed;
	// exportStarted, when set, is told an export started.
	exportGate, exportStarted chan struct{}
	// overlay: new top layers are "overlays" (a file "@LAYER" read
	// through to it) rather than copies.
	overlay bool
	// topStarted, when set, is told a new top is being made; topGate,
	// when set, holds it until closed or the layer work's deadline.
	topStarted, topGate chan struct{}
}

// readChain reads a fake volume through its overlays.
func readChain(path string) ([]byte, error) {
	for {
		b, err := os.ReadFile(path)
		if err != nil || !strings.HasPrefix(string(b), "@") {
			return b, err
		}
		path = string(b[1:])
	}
}

// NewTop copies the layer (a reflink) or points at it (an overlay).
func (f *fakeBuild) NewTop(ctx context.Context, dir, layer string, size int64) (string, string, error) {
	if f.topStarted != nil {
		select {
		case f.topStarted <- struct{}{}:
		default:
		}
	}
	if f.topGate != nil {
		select {
		case <-f.topGate:
		case <-ctx.Done():
			return "", "", ctx.Err()
		}
	}
	if f.overlay {
		name := "top-" + state.NewID() + ".qcow2"
		return name, topOverlay, os.WriteFile(filepath.Join(dir, name), []byte("@"+layer), 0o600)
	}
	b, err := os.ReadFile(layer)
	if err != nil {
		return "", "", err
	}
	name := "top-" + state.NewID() + ".ext4"
	return name, "reflink", os.WriteFile(filepath.Join(dir, name), b, 0o600)
}

func (f *fakeBuild) Flatten(ctx context.Context, top, out string) error {
	b, err := readChain(top)
	if err != nil {
		return err
	}
	return os.WriteFile(out, b, 0o600)
}

func (f *fakeBuild) Grow(ctx context.Context, raw string, size int64) error {
	_, err := os.Stat(raw)
	return err
}

// export copies the volume to w.
func (f *fakeBuild) export(ctx context.Context, w io.Writer, vol string, ws state.Workspace, _ *ExportPart) error {
	if f.exportStarted != nil {
		f.exportStarted <- struct{}{}
	}
	if f.exportGate != nil {
		select {
		case <-f.exportGate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	data, err := readChain(vol)
	if err != nil {
		return err
	}
	_, err = w.Write(data)
	return err
}

func (f *fakeBuild) build(ctx context.Context, r io.Reader, out string, ws state.Workspace) error {
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if f.fail != nil {
		return f.fail
	}
	data := []byte("empty")
	if r != nil {
		var err error
		if data, err = io.ReadAll(r); err != nil {
			return err
		}
	}
	return os.WriteFile(out, data, 0o600)
}

// merge writes base, then "+DIR/NAME:" and the push (or fails like build).
func (f *fakeBuild) merge(ctx context.Context, base, push io.Reader, dir, name, out string, ws state.Workspace) error {
	if f.fail != nil {
		return f.fail
	}
	b, err := io.ReadAll(base)
	if err != nil {
		return err
	}
	p, err := io.ReadAll(push)
	if err != nil {
		return err
	}
	return os.WriteFile(out, append(b, "+"+dir+"/"+name+":"+string(p)...), 0o600)
}

type wsHarness struct {
	sys   *System
	store *state.WorkspaceStore
}

func startWorkspaces(t *testing.T, dir string, fb *fakeBuild) *wsHarness {
	t.Helper()
	return startWorkspacesWithin(t, dir, fb, 0)
}

func startWorkspacesWithin(t *testing.T, dir string, fb *fakeBuild, timeout time.Duration) *wsHarness {
	t.Helper()
	st, err := state.NewStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := state.NewWorkspaceStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sys, err := Start(ctx, Deps{Store: st, Defaults: func() config.Defaults { return config.Default().Defaults },
		Workspaces: WorkspaceDeps{Store: ws, Build: fb.build, Export: fb.export, Merge: fb.merge, Layers: fb, Used: func(p string) int64 { fi, _ := os.Stat(p); return fi.Size() }, BuildTimeout: timeout}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sys.Shutdown)
	return &wsHarness{sys: sys, store: ws}
}

func (h *wsHarness) create(t *testing.T, c Caller, name, content string) (*WorkspaceInfo, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var tar io.ReadCloser
	if content != "" {
		tar = io.NopCloser(strings.NewReader(content))
	}
	return h.sys.CreateWorkspace(ctx, CreateWorkspace{Caller: c, Name: name, Size: 64 << 20, UID: 1000, GID: 1000, Source: "test", Tar: tar})
}

func (h *wsHarness) do(t *testing.T, msg any) (*WorkspaceResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return h.sys.WorkspaceRequest(ctx, msg)
}

func (h *wsHarness) names(t *testing.T, c Caller) []string {
	t.Helper()
	r, err := h.do(t, &ListWorkspaces{Caller: c})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, w := range r.Workspaces {
		out = append(out, w.Name+"@"+w.ID[:6]+":"+string(w.Status))
	}
	return out
}

// Names are per owner: alice's proj and bob's proj are two workspaces;
// another user's workspace is not found exactly like a missing one, by
// name or by id; admins see all and are told to use an id when a name is
// ambiguous.
func TestWorkspacesNamesPerOwner(t *testing.T) {
	h := startWorkspaces(t, t.TempDir(), &fakeBuild{})
	a, err := h.create(t, wsAlice, "proj", "alice's tree")
	if err != nil {
		t.Fatal(err)
	}
	b, err := h.create(t, wsBob, "proj", "bob's tree")
	if err != nil {
		t.Fatal(err)
	}
	if a.ID == b.ID || a.OwnerUID != 1001 || b.OwnerUID != 1002 || a.Status != state.WorkspaceReady || a.Used != int64(len("alice's tree")) {
		t.Fatalf("alice %+v, bob %+v", a, b)
	}
	if _, err := h.create(t, wsAlice, "proj", ""); !errors.Is(err, ErrNameInUse) {
		t.Fatalf("alice's second proj: %v", err)
	}
	if got := h.names(t, wsAlice); len(got) != 1 || !strings.HasPrefix(got[0], "proj@"+a.ID[:6]) {
		t.Fatalf("alice lists %v", got)
	}
	if got := h.names(t, admin); len(got) != 2 {
		t.Fatalf("admin lists %v", got)
	}
	r, err := h.do(t, &GetWorkspace{Caller: wsBob, Ref: "proj"})
	if err != nil || r.Workspace.ID != b.ID {
		t.Fatalf("bob's proj: %+v %v", r, err)
	}
	// alice's id, to bob, is nothing.
	_, theirs := h.do(t, &GetWorkspace{Caller: wsBob, Ref: a.ID})
	_, none := h.do(t, &GetWorkspace{Caller: wsBob, Ref: strings.Repeat("0", 24)})
	if !errors.Is(theirs, ErrWorkspaceNotFound) || strings.ReplaceAll(theirs.Error(), a.ID, "X") != strings.ReplaceAll(none.Error(), strings.Repeat("0", 24), "X") {
		t.Fatalf("bob on alice's id: %v; on nothing: %v", theirs, none)
	}
	if _, err := h.do(t, &GetWorkspace{Caller: admin, Ref: "proj"}); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), a.ID) || !strings.Contains(err.Error(), b.ID) {
		t.Fatalf("admin on a shared name: %v", err)
	}
	if r, err := h.do(t, &GetWorkspace{Caller: admin, Ref: a.ID}); err != nil || r.Workspace.Name != "proj" || r.Workspace.OwnerUID != 1001 {
		t.Fatalf("admin by id: %+v %v", r, err)
	}
	if _, err := h.create(t, wsAlice, "Bad_Name", ""); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad name: %v", err)
	}
}

// rm: another user's workspace is not found and stays; the owner's goes,
// with its directory, and its events reach its owner only.
func TestWorkspacesRemove(t *testing.T) {
	dir := t.TempDir()
	h := startWorkspaces(t, dir, &fakeBuild{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, aliceEvents, err := h.sys.Subscribe(ctx, wsAlice, "", 16)
	if err != nil {
		t.Fatal(err)
	}
	_, bobEvents, err := h.sys.Subscribe(ctx, wsBob, "", 16)
	if err != nil {
		t.Fatal(err)
	}
	a, err := h.create(t, wsAlice, "proj", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"proj", a.ID} {
		if _, err := h.do(t, &RemoveWorkspace{Caller: wsBob, Ref: ref}); !errors.Is(err, ErrWorkspaceNotFound) {
			t.Fatalf("bob removes alice's %s: %v", ref, err)
		}
	}
	if _, err := os.Stat(h.store.Volume(a.ID)); err != nil {
		t.Fatalf("alice's volume after bob's rm: %v", err)
	}
	if _, err := h.do(t, &RemoveWorkspace{Caller: wsAlice, Ref: "proj"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(h.store.Dir(a.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("alice's workspace directory after rm: %v", err)
	}
	if got := h.names(t, admin); len(got) != 0 {
		t.Fatalf("after rm: %v", got)
	}
	if _, err := h.do(t, &GetWorkspace{Caller: wsAlice, Ref: "proj"}); !errors.Is(err, ErrWorkspaceNotFound) {
		t.Fatalf("get after rm: %v", err)
	}
	for _, want := range []api.EventKind{api.EventWorkspaceCreated, api.EventWorkspaceRemoved} {
		select {
		case ev := <-aliceEvents:
			if ev.Kind != want || ev.Workspace != "proj" || ev.WorkspaceID != a.ID {
				t.Fatalf("alice's event %+v, want %s", ev, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no %s event", want)
		}
	}
	select {
	case ev := <-bobEvents:
		t.Fatalf("bob sees alice's event %+v", ev)
	case <-time.After(100 * time.Millisecond):
	}
}

// A build runs off the mailbox: while it runs, list answers (creating),
// the name is taken, rm is refused; a caller who gives up cancels it and
// nothing is left.
func TestWorkspacesBuildOffMailbox(t *testing.T) {
	fb := &fakeBuild{gate: make(chan struct{})}
	h := startWorkspaces(t, t.TempDir(), fb)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := h.sys.CreateWorkspace(ctx, CreateWorkspace{Caller: wsAlice, Name: "slow", Size: 64 << 20})
		done <- err
	}()
	var id string
	deadline := time.Now().Add(5 * time.Second)
	for id == "" {
		r, err := h.do(t, &ListWorkspaces{Caller: wsAlice})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Workspaces) == 1 {
			if r.Workspaces[0].Status != state.WorkspaceCreating {
				t.Fatalf("while building: %+v", r.Workspaces[0])
			}
			id = r.Workspaces[0].ID
		}
		if time.Now().After(deadline) {
			t.Fatal("the build never showed in the list")
		}
	}
	if _, err := h.create(t, wsAlice, "slow", ""); !errors.Is(err, ErrNameInUse) {
		t.Fatalf("a second slow while the first builds: %v", err)
	}
	if _, err := h.do(t, &RemoveWorkspace{Caller: wsAlice, Ref: "slow"}); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("rm while building: %v", err)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled create: %v", err)
	}
	for {
		if _, err := os.Stat(h.store.Dir(id)); errors.Is(err, os.ErrNotExist) && len(h.names(t, admin)) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a canceled build left %v", h.names(t, admin))
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(fb.gate)
	if _, err := h.create(t, wsAlice, "slow", ""); err != nil {
		t.Fatalf("slow again after the cancel: %v", err)
	}
}

// A failed build answers its error and leaves nothing; the name is free.
func TestWorkspacesFailedBuildLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	fb := &fakeBuild{fail: errdefs.New(errdefs.ErrInvalidArgument, `entry "dev/null": device nodes have no place in a workspace`)}
	h := startWorkspaces(t, dir, fb)
	if _, err := h.create(t, wsAlice, "bad", "x"); err == nil || !strings.Contains(err.Error(), "dev/null") {
		t.Fatalf("failed build: %v", err)
	}
	es, _ := workspaceDirs(h.store)
	if len(es) != 0 || len(h.names(t, admin)) != 0 {
		t.Fatalf("a failed build left %v", es)
	}
	fb.fail = nil
	if _, err := h.create(t, wsAlice, "bad", "x"); err != nil {
		t.Fatal(err)
	}
}

// Start-up sweeps what crashes left (a build cut short: a "creating"
// record, with or without a partial volume, or a directory without a
// record; a removal cut short) and serves the ready workspaces; a corrupt
// record is kept on disk and does not stop the daemon.
func TestWorkspacesSweepAtStart(t *testing.T) {
	dir := t.TempDir()
	store, err := state.NewWorkspaceStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	rec := func(name string, st state.WorkspaceStatus) *state.Workspace {
		ws := &state.Workspace{ID: state.NewID(), Name: name, OwnerUID: 1001, Status: st, Size: 64 << 20, CreatedAt: time.Now()}
		if err := store.Begin(ws); err != nil {
			t.Fatal(err)
		}
		return ws
	}
	ready := rec("ready", state.WorkspaceReady)
	if err := os.WriteFile(store.Volume(ready.ID), []byte("vol"), 0o600); err != nil {
		t.Fatal(err)
	}
	cut := rec("cut", state.WorkspaceCreating)
	partial := rec("partial", state.WorkspaceCreating)
	if err := os.WriteFile(filepath.Join(store.Dir(partial.ID), ".volume.ext4.partial-1"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	built := rec("built", state.WorkspaceCreating) // volume renamed, record not yet ready
	if err := os.WriteFile(store.Volume(built.ID), []byte("vol"), 0o600); err != nil {
		t.Fatal(err)
	}
	bare := state.NewID()
	if err := os.Mkdir(store.Dir(bare), 0o700); err != nil {
		t.Fatal(err)
	}
	gone := filepath.Join(store.Root, ".deleted-"+state.NewID())
	if err := os.MkdirAll(gone, 0o700); err != nil {
		t.Fatal(err)
	}
	corrupt := state.NewID()
	if err := os.Mkdir(store.Dir(corrupt), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(store.Dir(corrupt), "meta.json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}

	h := startWorkspaces(t, dir, &fakeBuild{})
	if got := h.names(t, admin); len(got) != 1 || !strings.HasPrefix(got[0], "ready@") {
		t.Fatalf("after start-up: %v", got)
	}
	for _, p := range []string{store.Dir(cut.ID), store.Dir(partial.ID), store.Dir(built.ID), store.Dir(bare), gone} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not swept: %v", p, err)
		}
	}
	if _, err := os.Stat(store.Dir(corrupt)); err != nil {
		t.Errorf("a corrupt record was removed: %v", err)
	}
	// The swept names are free again.
	if _, err := h.create(t, Caller{UID: 1001}, "cut", ""); err != nil {
		t.Fatal(err)
	}
}

// The workspace crash points are reached, in order, by a creation: a point
// the code never passes would make e2e/TestWorkspaceCrashPoints prove
// nothing for it.
func TestWorkspaceFailpointsReached(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	failpointHook = func(name string) { mu.Lock(); seen = append(seen, name); mu.Unlock() }
	t.Cleanup(func() { failpointHook = nil })
	h := startWorkspaces(t, t.TempDir(), &fakeBuild{})
	if _, err := h.create(t, wsAlice, "fp", "x"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(seen, WorkspaceFailpoints) {
		t.Fatalf("reached %v, want %v", seen, WorkspaceFailpoints)
	}
}

// Every build has a deadline: one that does not finish in time (a client
// that sends nothing) is ended, answered as a timeout, and leaves nothing.
func TestWorkspaceBuildDeadline(t *testing.T) {
	h := startWorkspacesWithin(t, t.TempDir(), &fakeBuild{gate: make(chan struct{})}, 200*time.Millisecond)
	_, err := h.create(t, wsAlice, "stuck", "")
	if !errdefs.IsDeadlineExceeded(err) || !strings.Contains(err.Error(), "not built within 200ms") {
		t.Fatalf("a build past its deadline: %v", err)
	}
	if es, _ := workspaceDirs(h.store); len(es) != 0 || len(h.names(t, admin)) != 0 {
		t.Fatalf("a build past its deadline left %v", es)
	}
}

// bufCloser is an export's destination.
type bufCloser struct {
	strings.Builder
	closed bool
}

func (b *bufCloser) Close() error { b.closed = true; return nil }

func (h *wsHarness) export(t *testing.T, c Caller, ref string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b bufCloser
	_, err := h.sys.ExportWorkspace(ctx, ExportWorkspace{Caller: c, Ref: ref, Out: &b})
	if !b.closed {
		t.Errorf("export of %s: destination not closed", ref)
	}
	return b.String(), err
}

type trackedReader struct {
	io.Reader
	closed bool
}

func (r *trackedReader) Close() error { r.closed = true; return nil }

func (h *wsHarness) importTree(t *testing.T, c Caller, ref, content string) (*WorkspaceInfo, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := &trackedReader{Reader: strings.NewReader(content)}
	w, err := h.sys.ImportWorkspace(ctx, ImportWorkspace{Caller: c, Ref: ref, Source: "tar:new", Tar: r})
	if !r.closed {
		t.Errorf("import into %s: stream not closed", ref)
	}
	return w, err
}

func (h *wsHarness) attachTo(t *testing.T, vm, wsID string, owner uint32) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := request[*AttachResult](ctx, h.sys.sys.Root, h.sys.Workspaces,
		&AttachWorkspaces{VMID: "id-" + vm, VMName: vm, Owner: owner, Mounts: []state.WorkspaceMount{{ID: wsID, Name: "proj", Path: "/workspace"}}})
	if err == nil {
		err = r.Err
	}
	return err
}

// Export and import: only of one's own (another user's is not found), only
// while detached (refused naming the VM), never alongside an attach, a
// removal or another export or import; a failed import keeps the old tree.
func TestWorkspacesExportImport(t *testing.T) {
	fb := &fakeBuild{}
	h := startWorkspaces(t, t.TempDir(), fb)
	w, err := h.create(t, wsAlice, "proj", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := h.export(t, wsAlice, "proj"); err != nil || got != "v1" {
		t.Fatalf("export: %q, %v", got, err)
	}
	for _, ref := range []string{"proj", w.ID} {
		if _, err := h.export(t, wsBob, ref); !errors.Is(err, ErrWorkspaceNotFound) {
			t.Fatalf("bob's export of alice's %s: %v", ref, err)
		}
		if _, err := h.importTree(t, wsBob, ref, "bob's"); !errors.Is(err, ErrWorkspaceNotFound) {
			t.Fatalf("bob's import into alice's %s: %v", ref, err)
		}
	}
	if got, err := h.importTree(t, wsAlice, "proj", "v2"); err != nil || got.Source != "tar:new" || got.ID != w.ID {
		t.Fatalf("import: %+v, %v", got, err)
	}
	if got, err := h.export(t, wsAlice, "proj"); err != nil || got != "v2" {
		t.Fatalf("export after the import: %q, %v", got, err)
	}

	// Attached: both refused naming the VM.
	if err := h.attachTo(t, "vm1", w.ID, wsAlice.UID); err != nil {
		t.Fatal(err)
	}
	if _, err := h.export(t, wsAlice, "proj"); !errors.Is(err, ErrInvalidState) || !strings.Contains(err.Error(), "attached to VM vm1: stop it") {
		t.Fatalf("export while attached: %v", err)
	}
	if _, err := h.importTree(t, wsAlice, "proj", "v3"); !errors.Is(err, ErrInvalidState) || !strings.Contains(err.Error(), "attached to VM vm1") {
		t.Fatalf("import while attached: %v", err)
	}
	if _, err := request[*AttachResult](context.Background(), h.sys.sys.Root, h.sys.Workspaces, &DetachWorkspaces{VMID: "id-vm1"}); err != nil {
		t.Fatal(err)
	}

	// While an export runs: no attach, removal or import.
	fb.exportGate, fb.exportStarted = make(chan struct{}), make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var b bufCloser
		_, err := h.sys.ExportWorkspace(ctx, ExportWorkspace{Caller: wsAlice, Ref: "proj", Out: &b})
		done <- err
	}()
	select {
	case <-fb.exportStarted:
	case err := <-done:
		t.Fatalf("export ended early: %v", err)
	}
	if err := h.attachTo(t, "vm2", w.ID, wsAlice.UID); err == nil || !strings.Contains(err.Error(), "being exported") {
		t.Fatalf("attach during an export: %v", err)
	}
	if _, err := h.do(t, &RemoveWorkspace{Caller: wsAlice, Ref: "proj"}); !errors.Is(err, ErrInvalidState) || !strings.Contains(err.Error(), "being exported") {
		t.Fatalf("rm during an export: %v", err)
	}
	if _, err := h.importTree(t, wsAlice, "proj", "v3"); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("import during an export: %v", err)
	}
	close(fb.exportGate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	fb.exportStarted = nil
	if err := h.attachTo(t, "vm2", w.ID, wsAlice.UID); err != nil {
		t.Fatalf("attach after the export: %v", err)
	}
	if _, err := request[*AttachResult](context.Background(), h.sys.sys.Root, h.sys.Workspaces, &DetachWorkspaces{VMID: "id-vm2"}); err != nil {
		t.Fatal(err)
	}

	// A failed import keeps the old tree and frees the workspace.
	fb.fail = errors.New("bad entry")
	if _, err := h.importTree(t, wsAlice, "proj", "v4"); err == nil || !strings.Contains(err.Error(), "bad entry") {
		t.Fatalf("failing import: %v", err)
	}
	fb.fail = nil
	if got, err := h.export(t, wsAlice, "proj"); err != nil || got != "v2" {
		t.Fatalf("export after a failed import: %q, %v", got, err)
	}
}

func (h *wsHarness) push(t *testing.T, c Caller, ref, content string) (*WorkspaceInfo, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := &trackedReader{Reader: strings.NewReader(content)}
	w, err := h.sys.PushWorkspace(ctx, PushWorkspace{Caller: c, Ref: ref, Path: "sub", Name: "n", Tar: r})
	if !r.closed {
		t.Errorf("push into %s: stream not closed", ref)
	}
	return w, err
}

// A push into a workspace no VM holds: the tree as it is and the pushed
// one make a new top, named by the record only when complete; another
// user's is not found, an attached one refused naming the VM (the push
// goes through its guest), a failed push keeps the old tree and leaves no
// stray top, a snapshot taken before stays as it was.
func TestWorkspacesPushDetached(t *testing.T) {
	fb := &fakeBuild{}
	h := startWorkspaces(t, t.TempDir(), fb)
	w, err := h.create(t, wsAlice, "proj", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.do(t, &SnapshotWorkspace{Caller: wsAlice, Ref: "proj", Snapshot: "s1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.push(t, wsBob, "proj", "bob's"); !errors.Is(err, ErrWorkspaceNotFound) {
		t.Fatalf("bob's push into alice's workspace: %v", err)
	}
	if got, err := h.push(t, wsAlice, "proj", "p1"); err != nil || got.ID != w.ID {
		t.Fatalf("push: %+v, %v", got, err)
	}
	if got, err := h.export(t, wsAlice, "proj"); err != nil || got != "v1+sub/n:p1" {
		t.Fatalf("export after the push: %q, %v", got, err)
	}
	fb.fail = errors.New("refused entry")
	if _, err := h.push(t, wsAlice, "proj", "p2"); err == nil || !strings.Contains(err.Error(), "refused entry") {
		t.Fatalf("failing push: %v", err)
	}
	fb.fail = nil
	if got, err := h.export(t, wsAlice, "proj"); err != nil || got != "v1+sub/n:p1" {
		t.Fatalf("export after a failed push: %q, %v", got, err)
	}
	entries, err := os.ReadDir(h.store.Dir(w.ID))
	if err != nil {
		t.Fatal(err)
	}
	var tops []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "top-") {
			tops = append(tops, e.Name())
		}
	}
	if len(tops) != 1 {
		t.Fatalf("tops after a failed push: %v (want the one the record names)", tops)
	}
	if _, err := h.do(t, &RestoreWorkspace{Caller: wsAlice, Ref: "proj", Snapshot: "s1"}); err != nil {
		t.Fatal(err)
	}
	if got, err := h.export(t, wsAlice, "proj"); err != nil || got != "v1" {
		t.Fatalf("export after restoring the snapshot taken before the push: %q, %v", got, err)
	}
	if err := h.attachTo(t, "vm1", w.ID, wsAlice.UID); err != nil {
		t.Fatal(err)
	}
	if _, err := h.push(t, wsAlice, "proj", "p3"); !errors.Is(err, ErrInvalidState) || !strings.Contains(err.Error(), "attached to VM vm1") {
		t.Fatalf("offline push while attached: %v", err)
	}
}

// workspaceDirs are the entries of the store but its (shared) layers
// directory.
func workspaceDirs(s *state.WorkspaceStore) ([]os.DirEntry, error) {
	es, err := os.ReadDir(s.Root)
	return slices.DeleteFunc(es, func(e os.DirEntry) bool { return e.Name() == state.LayersDir }), err
}
