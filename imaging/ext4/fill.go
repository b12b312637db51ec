package ext4

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"

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
	ino     uint32
	exts    []fileExtent
}

type fileExtent struct{ logical, physical, length uint64 }

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
// each once, in order, inside the image. The tail of the last block is
// written as zeros.
func (f *filler) fill(sf *streamFile, buf []byte) error {
	size := sf.meta.Size
	want := uint64(size+fillBlock-1) / fillBlock
	var next uint64
	for _, e := range sf.exts {
		if e.logical != next || e.physical == 0 || e.physical+e.length > f.blocks || e.physical+e.length < e.physical {
			return fmt.Errorf("inode %d (%s): extents %v do not map its %d blocks", sf.ino, sf.write, sf.exts, want)
		}
		next += e.length
	}
	if next != want {
		return fmt.Errorf("inode %d (%s): extents %v do not map its %d blocks", sf.ino, sf.write, sf.exts, want)
	}
	src, err := os.Open(sf.content)
	if err != nil {
		return fmt.Errorf("content of inode %d: %w", sf.ino, err)
	}
	defer src.Close()
	for _, e := range sf.exts {
		from := int64(e.logical) * fillBlock
		end := min(from+int64(e.length)*fillBlock, size)
		dst := int64(e.physical) * fillBlock
		for pos := from; pos < end; {
			if err := f.ctx.Err(); err != nil {
				return err
			}
			k := min(int64(len(buf)), end-pos)
			if _, err := src.ReadAt(buf[:k], pos); err != nil {
				return fmt.Errorf("content of inode %d: %w", sf.ino, err)
			}
			n := (k + fillBlock - 1) / fillBlock * fillBlock
			clear(buf[k:n])
			if _, err := f.img.WriteAt(buf[:n], dst+pos-from); err != nil {
				return fmt.Errorf("image: content of inode %d: %w", sf.ino, err)
			}
			pos += k
		}
	}
	return nil
}
