package state

import (
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
	// Top is the writable top layer: a file in the workspace's directory,
	// raw unless its name ends in .qcow2 (then an overlay over Backing).
	// "" is volume.ext4, the layer a creation builds.
	Top string `json:"top,omitempty"`
	// Backing are the frozen layers under Top, nearest first: files in
	// workspaces/.layers/, which a snapshot, restore or clone never
	// rewrites. A raw Top has none.
	Backing []string `json:"backing,omitempty"`
	// Snapshots are the named frozen states, oldest first.
	Snapshots []Snapshot `json:"snapshots,omitempty"`
}

// Snapshot is a frozen state of a workspace: Layers are its chain in
// workspaces/.layers/, the frozen top first; Size is the volume's size then.
type Snapshot struct {
	Name      string    `json:"name"`
	Layers    []string  `json:"layers"`
	Size      int64     `json:"size"`
	CreatedAt time.Time `json:"created_at"`
}

// Snapshot returns ws's snapshot called name, or nil.
func (ws *Workspace) Snapshot(name string) *Snapshot {
	for i := range ws.Snapshots {
		if ws.Snapshots[i].Name == name {
			return &ws.Snapshots[i]
		}
	}
	return nil
}

// TopFile is the file name of ws's top layer in its directory.
func (ws *Workspace) TopFile() string {
	if ws.Top == "" {
		return volumeFile
	}
	return ws.Top
}

// TopFormat is the format of ws's top layer: "raw" or "qcow2".
func (ws *Workspace) TopFormat() string { return LayerFormat(ws.TopFile()) }

// LayerFormat is the format of a layer file, by its name.
func LayerFormat(name string) string {
	if strings.HasSuffix(name, ".qcow2") {
		return "qcow2"
	}
	return "raw"
}

// layers are every frozen layer ws needs: its top's backing and its
// snapshots' chains.
func (ws *Workspace) layers() []string {
	out := append([]string(nil), ws.Backing...)
	for _, sn := range ws.Snapshots {
		out = append(out, sn.Layers...)
	}
	return out
}

const (
	volumeFile = "volume.ext4"
	// LayersDir holds the frozen layers of every workspace, shared by the
	// snapshots and clones that name them and removed when none does.
	LayersDir = ".layers"
)

// WorkspaceStore keeps workspaces under <state>/workspaces/<id>/: meta.json
// and the top layer (volume.ext4 until a snapshot); frozen layers are in
// <state>/workspaces/.layers/. A removed workspace's directory is renamed to
// .deleted-<id> first (one atomic step), then deleted; start-up sweeps what
// a crash left of either.
type WorkspaceStore struct {
	recordDir[Workspace, *Workspace]
}

func (ws *Workspace) recordID() string { return ws.ID }
func (ws *Workspace) setSchema(v int)  { ws.Schema = v }
func (ws *Workspace) schema() int      { return ws.Schema }

// NewWorkspaceStore opens (and creates) <stateDir>/workspaces.
func NewWorkspaceStore(stateDir string) (*WorkspaceStore, error) {
	root := filepath.Join(stateDir, "workspaces")
	if err := MkdirPrivate(root); err != nil {
		return nil, err
	}
	if err := MkdirPrivate(filepath.Join(root, LayersDir)); err != nil {
		return nil, err
	}
	return &WorkspaceStore{recordDir[Workspace, *Workspace]{Root: root, kind: "workspace", meta: "meta.json"}}, nil
}

// TopPath is the path of ws's top layer.
func (s *WorkspaceStore) TopPath(ws *Workspace) string {
	return filepath.Join(s.Dir(ws.ID), ws.TopFile())
}

// Layer is the path of a frozen layer.
func (s *WorkspaceStore) Layer(name string) string { return filepath.Join(s.Root, LayersDir, name) }

// LayerRef is how an overlay in a workspace's directory (or in .layers)
// names its backing layer: relative, so the state directory can move.
func LayerRef(name string) string { return filepath.Join("..", LayersDir, name) }

// Freeze gives ws's current top a second name in .layers (a hard link: no
// data moves) and returns it. Nothing refers to it until the caller saves
// a record naming it; a crash before that leaves a layer SweepLayers
// removes.
func (s *WorkspaceStore) Freeze(ws *Workspace) (string, error) {
	name := NewID() + map[string]string{"raw": ".ext4", "qcow2": ".qcow2"}[ws.TopFormat()]
	if err := os.Link(s.TopPath(ws), s.Layer(name)); err != nil {
		return "", fmt.Errorf("workspace %s: freeze its top layer: %w", ws.Name, err)
	}
	if err := SyncDir(filepath.Join(s.Root, LayersDir)); err != nil {
		return "", err
	}
	return name, nil
}

