package blobcache_test

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/imaging/blobcache"
)

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n []string
	for _, e := range ents {
		n = append(n, e.Name())
	}
	return n
}

// An entry gets its digest's name only when what was written hashes to it;
// anything else leaves the directory as it was.
func TestCommitOnlyVerified(t *testing.T) {
	blob := []byte("the real layer")
	other := []byte("a squatter's layer")
	cases := []struct {
		name  string
		write []byte
		abort bool
		kept  bool
	}{
		{"verified", blob, false, true},
		{"other content", other, false, false},
		{"truncated", blob[:4], false, false},
		{"aborted", blob, true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c, err := blobcache.Open(dir, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			p, err := c.Begin(digest(blob))
			if err != nil {
				t.Fatal(err)
			}
			p.Write(tc.write)
			// Nothing carries the digest's name while the blob is written.
			if f, _ := c.Get(digest(blob)); f != nil {
				f.Close()
				t.Fatal("an entry is visible before it was verified")
			}
			if tc.abort {
				p.Abort()
			} else if err := p.Commit(); (err == nil) != tc.kept {
				t.Fatalf("commit: %v, want kept=%v", err, tc.kept)
			}
			f, err := c.Get(digest(blob))
			if err != nil {
				t.Fatal(err)
			}
			if (f != nil) != tc.kept {
				t.Fatalf("entry present %v, want %v; dir holds %v", f != nil, tc.kept, entries(t, dir))
			}
			if f != nil {
				f.Close()
			}
			if n := entries(t, dir); !tc.kept && len(n) != 0 {
				t.Fatalf("left behind: %v", n)
			}
		})
	}
}

// The cache stays under its cap, evicting the least recently used entry; a
// blob over the cap is not kept at all.
func TestCapEvictsLeastRecentlyUsed(t *testing.T) {
	dir := t.TempDir()
	c, err := blobcache.Open(dir, 250)
	if err != nil {
		t.Fatal(err)
	}
	put := func(b []byte) {
		t.Helper()
		p, err := c.Begin(digest(b))
		if err != nil {
			t.Fatal(err)
		}
		p.Write(b)
		_ = p.Commit()
	}
	a, b, d := []byte(strings.Repeat("a", 100)), []byte(strings.Repeat("b", 100)), []byte(strings.Repeat("d", 100))
	put(a)
	put(b)
	// a is used again: b is now the least recently used.
	old := time.Now().Add(-time.Hour)
	os.Chtimes(filepath.Join(dir, strings.Replace(digest(b), ":", "-", 1)), old, old)
	if f, _ := c.Get(digest(a)); f != nil {
		f.Close()
	}
	put(d)
	for _, tc := range []struct {
		blob []byte
		kept bool
	}{{a, true}, {b, false}, {d, true}} {
		f, _ := c.Get(digest(tc.blob))
		if (f != nil) != tc.kept {
			t.Errorf("%c kept %v, want %v", tc.blob[0], f != nil, tc.kept)
		}
		if f != nil {
			f.Close()
		}
	}
	if n, _ := c.Size(); n > 250 {
		t.Fatalf("cache holds %d bytes, cap 250", n)
	}
	big := []byte(strings.Repeat("x", 300))
	put(big)
	if f, _ := c.Get(digest(big)); f != nil {
		t.Fatal("a blob over the cap was kept")
	}
}

// Open removes what a previous cache left unverified under a digest's name
// and stale temporary files, and keeps entries.
func TestOpenSweeps(t *testing.T) {
	dir := t.TempDir()
	blob := []byte("kept")
	keep := strings.Replace(digest(blob), ":", "-", 1)
	legacy := digest([]byte("legacy"))
	os.WriteFile(filepath.Join(dir, keep), blob, 0o600)
	os.WriteFile(filepath.Join(dir, legacy), []byte("unverified"), 0o600)
	os.WriteFile(filepath.Join(dir, ".tmp-old"), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(dir, ".tmp-young"), []byte("x"), 0o600)
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(filepath.Join(dir, ".tmp-old"), old, old)
	if _, err := blobcache.Open(dir, 1<<20); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(entries(t, dir), ",")
	if want := ".tmp-young," + keep; got != want {
		t.Fatalf("after Open: %s, want %s", got, want)
	}
}
