package flatten

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// spill holds the contents of regular files between reading the layers and
// emitting the flattened stream.
//
// Why spill rather than re-read the layers: a layer is an io.Reader that
// may be a network stream and is usually gzip- or zstd-compressed, so a
// second pass would double the decompression cost (the dominant cost:
// ~2 s for a 100 MB gzip layer) and require seekable sources. Spilling
// costs one sequential write and read of the file contents, on tmpfs when
// the caller points ScratchDir there.
//
// Layout: one unlinked file (nothing is left behind even after a crash);
// each content starts 4 KiB-aligned; all-zero 4 KiB blocks are skipped so
// sparse files stay sparse; the blocks of a content that no longer
// reaches the final tree (overwritten, whited out) are punched out, so
// scratch usage tracks the live tree, not the sum of all layers.
type spill struct {
	f    *os.File
	end  int64
	buf  []byte
	zero []byte
}

const spillAlign = 4096

func newSpill(dir string) (*spill, error) {
	if dir == "" {
		dir = os.TempDir()
	}
	f, err := os.CreateTemp(dir, ".paddock-flatten-*.spill")
	if err != nil {
		return nil, fmt.Errorf("create spill file: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("unlink spill file: %w", err)
	}
	return &spill{f: f, buf: make([]byte, 1<<20), zero: make([]byte, spillAlign)}, nil
}

func (s *spill) Close() error { return s.f.Close() }

// write copies exactly size bytes from r and returns where they are.
func (s *spill) write(r io.Reader, size int64) (int64, error) {
	off := (s.end + spillAlign - 1) &^ (spillAlign - 1)
	pos := off
	for rem := size; rem > 0; {
		n := int64(len(s.buf))
		if n > rem {
			n = rem
		}
		chunk := s.buf[:n]
		if _, err := io.ReadFull(r, chunk); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		if err := s.writeSparse(chunk, pos); err != nil {
			return 0, fmt.Errorf("write spill file: %w", err)
		}
		pos += n
		rem -= n
	}
	s.end = off + size
	return off, nil
}

// writeSparse writes the non-zero 4 KiB blocks of chunk at pos (aligned).
func (s *spill) writeSparse(chunk []byte, pos int64) error {
	isZero := func(j int) bool {
		return j+spillAlign <= len(chunk) && bytes.Equal(chunk[j:j+spillAlign], s.zero)
	}
	for i := 0; i < len(chunk); {
		j := i
		for j < len(chunk) && !isZero(j) {
			j = min(j+spillAlign, len(chunk))
		}
		if j > i {
			if _, err := s.f.WriteAt(chunk[i:j], pos+int64(i)); err != nil {
				return err
			}
		}
		for isZero(j) {
			j += spillAlign
		}
		i = j
	}
	return nil
}

// reader returns the content stored at off. Holes (never written or
// trailing zeros) read back as zeros because the file is extended first.
func (s *spill) reader(off, size int64) io.Reader {
	return io.NewSectionReader(s.f, off, size)
}

// finish extends the file over trailing holes so reads past the last
// written byte return zeros instead of EOF.
func (s *spill) finish() error {
	if err := s.f.Truncate(s.end); err != nil {
		return fmt.Errorf("extend spill file: %w", err)
	}
	return nil
}

// release gives the blocks of a dropped content back. Best effort: a
// filesystem without hole punching just keeps them until Close.
func (s *spill) release(off, size int64) {
	start := (off + spillAlign - 1) &^ (spillAlign - 1)
	end := (off + size + spillAlign - 1) &^ (spillAlign - 1)
	if end > start {
		_ = unix.Fallocate(int(s.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, start, end-start)
	}
}
