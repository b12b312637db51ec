package ext4

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/imaging/ext4/ext4fs"
)

// A Stream's regular files are not copied by debugfs "write", which
// writes and re-reads them a 4 KiB block at a time (most of its time):
// debugfs creates each one empty, allocates its blocks unwritten
// (fallocate) and prints them (ex -l); a filler reads that from debugfs'
// standard output and writes the content into those blocks itself, in
// large writes, while the stream goes on. ext4fs.Patch then sets each
// file's mode, size and mtime and marks its extents written, in the pass
// that sets the owners.

// streamFile is one regular file of a Stream.
type streamFile struct {
	write   string // the commands, as debugfs echoes them
	ex      string // "" for an empty file
	content string // its spill file
	meta    ext4fs.File
	data    []blockRange // the blocks holding data (the spill's holes stay holes)
	ino     uint32
	exts    []fileExtent
}

type fileExtent struct{ logical, physical, length uint64 }

// blockRange is file blocks [start, end).
type blockRange struct{ start, end uint64 }

// dataRanges lists the blocks of a spill file of size bytes that hold
// data: the spill skips all-zero blocks, which stay holes in the image,
// as debugfs write left them (SEEK_DATA/SEEK_HOLE; without them, all of
// it). A partial last block is data, zeros or not, as the spill wrote it.
func dataRanges(path string, size int64) ([]blockRange, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("content: %w", err)
	}
	defer unix.Close(fd)
	all := []blockRange{{0, uint64(size+fillBlock-1) / fillBlock}}
	var out []blockRange
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break // only a hole left
		}
		if err != nil {
			return all, nil
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return all, nil
		}
		hole = min(hole, size)
		if data >= hole {
			break
		}
		out = append(out, blockRange{uint64(data) / fillBlock, uint64(hole+fillBlock-1) / fillBlock})
		off = hole
	}
	// ranges rounded out to blocks may touch: one range
	merged := out[:0]
	for _, r := range out {
		if n := len(merged); n > 0 && merged[n-1].end >= r.start {
			merged[n-1].end = max(merged[n-1].end, r.end)
			continue
		}
		merged = append(merged, r)
	}
	return merged, nil
}

// exLine is a leaf extent of "ex -l": level, entry, logical range,
// physical range, length, flags.
var exLine = regexp.MustCompile(`^\s*\d+/\s*\d+\s+\d+/\s*\d+\s+(\d+)\s+-\s+(\d+)\s+(\d+)\s+-\s+(\d+)\s+(\d+)(?:\s+(\S+))?\s*$`)

const fillBlock = 4096 // the Stream's block size

// filler follows debugfs' output: which inode each file got and where
// its blocks are; it writes the contents into the image.
type filler struct {
	ctx    context.Context
	img    *os.File // opened for writing
	blocks uint64   // in the image

	mu     sync.Mutex
	queue  []*streamFile // written to debugfs, not yet seen in its output
	pushed int

	// the parser's, read once done is closed
	files map[uint32]ext4fs.File
	err   error
	done  chan struct{}
}

func newFiller(ctx context.Context, img string, size int64) (*filler, error) {
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("open image for contents: %w", err)
	}
	return &filler{ctx: ctx, img: f, blocks: uint64(size) / fillBlock, files: map[uint32]ext4fs.File{}, done: make(chan struct{})}, nil
}

// push announces a file before its commands reach debugfs.
func (f *filler) push(sf *streamFile) {
	f.mu.Lock()
	f.queue = append(f.queue, sf)
	f.pushed++
	f.mu.Unlock()
}

func (f *filler) pop() *streamFile {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.queue) == 0 {
		return nil
	}
	sf := f.queue[0]
	f.queue[0] = nil
	f.queue = f.queue[1:]
	return sf
}

// run parses debugfs' output r until it ends, handing each file with
// content to a writer, and closes done once the writer is through. Its
// first error is f.err.
func (f *filler) run(r io.ReadCloser) {
	work := make(chan *streamFile, 1024)
	wrote := make(chan error, 1)
	go func() { wrote <- f.writeAll(work) }()
	perr := f.parse(r, work)
	r.Close()
	close(work)
	werr := <-wrote
	f.img.Close()
	f.err = errors.Join(perr, werr)
	close(f.done)
}

