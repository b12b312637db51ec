package tartree

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TarDir to a pipe (contents of sendfileMin and more go by sendfile) and
// to a buffer (every content copied) write the same stream, byte for
// byte, and it holds every content whole, padding and end marker included.
func TestTarDirSendfile(t *testing.T) {
	for _, size := range []int{0, 1, 511, 512, sendfileMin - 1, sendfileMin, sendfileMin + 513, 3*sendfileMin + 7} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			dir := t.TempDir()
			data := make([]byte, size)
			for i := range data {
				data[i] = byte(i*7 + i/4096)
			}
			if err := os.WriteFile(filepath.Join(dir, "a"), data, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "b"), []byte("after"), 0o600); err != nil {
				t.Fatal(err)
			}
			var buffered bytes.Buffer
			if err := TarDir(context.Background(), dir, &buffered); err != nil {
				t.Fatal(err)
			}
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				err := TarDir(context.Background(), dir, pw)
				pw.Close()
				done <- err
			}()
			piped, rerr := io.ReadAll(pr)
			pr.Close()
			if err := <-done; err != nil || rerr != nil {
				t.Fatal(err, rerr)
			}
			if !bytes.Equal(piped, buffered.Bytes()) {
				t.Fatalf("through a pipe: %d bytes, through a buffer: %d bytes, not the same", len(piped), buffered.Len())
			}
			tr := tar.NewReader(bytes.NewReader(piped))
			got := map[string][]byte{}
			for {
				h, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if got[h.Name], err = io.ReadAll(tr); err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(got["a"], data) || string(got["b"]) != "after" {
				t.Fatalf("contents: a %d bytes (want %d), b %q", len(got["a"]), size, got["b"])
			}
			if len(piped)%512 != 0 || !bytes.Equal(piped[len(piped)-1024:], make([]byte, 1024)) {
				t.Fatal("the stream does not end with two zero blocks")
			}
		})
	}
}
