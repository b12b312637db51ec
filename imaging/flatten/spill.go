package flatten

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// spill holds the contents of regular files between reading the layers and
// emitting the flattened tree.
//
// Why spill rather than re-read the layers: a layer is an io.Reader that
// may be a network stream and is usually gzip- or zstd-compressed, so a
// second pass would double the decompression cost (the dominant cost:
// ~2 s for a 100 MB gzip layer) and require seekable sources. Spilling
// costs one sequential write of the contents, on tmpfs when the caller
// points ScratchDir there.
//
// Why one file per content: a builder on the same filesystem can hardlink
// the spilled file into its staging tree instead of copying it again
// (Walk exposes the path), so the contents are written once in the whole
// import, as with a plain "tar -x". A content that no longer reaches the
// final tree (overwritten, whited out) is unlinked at once, so scratch
// usage tracks the live tree, not the sum of all layers. All-zero 4 KiB
// blocks are skipped, so sparse files stay sparse.
type spill struct {
	dir  string
	n    int
	buf  []byte
	zero []byte
}

const spillBlock = 4096

func newSpill(scratch string) (*spill, error) {
	if scratch == "" {
		scratch = os.TempDir()
	}
	dir, err := os.MkdirTemp(scratch, "paddock-flatten-")
	if err != nil {
		return nil, fmt.Errorf("create spill directory: %w", err)
	}
	return &spill{dir: dir, buf: make([]byte, 1<<20), zero: make([]byte, spillBlock)}, nil
}

// Close removes every spilled content.
func (s *spill) Close() error { return os.RemoveAll(s.dir) }

// next returns a new spill path, for a content kept by someone else.
func (s *spill) next() string {
	s.n++
	return filepath.Join(s.dir, strconv.Itoa(s.n))
}

// write stores exactly size bytes from r in a new file and returns its path.
func (s *spill) write(r io.Reader, size int64) (string, error) {
	if size == 0 {
		return "", nil // nothing to keep; Walk reports no content path
	}
	p := s.next()
	fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return "", fmt.Errorf("create spill file: %w", err)
	}
	defer unix.Close(fd)
	var pos, end int64
	for pos < size {
		chunk := s.buf[:min(int64(len(s.buf)), size-pos)]
		if _, err := io.ReadFull(r, chunk); err != nil {
			os.Remove(p)
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
		e, err := writeSparse(fd, chunk, pos, s.zero)
		if err != nil {
			os.Remove(p)
			return "", fmt.Errorf("write spill file: %w", err)
		}
		if e > 0 {
			end = e
		}
		pos += int64(len(chunk))
	}
	if end < size { // trailing hole
		if err := unix.Ftruncate(fd, size); err != nil {
			os.Remove(p)
			return "", fmt.Errorf("write spill file: %w", err)
		}
	}
	return p, nil
}

// release drops a content that no longer reaches the tree.
func (s *spill) release(path string) {
	if path != "" {
		os.Remove(path)
	}
}

// writeSparse writes the non-zero 4 KiB blocks of chunk at pos (aligned)
// and returns the end offset of the last data written (0 if none).
func writeSparse(fd int, chunk []byte, pos int64, zero []byte) (int64, error) {
	isZero := func(j int) bool {
		return j+spillBlock <= len(chunk) && bytes.Equal(chunk[j:j+spillBlock], zero)
	}
	var end int64
	for i := 0; i < len(chunk); {
		j := i
		for j < len(chunk) && !isZero(j) {
			j = min(j+spillBlock, len(chunk))
		}
		for w := i; w < j; {
			n, err := unix.Pwrite(fd, chunk[w:j], pos+int64(w))
			if err != nil {
				return 0, err
			}
			w += n
		}
		if j > i {
			end = pos + int64(j)
		}
		for isZero(j) {
			j += spillBlock
		}
		i = j
	}
	return end, nil
}