// SweepLayers removes the frozen layers no record in live names (the
// layers of removed workspaces and dropped tops, and those a crash left
// unreferenced) and returns them.
func (s *WorkspaceStore) SweepLayers(live []*Workspace) ([]string, error) {
	keep := map[string]bool{}
	for _, ws := range live {
		for _, l := range ws.layers() {
			keep[l] = true
		}
	}
	es, err := os.ReadDir(filepath.Join(s.Root, LayersDir))
	if err != nil {
		return nil, fmt.Errorf("read workspace layers: %w", err)
	}
	var gone []string
	for _, e := range es {
		if keep[e.Name()] {
			continue
		}
		if err := os.Remove(s.Layer(e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			return gone, fmt.Errorf("remove workspace layer %s: %w", e.Name(), err)
		}
		gone = append(gone, e.Name())
	}
	return gone, nil
}

// DropStrays removes the files of ws's directory its record does not name
// (a top a snapshot, restore or import replaced; the partial files of an
// operation cut short) and returns them.
func (s *WorkspaceStore) DropStrays(ws *Workspace) ([]string, error) {
	es, err := os.ReadDir(s.Dir(ws.ID))
	if err != nil {
		return nil, fmt.Errorf("read workspace %s: %w", ws.Name, err)
	}
	var gone []string
	for _, e := range es {
		if n := e.Name(); n != "meta.json" && n != ws.TopFile() {
			if err := os.RemoveAll(filepath.Join(s.Dir(ws.ID), n)); err != nil {
				return gone, err
			}
			gone = append(gone, n)
		}
	}
	return gone, nil
}

// Volume is a workspace's volume file.
func (s *WorkspaceStore) Volume(id string) string { return filepath.Join(s.Root, id, volumeFile) }

// Begin records the intent to create ws: its directory and a "creating"
// record, durable before anything is built.
func (s *WorkspaceStore) Begin(ws *Workspace) error { return s.begin(ws, ws.Name) }

// Save writes ws's record atomically.
func (s *WorkspaceStore) Save(ws *Workspace) error { return s.save(ws) }

// Load reads one record.
func (s *WorkspaceStore) Load(id string) (*Workspace, error) { return s.load(id) }

// LoadAll loads every ready workspace and sweeps what crashes left: removals cut
// short (.deleted-*), builds cut short ("creating" records, directories
// without a record, partial volumes), the files of imports, snapshots,
// restores and resizes cut short (the record names the old top or the new,
// and the other goes) and the frozen layers no record names (unless a
// record is unreadable: its layers are unknown, so all stay). Corrupt
// records are kept on disk and reported, never fatal.
func (s *WorkspaceStore) LoadAll() (ready []*Workspace, swept []string, corrupt []error, err error) {
	return s.LoadAllExcept(nil)
}

// LoadAllExcept is LoadAll for a reload while work is in flight on the
// workspaces busy names (a restart of the Workspaces actor): their
// directories are left as they are (a "creating" record is loaded as it
// is; one not yet written is skipped) and, since their new layers are
// named by no record yet, no layer is swept.
func (s *WorkspaceStore) LoadAllExcept(busy map[string]bool) (ready []*Workspace, swept []string, corrupt []error, err error) {
	deleted, err := s.scan(func(name string, ws *Workspace, err error) error {
		if busy[name] {
			if err == nil {
				ready = append(ready, ws)
			} else if !errors.Is(err, ErrNotFound) {
				corrupt = append(corrupt, err)
			}
			return nil
		}
		switch {
		case errors.Is(err, ErrNotFound) || err == nil && ws.Status != WorkspaceReady:
			if err := s.Remove(name); err != nil {
				return err
			}
			swept = append(swept, name)
			return nil
		case err != nil:
			corrupt = append(corrupt, err)
			return nil
		}
		gone, err := s.DropStrays(ws)
		if err != nil {
			return err
		}
		if len(gone) > 0 {
			swept = append(swept, fmt.Sprintf("%s (an operation cut short: %s)", name, strings.Join(gone, ", ")))
		}
		ready = append(ready, ws)
		return nil
	})
	if err != nil {
		return nil, nil, nil, err
	}
	swept = append(deleted, swept...)
	if len(corrupt) == 0 && len(busy) == 0 {
		gone, err := s.SweepLayers(ready)
		if err != nil {
			return nil, nil, nil, err
		}
		for _, g := range gone {
			swept = append(swept, LayersDir+"/"+g)
		}
	}
	sort.Slice(ready, func(i, j int) bool { return ready[i].CreatedAt.Before(ready[j].CreatedAt) })
	return ready, swept, corrupt, nil
}
