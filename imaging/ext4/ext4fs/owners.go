package ext4fs

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c is ext4's checksum step: CRC32C from seed c, without the
// pre- and post-inversion hash/crc32 applies.
func crc32c(c uint32, p []byte) uint32 { return ^crc32.Update(^c, castagnoli, p) }

// SetOwners makes every inode in use in the image at path (the root and
// every inode from the first non-reserved one on) owned by uid:gid,
// rewriting each inode's checksum. For an image built from a tree whose
// files all belong to one owner (a workspace), it replaces a per-file
// debugfs "sif uid/gid" pass. The image must not be in use; its journal
// must be clean (a new image's is).
func SetOwners(path string, uid, gid uint32) (int, error) {
	return Patch(path, uid, gid, nil)
}

// File is what Patch sets on one regular file's inode.
type File struct {
	Perm  uint16 // permission bits (07777); the type stays regular
	Size  int64
	Mtime int64 // seconds since the epoch (nanoseconds zero)
	// Written marks the file's extents written: its blocks were
	// allocated unwritten (debugfs fallocate) and filled directly.
	Written bool
}

// Patch is SetOwners that also completes the regular files in files (by
// inode number) in the same pass: their mode, size, mtime and, when
// Written, extents. An inode in files that is not a regular file in use
// is refused, as is an extent tree it cannot read.
func Patch(path string, uid, gid uint32, files map[uint32]File) (int, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	img, err := readSuper(f)
	if err != nil {
		return 0, err
	}
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, sbOffset); err != nil {
		return 0, err
	}
	firstIno := uint32(11)
	if binary.LittleEndian.Uint32(sb[0x4C:]) >= 1 {
		firstIno = binary.LittleEndian.Uint32(sb[0x54:])
	}
	le := binary.LittleEndian
	table := make([]byte, int64(img.inodesPerGroup)*img.inodeSize)
	changed, patched := 0, 0
	for g := range img.tables {
		used := img.inodesPerGroup - img.unused[g]
		if used == 0 {
			continue
		}
		buf := table[:int64(used)*img.inodeSize]
		off := int64(img.tables[g]) * img.bs
		if _, err := f.ReadAt(buf, off); err != nil {
			return changed, fmt.Errorf("reading the inode table of group %d: %w", g, err)
		}
		dirty := false
		for i := range used {
			num := uint32(g)*img.inodesPerGroup + i + 1
			raw := buf[int64(i)*img.inodeSize : int64(i+1)*img.inodeSize]
			if num != rootIno && num < firstIno || le.Uint16(raw[0x00:]) == 0 || le.Uint16(raw[0x1A:]) == 0 {
				continue // reserved, or free
			}
			le.PutUint16(raw[0x02:], uint16(uid))
			le.PutUint16(raw[0x78:], uint16(uid>>16))
			le.PutUint16(raw[0x18:], uint16(gid))
			le.PutUint16(raw[0x7A:], uint16(gid>>16))
			if fl, ok := files[num]; ok {
				if err := img.patchFile(num, raw, fl); err != nil {
					return changed, err
				}
				patched++
			}
			if img.csum {
				img.inodeChecksum(num, raw)
			}
			dirty = true
			changed++
		}
		if dirty {
			if _, err := f.WriteAt(buf, off); err != nil {
				return changed, fmt.Errorf("writing the inode table of group %d: %w", g, err)
			}
		}
	}
	if patched != len(files) {
		return changed, corrupt("%d of the %d files to complete are not inodes in use", len(files)-patched, len(files))
	}
	return changed, f.Sync()
}

// patchFile sets fl on inode num (raw, its checksum left to the caller).
func (img *image) patchFile(num uint32, raw []byte, fl File) error {
	le := binary.LittleEndian
	if le.Uint16(raw[0x00:])&sIFMT != sIFREG {
		return corrupt("inode %d: not a regular file", num)
	}
	if fl.Size < 0 || fl.Perm&^0o7777 != 0 {
		return corrupt("inode %d: size %d, mode %#o", num, fl.Size, fl.Perm)
	}
	le.PutUint16(raw[0x00:], sIFREG|fl.Perm)
	le.PutUint32(raw[0x04:], uint32(fl.Size))
	le.PutUint32(raw[0x6C:], uint32(uint64(fl.Size)>>32))
	le.PutUint32(raw[0x10:], uint32(fl.Mtime))
	if img.inodeSize > 128 {
		if extra := int64(le.Uint16(raw[0x80:])); extra >= 0x8C-0x80 && 0x80+extra <= img.inodeSize {
			// the epoch bits: what the low 32 bits, read signed, miss
			le.PutUint32(raw[0x88:], uint32((fl.Mtime-int64(int32(uint32(fl.Mtime))))>>32)&3)
		}
	}
	if !fl.Written {
		return nil
	}
	if le.Uint32(raw[0x20:])&flagExtents == 0 {
		return corrupt("inode %d: no extents to mark written", num)
	}
	budget := 1 << 20
	return img.markWritten(num, le.Uint32(raw[0x64:]), raw[0x28:0x28+60], 0, -1, &budget)
}

