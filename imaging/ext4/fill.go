package ext4

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
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
	write string // its write command, as debugfs echoes it ("" once it has)
	// Its content: the spill file, or, when the Stream took the content
	// (Content), where it goes if the Stream gives up (restore).
	path string
	meta ext4fs.File
	ino  uint32 // foreseen (Stream.nextIno)
	// set by the parser: debugfs allocated ino
	created bool
	pieces  []*piece
}

// piece is some of a file's blocks, allocated and filled together.
type piece struct {
	file   *streamFile
	ex     string // its ex command, as debugfs echoes it
	lo, hi uint64 // the file blocks it covers
	data   []blockRange
	buf    []byte // the content of blocks [lo, hi) when taken; nil once written
	// set by the writer once written: where its data went
	exts    []fileExtent
	written bool
}

// event is a command whose output the parser expects: a file's write or
// a piece's ex.
type event struct {
	file  *streamFile
	piece *piece
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

// exExtent parses a leaf extent line of "ex -l": "L/ D  i/ n  logical
// range  physical range  length [flags]", numbers padded to widths they
// may outgrow. v is the logical range, the physical range, the length.
func exExtent(line string) (v [5]uint64, flags string, ok bool) {
	f := strings.Fields(strings.ReplaceAll(line, "/", " / "))
	if len(f) < 13 || len(f) > 14 || f[1] != "/" || f[4] != "/" || f[7] != "-" || f[10] != "-" {
		return v, "", false
	}
	for _, j := range []int{0, 2, 3, 5} {
		if _, err := strconv.ParseUint(f[j], 10, 32); err != nil {
			return v, "", false
		}
	}
	for i, j := range [5]int{6, 8, 9, 11, 12} {
		n, err := strconv.ParseUint(f[j], 10, 64)
		if err != nil {
			return v, "", false
		}
		v[i] = n
	}
	if len(f) == 14 {
		flags = f[13]
	}
	return v, flags, true
}

const (
	fillBlock = 4096 // the Stream's block size
	// A taken content is read a piece at a time, and the pieces read but
	// not yet written are bounded.
	pieceSize  = 4 << 20
	fillBudget = 64 << 20
)

// pieceBufs recycles piece buffers by power-of-two class (4 KiB up to
// pieceSize): a fresh large allocation is zeroed and faulted in, only to
// be overwritten.
var pieceBufs [bufClasses]sync.Pool

const bufClasses = 11 // 4 KiB << 10 is pieceSize

func bufClass(n int64) int { return bits.Len64(uint64(max(n, 1)-1) >> 12) }

// getBuf returns a buffer of n bytes (n <= pieceSize), contents undefined.
func getBuf(n int64) []byte {
	c := bufClass(n)
	if b, ok := pieceBufs[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 4096<<c)
}

func putBuf(b []byte) {
	b = b[:cap(b)]
	if c := bufClass(int64(len(b))); 4096<<c == len(b) {
		pieceBufs[c].Put(&b)
	}
}

// errFillerStopped: the filler stopped before the content was written.
var errFillerStopped = errors.New("the content writer stopped")

// filler follows debugfs' output: which inode each file got and where
// its blocks are; it writes the contents into the image.
type filler struct {
	ctx    context.Context
	img    *os.File // opened for writing
	blocks uint64   // in the image

	mu     sync.Mutex
	queue  []event // written to debugfs, not yet seen in its output
	pushed int

	bmu     sync.Mutex
	bcond   *sync.Cond
	used    int64 // bytes of pieces read, not yet written
	stopped bool  // no piece will be written any more

	// the parser's, read once done is closed
	files map[uint32]*streamFile
	err   error
	done  chan struct{}
}

func newFiller(ctx context.Context, img string, size int64) (*filler, error) {
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("open image for contents: %w", err)
	}
	fl := &filler{ctx: ctx, img: f, blocks: uint64(size) / fillBlock, files: map[uint32]*streamFile{}, done: make(chan struct{})}
	fl.bcond = sync.NewCond(&fl.bmu)
	return fl, nil
}

// push announces a command before it reaches debugfs.
func (f *filler) push(ev event) {
	f.mu.Lock()
	f.queue = append(f.queue, ev)
	f.pushed++
	f.mu.Unlock()
}

func (f *filler) pop() (event, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.queue) == 0 {
		return event{}, false
	}
	ev := f.queue[0]
	f.queue[0] = event{}
	f.queue = f.queue[1:]
	return ev, true
}

// acquire counts n bytes read into a piece, waiting while the pieces not
// yet written hold the budget; flush, before it waits, hands debugfs the
// commands the writer waits for. It fails once the writer has stopped.
func (f *filler) acquire(n int64, flush func() error) error {
	f.bmu.Lock()
	defer f.bmu.Unlock()
	flushed := false
	for !f.stopped && f.used > 0 && f.used+n > fillBudget {
		if !flushed {
			flushed = true
			f.bmu.Unlock()
			err := flush()
			f.bmu.Lock()
			if err != nil {
				return err
			}
			continue
		}
		f.bcond.Wait()
	}
	if f.stopped {
		return errFillerStopped
	}
	f.used += n
	return nil
}

func (f *filler) release(n int64) {
	f.bmu.Lock()
	f.used -= n
	f.bcond.Broadcast()
	f.bmu.Unlock()
}

