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

	"github.com/paddock-vm/paddock/state"
)

// Namespace is where image names live: each user has one of their own
// (UID), and admins publish into the public one, which every user resolves
// after their own. alice's "app:1" and bob's "app:1" are different images.
type Namespace struct {
	UID    uint32
	Public bool
}

// UserNamespace is the namespace of one uid.
func UserNamespace(uid uint32) Namespace { return Namespace{UID: uid} }

// PublicNamespace is the namespace every user sees.
var PublicNamespace = Namespace{Public: true}

func (ns Namespace) String() string {
	if ns.Public {
		return "public"
	}
	return fmt.Sprintf("uid %d", ns.UID)
}

// Viewer is who looks at the store: a namespace, and whether it is an
// admin's. A viewer sees the images its namespace holds and the public
// ones; an admin sees every image (by digest), and resolves names the same
// way (its own, then public). An image a viewer may not see is "not found",
// exactly like one that does not exist.
type Viewer struct {
	Namespace
	Admin bool
}

// nameIndex is images/names.json: every name in every namespace and who
// holds each image. It is one file so a change is one atomic write.
type nameIndex struct {
	Schema int `json:"schema"`
	// Public maps a public name to its digest.
	Public map[string]string `json:"public"`
	// Users maps a uid to that user's names.
	Users map[uint32]map[string]string `json:"users"`
	// Owners maps a digest to the uids that hold it (imported it).
	Owners map[string][]uint32 `json:"owners"`
}

const nameIndexSchema = 1

func (ix *nameIndex) names(ns Namespace) map[string]string {
	if ns.Public {
		return ix.Public
	}
	return ix.Users[ns.UID]
}

// holds reports whether ns holds digest: a user by owning it, the public
// namespace by a public name.
func (ix *nameIndex) holds(ns Namespace, digest string) bool {
	if ns.Public {
		return ix.published(digest)
	}
	return slices.Contains(ix.Owners[digest], ns.UID)
}

func (ix *nameIndex) published(digest string) bool {
	for _, d := range ix.Public {
		if d == digest {
			return true
		}
	}
	return false
}

// held reports whether anyone holds digest.
func (ix *nameIndex) held(digest string) bool {
	return len(ix.Owners[digest]) > 0 || ix.published(digest)
}

func (ix *nameIndex) visible(v Viewer, digest string) bool {
	return v.Admin || ix.holds(v.Namespace, digest) || ix.published(digest)
}

// hold records ns as holding digest under names; it reports a change.
func (ix *nameIndex) hold(ns Namespace, digest string, names []string) bool {
	changed := false
	if !ns.Public && !slices.Contains(ix.Owners[digest], ns.UID) {
		ix.Owners[digest] = append(ix.Owners[digest], ns.UID)
		changed = true
	}
	m := ix.names(ns)
	if m == nil && len(names) > 0 {
		m = map[string]string{}
		ix.Users[ns.UID] = m
	}
	for _, n := range names {
		n = NormalizeRef(n)
		if m[n] != digest {
			m[n] = digest // a name points at one image at a time
			changed = true
		}
	}
	return changed
}

// release drops ns's names of digest and its hold on it.
func (ix *nameIndex) release(ns Namespace, digest string) bool {
	changed := false
	if !ns.Public {
		before := len(ix.Owners[digest])
		ix.Owners[digest] = slices.DeleteFunc(ix.Owners[digest], func(u uint32) bool { return u == ns.UID })
		changed = len(ix.Owners[digest]) != before
		if len(ix.Owners[digest]) == 0 {
			delete(ix.Owners, digest)
		}
	}
	m := ix.names(ns)
	for n, d := range m {
		if d == digest {
			delete(m, n)
			changed = true
		}
	}
	if !ns.Public && len(m) == 0 {
		delete(ix.Users, ns.UID)
	}
	return changed
}

// dropDigest forgets digest in every namespace.
func (ix *nameIndex) dropDigest(digest string) bool {
	changed := ix.release(PublicNamespace, digest)
	for uid := range ix.Users {
		changed = ix.release(UserNamespace(uid), digest) || changed
	}
	for _, uid := range slices.Clone(ix.Owners[digest]) {
		changed = ix.release(UserNamespace(uid), digest) || changed
	}
	return changed
}

