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
