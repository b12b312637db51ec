package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	TemplateState = "state"    // the saved VMM state (its memory apart beside it: vmm.MemPath)
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
	// MemorySHA256 and MemorySize describe the guest's memory when it was
	// saved apart from the state (QEMU with the builder's
	// RAM in a file, Firecracker always); empty when the state holds it.
	MemorySHA256 string `json:"memory_sha256,omitempty"`
	MemorySize   int64  `json:"memory_size,omitempty"`
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
type TemplateStore struct {
	recordDir[Template, *Template]
}

func (t *Template) recordID() string { return t.ID }
func (t *Template) setSchema(v int)  { t.Schema = v }
func (t *Template) schema() int      { return t.Schema }

// NewTemplateStore makes the templates directory.
func NewTemplateStore(stateDir string) (*TemplateStore, error) {
	root := filepath.Join(stateDir, TemplatesDir)
	if err := os.MkdirAll(root, Private); err != nil {
		return nil, fmt.Errorf("templates dir: %w", err)
	}
	return &TemplateStore{recordDir[Template, *Template]{Root: root, kind: "template", meta: templateMeta}}, nil
}

// Path is one of a template's files.
func (s *TemplateStore) Path(id, file string) string { return filepath.Join(s.Root, id, file) }

// Begin records the intent to make t: its directory and a "creating"
// record, durable before anything boots.
func (s *TemplateStore) Begin(t *Template) error { return s.begin(t, t.Name) }

// Save writes t's record atomically.
func (s *TemplateStore) Save(t *Template) error { return s.save(t) }

// Load reads one record.
func (s *TemplateStore) Load(id string) (*Template, error) { return s.load(id) }

// LoadAll reads every template and sweeps removals cut short and
// directories without a record. Records still "creating" are returned
// (the caller removes their builder VM, then them); corrupt ones are
// reported and kept.
func (s *TemplateStore) LoadAll() (all []*Template, swept []string, corrupt []error, err error) {
	deleted, err := s.scan(func(id string, t *Template, err error) error {
		switch {
		case errors.Is(err, ErrNotFound):
			if err := s.Remove(id); err != nil {
				return err
			}
			swept = append(swept, id)
		case err != nil:
			corrupt = append(corrupt, err)
		default:
			all = append(all, t)
		}
		return nil
	})
	if err != nil {
		return nil, nil, nil, err
	}
	return all, append(deleted, swept...), corrupt, nil
}