// markWritten clears the unwritten flag of every extent under node, an
// extent node of inode num (generation gen) at level: in place for the
// inode's own node, rewriting (and re-checksumming) the blocks below it.
func (img *image) markWritten(num, gen uint32, node []byte, level, wantDepth int, budget *int) error {
	le := binary.LittleEndian
	entries, depth, err := extentNode(num, node, level, wantDepth, budget)
	if err != nil {
		return err
	}
	for i := range entries {
		e := node[12+12*i:]
		if depth == 0 {
			if n := le.Uint16(e[4:]); n > 32768 {
				le.PutUint16(e[4:], n-32768)
			}
			continue
		}
		leaf, child, err := img.extentChild(num, e)
		if err != nil {
			return err
		}
		if err := img.markWritten(num, gen, child, level+1, depth-1, budget); err != nil {
			return err
		}
		if img.csum {
			// ext4_extent_block_csum: the entries' slots, then the tail
			var b4 [4]byte
			le.PutUint32(b4[:], num)
			c := crc32c(img.csumSeed, b4[:])
			le.PutUint32(b4[:], gen)
			c = crc32c(c, b4[:])
			tail := 12 + 12*int(le.Uint16(child[4:]))
			if tail+4 > len(child) {
				return corrupt("inode %d: extent block %d has no room for its checksum", num, leaf)
			}
			le.PutUint32(child[tail:], crc32c(c, child[:tail]))
		}
		if _, err := img.f.WriteAt(child, int64(leaf)*img.bs); err != nil {
			return fmt.Errorf("inode %d: writing extent block %d: %w", num, leaf, err)
		}
	}
	return nil
}

// inodeChecksum sets raw's metadata_csum checksum (ext4_inode_csum): over
// the inode number, its generation and the inode with both checksum
// fields read as zero.
func (img *image) inodeChecksum(num uint32, raw []byte) {
	le := binary.LittleEndian
	const lo, good, hi = 0x7C, 128, 0x82
	var b4 [4]byte
	le.PutUint32(b4[:], num)
	c := crc32c(img.csumSeed, b4[:])
	c = crc32c(c, raw[0x64:0x68]) // i_generation
	zero := []byte{0, 0}
	c = crc32c(c, raw[:lo])
	c = crc32c(c, zero)
	c = crc32c(c, raw[lo+2:good])
	hasHi := false
	if int64(len(raw)) > good {
		extra := int64(le.Uint16(raw[0x80:]))
		hasHi = extra >= 4 && good+extra <= int64(len(raw))
		c = crc32c(c, raw[good:hi])
		from := hi
		if hasHi {
			c = crc32c(c, zero)
			from += 2
		}
		c = crc32c(c, raw[from:])
	}
	le.PutUint16(raw[lo:], uint16(c))
	if hasHi {
		le.PutUint16(raw[hi:], uint16(c>>16))
	}
}

// InodeGeometry reports the image's inodes per group and how many
// inodes of each group are in use from its start on, as its group
// descriptors say (itable_unused: metadata_csum): in a new image, where
// inodes are taken first free first and never freed, the inodes in use
// in a group are the first ones.
func InodeGeometry(path string) (perGroup uint32, used []uint32, err error) {
	img, err := open(path)
	if err != nil {
		return 0, nil, err
	}
	defer img.f.Close()
	if !img.csum {
		return 0, nil, fmt.Errorf("%w: no metadata_csum, no count of the inodes used", ErrUnsupported)
	}
	used = make([]uint32, len(img.tables))
	for g := range used {
		used[g] = img.inodesPerGroup - img.unused[g]
	}
	return img.inodesPerGroup, used, nil
}
