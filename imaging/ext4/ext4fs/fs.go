// Package ext4fs reads (and, for owners, patches) ext4 images directly:
// WriteTar streams the tree of an image as a tar, reading the
// image file itself: no mount, no debugfs dump into scratch space, one read
// of each file's content. It reads the subset of ext4 that paddock's
// volumes use (extents, 64bit, flex_bg, metadata_csum, htree directories
// read linearly); an image with anything else (inline data, encryption,
// indirect block maps, an unreplayed journal) is refused with
// ErrUnsupported before a byte is written, so the caller can take its
// slower, general path.
//
// The image may come from a hostile guest: every structure is bounded and
// checked against the image's size before it is used, directory cycles and
// absurd depths are refused, and nothing is trusted to be what e2fsck
// would have made of it.
package ext4fs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrUnsupported: the image uses a feature this reader does not read.
var ErrUnsupported = errors.New("ext4 feature not supported by the direct reader")

// ErrCorrupt: the image's structures are inconsistent.
var ErrCorrupt = errors.New("corrupt ext4 image")

const (
	sbOffset = 1024
	sbMagic  = 0xEF53
	rootIno  = 2

	incompatFiletype   = 0x2
	incompatRecover    = 0x4
	incompatJournalDev = 0x8
	incompatMetaBG     = 0x10
	incompatExtents    = 0x40
	incompat64bit      = 0x80
	incompatMMP        = 0x100
	incompatFlexBG     = 0x200
	incompatEAInode    = 0x400
	incompatCsumSeed   = 0x2000
	incompatLargedir   = 0x4000
	// What this reader can read; anything else is ErrUnsupported.
	incompatKnown = incompatFiletype | incompatExtents | incompat64bit | incompatMMP | incompatFlexBG |
		incompatEAInode | incompatCsumSeed | incompatLargedir

	flagExtents    = 0x80000
	flagInlineData = 0x10000000

	extentMagic = 0xF30A
	maxDepth    = 5
)

// image is an open ext4 image.
type image struct {
	f              *os.File
	size           int64 // bytes in the file
	bs             int64 // block size
	blocks         uint64
	inodes         uint32
	inodesPerGroup uint32
	inodeSize      int64
	tables         []uint64 // inode table block of each group
	unused         []uint32 // inodes never used at the end of each group's table
	csumSeed       uint32   // metadata_csum: the seed of every checksum
	csum           bool     // metadata_csum is on
	// The inode table block read last: a directory's inodes are mostly
	// neighbours, so most lookups are served from it.
	cached    int64
	cachedBuf []byte
}

func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, a...))
}

