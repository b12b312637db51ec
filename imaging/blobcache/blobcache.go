// Package blobcache keeps registry layer blobs by digest, so that images
// sharing layers download them once.
//
// An entry is written to a temporary file while the blob is read, hashed by
// the cache itself, and given its content-addressed name only when that hash
// is the digest it was begun for: nothing unverified ever carries a
// digest's name. The cache holds at most its size cap, evicting the least
// recently used entries (a hit refreshes an entry's mtime). Readers hash
// what they read from an entry again, so a damaged entry is caught too.
package blobcache

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
)

// staleAfter is how old a temporary file must be before Open removes it:
// another daemon sharing the directory may be writing a younger one.
const staleAfter = time.Hour

const tmpPrefix = ".tmp-"

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// Cache is one cache directory with a size cap.
type Cache struct {
	dir string
	max int64
	mu  sync.Mutex // serializes eviction within this process
}

// Open opens (creating) the cache in dir, holding at most max bytes. It
// removes what is not an entry of this cache: temporary files older than an
// hour and files named in any other way (entries of an older cache that were
// never verified).
func Open(dir string, max int64) (*Cache, error) {
	if max <= 0 {
		return nil, fmt.Errorf("blob cache %s: size cap %d: must be positive", dir, max)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("blob cache: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("blob cache: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, tmpPrefix) {
			if fi, err := e.Info(); err != nil || time.Since(fi.ModTime()) < staleAfter {
				continue
			}
		} else if _, ok := digestOf(name); ok && e.Type().IsRegular() {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			return nil, fmt.Errorf("blob cache: remove %s: %w", name, err)
		}
	}
	c := &Cache{dir: dir, max: max}
	c.evict()
	return c, nil
}

// fileName is an entry's name for digest ("sha256:<hex>" → "sha256-<hex>").
func fileName(digest string) string { return strings.Replace(digest, ":", "-", 1) }

func digestOf(name string) (string, bool) {
	hex, ok := strings.CutPrefix(name, "sha256-")
	d := "sha256:" + hex
	return d, ok && digestRE.MatchString(d)
}

// Get opens the entry for digest and marks it used; nil when there is none.
func (c *Cache) Get(digest string) (*os.File, error) {
	if !digestRE.MatchString(digest) {
		return nil, nil
	}
	p := filepath.Join(c.dir, fileName(digest))
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("blob cache: %w", err)
	}
	now := time.Now()
	_ = os.Chtimes(p, now, now)
	return f, nil
}

// Remove drops the entry for digest (a reader found it damaged).
func (c *Cache) Remove(digest string) error {
	if !digestRE.MatchString(digest) {
		return nil
	}
	err := os.Remove(filepath.Join(c.dir, fileName(digest)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// Size is the bytes the entries take (temporary files included).
func (c *Cache) Size() (int64, error) {
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
	}
	return n, nil
}

// Begin starts an entry for digest. Write the blob to it, then Commit (which
// keeps it only if it hashes to digest) or Abort. A blob larger than the cap
// is not kept; writing it still succeeds.
func (c *Cache) Begin(digest string) (*Pending, error) {
	if !digestRE.MatchString(digest) {
		return nil, fmt.Errorf("blob cache: bad digest %q", digest)
	}
	f, err := os.CreateTemp(c.dir, tmpPrefix)
	if err != nil {
		return nil, fmt.Errorf("blob cache: %w", err)
	}
	return &Pending{c: c, f: f, want: digest, h: sha256.New()}, nil
}

// Pending is an entry being written.
type Pending struct {
	c    *Cache
	f    *os.File
	want string
	h    hash.Hash
	n    int64
	err  error // why the entry will not be kept
}

// Write adds p to the entry. It never fails: a cache that cannot keep the
// blob (full disk, over the cap) drops the entry, not the import.
func (p *Pending) Write(b []byte) (int, error) {
	if p.err != nil || p.f == nil {
		return len(b), nil
	}
	p.n += int64(len(b))
	if p.n > p.c.max {
		p.drop(fmt.Errorf("blob over the cache's cap of %d bytes", p.c.max))
		return len(b), nil
	}
	p.h.Write(b)
	if _, err := p.f.Write(b); err != nil {
		p.drop(err)
	}
	return len(b), nil
}

func (p *Pending) drop(err error) {
	p.err = err
	p.Abort()
}

// Commit names the entry by its digest if what was written hashes to it,
// then evicts least recently used entries down to the cap. It returns why
// the entry was not kept, if it was not.
func (p *Pending) Commit() error {
	if p.err != nil {
		return p.err
	}
	if p.f == nil {
		return errors.New("blob cache: entry already closed")
	}
	got := "sha256:" + hex.EncodeToString(p.h.Sum(nil))
	if got != p.want {
		p.Abort()
		return fmt.Errorf("blob cache: blob hashes to %s, not %s: not kept", got, p.want)
	}
	f := p.f
	p.f = nil
	err := f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(p.c.dir, fileName(p.want)))
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("blob cache: %w", err)
	}
	p.c.evict()
	return nil
}

// Abort drops the entry; it is safe to call more than once, and after Commit.
func (p *Pending) Abort() {
	if p.f == nil {
		return
	}
	_ = p.f.Close()
	_ = os.Remove(p.f.Name())
	p.f = nil
}

// evict removes least recently used entries until the cache holds at most
// its cap. A just-committed entry is the most recent one: it goes last.
func (c *Cache) evict() {
	c.mu.Lock()
	defer c.mu.Unlock()
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return
	}
	type entry struct {
		name  string
		size  int64
		mtime time.Time
	}
	var all []entry
	var total int64
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			continue
		}
		total += fi.Size()
		if _, ok := digestOf(e.Name()); ok {
			all = append(all, entry{e.Name(), fi.Size(), fi.ModTime()})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mtime.Before(all[j].mtime) })
	for _, e := range all {
		if total <= c.max {
			return
		}
		if os.Remove(filepath.Join(c.dir, e.name)) == nil {
			total -= e.size
		}
	}
}
