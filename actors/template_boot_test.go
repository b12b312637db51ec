package actors

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A state file is hashed once per version: a verified file is not read
// again, but any change — in place at the same size with its mtime set
// back, truncated, or replaced — is hashed again and refused.
func TestVerifyStateOncePerVersion(t *testing.T) {
	body := []byte(strings.Repeat("saved guest state ", 4096))
	sum := sha256.Sum256(body)
	cases := []struct {
		name   string
		change func(t *testing.T, path string)
	}{
		{"same size, mtime set back", func(t *testing.T, path string) {
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte("X"), 100); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated", func(t *testing.T, path string) {
			if err := os.Truncate(path, int64(len(body)/2)); err != nil {
				t.Fatal(err)
			}
		}},
		{"replaced", func(t *testing.T, path string) {
			other := path + ".new"
			b := append([]byte(nil), body...)
			b[0] ^= 1
			if err := os.WriteFile(other, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(other, path); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state")
			if err := os.WriteFile(path, body, 0o600); err != nil {
				t.Fatal(err)
			}
			tb := &TemplateBoot{Name: "t1", State: path, StateSHA256: hex.EncodeToString(sum[:]), StateSize: int64(len(body))}
			if err := verifyState(tb); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			id, err := stateIdentity(f)
			f.Close()
			if err != nil || !verifiedStates.has(path, id, tb.StateSHA256) {
				t.Fatalf("a verified state is not remembered: %v", err)
			}
			// ctime has nanosecond resolution but coarse ticks: let it move.
			time.Sleep(20 * time.Millisecond)
			c.change(t, path)
			if err := verifyState(tb); err == nil || !strings.Contains(err.Error(), "saved state is damaged") {
				t.Fatalf("a changed state after a verified one: %v", err)
			}
		})
	}
}
