package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// WorkspaceStatus is where a workspace is in its life.
type WorkspaceStatus string

// The workspace states. A record is written "creating" before its volume
// is built (intent first) and "ready" once the volume is in place; a
// "creating" record found at start-up is a build a crash cut short, and is
// swept with whatever it left.
const (
	WorkspaceCreating WorkspaceStatus = "creating"
	WorkspaceReady    WorkspaceStatus = "ready"
)

// Workspace is the content of workspaces/<id>/meta.json.
type Workspace struct {
	Schema   int             `json:"schema"`
	ID       string          `json:"id"`
	Name     string          `json:"name"`
	OwnerUID uint32          `json:"owner_uid"`
	Status   WorkspaceStatus `json:"status"`
	Size     int64           `json:"size"` // bytes of the volume
	// UID and GID own every file of the volume (the guest's ids).
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
	// Source says what seeded it: "" (empty), "dir:PATH", "tar:PATH" or
	// "git:URL[#REF]", as the caller named it.
	Source    string    `json:"source,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// WorkspaceStore keeps workspaces under <state>/workspaces/<id>/: meta.json
// and volume.ext4. A removed workspace's directory is renamed to
// .deleted-<id> first (one atomic step), then deleted; start-up sweeps what
// a crash left of either.
type WorkspaceStore struct{ Root string }

// NewWorkspaceStore opens (and creates) <stateDir>/workspaces.
func NewWorkspaceStore(stateDir string) (*WorkspaceStore, error) {
	root := filepath.Join(stateDir, "workspaces")
	if err := MkdirPrivate(root); err != nil {
		return nil, err
	}
	return &WorkspaceStore{Root: root}, nil
}

// Dir is a workspace's directory.
func (s *WorkspaceStore) Dir(id string) string { return filepath.Join(s.Root, id) }

// Volume is a workspace's volume file.
func (s *WorkspaceStore) Volume(id string) string { return filepath.Join(s.Root, id, "volume.ext4") }

func (s *WorkspaceStore) meta(id string) string { return filepath.Join(s.Root, id, "meta.json") }

// Begin records the intent to create ws: its directory and a "creating"
// record, durable before anything is built.
func (s *WorkspaceStore) Begin(ws *Workspace) error {
	if !ValidID(ws.ID) {
		return fmt.Errorf("workspace id %q is not an id", ws.ID)
	}
	if err := os.Mkdir(s.Dir(ws.ID), Private); err != nil {
		return fmt.Errorf("create workspace %s: %w", ws.Name, err)
	}
	if err := SyncDir(s.Root); err != nil {
		return err
	}
	return s.Save(ws)
}

// Save writes ws's record atomically.
func (s *WorkspaceStore) Save(ws *Workspace) error {
	ws.Schema = SchemaVersion
	b, err := json.MarshalIndent(ws, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(s.meta(ws.ID), b, 0o600)
}

// Load reads one record.
func (s *WorkspaceStore) Load(id string) (*Workspace, error) {
	b, err := os.ReadFile(s.meta(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("workspace %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	var ws Workspace
	if err := json.Unmarshal(b, &ws); err != nil {
		return nil, fmt.Errorf("workspace %s: %w: %v", id, ErrCorrupt, err)
	}
	if ws.Schema > SchemaVersion {
		return nil, fmt.Errorf("workspace %s: %w: schema %d is newer than this paddockd's %d", id, ErrCorrupt, ws.Schema, SchemaVersion)
	}
	if ws.ID != id {
		return nil, fmt.Errorf("workspace %s: %w: the record says id %q", id, ErrCorrupt, ws.ID)
	}
	return &ws, nil
}

// Remove takes a workspace away: the rename to .deleted-<id> is the one
// step that decides, then the files go. A workspace already gone is done.
func (s *WorkspaceStore) Remove(id string) error {
	gone := filepath.Join(s.Root, ".deleted-"+id)
	if err := os.Rename(s.Dir(id), gone); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove workspace %s: %w", id, err)
	}
	if err := SyncDir(s.Root); err != nil {
		return err
	}
	return os.RemoveAll(gone)
}

// LoadAll loads every ready workspace and sweeps what crashes left: removals cut
// short (.deleted-*), builds cut short ("creating" records, directories
// without a record, partial volumes) and the partial volumes of imports cut
// short (the old volume stays). Corrupt records are kept on disk and
// reported, never fatal.
func (s *WorkspaceStore) LoadAll() (ready []*Workspace, swept []string, corrupt []error, err error) {
	es, err := os.ReadDir(s.Root)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read %s: %w", s.Root, err)
	}
	for _, e := range es {
		name := e.Name()
		switch {
		case strings.HasPrefix(name, ".deleted-"):
			if err := os.RemoveAll(filepath.Join(s.Root, name)); err != nil {
				return nil, nil, nil, err
			}
			swept = append(swept, name)
			continue
		case !e.IsDir() || !ValidID(name):
			continue
		}
		ws, err := s.Load(name)
		switch {
		case errors.Is(err, ErrNotFound) || err == nil && ws.Status != WorkspaceReady:
			if err := s.Remove(name); err != nil {
				return nil, nil, nil, err
			}
			swept = append(swept, name)
			continue
		case err != nil:
			corrupt = append(corrupt, err)
			continue
		}
		// An import cut short leaves its partial volume beside the old one,
		// which stays.
		if parts, _ := filepath.Glob(filepath.Join(s.Root, name, ".*.partial-*")); len(parts) > 0 {
			for _, p := range parts {
				if err := os.RemoveAll(p); err != nil {
					return nil, nil, nil, err
				}
			}
			swept = append(swept, name+" (an import cut short)")
		}
		ready = append(ready, ws)
	}
	sort.Slice(ready, func(i, j int) bool { return ready[i].CreatedAt.Before(ready[j].CreatedAt) })
	return ready, swept, corrupt, nil
}
