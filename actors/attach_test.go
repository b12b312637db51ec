package actors

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/config"
	"github.com/paddock-vm/paddock/guestboot"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/state"
)

// attachEnv is a tree over the fakes with the Workspaces actor configured
// and one workspace "proj" of admin's.
type attachEnv struct {
	*harness
	host  *Host
	wsDir string
	ws    *WorkspaceInfo

	mu    sync.Mutex
	specs map[string]vmm.Spec // the last VMM spec of each VM
}

func newAttachEnv(t *testing.T) *attachEnv {
	t.Helper()
	dir := t.TempDir()
	imagetest.Seed(t, dir, "alpine")
	host, fk := fakeHost(t, dir)
	e := &attachEnv{host: host, wsDir: dir, specs: map[string]vmm.Spec{}}
	fk.vmm.SetStartHook(func(_ context.Context, s vmm.Spec) error {
		e.mu.Lock()
		e.specs[s.VMID] = s
		e.mu.Unlock()
		return nil
	})
	e.harness = &harness{dir: dir, fk: fk}
	e.startTree(t)
	var err error
	e.ws, err = e.sys.CreateWorkspace(context.Background(), CreateWorkspace{Caller: admin, Name: "proj", Size: 64 << 20, UID: 1000, GID: 1001})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// startTree starts (again: a daemon restart) the tree over the same host,
// fakes and state.
func (e *attachEnv) startTree(t *testing.T) {
	t.Helper()
	wss, err := state.NewWorkspaceStore(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	fb := &fakeBuild{}
	startTree(t, e.harness, func(d *Deps, _ *imaging.Store) {
		d.Host = e.host
		d.Defaults = func() config.Defaults { return config.Default().Defaults }
		d.Workspaces = WorkspaceDeps{Store: wss, Build: fb.build}
	})
}

// create makes VM name attaching proj (read-only when ro).
func (e *attachEnv) create(t *testing.T, name string, ro bool) {
	t.Helper()
	ms, err := e.sys.ResolveWorkspaces(context.Background(), admin, []WorkspaceRef{{Workspace: "proj", ReadOnly: ro}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.do(t, &CreateVM{Caller: admin, Name: name, Image: "alpine", RunChange: RunChange{Workspaces: &ms}}); err != nil {
		t.Fatal(err)
	}
}

func (e *attachEnv) startVM(t *testing.T, name string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := e.sys.Request(ctx, &StartVM{Caller: admin, Ref: name})
	return err
}

func (e *attachEnv) vm(t *testing.T, name string) state.VM {
	t.Helper()
	r, err := e.do(t, &GetVM{Caller: admin, Ref: name})
	if err != nil {
		t.Fatal(err)
	}
	return *r.VM
}

func (e *attachEnv) holders(t *testing.T) string {
	t.Helper()
	r, err := e.sys.WorkspaceRequest(context.Background(), &GetWorkspace{Caller: admin, Ref: "proj"})
	if err != nil {
		t.Fatal(err)
	}
	var hs []string
	for _, h := range r.Workspace.Attached {
		s := h.VMName
		if h.ReadOnly {
			s += ":ro"
		}
		hs = append(hs, s)
	}
	return strings.Join(hs, ",")
}

// A VM's workspace is attached after its disk and before its VMM: the
// volume is the VMM's third disk, the seed tells the agent where to mount
// it and as whom to run; the claim is visible on the workspace, refuses a
// second read-write holder and a removal naming the VM, and goes with the
// stop.
func TestWorkspaceAttach(t *testing.T) {
	e := newAttachEnv(t)
	e.create(t, "a", false)
	e.create(t, "b", false)
	e.create(t, "c", true)
	if err := e.startVM(t, "a"); err != nil {
		t.Fatal(err)
	}
	a := e.vm(t, "a")
	e.mu.Lock()
	spec := e.specs[a.ID]
	e.mu.Unlock()
	vol := e.ws.ID + "/volume.ext4"
	if len(spec.Disks) != 3 || !strings.HasSuffix(spec.Disks[2].Path, vol) || spec.Disks[2].ReadOnly {
		t.Fatalf("VMM disks %+v, want the volume read-write third", spec.Disks)
	}
	raw, err := os.ReadFile(spec.Disks[1].Path)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := guestboot.ReadSeed(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Config struct {
			Mounts []guestboot.Mount `json:"PaddockMounts"`
		} `json:"config"`
	}
	if err := json.Unmarshal(cfg, &doc); err != nil {
		t.Fatal(err)
	}
	want := []guestboot.Mount{{Device: "/dev/vdc", Path: "/workspace", UID: 1000, GID: 1001}}
	if len(doc.Config.Mounts) != 1 || doc.Config.Mounts[0] != want[0] {
		t.Fatalf("seed mounts %+v, want %+v (seed %s)", doc.Config.Mounts, want, cfg)
	}
	if rt := a.Runtime.Workspaces; rt == nil || len(rt.Items) != 1 || rt.Items[0].Device != "/dev/vdc" || rt.Items[0].ID != e.ws.ID {
		t.Fatalf("runtime mirror %+v", rt)
	}
	if h := e.holders(t); h != "a" {
		t.Fatalf("holders %q, want a", h)
	}

	// A second read-write attach, and a read-only one while a holds it
	// read-write: refused naming a; the refused VMs hold nothing.
	for _, name := range []string{"b", "c"} {
		err := e.startVM(t, name)
		if err == nil || !strings.Contains(err.Error(), "attached read-write to VM a") {
			t.Fatalf("start %s: %v, want a refusal naming VM a", name, err)
		}
		if vm := e.vm(t, name); vm.Status != state.StatusError || vm.Runtime.VMM != nil {
			t.Fatalf("%s after the refusal: %s %+v", name, vm.Status, vm.Runtime)
		}
	}
	if h := e.holders(t); h != "a" {
		t.Fatalf("holders after the refusals %q, want a", h)
	}
	var we *Error
	if _, err := e.sys.WorkspaceRequest(context.Background(), &RemoveWorkspace{Caller: admin, Ref: "proj"}); !errors.As(err, &we) || !strings.Contains(err.Error(), "attached to VM a") {
		t.Fatalf("rm while attached: %v", err)
	}

	if _, err := e.do(t, &StopVM{Caller: admin, Ref: "a"}); err != nil {
		t.Fatal(err)
	}
	if h := e.holders(t); h != "" {
		t.Fatalf("holders after the stop %q", h)
	}
	if vm := e.vm(t, "a"); vm.Runtime.Workspaces != nil {
		t.Fatalf("runtime mirror after the stop %+v", vm.Runtime.Workspaces)
	}
	// Read-only: then a read-write attach is refused naming the reader.
	if err := e.startVM(t, "c"); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	spec = e.specs[e.vm(t, "c").ID]
	e.mu.Unlock()
	if len(spec.Disks) != 3 || !spec.Disks[2].ReadOnly {
		t.Fatalf("read-only attach: VMM disks %+v", spec.Disks)
	}
	if err := e.startVM(t, "b"); err == nil || !strings.Contains(err.Error(), "attached read-only to VM c") {
		t.Fatalf("rw start while c reads: %v", err)
	}
	// A restart of the daemon: the running reader claims its workspace again.
	e.sys.Shutdown()
	e.startTree(t)
	if h := e.holders(t); h != "c:ro" {
		t.Fatalf("holders after a daemon restart %q, want c:ro", h)
	}
	if err := e.startVM(t, "b"); err == nil || !strings.Contains(err.Error(), "VM c") {
		t.Fatalf("rw start after the restart: %v", err)
	}
	// A panic restarts the Workspaces actor: the claims stay.
	e.sys.sys.Root.Send(e.sys.Workspaces, &crashWorkspaces{})
	if h := e.holders(t); h != "c:ro" {
		t.Fatalf("holders after a panic of the workspaces actor %q, want c:ro", h)
	}
	if _, err := e.do(t, &StopVM{Caller: admin, Ref: "c"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.sys.WorkspaceRequest(context.Background(), &RemoveWorkspace{Caller: admin, Ref: "proj"}); err != nil {
		t.Fatalf("rm once detached: %v", err)
	}
	// A VM naming a removed workspace does not start, and says why.
	if err := e.startVM(t, "a"); err == nil || !strings.Contains(err.Error(), "no longer exists") {
		t.Fatalf("start naming a removed workspace: %v", err)
	}
}

// A boot that fails after the attach (the VMM does not start) releases the
// claim in its rollback.
func TestWorkspaceAttachRollback(t *testing.T) {
	e := newAttachEnv(t)
	e.create(t, "a", false)
	e.fk.vmm.SetStartHook(func(context.Context, vmm.Spec) error { return errors.New("no VMM today") })
	if err := e.startVM(t, "a"); err == nil || !strings.Contains(err.Error(), "no VMM today") {
		t.Fatalf("start: %v", err)
	}
	if h := e.holders(t); h != "" {
		t.Fatalf("holders after the rollback %q", h)
	}
	a := e.vm(t, "a")
	if a.Runtime.Workspaces != nil {
		t.Fatalf("runtime mirror after the rollback %+v", a.Runtime.Workspaces)
	}
	if hs, err := e.store.LoadHandles(a.ID); err != nil || len(hs.Items) != 0 {
		t.Fatalf("handles after the rollback %+v %v", hs, err)
	}
	e.fk.vmm.SetStartHook(nil)
	if err := e.startVM(t, "a"); err != nil {
		t.Fatal(err)
	}
}

// Only the caller's own workspaces can be named, an admin's included;
// a spec naming one twice, or two at one path, is refused.
func TestWorkspaceResolveAndSpec(t *testing.T) {
	e := newAttachEnv(t)
	if _, err := e.sys.ResolveWorkspaces(context.Background(), Caller{UID: 1001}, []WorkspaceRef{{Workspace: "proj"}}); !errors.Is(err, ErrWorkspaceNotFound) {
		t.Fatalf("another user's workspace: %v", err)
	}
	if _, err := e.sys.ResolveWorkspaces(context.Background(), Caller{UID: 1001}, []WorkspaceRef{{Workspace: e.ws.ID}}); !errors.Is(err, ErrWorkspaceNotFound) {
		t.Fatalf("another user's workspace by id: %v", err)
	}
	ms, err := e.sys.ResolveWorkspaces(context.Background(), admin, []WorkspaceRef{{Workspace: "proj"}, {Workspace: "proj", Path: "/src", ReadOnly: true}})
	if err != nil {
		t.Fatal(err)
	}
	if ms[0].Path != state.DefaultWorkspacePath || ms[0].ID != e.ws.ID || ms[1].Path != "/src" || !ms[1].ReadOnly {
		t.Fatalf("resolved %+v", ms)
	}
	if _, err := e.do(t, &CreateVM{Caller: admin, Name: "twice", Image: "alpine", RunChange: RunChange{Workspaces: &ms}}); err == nil || !strings.Contains(err.Error(), "named twice") {
		t.Fatalf("one workspace twice: %v", err)
	}
	for _, p := range []string{"/", "rel", "/proc/x", "/a/../b"} {
		bad := []state.WorkspaceMount{{ID: e.ws.ID, Name: "proj", Path: p}}
		if _, err := e.do(t, &CreateVM{Caller: admin, Name: "bad", Image: "alpine", RunChange: RunChange{Workspaces: &bad}}); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("path %q: %v", p, err)
		}
	}
	e.create(t, "a", false)
	if err := e.startVM(t, "a"); err != nil {
		t.Fatal(err)
	}
	none := []state.WorkspaceMount{}
	if _, err := e.do(t, &SetVM{Caller: admin, Ref: "a", RunChange: RunChange{Workspaces: &none}}); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("set workspaces while running: %v", err)
	}
	if _, err := e.do(t, &StopVM{Caller: admin, Ref: "a"}); err != nil {
		t.Fatal(err)
	}
	r, err := e.do(t, &SetVM{Caller: admin, Ref: "a", RunChange: RunChange{Reset: []string{"workspaces"}}})
	if err != nil || len(r.VM.Spec.Workspaces) != 0 {
		t.Fatalf("reset workspaces: %v %+v", err, r)
	}
}
