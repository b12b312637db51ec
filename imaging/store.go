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
	"time"

	"github.com/paddock-vm/paddock/state"
)

// ErrImageNotFound is returned when a reference names no stored image.
var ErrImageNotFound = errors.New("image not found")

// ErrAmbiguous is returned when a digest prefix matches several images.
var ErrAmbiguous = errors.New("ambiguous image reference")

// Image is the content of images/<digest>/image.json.
type Image struct {
	Schema  int       `json:"schema"`
	Digest  string    `json:"digest"` // sha256:<64 hex>
	Names   []string  `json:"names"`  // normalized name:tag references
	Size    int64     `json:"size"`   // bytes of the ext4 base on disk
	Created time.Time `json:"created"`
	// RootFS is the read-only ext4 base, relative to the image directory.
	RootFS string `json:"rootfs"`
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

// Add records an image whose rootfs already sits in its directory.
func (s *Store) Add(img *Image) error {
	if !digestRE.MatchString(img.Digest) {
		return fmt.Errorf("add image: bad digest %q", img.Digest)
	}
	for i, n := range img.Names {
		img.Names[i] = NormalizeRef(n)
	}
	img.Schema = 1
	b, err := json.MarshalIndent(img, "", "  ")
	if err != nil {
		return fmt.Errorf("encode image %s: %w", img.Digest, err)
	}
	dir := s.Dir(img.Digest)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	return state.WriteFileAtomic(filepath.Join(dir, "image.json"), append(b, '\n'), 0o640)
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