// view fills img's names, public names and owners for v.
func (ix *nameIndex) view(v Viewer, img *Image) *Image {
	out := *img
	out.Names, out.Public = []string{}, []string{}
	own := ix.names(v.Namespace)
	for n, d := range own {
		if d == img.Digest {
			out.Names = append(out.Names, n)
		}
	}
	sort.Strings(out.Names)
	var pub []string
	for n, d := range ix.Public {
		if d == img.Digest {
			out.Public = append(out.Public, n)
			if _, shadowed := own[n]; !shadowed {
				pub = append(pub, n)
			}
		}
	}
	sort.Strings(out.Public)
	sort.Strings(pub)
	out.Names = append(out.Names, pub...)
	out.Owners = slices.Clone(ix.Owners[img.Digest])
	slices.Sort(out.Owners)
	if out.Owners == nil {
		out.Owners = []uint32{}
	}
	return &out
}

var namesMu sync.Mutex // read-modify-write of names.json within this process

func (s *Store) namesPath() string { return filepath.Join(s.Root, "names.json") }

func (s *Store) readNames() (*nameIndex, error) {
	ix := &nameIndex{Schema: nameIndexSchema, Public: map[string]string{}, Users: map[uint32]map[string]string{}, Owners: map[string][]uint32{}}
	b, err := os.ReadFile(s.namesPath())
	if errors.Is(err, os.ErrNotExist) {
		return ix, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read image names: %w", err)
	}
	if err := json.Unmarshal(b, ix); err != nil {
		return nil, fmt.Errorf("read image names %s: %w", s.namesPath(), err)
	}
	if ix.Schema != nameIndexSchema {
		return nil, fmt.Errorf("image names %s: schema %d, want %d", s.namesPath(), ix.Schema, nameIndexSchema)
	}
	if ix.Public == nil {
		ix.Public = map[string]string{}
	}
	if ix.Users == nil {
		ix.Users = map[uint32]map[string]string{}
	}
	if ix.Owners == nil {
		ix.Owners = map[string][]uint32{}
	}
	return ix, nil
}

// updateNames applies fn to the index and writes it when fn reports a change.
func (s *Store) updateNames(fn func(*nameIndex) bool) error {
	namesMu.Lock()
	defer namesMu.Unlock()
	ix, err := s.readNames()
	if err != nil {
		return err
	}
	if !fn(ix) {
		return nil
	}
	b, err := json.MarshalIndent(ix, "", "  ")
	if err != nil {
		return fmt.Errorf("encode image names: %w", err)
	}
	return state.WriteFileAtomic(s.namesPath(), append(b, '\n'), 0o600) // users' names are theirs alone
}

// Hold records ns as holding a stored image under names (a user becomes
// one of its owners). A name moves to this image from any other image of
// the same namespace; other namespaces are untouched.
func (s *Store) Hold(ns Namespace, digest string, names []string) error {
	img, err := s.Get(digest)
	if err != nil {
		return err
	}
	if img == nil {
		return fmt.Errorf("image %s: %w", digest, ErrImageNotFound)
	}
	return s.updateNames(func(ix *nameIndex) bool { return ix.hold(ns, digest, names) })
}

// Holds reports whether ns holds the image: a user owns it, or the public
// namespace has a name for it.
func (s *Store) Holds(ns Namespace, digest string) (bool, error) {
	ix, err := s.readNames()
	if err != nil {
		return false, err
	}
	return ix.holds(ns, digest), nil
}

// Release drops ns's names of the image and its hold on it. It reports
// whether anyone still holds the image; the caller removes it when no one
// does (and no VM uses it).
func (s *Store) Release(ns Namespace, digest string) (held bool, err error) {
	err = s.updateNames(func(ix *nameIndex) bool {
		changed := ix.release(ns, digest)
		held = ix.held(digest)
		return changed
	})
	return held, err
}

// Purge drops every namespace's names of the image and every hold on it.
func (s *Store) Purge(digest string) error {
	return s.updateNames(func(ix *nameIndex) bool { return ix.dropDigest(digest) })
}

// Held reports whether anyone holds the image.
func (s *Store) Held(digest string) (bool, error) {
	ix, err := s.readNames()
	if err != nil {
		return false, err
	}
	return ix.held(digest), nil
}

// View returns the stored image as v sees it, or nil when it is not stored
// or v may not see it.
func (s *Store) View(v Viewer, digest string) (*Image, error) {
	img, err := s.Get(digest)
	if err != nil || img == nil {
		return nil, err
	}
	ix, err := s.readNames()
	if err != nil {
		return nil, err
	}
	if !ix.visible(v, digest) {
		return nil, nil
	}
	return ix.view(v, img), nil
}

