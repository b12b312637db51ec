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
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/state"
)

// ErrImageNotFound is returned when a reference names no stored image.
var ErrImageNotFound = errdefs.New(errdefs.ErrNotFound, "image not found")

// ErrAmbiguous is returned when a digest prefix matches several images.
var ErrAmbiguous = errdefs.New(errdefs.ErrInvalidArgument, "ambiguous image reference")

// Image is the content of images/<digest>/image.json.
type Image struct {
	Schema  int       `json:"schema"`
	Digest  string    `json:"digest"` // sha256:<64 hex>
	Names   []string  `json:"names"`  // normalized name:tag references
	Size    int64     `json:"size"`   // bytes of the ext4 base on disk
	Created time.Time `json:"created"`
	// RootFS is the read-only ext4 base, relative to the image directory.
	RootFS string `json:"rootfs"`
	// Owners are the uids that imported it; a non-admin may remove only its
	// own claim, and the image goes when the last claim does.
	Owners []uint32 `json:"owners,omitempty"`
	// Verified: the base was built from layers that hashed to the config's
	// diff ids, under the config's own digest. Only such an entry serves a
	// later import of the same digest; one without (stored by an older
	// paddock) is built again by that import.
	Verified bool `json:"verified,omitempty"`
}

// AddOwner records uid as an owner; it reports whether that changed anything.
func (img *Image) AddOwner(uid uint32) bool {
	if slices.Contains(img.Owners, uid) {
		return false
	}
	img.Owners = append(img.Owners, uid)
	return true
}

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// Store is the images/ directory.
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

// Add records an image whose rootfs already sits in its directory. A name
// moves to this image from any other image that had it (a tag points at one
// image at a time).
func (s *Store) Add(img *Image) error {
	if !digestRE.MatchString(img.Digest) {
		return fmt.Errorf("add image: bad digest %q", img.Digest)
	}
	dir := s.Dir(img.Digest)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := writeImageJSON(dir, img); err != nil {
		return err
	}
	others, err := s.List()
	if err != nil {
		return err
	}
	for _, o := range others {
		if o.Digest != img.Digest && o.dropNames(img.Names) {
			if err := writeImageJSON(s.Dir(o.Digest), o); err != nil {
				return err
			}
		}
	}
	return nil
}

func writeImageJSON(dir string, img *Image) error {
	for i, n := range img.Names {
		img.Names[i] = NormalizeRef(n)
	}
	if img.Names == nil {
		img.Names = []string{}
	}
	img.Schema = 1
	b, err := json.MarshalIndent(img, "", "  ")
	if err != nil {
		return fmt.Errorf("encode image %s: %w", img.Digest, err)
	}
	return state.WriteFileAtomic(filepath.Join(dir, "image.json"), append(b, '\n'), 0o640)
}

func (img *Image) addNames(names []string) bool {
	added := false
	for _, n := range names {
		n = NormalizeRef(n)
		if !slices.Contains(img.Names, n) {
			img.Names = append(img.Names, n)
			added = true
		}
	}
	return added
}

func (img *Image) dropNames(names []string) bool {
	before := len(img.Names)
	img.Names = slices.DeleteFunc(img.Names, func(n string) bool {
		for _, m := range names {
			if NormalizeRef(m) == n {
				return true
			}
		}
		return false
	})
	return len(img.Names) != before
}

// put moves a built image directory tmp into the store as img. When the
// digest is stored already, a verified entry wins (put returns it; tmp is
// the caller's to remove); an unverified one is replaced, keeping its names
// and owners. VMs made from the replaced base keep it: their disks pin the
// base they were made from.
func (s *Store) put(tmp string, img *Image) (*Image, error) {
	final := s.Dir(img.Digest)
	old, err := s.Get(img.Digest)
	if err != nil {
		return nil, err
	}
	if old != nil && old.Verified {
		return old, nil
	}
	if old != nil {
		img.addNames(old.Names)
		for _, u := range old.Owners {
			img.AddOwner(u)
		}
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

// Get returns the stored image with exactly this digest, or nil.
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
// crash never leaves half an image that lists).
func (s *Store) Remove(digest string) error {
	if !digestRE.MatchString(digest) {
		return fmt.Errorf("bad digest %q", digest)
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

// List returns every readable image; unreadable ones are skipped so one
// broken entry cannot hide the rest.
func (s *Store) List() ([]*Image, error) {
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

// Resolve finds an image by name[:tag], full digest, or a unique digest
// prefix of at least 6 hex characters.
func (s *Store) Resolve(ref string) (*Image, error) {
	if ref == "" {
		return nil, fmt.Errorf("empty image reference: %w", ErrImageNotFound)
	}
	imgs, err := s.List()
	if err != nil {
		return nil, err
	}
	norm := NormalizeRef(ref)
	for _, img := range imgs {
		if img.Digest == ref {
			return img, nil
		}
		for _, n := range img.Names {
			if n == norm {
				return img, nil
			}
		}
	}
	hexPart := strings.TrimPrefix(ref, "sha256:")
	if len(hexPart) >= 6 && regexp.MustCompile(`^[0-9a-f]+$`).MatchString(hexPart) {
		var hits []*Image
		for _, img := range imgs {
			if strings.HasPrefix(img.Digest, "sha256:"+hexPart) {
				hits = append(hits, img)
			}
		}
		if len(hits) == 1 {
			return hits[0], nil
		}
		if len(hits) > 1 {
			return nil, fmt.Errorf("image %q matches %d images: %w", ref, len(hits), ErrAmbiguous)
		}
	}
	return nil, fmt.Errorf("image %q: %w", ref, ErrImageNotFound)
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
