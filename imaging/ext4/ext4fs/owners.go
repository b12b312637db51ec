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
	changed := 0
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
	return changed, f.Sync()
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