func (f *filler) stop() {
	f.bmu.Lock()
	f.stopped = true
	f.bcond.Broadcast()
	f.bmu.Unlock()
}

// run parses debugfs' output r until it ends, handing each piece to a
// writer, and closes done once the writer is through. Its first error is
// f.err.
func (f *filler) run(r io.ReadCloser) {
	work := make(chan *piece, 1024)
	wrote := make(chan error, 1)
	go func() { wrote <- f.writeAll(work) }()
	perr := f.parse(r, work)
	r.Close()
	close(work)
	werr := <-wrote
	f.stop()
	f.img.Close()
	f.err = errors.Join(perr, werr)
	close(f.done)
}

func (f *filler) parse(r io.Reader, work chan<- *piece) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var awaiting *streamFile // write echoed, inode to come
	var cur *piece           // ex echoed, extents to come
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
				ev, ok := f.pop()
				if !ok || ev.file == nil || ev.file.write != cmd {
					fail("debugfs ran %q out of order", cmd)
					continue
				}
				awaiting = ev.file
			case strings.HasPrefix(cmd, "ex "):
				ev, ok := f.pop()
				if !ok || ev.piece == nil || ev.piece.ex != cmd || !ev.piece.file.created {
					fail("debugfs ran %q out of order", cmd)
					continue
				}
				cur = ev.piece
			}
			continue
		}
		if strings.HasPrefix(line, "#") {
			send() // the comment after an ex
			continue
		}
		if n, ok := strings.CutPrefix(line, "Allocated inode: "); ok && awaiting != nil {
			ino, err := strconv.ParseUint(n, 10, 32)
			if _, dup := f.files[uint32(ino)]; err != nil || uint32(ino) != awaiting.ino || dup {
				fail("debugfs allocated inode %q for %q, not %d", n, awaiting.write, awaiting.ino)
			} else {
				awaiting.created = true
				awaiting.write = "" // matched: not kept for every file of a large tree
				f.files[awaiting.ino] = awaiting
			}
			awaiting = nil
			continue
		}
		if cur != nil {
			if v, flags, ok := exExtent(line); ok {
				if flags != "" && flags != "Uninit" || v[1]-v[0]+1 != v[4] || v[3]-v[2]+1 != v[4] {
					fail("inode %d: extent %q", cur.file.ino, line)
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
	if awaiting != nil {
		fail("debugfs did not finish its last file")
	}
	f.mu.Lock()
	if n := len(f.queue); n > 0 {
		fail("debugfs ran %d of %d commands", f.pushed-n, f.pushed)
	}
	f.mu.Unlock()
	return first
}

// writeAll writes each piece into its blocks; after an error it only
// drains work (what is not written stays in memory, for restore).
func (f *filler) writeAll(work <-chan *piece) error {
	buf := make([]byte, 1<<20)
	var first error
	for p := range work {
		if first == nil {
			if first = f.ctx.Err(); first == nil {
				first = f.fill(p, buf)
			}
			if first != nil {
				f.stop()
			}
		}
	}
	return first
}

// fill writes p's data into its extents (ex lists the whole file's:
// those in p's blocks are its), which must map its data blocks, each
// once, inside the image. What follows the content in its last block is
// left as it is: zeros, as every block of a new image never written, and
// never read (past the size).
func (f *filler) fill(p *piece, buf []byte) error {
	sf := p.file
	var exts []fileExtent
	var got []blockRange
	for _, e := range p.exts {
		if e.physical == 0 || e.physical+e.length > f.blocks || e.physical+e.length < e.physical {
			return fmt.Errorf("inode %d: extent %+v outside the image", sf.ino, e)
		}
		lo, hi := max(e.logical, p.lo), min(e.logical+e.length, p.hi)
		if lo >= hi {
			continue
		}
		e = fileExtent{logical: lo, physical: e.physical + lo - e.logical, length: hi - lo}
		exts = append(exts, e)
		if n := len(got); n > 0 && got[n-1].end == e.logical {
			got[n-1].end += e.length
			continue
		}
		got = append(got, blockRange{e.logical, e.logical + e.length})
	}
	if !slices.Equal(got, p.data) {
		return fmt.Errorf("inode %d: extents %v do not map its data blocks %v", sf.ino, p.exts, p.data)
	}
	size := sf.meta.Size
	var src *os.File
	if p.buf == nil {
		var err error
		if src, err = os.Open(sf.path); err != nil {
			return fmt.Errorf("content of inode %d: %w", sf.ino, err)
		}
		defer src.Close()
	}
	for _, e := range exts {
		from := int64(e.logical) * fillBlock
		end := min(from+int64(e.length)*fillBlock, size)
		dst := int64(e.physical) * fillBlock
		if p.buf != nil {
			off := from - int64(p.lo)*fillBlock
			if _, err := f.img.WriteAt(p.buf[off:off+end-from], dst); err != nil {
				return fmt.Errorf("image: content of inode %d: %w", sf.ino, err)
			}
			continue
		}
		if err := f.copy(sf, src, from, end, dst, buf); err != nil {
			return err
		}
	}
	p.exts, p.written = exts, true
	if p.buf != nil {
		f.release(int64(len(p.buf)))
		putBuf(p.buf)
		p.buf = nil
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
