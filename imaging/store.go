// Package imaging turns OCI images into bootable ext4 bases and keeps them in
// the image store under <state_dir>/images/<digest>/.
package imaging

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/state"
)

// ErrImageNotFound is returned when a reference names no image the caller
// may see: one that does not exist and one of another user look the same.
var ErrImageNotFound = errdefs.New(errdefs.ErrNotFound, "image not found")

// ErrAmbiguous is returned when a digest prefix matches several images.
var ErrAmbiguous = errdefs.New(errdefs.ErrInvalidArgument, "ambiguous image reference")

// imageSchema is the version of image.json. Version 1 carried the names
// of one store-wide namespace; Migrate moves them into names.json.
const imageSchema = 2

// Image is the content of images/<digest>/image.json: content, verified and
// shared by everyone who holds it. Names live in names.json, per owner.
type Image struct {
	Schema  int       `json:"schema"`
	Digest  string    `json:"digest"` // sha256:<64 hex>
	Size    int64     `json:"size"`   // bytes of the ext4 base on disk
	Created time.Time `json:"created"`
	// RootFS is the read-only ext4 base, relative to the image directory.
	RootFS string `json:"rootfs"`
	// Verified: the base was built from layers that hashed to the config's
	// diff ids, under the config's own digest. Only such an entry serves a
	// later import of the same digest; one without (stored by an older
	// paddock) is built again by that import.
	Verified bool `json:"verified,omitempty"`
	// LegacyNames and LegacyOwners are what a schema 1 record carried (one
	// namespace for everyone); Migrate moves them into names.json.
	LegacyNames  []string `json:"names,omitempty"`
	LegacyOwners []uint32 `json:"owners,omitempty"`

	// Names, Public and Owners are filled for one viewer by List, Lookup
	// and View from names.json: the names that viewer may use for the
	// image (its own, then the public names its own do not shadow), the
	// image's public names, and the uids that hold it.
	Names  []string `json:"-"`
	Public []string `json:"-"`
	Owners []uint32 `json:"-"`
}

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// Store is the images/ directory: content under images/<digest>/, names in
// images/names.json.
type Store struct {
	Root string
}

// OpenStore creates <stateDir>/images if needed.
func OpenStore(stateDir string) (*Store, error) {
	root := filepath.Join(stateDir, "images")
	if err := os.MkdirAll(root, 0o750); err != nil {
		return nil, fmt.Errorf("create image store %s: %w", root, err)
	}
	return &Store{Root: root}, nil
}

// Dir is the directory of one image.
func (s *Store) Dir(digest string) string {
	return filepath.Join(s.Root, strings.ReplaceAll(digest, ":", "-"))
}

// NormalizeRef adds the implicit ":latest" tag to a name without one.
func NormalizeRef(ref string) string {
	if strings.HasPrefix(ref, "sha256:") || strings.Contains(ref, "@") {
		return ref
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref
	}
	return ref + ":latest"
}

// Add records an image whose rootfs already sits in its directory (its
// content record only: names are given with Tag).
func (s *Store) Add(img *Image) error {
	if !digestRE.MatchString(img.Digest) {
		return fmt.Errorf("add image: bad digest %q", img.Digest)
	}
	dir := s.Dir(img.Digest)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	return writeImageJSON(dir, img)
}

func writeImageJSON(dir string, img *Image) error {
	rec := *img
	rec.Schema, rec.LegacyNames, rec.LegacyOwners = imageSchema, nil, nil
	b, err := json.MarshalIndent(&rec, "", "  ")
	if err != nil {
		return fmt.Errorf("encode image %s: %w", img.Digest, err)
	}
	return state.WriteFileAtomic(filepath.Join(dir, "image.json"), append(b, '\n'), 0o640)
}

