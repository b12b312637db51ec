package actors

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/state"
)

// startTemplates is a tree over the fakes with the Templates actor wired
// as the daemon wires it: parts are a file the test can change, the
// flatten a copy.
func startTemplates(t *testing.T, dir string) (*harness, string) {
	t.Helper()
	imagetest.Seed(t, dir, "alpine")
	host, fk := fakeHost(t, dir)
	store, err := state.NewTemplateStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	host.Template = TemplateBootFrom(store)
	part := filepath.Join(dir, "kit-part")
	if _, err := os.Stat(part); err != nil {
		if err := os.WriteFile(part, []byte("kernel"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h := &harness{dir: dir, fk: fk}
	startTree(t, h, func(d *Deps, imgs *imaging.Store) {
		d.Importer = &imaging.Importer{Store: imgs}
		d.Host = host
		d.OnCounts = func(c api.Counts) {}
		d.Templates = TemplateDeps{Store: store,
			Parts: func(string) ([]state.FileID, error) {
				id, err := state.StatFileID(part)
				return []state.FileID{id}, err
			},
			Flatten: func(_ context.Context, path, _, out string) error {
				return os.WriteFile(out, []byte("frozen "+filepath.Base(path)), 0o600)
			}}
	})
	return h, part
}

func (h *harness) tmpl(t *testing.T, msg any) (*TemplateResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return h.sys.TemplateRequest(ctx, msg)
}

// A template is made by booting a builder VM, saving it and freezing its
// disk; the builder goes. A VM made from it resumes the saved state on its
// own layer over the frozen disk, and its guest takes its own identity
// before it runs. A damaged state is refused before any VMM starts; a
// template whose parts changed is refused, then swept at the next start;
// another user's is not found.
func TestTemplateCreateAndResume(t *testing.T) {
	var mu sync.Mutex
	reached := map[string]bool{}
	failpointHook = func(name string) { mu.Lock(); reached[name] = true; mu.Unlock() }
	t.Cleanup(func() { failpointHook = nil })
	dir := t.TempDir()
	h, part := startTemplates(t, dir)
	alice := Caller{UID: 1001}
	r, err := h.tmpl(t, &CreateTemplate{Caller: alice, Name: "t1", Image: "alpine"})
	if err != nil {
		t.Fatal(err)
	}
	tp := r.Template
	if tp.Status != state.TemplateReady || tp.StateSize == 0 || len(tp.StateSHA256) != 64 || len(tp.Parts) != 1 {
		t.Fatalf("template %+v", tp)
	}
	// The builder's RAM was in a file from boot, moved beside the state.
	var builderMem string
	for _, c := range h.fk.vmm.Calls() {
		if c.Op == "Start" && c.Incoming == "" {
			builderMem = c.MemoryFile
		}
	}
	memPath := vmm.MemPath(filepath.Join(dir, state.TemplatesDir, tp.ID, state.TemplateState))
	if mem, err := os.ReadFile(memPath); builderMem == "" || err != nil || tp.MemorySize != int64(len(mem)) || len(tp.MemorySHA256) != 64 {
		t.Fatalf("the builder's memory file %q, the template's %s: %q %v (template %+v)", builderMem, memPath, mem, err, tp)
	}
	vms, err := h.do(t, &ListVMs{Caller: admin})
	if err != nil || len(vms.VMs) != 0 {
		t.Fatalf("builder left: %+v %v", vms, err)
	}
	if _, err := h.tmpl(t, &CreateTemplate{Caller: alice, Name: "t1", Image: "alpine"}); !errors.Is(err, ErrNameInUse) {
		t.Fatalf("second t1: %v", err)
	}
	if _, err := h.tmpl(t, &GetTemplate{Caller: Caller{UID: 1002}, Ref: "t1"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("bob's lookup of alice's template: %v", err)
	}
	// Names are per owner: bob's t1 is his; an admin must then give an id.
	bobs, err := h.tmpl(t, &CreateTemplate{Caller: Caller{UID: 1002}, Name: "t1", Image: "alpine"})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := h.tmpl(t, &GetTemplate{Caller: Caller{UID: 1002}, Ref: "t1"}); err != nil || r.Template.ID != bobs.Template.ID {
		t.Fatalf("bob's own t1: %+v %v", r, err)
	}
	if _, err := h.tmpl(t, &GetTemplate{Caller: admin, Ref: "t1"}); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "give its id") {
		t.Fatalf("admin's lookup of a name two users have: %v", err)
	}
	if r, err := h.tmpl(t, &GetTemplate{Caller: admin, Ref: tp.ID}); err != nil || r.Template.ID != tp.ID {
		t.Fatalf("admin's lookup by id: %+v %v", r, err)
	}

	c1, err := h.do(t, &CreateVM{Caller: alice, Name: "c1", Image: tp.ImageDigest, Template: tp.ID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.do(t, &StartVM{Caller: alice, Ref: "c1"}); err != nil {
		t.Fatal(err)
	}
	statePath := filepath.Join(dir, state.TemplatesDir, tp.ID, state.TemplateState)
	var resumed bool
	for _, c := range h.fk.vmm.Calls() {
		if c.Op == "Start" && c.VMID == c1.VM.ID {
			resumed = c.Incoming == statePath
		}
	}
	if !resumed {
		t.Fatalf("c1's VMM did not resume %s: %+v", statePath, h.fk.vmm.Calls())
	}
	if !strings.Contains(strings.Join(h.fk.disk.Calls(), "\n"), "base="+filepath.Join(dir, state.TemplatesDir, tp.ID, state.TemplateDisk)) {
		t.Fatalf("c1's disk is not a layer over the frozen disk: %v", h.fk.disk.Calls())
	}
	h.fk.mu.Lock()
	ids := append([]agent.IdentityRequest(nil), h.fk.identities...)
	h.fk.mu.Unlock()
	if len(ids) != 1 || ids[0].Hostname != "c1" || len(ids[0].Seed) != identitySeedBytes || ids[0].TimeNS == 0 || ids[0].MAC == "" || len(ids[0].IPs) != 1 {
		t.Fatalf("identity taken: %+v", ids)
	}

	got, err := h.do(t, &GetVM{Caller: alice, Ref: "c1"})
	if err != nil || got.VM.LastBoot == nil || got.VM.LastBoot.Resumed != "t1" {
		t.Fatalf("c1's boot report does not say it resumed t1: %+v %v", got, err)
	}
	var steps []string
	for _, p := range got.VM.LastBoot.Steps {
		steps = append(steps, p.Name)
	}
	if !slices.Contains(steps, "agent") || !slices.Contains(steps, "identity") {
		t.Fatalf("c1's start steps %v: want the agent step split into agent and identity", steps)
	}
	for _, p := range got.VM.LastBoot.Guest {
		if !strings.HasPrefix(p.Name, "identity_") {
			t.Fatalf("c1's guest phases %+v: a resume's are its identity step's only", got.VM.LastBoot.Guest)
		}
	}

	mu.Lock()
	for _, fp := range TemplateFailpoints {
		if !reached[fp] {
			t.Errorf("crash point %s is never reached", fp)
		}
	}
	mu.Unlock()

	// A damaged memory file, then a damaged state: refused, no VMM
	// started for either.
	for i, c := range []struct{ path, want string }{
		{memPath, "saved memory is damaged"},
		{statePath, "saved state is damaged"},
	} {
		good, err := os.ReadFile(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(c.path, []byte("torn"), 0o600); err != nil {
			t.Fatal(err)
		}
		cn, err := h.do(t, &CreateVM{Caller: alice, Name: fmt.Sprintf("c%d", i+2), Image: tp.ImageDigest, Template: tp.ID})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.do(t, &StartVM{Caller: alice, Ref: cn.VM.ID}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("start from a damaged %s: %v", c.path, err)
		}
		for _, call := range h.fk.vmm.Calls() {
			if call.Op == "Start" && call.VMID == cn.VM.ID {
				t.Fatalf("a VMM was started on a damaged %s", c.path)
			}
		}
		if c.path == memPath {
			if err := os.WriteFile(c.path, good, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}

	// Stale parts: refused by name; swept when the tree starts again.
	future := time.Now().Add(time.Hour)
	if err := os.Chtimes(part, future, future); err != nil {
		t.Fatal(err)
	}
	if _, err := h.tmpl(t, &GetTemplate{Caller: alice, Ref: "t1"}); err == nil || !strings.Contains(err.Error(), "stale") {
		t.Fatalf("lookup of a stale template: %v", err)
	}
	h.sys.Shutdown()
	h2, _ := startTemplates(t, dir)
	if r, err := h2.tmpl(t, &ListTemplates{Caller: alice}); err != nil || len(r.Templates) != 0 {
		t.Fatalf("stale template kept: %+v %v", r, err)
	}
	if _, err := os.Stat(filepath.Join(dir, state.TemplatesDir, tp.ID)); !os.IsNotExist(err) {
		t.Fatalf("stale template's files: %v", err)
	}
}

// A creation that fails leaves nothing: no template, no builder VM.
func TestTemplateCreateFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	h, _ := startTemplates(t, dir)
	h.fk.vmm.Err["Save"] = errors.New("migration refused")
	_, err := h.tmpl(t, &CreateTemplate{Caller: admin, Name: "t1", Image: "alpine"})
	if err == nil || !strings.Contains(err.Error(), "migration refused") {
		t.Fatalf("got %v", err)
	}
	vms, err := h.do(t, &ListVMs{Caller: admin})
	if err != nil || len(vms.VMs) != 0 {
		t.Fatalf("builder left: %+v %v", vms, err)
	}
	es, _ := os.ReadDir(filepath.Join(dir, state.TemplatesDir))
	if len(es) != 0 {
		t.Fatalf("template files left: %v", es)
	}
	if r, _ := h.tmpl(t, &ListTemplates{Caller: admin}); len(r.Templates) != 0 {
		t.Fatalf("templates: %+v", r.Templates)
	}
}

// A template uses its image like a VM does: removing the image is refused
// naming it, a forced removal takes the caller's templates with it (and
// nobody else's), and a prune keeps an image a template uses.
func TestTemplatesGoWithTheirImage(t *testing.T) {
	dir := t.TempDir()
	h, _ := startTemplates(t, dir)
	imgs, err := imaging.OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	alice, bob := Caller{UID: 1001}, Caller{UID: 1002}
	pub, err := imgs.Resolve(imaging.Viewer{Admin: true}, "alpine")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []Caller{alice, bob} {
		if err := imgs.Hold(imaging.UserNamespace(c.UID), pub.Digest, []string{"mine"}); err != nil {
			t.Fatal(err)
		}
	}
	ta, err := h.tmpl(t, &CreateTemplate{Caller: alice, Name: "ta", Image: "mine"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.tmpl(t, &CreateTemplate{Caller: bob, Name: "tb", Image: "mine"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	images := func(msg any) (*ImageResult, error) { return h.sys.Images(ctx, msg) }

	if r, err := images(&PruneImages{Caller: alice}); err != nil || len(r.Removed) != 0 {
		t.Fatalf("prune with a template of the image: %+v %v", r, err)
	}
	_, err = images(&RemoveImage{Caller: alice, Ref: "mine"})
	if !errors.Is(err, ErrImageInUse) || !strings.Contains(err.Error(), "1 template(s): template ta") || strings.Contains(err.Error(), "tb") {
		t.Fatalf("removal of an image a template uses: %v", err)
	}
	if users, err := h.sys.ImageUsers(ctx, alice, pub.Digest); err != nil || len(users) != 1 || users[0] != "template ta" {
		t.Fatalf("image users for alice: %q %v", users, err)
	}
	if _, err := images(&RemoveImage{Caller: alice, Ref: "mine", Force: true}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		who  Caller
		want int
	}{{alice, 0}, {bob, 1}} {
		r, err := h.tmpl(t, &ListTemplates{Caller: c.who})
		if err != nil || len(r.Templates) != c.want {
			t.Fatalf("uid %d's templates after alice's forced removal: %+v %v (want %d)", c.who.UID, r, err, c.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, state.TemplatesDir, ta.Template.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("alice's template files: %v", err)
	}
	taState := filepath.Join(dir, state.TemplatesDir, ta.Template.ID, state.TemplateState)
	verifiedStates.mu.Lock()
	_, cached := verifiedStates.ok[taState]
	_, memCached := verifiedStates.ok[vmm.MemPath(taState)]
	verifiedStates.mu.Unlock()
	if cached || memCached {
		t.Fatalf("a removed template's state is still in the verified-state cache")
	}
}

// After a start, the saved states are checked in the background: the
// first resume finds them hashed. A damaged one is kept (and refused when
// used), the others checked all the same.
func TestTemplatesCheckedAfterStart(t *testing.T) {
	dir := t.TempDir()
	h, _ := startTemplates(t, dir)
	alice := Caller{UID: 1001}
	var paths []string
	for _, name := range []string{"good", "torn"} {
		r, err := h.tmpl(t, &CreateTemplate{Caller: alice, Name: name, Image: "alpine"})
		if err != nil {
			t.Fatal(err)
		}
		st := filepath.Join(dir, state.TemplatesDir, r.Template.ID, state.TemplateState)
		paths = append(paths, st, vmm.MemPath(st))
	}
	h.sys.Shutdown()
	// A new daemon: nothing verified yet; one template's memory torn.
	for _, p := range paths {
		verifiedStates.forget(p)
	}
	if err := os.WriteFile(paths[3], []byte("torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	h2, _ := startTemplates(t, dir)
	cached := func(p string) bool {
		verifiedStates.mu.Lock()
		defer verifiedStates.mu.Unlock()
		_, ok := verifiedStates.ok[p]
		return ok
	}
	deadline := time.Now().Add(10 * time.Second)
	for !(cached(paths[0]) && cached(paths[1]) && cached(paths[2])) {
		if time.Now().After(deadline) {
			t.Fatalf("the saved states were not checked after the start: %v %v %v", cached(paths[0]), cached(paths[1]), cached(paths[2]))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if cached(paths[3]) {
		t.Fatal("a torn memory file counts as verified")
	}
	if r, err := h2.tmpl(t, &ListTemplates{Caller: alice}); err != nil || len(r.Templates) != 2 {
		t.Fatalf("templates after the check: %+v %v (the damaged one is kept, refused when used)", r, err)
	}
}

// The sweep of creations a crash cut short removes their builder VMs, by
// id once recorded, else by name only when that VM was booted for a
// template: the owner's own VM that has the builder's name stays.
func TestTemplateSweepSparesOwnersVM(t *testing.T) {
	dir := t.TempDir()
	h, _ := startTemplates(t, dir)
	alice := Caller{UID: 1001}
	own, err := h.do(t, &CreateVM{Caller: alice, Name: "template-aaaaaaaaaaaa", Image: "alpine"})
	if err != nil {
		t.Fatal(err)
	}
	byName, err := h.do(t, &CreateVM{Caller: alice, Name: "template-bbbbbbbbbbbb", Image: "alpine", TemplateBoot: true})
	if err != nil {
		t.Fatal(err)
	}
	byID, err := h.do(t, &CreateVM{Caller: alice, Name: "renamed-builder", Image: "alpine", TemplateBoot: true})
	if err != nil {
		t.Fatal(err)
	}
	h.sys.Shutdown()
	store, err := state.NewTemplateStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tp := range []*state.Template{
		{ID: state.NewID(), Name: "a", Builder: "template-aaaaaaaaaaaa"},
		{ID: state.NewID(), Name: "b", Builder: "template-bbbbbbbbbbbb"},
		{ID: state.NewID(), Name: "c", Builder: "template-cccccccccccc", BuilderID: byID.VM.ID},
	} {
		tp.OwnerUID, tp.Status = alice.UID, state.TemplateCreating
		if err := store.Begin(tp); err != nil {
			t.Fatal(err)
		}
	}
	h2, _ := startTemplates(t, dir)
	want := map[string]bool{own.VM.ID: true, byName.VM.ID: false, byID.VM.ID: false}
	var left map[string]bool
	for range 100 { // the sweep runs off the mailbox after start-up
		vms, err := h2.do(t, &ListVMs{Caller: alice})
		if err != nil {
			t.Fatal(err)
		}
		left = map[string]bool{own.VM.ID: false, byName.VM.ID: false, byID.VM.ID: false}
		for _, vm := range vms.VMs {
			left[vm.ID] = true
		}
		es, _ := os.ReadDir(filepath.Join(dir, state.TemplatesDir))
		if maps.Equal(left, want) && len(es) == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("after the sweep, VMs present %v, want %v", left, want)
}
