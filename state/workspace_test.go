package state

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// An import cut short leaves a partial volume beside a ready one: start-up
// sweeps it and keeps the workspace and its volume.
func TestWorkspaceLoadAllSweepsPartialImport(t *testing.T) {
	s, ws := readyWorkspace(t)
	vol := s.Volume(ws.ID)
	if err := os.WriteFile(vol, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	partial := filepath.Join(filepath.Dir(vol), "."+filepath.Base(vol)+".partial-123")
	if err := os.WriteFile(partial, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	ready, swept, corrupt, err := s.LoadAll()
	if err != nil || len(ready) != 1 || len(corrupt) != 0 || len(swept) != 1 || !strings.Contains(swept[0], ws.ID) {
		t.Fatalf("ready %v swept %v corrupt %v err %v", ready, swept, corrupt, err)
	}
	if _, err := os.Stat(partial); !os.IsNotExist(err) {
		t.Fatalf("partial volume: %v", err)
	}
	if b, err := os.ReadFile(vol); err != nil || string(b) != "old" {
		t.Fatalf("volume: %q %v", b, err)
	}
}

// Frozen layers stay while a record names them (as a snapshot's chain or
// its top's backing) and go when none does; a layer frozen by a snapshot
// a crash cut short, and the new top it made, are swept, the old top
// kept; an unreadable record keeps every layer (its own are unknown).
func TestWorkspaceLoadAllSweepsLayers(t *testing.T) {
	s, ws := readyWorkspace(t)
	if err := os.WriteFile(s.TopPath(ws), []byte("top"), 0o600); err != nil {
		t.Fatal(err)
	}
	snap, err := s.Freeze(ws)
	if err != nil {
		t.Fatal(err)
	}
	backing, err := s.Freeze(ws)
	if err != nil {
		t.Fatal(err)
	}
	ws.Top, ws.Backing = "top-1.qcow2", []string{backing}
	ws.Snapshots = []Snapshot{{Name: "s1", Layers: []string{snap}, Size: ws.Size}}
	if err := os.WriteFile(s.TopPath(ws), []byte("new top"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(ws); err != nil {
		t.Fatal(err)
	}
	// A snapshot cut short: a frozen layer and a new top nobody names.
	cut, err := s.Freeze(ws)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir(ws.ID), "top-2.qcow2"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ready, swept, corrupt, err := s.LoadAll()
	if err != nil || len(ready) != 1 || len(corrupt) != 0 {
		t.Fatalf("ready %v corrupt %v err %v", ready, corrupt, err)
	}
	t.Logf("swept %v", swept)
	for _, f := range []string{s.Layer(cut), filepath.Join(s.Dir(ws.ID), "top-2.qcow2"), s.Volume(ws.ID)} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s not swept: %v", f, err)
		}
	}
	for _, f := range []string{s.Layer(snap), s.Layer(backing), s.TopPath(ws)} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("%s swept: %v", f, err)
		}
	}

	// An unreadable record: nothing is swept from the layers.
	bad := NewID()
	if err := os.Mkdir(s.Dir(bad), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir(bad), "meta.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ws.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, corrupt, err := s.LoadAll(); err != nil || len(corrupt) != 1 {
		t.Fatalf("corrupt %v err %v", corrupt, err)
	}
	if _, err := os.Stat(s.Layer(snap)); err != nil {
		t.Fatalf("a layer went although an unreadable record may name it: %v", err)
	}
	if err := os.RemoveAll(s.Dir(bad)); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := s.LoadAll(); err != nil {
		t.Fatal(err)
	}
	if es, _ := os.ReadDir(s.Layer("")); len(es) != 0 {
		t.Fatalf("layers left with no record: %d", len(es))
	}
}

// readyWorkspace is a store with one ready workspace record (no volume).
func readyWorkspace(t *testing.T) (*WorkspaceStore, *Workspace) {
	t.Helper()
	s, err := NewWorkspaceStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ws := &Workspace{ID: NewID(), Name: "proj", OwnerUID: 1000, Status: WorkspaceCreating, Size: 64 << 20, CreatedAt: time.Now().UTC()}
	if err := s.Begin(ws); err != nil {
		t.Fatal(err)
	}
	ws.Status = WorkspaceReady
	if err := s.Save(ws); err != nil {
		t.Fatal(err)
	}
	return s, ws
}

// A reload while layer work is in flight (LoadAllExcept, a restart of the
// Workspaces actor) leaves the busy workspaces' files alone — a new top no
// record names yet, a clone's "creating" record, which is loaded as it
// is — and sweeps no layer; what is not busy is swept as at start-up.
func TestWorkspaceLoadAllExceptBusy(t *testing.T) {
	s, ws := readyWorkspace(t)
	if err := os.WriteFile(s.TopPath(ws), []byte("top"), 0o600); err != nil {
		t.Fatal(err)
	}
	layer, err := s.Freeze(ws) // the work's frozen layer, named by no record yet
	if err != nil {
		t.Fatal(err)
	}
	newTop := filepath.Join(s.Dir(ws.ID), "top-1.qcow2")
	if err := os.WriteFile(newTop, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	clone := &Workspace{ID: NewID(), Name: "copy", OwnerUID: 1000, Status: WorkspaceCreating, Size: ws.Size, Backing: []string{layer}}
	if err := s.Begin(clone); err != nil {
		t.Fatal(err)
	}
	cut := &Workspace{ID: NewID(), Name: "cut", OwnerUID: 1000, Status: WorkspaceCreating, Size: ws.Size}
	if err := s.Begin(cut); err != nil {
		t.Fatal(err)
	}
	notYet := NewID() // busy, its record not written yet
	ready, swept, corrupt, err := s.LoadAllExcept(map[string]bool{ws.ID: true, clone.ID: true, notYet: true})
	if err != nil || len(corrupt) != 0 || len(ready) != 2 || len(swept) != 1 || swept[0] != cut.ID {
		t.Fatalf("ready %v swept %v corrupt %v err %v", ready, swept, corrupt, err)
	}
	for _, p := range []string{newTop, s.Layer(layer), s.Dir(clone.ID)} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("in-flight work's %s: %v", filepath.Base(p), err)
		}
	}
	// Once the work is over, the same files are swept.
	if _, swept, _, err := s.LoadAll(); err != nil || len(swept) != 3 {
		t.Fatalf("after the work: swept %v %v", swept, err)
	}
}