// put moves a built image directory tmp into the store as img. When the
// digest is stored already, a verified entry wins (put returns it; tmp is
// the caller's to remove); an unverified one is replaced. Its names and
// holders stay (they are in names.json, not in the entry). VMs made from
// the replaced base keep it: their disks pin the base they were made from.
func (s *Store) put(tmp string, img *Image) (*Image, error) {
	final := s.Dir(img.Digest)
	old, err := s.Get(img.Digest)
	if err != nil {
		return nil, err
	}
	if old != nil && old.Verified {
		return old, nil
	}
	if err := writeImageJSON(tmp, img); err != nil {
		return nil, err
	}
	if old != nil {
		grave := filepath.Join(s.Root, ".deleted-"+filepath.Base(final)+"-"+randomSuffix())
		if err := os.Rename(final, grave); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("replace unverified image %s: %w", img.Digest, err)
		}
		defer os.RemoveAll(grave)
	}
	if err := os.Rename(tmp, final); err != nil {
		if errors.Is(err, os.ErrExist) {
			// Stored meanwhile by another daemon instance: theirs wins.
			if other, gerr := s.Get(img.Digest); gerr == nil && other != nil {
				return other, nil
			}
		}
		return nil, fmt.Errorf("store image %s: %w", img.Digest, err)
	}
	if err := state.SyncDir(s.Root); err != nil {
		return nil, err
	}
	return img, nil
}

// Get returns the stored image with exactly this digest, or nil. It carries
// no names: see View.
func (s *Store) Get(digest string) (*Image, error) {
	if !digestRE.MatchString(digest) {
		return nil, fmt.Errorf("bad digest %q", digest)
	}
	b, err := os.ReadFile(filepath.Join(s.Dir(digest), "image.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read image %s: %w", digest, err)
	}
	var img Image
	if err := json.Unmarshal(b, &img); err != nil || img.Digest != digest {
		return nil, fmt.Errorf("image %s: corrupt image.json", digest)
	}
	return &img, nil
}

// Remove deletes an image from the store (rename aside, then remove, so a
// crash never leaves half an image that lists), and every name that
// pointed at it.
func (s *Store) Remove(digest string) error {
	if !digestRE.MatchString(digest) {
		return fmt.Errorf("bad digest %q", digest)
	}
	if err := s.updateNames(func(ix *nameIndex) bool { return ix.dropDigest(digest) }); err != nil {
		return err
	}
	grave := filepath.Join(s.Root, ".deleted-"+strings.ReplaceAll(digest, ":", "-")+"-"+randomSuffix())
	if err := os.Rename(s.Dir(digest), grave); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove image %s: %w", digest, err)
	}
	if err := state.SyncDir(s.Root); err != nil {
		return err
	}
	return os.RemoveAll(grave)
}

// Sweep removes what interrupted imports and removals left behind.
func (s *Store) Sweep() error {
	ents, err := os.ReadDir(s.Root)
	if err != nil {
		return fmt.Errorf("list %s: %w", s.Root, err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".import-") || strings.HasPrefix(e.Name(), ".deleted-") {
			if err := os.RemoveAll(filepath.Join(s.Root, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// all returns every readable image record; unreadable ones are skipped so
// one broken entry cannot hide the rest.
func (s *Store) all() ([]*Image, error) {
	ents, err := os.ReadDir(s.Root)
	if err != nil {
		return nil, fmt.Errorf("list images %s: %w", s.Root, err)
	}
	var out []*Image
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "sha256-") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.Root, e.Name(), "image.json"))
		if err != nil {
			continue
		}
		var img Image
		if json.Unmarshal(b, &img) != nil || !digestRE.MatchString(img.Digest) {
			continue
		}
		out = append(out, &img)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Digest < out[j].Digest })
	return out, nil
}

// Source hints remember which image a local file held, keyed by the file's
// identity (device, inode, size, mtime), so re-importing an unchanged file
// needs no hashing pass over it.
func (s *Store) hintsPath() string { return filepath.Join(s.Root, "sources.json") }

var hintsMu sync.Mutex

// Hint returns the digest last imported from a file with this identity.
func (s *Store) Hint(key string) string {
	hintsMu.Lock()
	defer hintsMu.Unlock()
	m := s.readHints()
	return m[key]
}

// SetHint records the digest imported from a file with this identity.
func (s *Store) SetHint(key, digest string) error {
	hintsMu.Lock()
	defer hintsMu.Unlock()
	m := s.readHints()
	m[key] = digest
	if len(m) > 1024 {
		for k := range m { // bounded: forget an arbitrary old one
			if k != key {
				delete(m, k)
				break
			}
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return state.WriteFileAtomic(s.hintsPath(), b, 0o640)
}

func (s *Store) readHints() map[string]string {
	m := map[string]string{}
	if b, err := os.ReadFile(s.hintsPath()); err == nil {
		_ = json.Unmarshal(b, &m)
	}
	return m
}
