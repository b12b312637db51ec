package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// TemplatesDir is where templates live, under the state directory.
const TemplatesDir = "templates"

// Template statuses.
const (
	TemplateCreating = "creating"
	TemplateReady    = "ready"
)

// Files of a template's directory.
const (
	TemplateState = "state"    // the saved VMM state (QEMU migration stream)
	TemplateDisk  = "disk.raw" // the guest's disk when it was saved, read-only from then on
	templateMeta  = "template.json"
)

// Template is a saved, booted guest that VMs resume from instead of
// booting (paddock template create; run --from-template): its VMM state
// and its disk frozen together, and what they were made with, so that a
// restore on other parts is refused rather than half-done.
type Template struct {
	Schema   int       `json:"schema"`
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	OwnerUID uint32    `json:"owner_uid"`
	Status   string    `json:"status"`
	Created  time.Time `json:"created"`
	// Builder is the name of the VM booted to make it (its owner's), removed
	// once saved, or by the sweep after a crash.
	Builder string `json:"builder,omitempty"`
	// BuilderID is the builder VM's id, recorded as soon as it exists.
	BuilderID string `json:"builder_id,omitempty"`

	Image       string `json:"image"`
	ImageDigest string `json:"image_digest"`
	Kernel      string `json:"kernel,omitempty"`
	CPUs        int    `json:"cpus"`
	Memory      int64  `json:"memory"`
	DiskSize    int64  `json:"disk_size"`
	// Network is the network mode the guest was saved with (bridge, user,
	// none): a resumed VM has the same devices.
	Network string `json:"network"`

	// Parts are the identities (path, size, mtime, inode) of what the
	// state depends on: the kit's kernel and initramfs (the agent is in
	// it) and the VMM binary. A change invalidates the template.
	Parts []FileID `json:"parts"`

	StateSHA256 string `json:"state_sha256,omitempty"`
	StateSize   int64  `json:"state_size,omitempty"`
	// SaveMS is what the save took, for inspect.
	SaveMS float64 `json:"save_ms,omitempty"`
}

// StatFileID identifies the file at path.
func StatFileID(path string) (FileID, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return FileID{}, err
	}
	id := FileID{Path: path, Size: fi.Size(), MTime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.Inode = st.Ino
	}
	return id, nil
}

// Changed says which of ids no longer identifies its file ("" for none).
func Changed(ids []FileID) string {
	for _, id := range ids {
		if now, err := StatFileID(id.Path); err != nil || now != id {
			return id.Path
		}
	}
	return ""
}

// FileID identifies a file's content cheaply: a replaced or rewritten file
// has another.
type FileID struct {
	Path  string `json:"path"`
	Size  int64  `json:"size"`
	MTime int64  `json:"mtime_ns"`
	Inode uint64 `json:"inode"`
}

// TemplateStore keeps templates under <state>/templates/<id>/.
type TemplateStore struct{ Root string }

// NewTemplateStore makes the templates directory.
func NewTemplateStore(stateDir string) (*TemplateStore, error) {
	root := filepath.Join(stateDir, TemplatesDir)
	if err := os.MkdirAll(root, Private); err != nil {
		return nil, fmt.Errorf("templates dir: %w", err)
	}
	return &TemplateStore{Root: root}, nil
}

// Dir is a template's directory; Path one of its files.
func (s *TemplateStore) Dir(id string) string        { return filepath.Join(s.Root, id) }
func (s *TemplateStore) Path(id, file string) string { return filepath.Join(s.Root, id, file) }
func (s *TemplateStore) meta(id string) string       { return s.Path(id, templateMeta) }

// Begin records the intent to make t: its directory and a "creating"
// record, durable before anything boots.
func (s *TemplateStore) Begin(t *Template) error {
	if !ValidID(t.ID) {
		return fmt.Errorf("template id %q is not an id", t.ID)
	}
	if err := os.Mkdir(s.Dir(t.ID), Private); err != nil {
		return fmt.Errorf("create template %s: %w", t.Name, err)
	}
	if err := SyncDir(s.Root); err != nil {
		return err
	}
	return s.Save(t)
}

// Save writes t's record atomically.
func (s *TemplateStore) Save(t *Template) error {
	t.Schema = SchemaVersion
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(s.meta(t.ID), b, 0o600)
}

// Load reads one record.
func (s *TemplateStore) Load(id string) (*Template, error) {
	if !ValidID(id) {
		return nil, fmt.Errorf("template %q: %w", id, ErrNotFound)
	}
	b, err := os.ReadFile(s.meta(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("template %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	var t Template
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("template %s: %w: %v", id, ErrCorrupt, err)
	}
	if t.Schema > SchemaVersion || t.ID != id {
		return nil, fmt.Errorf("template %s: %w: schema %d, id %q", id, ErrCorrupt, t.Schema, t.ID)
	}
	return &t, nil
}

// Remove takes a template away: the rename to .deleted-<id> decides, then
// the files go. VMs resumed from it keep their disks (each pins the
// frozen disk with a hard link). A template already gone is done.
func (s *TemplateStore) Remove(id string) error {
	gone := filepath.Join(s.Root, ".deleted-"+id)
	if err := os.Rename(s.Dir(id), gone); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove template %s: %w", id, err)
	}
	if err := SyncDir(s.Root); err != nil {
		return err
	}
	return os.RemoveAll(gone)
}

// LoadAll reads every template and sweeps removals cut short and
// directories without a record. Records still "creating" are returned
// (the caller removes their builder VM, then them); corrupt ones are
// reported and kept.
func (s *TemplateStore) LoadAll() (all []*Template, swept []string, corrupt []error, err error) {
	es, err := os.ReadDir(s.Root)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read %s: %w", s.Root, err)
	}
	for _, e := range es {
		name := e.Name()
		if strings.HasPrefix(name, ".deleted-") {
			if err := os.RemoveAll(filepath.Join(s.Root, name)); err != nil {
				return nil, nil, nil, err
			}
			swept = append(swept, name)
			continue
		}
		if !e.IsDir() || !ValidID(name) {
			continue
		}
		t, err := s.Load(name)
		switch {
		case errors.Is(err, ErrNotFound):
			if err := s.Remove(name); err != nil {
				return nil, nil, nil, err
			}
			swept = append(swept, name)
		case err != nil:
			corrupt = append(corrupt, err)
		default:
			all = append(all, t)
		}
	}
	return all, swept, corrupt, nil
}