func (f *filler) parse(r io.Reader, work chan<- *streamFile) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var awaiting, last, cur *streamFile // echoed write; created, ex to come; ex echoed
	var first error
	fail := func(format string, a ...any) {
		if first == nil {
			first = fmt.Errorf(format, a...)
		}
	}
	send := func() {
		if cur != nil {
			work <- cur
			cur = nil
		}
	}
	for sc.Scan() {
		line := sc.Text()
		if cmd, ok := strings.CutPrefix(line, "debugfs: "); ok {
			send()
			if awaiting != nil {
				fail("debugfs created no inode for %q", awaiting.write)
				awaiting = nil
			}
			switch {
			case strings.HasPrefix(cmd, "write "):
				sf := f.pop()
				if sf == nil || sf.write != cmd {
					fail("debugfs ran %q out of order", cmd)
					continue
				}
				awaiting = sf
			case strings.HasPrefix(cmd, "ex "):
				if last == nil || last.ex != cmd {
					fail("debugfs ran %q out of order", cmd)
					continue
				}
				cur, last = last, nil
			}
			continue
		}
		if n, ok := strings.CutPrefix(line, "Allocated inode: "); ok && awaiting != nil {
			ino, err := strconv.ParseUint(n, 10, 32)
			if _, dup := f.files[uint32(ino)]; err != nil || ino == 0 || dup {
				fail("debugfs allocated inode %q for %q", n, awaiting.write)
			} else {
				awaiting.ino = uint32(ino)
				f.files[awaiting.ino] = awaiting.meta
			}
			if awaiting.ex != "" {
				last = awaiting
			}
			awaiting = nil
			continue
		}
		if cur != nil {
			if m := exLine.FindStringSubmatch(line); m != nil {
				var v [5]uint64
				for i := range v {
					v[i], _ = strconv.ParseUint(m[i+1], 10, 64)
				}
				if m[6] != "" && m[6] != "Uninit" || v[1]-v[0]+1 != v[4] || v[3]-v[2]+1 != v[4] {
					fail("inode %d: extent %q", cur.ino, line)
					continue
				}
				cur.exts = append(cur.exts, fileExtent{logical: v[0], physical: v[2], length: v[4]})
			}
		}
	}
	send()
	if err := sc.Err(); err != nil {
		fail("reading debugfs' output: %v", err)
	}
	if awaiting != nil || last != nil {
		fail("debugfs did not finish its last file")
	}
	f.mu.Lock()
	if n := len(f.queue); n > 0 {
		fail("debugfs created %d of %d files", f.pushed-n, f.pushed)
	}
	f.mu.Unlock()
	return first
}

// writeAll writes each file's content into its blocks; after an error it
// only drains work.
func (f *filler) writeAll(work <-chan *streamFile) error {
	buf := make([]byte, 1<<20)
	var first error
	for sf := range work {
		if first == nil {
			if first = f.ctx.Err(); first == nil {
				first = f.fill(sf, buf)
			}
		}
	}
	return first
}

// fill copies sf's content into its extents, which must map its blocks,
// each once, in order, inside the image. What follows the content in its
// last block is left as it is: zeros, as every block of a new image
// never written, and never read (past the size).
func (f *filler) fill(sf *streamFile, buf []byte) error {
	size := sf.meta.Size
	// the extents, joined where they follow each other, must be the data
	// ranges exactly
	var got []blockRange
	for _, e := range sf.exts {
		if e.physical == 0 || e.physical+e.length > f.blocks || e.physical+e.length < e.physical {
			return fmt.Errorf("inode %d (%s): extent %+v outside the image", sf.ino, sf.write, e)
		}
		if n := len(got); n > 0 && got[n-1].end == e.logical {
			got[n-1].end += e.length
			continue
		}
		got = append(got, blockRange{e.logical, e.logical + e.length})
	}
	if !slices.Equal(got, sf.data) {
		return fmt.Errorf("inode %d (%s): extents %v do not map its data blocks %v", sf.ino, sf.write, sf.exts, sf.data)
	}
	src, err := os.Open(sf.content)
	if err != nil {
		return fmt.Errorf("content of inode %d: %w", sf.ino, err)
	}
	defer src.Close()
	for _, e := range sf.exts {
		from := int64(e.logical) * fillBlock
		end := min(from+int64(e.length)*fillBlock, size)
		if err := f.copy(sf, src, from, end, int64(e.physical)*fillBlock, buf); err != nil {
			return err
		}
	}
	return nil
}

// copy writes src's bytes [from, end) at dst in the image: by sendfile,
// one copy in the kernel instead of a read and a write through buf,
// which is used only where sendfile is refused.
func (f *filler) copy(sf *streamFile, src *os.File, from, end, dst int64, buf []byte) error {
	if _, err := f.img.Seek(dst, io.SeekStart); err != nil {
		return fmt.Errorf("image: content of inode %d: %w", sf.ino, err)
	}
	for from < end {
		if err := f.ctx.Err(); err != nil {
			return err
		}
		off := from
		n, err := unix.Sendfile(int(f.img.Fd()), int(src.Fd()), &off, int(min(end-from, 1<<30)))
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err == unix.EINVAL || err == unix.ENOSYS {
			break // not between these files: through buf
		}
		if err != nil {
			return fmt.Errorf("image: content of inode %d: %w", sf.ino, err)
		}
		if n == 0 {
			return fmt.Errorf("content of inode %d: %w", sf.ino, io.ErrUnexpectedEOF)
		}
		from += int64(n)
		dst += int64(n)
	}
	for from < end {
		if err := f.ctx.Err(); err != nil {
			return err
		}
		k := min(int64(len(buf)), end-from)
		if _, err := src.ReadAt(buf[:k], from); err != nil {
			return fmt.Errorf("content of inode %d: %w", sf.ino, err)
		}
		if _, err := f.img.WriteAt(buf[:k], dst); err != nil {
			return fmt.Errorf("image: content of inode %d: %w", sf.ino, err)
		}
		from += k
		dst += k
	}
	return nil
}