// List returns the images v may see, with v's names. Every image, for an
// admin (Names are still the admin's own and the public ones).
func (s *Store) List(v Viewer) ([]*Image, error) {
	imgs, err := s.all()
	if err != nil {
		return nil, err
	}
	ix, err := s.readNames()
	if err != nil {
		return nil, err
	}
	out := []*Image{}
	for _, img := range imgs {
		if ix.visible(v, img.Digest) {
			out = append(out, ix.view(v, img))
		}
	}
	return out, nil
}

// Match says how a reference resolved.
type Match int

// How a reference resolved: by digest (or digest prefix), by one of the
// viewer's own names, or by a public name.
const (
	MatchDigest Match = iota
	MatchOwn
	MatchPublic
)

var hexRE = regexp.MustCompile(`^[0-9a-f]+$`)

// Resolve finds an image v may see by name[:tag] (v's own names first, then
// public names), full digest, or a unique digest prefix of at least 6 hex
// characters.
func (s *Store) Resolve(v Viewer, ref string) (*Image, error) {
	img, _, err := s.Lookup(v, ref)
	return img, err
}

// Lookup is Resolve that also says how the reference matched. Whatever v
// may not see is not found, with the same error as what does not exist.
func (s *Store) Lookup(v Viewer, ref string) (*Image, Match, error) {
	notFound := fmt.Errorf("image %q: %w", ref, ErrImageNotFound)
	if ref == "" {
		return nil, 0, fmt.Errorf("empty image reference: %w", ErrImageNotFound)
	}
	imgs, err := s.all()
	if err != nil {
		return nil, 0, err
	}
	ix, err := s.readNames()
	if err != nil {
		return nil, 0, err
	}
	byDigest := make(map[string]*Image, len(imgs))
	var seen []*Image
	for _, img := range imgs {
		byDigest[img.Digest] = img
		if ix.visible(v, img.Digest) {
			seen = append(seen, img)
		}
	}
	if digestRE.MatchString(ref) {
		if img := byDigest[ref]; img != nil && ix.visible(v, ref) {
			return ix.view(v, img), MatchDigest, nil
		}
		return nil, 0, notFound
	}
	norm := NormalizeRef(ref)
	if img := byDigest[ix.names(v.Namespace)[norm]]; img != nil {
		return ix.view(v, img), MatchOwn, nil
	}
	if img := byDigest[ix.Public[norm]]; img != nil {
		return ix.view(v, img), MatchPublic, nil
	}
	hexPart := strings.TrimPrefix(ref, "sha256:")
	if len(hexPart) >= 6 && hexRE.MatchString(hexPart) {
		var hits []*Image
		for _, img := range seen {
			if strings.HasPrefix(img.Digest, "sha256:"+hexPart) {
				hits = append(hits, img)
			}
		}
		if len(hits) == 1 {
			return ix.view(v, hits[0]), MatchDigest, nil
		}
		if len(hits) > 1 {
			return nil, 0, fmt.Errorf("image %q matches %d images: %w", ref, len(hits), ErrAmbiguous)
		}
	}
	return nil, 0, notFound
}

// Migrate moves what schema 1 image records carried (one namespace for
// everyone) into names.json: an image that recorded owners becomes theirs,
// each owner getting its names in their own namespace; an image with no
// recorded owner (seeded by hand, or imported before owners were recorded)
// is published: its names become public. It returns how many records it
// moved; a record it cannot read is left alone (List skips it).
func (s *Store) Migrate() (int, error) {
	imgs, err := s.all()
	if err != nil {
		return 0, err
	}
	var old []*Image
	for _, img := range imgs {
		if img.Schema < imageSchema {
			old = append(old, img)
		}
	}
	if len(old) == 0 {
		return 0, nil
	}
	err = s.updateNames(func(ix *nameIndex) bool {
		for _, img := range old {
			owners := slices.Clone(img.LegacyOwners)
			if len(owners) == 0 {
				addMissing(ix.Public, img.LegacyNames, img.Digest)
				continue
			}
			for _, uid := range owners {
				ix.hold(UserNamespace(uid), img.Digest, nil)
				if ix.Users[uid] == nil {
					ix.Users[uid] = map[string]string{}
				}
				addMissing(ix.Users[uid], img.LegacyNames, img.Digest)
			}
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	// Names first: a crash in between re-runs this, which adds nothing new.
	for _, img := range old {
		if err := writeImageJSON(s.Dir(img.Digest), img); err != nil {
			return 0, err
		}
	}
	return len(old), nil
}

// addMissing adds names that m does not have yet: a migration never moves
// a name that a namespace already uses.
func addMissing(m map[string]string, names []string, digest string) {
	for _, n := range names {
		n = NormalizeRef(n)
		if _, ok := m[n]; !ok {
			m[n] = digest
		}
	}
}