func open(path string) (*image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	img, err := readSuper(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return img, nil
}

func readSuper(f *os.File) (*image, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, sbOffset); err != nil {
		return nil, corrupt("reading the superblock: %v", err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[0x38:]) != sbMagic {
		return nil, corrupt("no ext4 superblock")
	}
	incompat := le.Uint32(sb[0x60:])
	if incompat&incompatRecover != 0 {
		return nil, fmt.Errorf("%w: the journal holds writes not replayed yet", ErrUnsupported)
	}
	if extra := incompat &^ incompatKnown; extra != 0 {
		return nil, fmt.Errorf("%w: incompatible features %#x", ErrUnsupported, extra)
	}
	if incompat&incompatFiletype == 0 || incompat&incompatExtents == 0 {
		return nil, fmt.Errorf("%w: no filetype or extents feature", ErrUnsupported)
	}
	logBS := le.Uint32(sb[0x18:])
	if logBS > 6 { // 1 KiB … 64 KiB
		return nil, corrupt("block size 2^%d KiB", logBS)
	}
	img := &image{f: f, size: st.Size(), bs: 1024 << logBS}
	img.blocks = uint64(le.Uint32(sb[0x04:]))
	if incompat&incompat64bit != 0 {
		img.blocks |= uint64(le.Uint32(sb[0x150:])) << 32
	}
	img.inodes = le.Uint32(sb[0x00:])
	img.inodesPerGroup = le.Uint32(sb[0x28:])
	blocksPerGroup := uint64(le.Uint32(sb[0x20:]))
	firstData := uint64(le.Uint32(sb[0x14:]))
	img.inodeSize = 128
	if le.Uint32(sb[0x4C:]) >= 1 {
		img.inodeSize = int64(le.Uint16(sb[0x58:]))
	}
	switch {
	case img.blocks == 0 || uint64(img.size)/uint64(img.bs) < img.blocks:
		return nil, corrupt("%d blocks of %d bytes in a %d-byte file", img.blocks, img.bs, img.size)
	case img.inodesPerGroup == 0 || blocksPerGroup == 0 || blocksPerGroup > 8*uint64(img.bs):
		return nil, corrupt("group geometry (%d inodes, %d blocks a group)", img.inodesPerGroup, blocksPerGroup)
	case img.inodeSize < 128 || img.inodeSize > img.bs || img.inodeSize&(img.inodeSize-1) != 0:
		return nil, corrupt("inode size %d", img.inodeSize)
	}
	groups := (img.blocks - firstData + blocksPerGroup - 1) / blocksPerGroup
	if uint64(img.inodes) > groups*uint64(img.inodesPerGroup) {
		return nil, corrupt("%d inodes in %d groups of %d", img.inodes, groups, img.inodesPerGroup)
	}
	descSize := int64(32)
	if incompat&incompat64bit != 0 {
		descSize = int64(le.Uint16(sb[0xFE:]))
		if descSize < 64 || descSize > 1024 || descSize&(descSize-1) != 0 {
			return nil, corrupt("group descriptor size %d", descSize)
		}
	}
	gdt := make([]byte, int64(groups)*descSize)
	if _, err := f.ReadAt(gdt, int64(firstData+1)*img.bs); err != nil {
		return nil, corrupt("reading the group descriptors: %v", err)
	}
	img.tables, img.unused = make([]uint64, groups), make([]uint32, groups)
	const roCompatMetadataCsum, bgInodeUninit = 0x400, 0x1
	if img.csum = le.Uint32(sb[0x64:])&roCompatMetadataCsum != 0; img.csum {
		img.csumSeed = crc32c(^uint32(0), sb[0x68:0x78]) // s_uuid
		if incompat&incompatCsumSeed != 0 {
			img.csumSeed = le.Uint32(sb[0x270:])
		}
	}
	perGroup := uint64(img.inodesPerGroup) * uint64(img.inodeSize) / uint64(img.bs)
	for g := range img.tables {
		d := gdt[int64(g)*descSize:]
		t := uint64(le.Uint32(d[0x08:]))
		if descSize >= 64 {
			t |= uint64(le.Uint32(d[0x28:])) << 32
		}
		if t == 0 || t+perGroup > img.blocks {
			return nil, corrupt("group %d: inode table at block %d", g, t)
		}
		img.tables[g] = t
		if le.Uint16(d[0x12:])&bgInodeUninit != 0 {
			img.unused[g] = img.inodesPerGroup
		} else if img.csum { // itable_unused is kept only with group checksums
			u := uint32(le.Uint16(d[0x1C:]))
			if descSize >= 64 {
				u |= uint32(le.Uint16(d[0x32:])) << 16
			}
			img.unused[g] = min(u, img.inodesPerGroup)
		}
	}
	return img, nil
}

// inode is what the walk needs of one.
type inode struct {
	num     uint32
	mode    uint16
	links   uint16
	flags   uint32
	size    int64
	mtime   int64 // seconds
	mtimeNs int64
	block   [60]byte
}

const (
	sIFMT   = 0xF000
	sIFSOCK = 0xC000
	sIFLNK  = 0xA000
	sIFREG  = 0x8000
	sIFBLK  = 0x6000
	sIFDIR  = 0x4000
	sIFCHR  = 0x2000
	sIFIFO  = 0x1000
)

func (img *image) inode(n uint32) (*inode, error) {
	if n == 0 || n > img.inodes {
		return nil, corrupt("inode %d out of range", n)
	}
	g, i := (n-1)/img.inodesPerGroup, int64((n-1)%img.inodesPerGroup)
	off := int64(img.tables[g])*img.bs + i*img.inodeSize
	blk := off / img.bs * img.bs
	if img.cachedBuf == nil || img.cached != blk {
		if img.cachedBuf == nil {
			img.cachedBuf = make([]byte, img.bs)
		}
		img.cached = -1
		if _, err := img.f.ReadAt(img.cachedBuf, blk); err != nil {
			return nil, corrupt("reading inode %d: %v", n, err)
		}
		img.cached = blk
	}
	raw := img.cachedBuf[off-blk : off-blk+img.inodeSize]
	le := binary.LittleEndian
	ino := &inode{num: n, mode: le.Uint16(raw[0x00:]), links: le.Uint16(raw[0x1A:]), flags: le.Uint32(raw[0x20:])}
	ino.size = int64(uint64(le.Uint32(raw[0x04:])) | uint64(le.Uint32(raw[0x6C:]))<<32)
	ino.mtime = int64(int32(le.Uint32(raw[0x10:])))
	if img.inodeSize > 128 {
		extra := int64(le.Uint16(raw[0x80:]))
		if 0x80+extra <= img.inodeSize && extra >= 0x8C-0x80 {
			x := le.Uint32(raw[0x88:])
			ino.mtime += int64(x&3) << 32
			ino.mtimeNs = int64(x >> 2)
			if ino.mtimeNs >= 1e9 {
				ino.mtimeNs = 0
			}
		}
	}
	copy(ino.block[:], raw[0x28:0x28+60])
	if ino.flags&flagInlineData != 0 {
		return nil, fmt.Errorf("%w: inode %d has inline data", ErrUnsupported, n)
	}
	return ino, nil
}

// extent maps file blocks [logical, logical+length) to physical blocks;
// an unwritten extent reads as zeros.
type extent struct {
	logical   uint64
	length    uint64
	physical  uint64
	unwritten bool
}

// extents returns the extents of ino covering its size, in logical
// order, refusing trees that point outside the image or overlap.
func (img *image) extents(ino *inode) ([]extent, error) {
	if ino.flags&flagExtents == 0 {
		if ino.size == 0 {
			return nil, nil
		}
		return nil, fmt.Errorf("%w: inode %d uses block maps, not extents", ErrUnsupported, ino.num)
	}
	var out []extent
	budget := 1 << 20 // nodes and entries read for one inode
	if err := img.walkExtents(ino.num, ino.block[:], 0, -1, &out, &budget); err != nil {
		return nil, err
	}
	end := uint64((ino.size + img.bs - 1) / img.bs)
	var prev uint64
	kept := out[:0]
	for _, e := range out {
		if e.logical < prev {
			return nil, corrupt("inode %d: extents overlap or are out of order", ino.num)
		}
		prev = e.logical + e.length
		if e.logical >= end {
			continue // preallocated past the size
		}
		kept = append(kept, e)
	}
	return kept, nil
}

// extentNode checks the header of node, an extent node of inode num at
// level (of depth wantDepth, or any with -1), and charges its entries to
// budget, which bounds the whole tree's walk.
func extentNode(num uint32, node []byte, level, wantDepth int, budget *int) (entries, depth int, err error) {
	le := binary.LittleEndian
	if len(node) < 12 || le.Uint16(node[0:]) != extentMagic {
		return 0, 0, corrupt("inode %d: bad extent header", num)
	}
	entries, maxEntries, depth := int(le.Uint16(node[2:])), int(le.Uint16(node[4:])), int(le.Uint16(node[6:]))
	if entries > maxEntries || 12+12*maxEntries > len(node) || depth > maxDepth || wantDepth >= 0 && depth != wantDepth || level > maxDepth {
		return 0, 0, corrupt("inode %d: bad extent node (%d of %d entries, depth %d)", num, entries, maxEntries, depth)
	}
	*budget -= entries + 1
	if *budget < 0 {
		return 0, 0, corrupt("inode %d: extent tree too large", num)
	}
	return entries, depth, nil
}

// extentChild reads the block an index entry e of inode num points to.
func (img *image) extentChild(num uint32, e []byte) (uint64, []byte, error) {
	le := binary.LittleEndian
	leaf := uint64(le.Uint16(e[8:]))<<32 | uint64(le.Uint32(e[4:]))
	if leaf == 0 || leaf >= img.blocks {
		return 0, nil, corrupt("inode %d: extent index to block %d", num, leaf)
	}
	child := make([]byte, img.bs)
	if _, err := img.f.ReadAt(child, int64(leaf)*img.bs); err != nil {
		return 0, nil, corrupt("inode %d: reading extent block %d: %v", num, leaf, err)
	}
	return leaf, child, nil
}

func (img *image) walkExtents(num uint32, node []byte, level int, wantDepth int, out *[]extent, budget *int) error {
	le := binary.LittleEndian
	entries, depth, err := extentNode(num, node, level, wantDepth, budget)
	if err != nil {
		return err
	}
	for i := range entries {
		e := node[12+12*i:]
		if depth == 0 {
			length := uint64(le.Uint16(e[4:]))
			unwritten := length > 32768
			if unwritten {
				length -= 32768
			}
			phys := uint64(le.Uint16(e[6:]))<<32 | uint64(le.Uint32(e[8:]))
			if length == 0 || phys+length > img.blocks {
				return corrupt("inode %d: extent at block %d (%d blocks) outside the image", num, phys, length)
			}
			*out = append(*out, extent{logical: uint64(le.Uint32(e[0:])), length: length, physical: phys, unwritten: unwritten})
			continue
		}
		_, child, err := img.extentChild(num, e)
		if err != nil {
			return err
		}
		if err := img.walkExtents(num, child, level+1, depth-1, out, budget); err != nil {
			return err
		}
	}
	return nil
}

// content reads ino's bytes [0, size) through its extents, holes and
// unwritten extents as zeros, into w.
func (img *image) content(ino *inode, exts []extent, w io.Writer, buf []byte) error {
	var pos int64 // bytes written
	zero := func(n int64) error {
		clear(buf)
		for n > 0 {
			k := min(n, int64(len(buf)))
			if _, err := w.Write(buf[:k]); err != nil {
				return err
			}
			n -= k
			pos += k
		}
		return nil
	}
	for _, e := range exts {
		start := int64(e.logical) * img.bs
		if start > pos {
			if err := zero(min(start, ino.size) - pos); err != nil {
				return err
			}
		}
		n := min(int64(e.length)*img.bs, ino.size-start)
		if e.unwritten {
			if err := zero(n); err != nil {
				return err
			}
			continue
		}
		off := int64(e.physical) * img.bs
		for n > 0 {
			k := min(n, int64(len(buf)))
			if _, err := img.f.ReadAt(buf[:k], off); err != nil {
				return fmt.Errorf("reading inode %d: %w", ino.num, err)
			}
			if _, err := w.Write(buf[:k]); err != nil {
				return err
			}
			n -= k
			off += k
			pos += k
		}
	}
	if pos < ino.size {
		return zero(ino.size - pos)
	}
	return nil
}
