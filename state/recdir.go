package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// record is what recordDir keeps: a JSON record that knows its id and
// carries the schema version it was written with.
type record interface {
	recordID() string
	setSchema(int)
	schema() int
}

// recordDir keeps one record per directory <Root>/<id>/<meta>, beside the
// files the record owns (workspaces, templates): created intent first,
// written atomically, removed by one rename that decides.
type recordDir[T any, P interface {
	*T
	record
}] struct {
	Root string
	kind string // "workspace", "template": names the record in errors
	meta string // the record's file name
}

// Dir is a record's directory.
func (s recordDir[T, P]) Dir(id string) string { return filepath.Join(s.Root, id) }

func (s recordDir[T, P]) metaPath(id string) string { return filepath.Join(s.Root, id, s.meta) }

// begin records the intent to make r (named name): its directory and its
// record, durable before anything is built.
func (s recordDir[T, P]) begin(r P, name string) error {
	if !ValidID(r.recordID()) {
		return fmt.Errorf("%s id %q is not an id", s.kind, r.recordID())
	}
	if err := os.Mkdir(s.Dir(r.recordID()), Private); err != nil {
		return fmt.Errorf("create %s %s: %w", s.kind, name, err)
	}
	if err := SyncDir(s.Root); err != nil {
		return err
	}
	return s.save(r)
}

// save writes r's record atomically.
func (s recordDir[T, P]) save(r P) error {
	r.setSchema(SchemaVersion)
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(s.metaPath(r.recordID()), b, 0o600)
}

// load reads one record: ErrNotFound without one, ErrCorrupt when it
// cannot be read as this paddockd's or names another id.
func (s recordDir[T, P]) load(id string) (P, error) {
	if !ValidID(id) {
		return nil, fmt.Errorf("%s %q: %w", s.kind, id, ErrNotFound)
	}
	b, err := os.ReadFile(s.metaPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s %s: %w", s.kind, id, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	r := P(new(T))
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("%s %s: %w: %v", s.kind, id, ErrCorrupt, err)
	}
	if r.schema() > SchemaVersion {
		return nil, fmt.Errorf("%s %s: %w: schema %d is newer than this paddockd's %d", s.kind, id, ErrCorrupt, r.schema(), SchemaVersion)
	}
	if r.recordID() != id {
		return nil, fmt.Errorf("%s %s: %w: the record says id %q", s.kind, id, ErrCorrupt, r.recordID())
	}
	return r, nil
}

// Remove takes a record and its files away: the rename to .deleted-<id>
// is the one step that decides, then the files go. One already gone is
// done.
func (s recordDir[T, P]) Remove(id string) error {
	gone := filepath.Join(s.Root, ".deleted-"+id)
	if err := os.Rename(s.Dir(id), gone); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove %s %s: %w", s.kind, id, err)
	}
	if err := SyncDir(s.Root); err != nil {
		return err
	}
	return os.RemoveAll(gone)
}

// scan sweeps removals cut short (.deleted-*) and calls each for every
// record directory with what load found there.
func (s recordDir[T, P]) scan(each func(id string, r P, err error) error) (swept []string, err error) {
	es, err := os.ReadDir(s.Root)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", s.Root, err)
	}
	for _, e := range es {
		name := e.Name()
		switch {
		case strings.HasPrefix(name, ".deleted-"):
			if err := os.RemoveAll(filepath.Join(s.Root, name)); err != nil {
				return nil, err
			}
			swept = append(swept, name)
			continue
		case !e.IsDir() || !ValidID(name):
			continue
		}
		r, lerr := s.load(name)
		if err := each(name, r, lerr); err != nil {
			return nil, err
		}
	}
	return swept, nil
}
