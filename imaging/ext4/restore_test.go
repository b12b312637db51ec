package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/imaging/flatten"
)

// TestStreamRestoresTakenContents: a Stream that gives up after it took
// contents (Content) puts each at its content path, for the build from
// the flattened tree: from the image once written, from memory before,
// and for the file it was reading, what it read and the rest. Holes stay
// holes.
func TestStreamRestoresTakenContents(t *testing.T) {
	if _, err := (Tools{}).resolve(); err != nil {
		t.Skip(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	small := append(append(random(5000), make([]byte, 3*fillBlock)...), random(100)...) // a hole inside
	large := random(pieceSize + 3*fillBlock + 7)                                        // two pieces
	for _, tc := range []struct {
		name    string
		written bool // the first file's content reached the image before debugfs stopped
	}{
		{"written", true},
		{"in memory", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			root := &tar.Header{Typeflag: tar.TypeDir, Name: "./", Mode: 0o755, ModTime: time.Unix(1e9, 0)}
			s, err := NewStream(context.Background(), filepath.Join(dir, "out.ext4"), root,
				Options{Size: 1 << 30, Owner: &Owner{UID: 1000, GID: 1000}, ScratchDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Abort()
			file := func(name string, n int) *tar.Header {
				return &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(n), ModTime: time.Unix(1e9, 0)}
			}
			pa, pb := filepath.Join(dir, "a"), filepath.Join(dir, "b")
			if took, err := s.Content(file("a", len(small)), bytes.NewReader(small), pa); !took || err != nil {
				t.Fatalf("Content(a) = %v, %v", took, err)
			}
			if tc.written {
				if err := s.sc.w.Flush(); err != nil {
					t.Fatal(err)
				}
				for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
					s.fill.bmu.Lock()
					used := s.fill.used
					s.fill.bmu.Unlock()
					if used == 0 {
						break
					}
					if time.Now().After(deadline) {
						t.Fatal("the first file was not written")
					}
				}
			}
			// debugfs dies: the filler stops, the next piece cannot be had
			if err := s.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			<-s.fill.done
			if took, err := s.Content(file("b", len(large)), bytes.NewReader(large), pb); !took || err != nil {
				t.Fatalf("Content(b) = %v, %v", took, err)
			}
			if s.Reason() == "" {
				t.Fatal("the stream did not give up")
			}
			for p, want := range map[string][]byte{pa: small, pb: large} {
				got, err := os.ReadFile(p)
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("%s: %d bytes (%v), want the %d of the content", p, len(got), err, len(want))
				}
			}
			if st, err := os.Stat(pa); err == nil && st.Sys() != nil {
				if blocks := allocated(st) / fillBlock; blocks > 3 {
					t.Errorf("a takes %d blocks: its hole was filled", blocks)
				}
			}
			if _, err := s.Finish(flatten.Summary{Inodes: 3, Entries: 3}, nil); !errors.Is(err, ErrNotStreamed) {
				t.Errorf("Finish: %v, want ErrNotStreamed", err)
			}
			if _, err := os.Stat(filepath.Join(dir, "out.ext4")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the image was left: %v", err)
			}
		})
	}
}
