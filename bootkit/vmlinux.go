package bootkit

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz/lzma"
)

// MaxVmlinuxSize bounds the size of a decompressed kernel.
const MaxVmlinuxSize = 512 << 20

// KernelInfo describes an extracted kernel.
type KernelInfo struct {
	// Compression of the bzImage payload: "xz", "gzip", "zstd", "lz4", "bzip2", "lzma" or "none".
	Compression string `json:"compression"`
	// PayloadOffset is where the compressed payload starts in the bzImage.
	PayloadOffset int64 `json:"payload_offset"`
	// Version is the bzImage header's kernel_version string, if any.
	Version string `json:"version,omitempty"`
	// Release is the first word of Version (uname -r), if any.
	Release string `json:"release,omitempty"`
	// PVH reports whether the ELF carries a XEN_ELFNOTE_PHYS32_ENTRY note (PVH
	// boot entry), which QEMU needs to boot the vmlinux directly.
	PVH bool `json:"pvh"`
	// Size of the uncompressed ELF.
	Size int64 `json:"size"`
}

type compressor struct {
	name   string
	magic  []byte
	decode func(data []byte, limit int64) ([]byte, error)
}

var compressors = []compressor{
	{"xz", xzMagic, decodeXZ},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}, decodeZstd},
	{"gzip", []byte{0x1f, 0x8b, 0x08}, decodeGzip},
	{"lz4", []byte{0x02, 0x21, 0x4c, 0x18}, decodeLZ4Legacy},
	{"bzip2", []byte("BZh"), decodeBzip2},
	{"lzma", []byte{0x5d, 0x00, 0x00}, decodeLZMA},
}

// ExtractVmlinux returns the uncompressed vmlinux ELF inside a bzImage. It
// uses the boot protocol header's payload_offset when present and falls back
// to scanning for the magic numbers of xz, zstd, gzip, lz4 (legacy), bzip2 and
// lzma. A payload only counts when it decompresses to a valid x86-64 ELF. An
// input that already is an ELF is returned unchanged.
func ExtractVmlinux(image []byte) ([]byte, KernelInfo, error) {
	var info KernelInfo
	if len(image) >= 4 && string(image[:4]) == elf.ELFMAG {
		pvh, err := validateVmlinux(image)
		if err != nil {
			return nil, info, err
		}
		info.Compression, info.PVH, info.Size = "none", pvh, int64(len(image))
		return image, info, nil
	}
	info.Version = bzImageVersion(image)
	if f := strings.Fields(info.Version); len(f) > 0 {
		info.Release = f[0]
	}

	var errs []error
	try := func(off int, c compressor) ([]byte, bool) {
		out, err := c.decode(image[off:], MaxVmlinuxSize)
		if len(out) == 0 {
			if err != nil {
				errs = append(errs, fmt.Errorf("%s at %d: %w", c.name, off, err))
			}
			return nil, false
		}
		// Decoders of formats without an end marker (zstd, lz4, lzma) may
		// complain about the kernel's appended size field; the ELF check
		// decides.
		pvh, verr := validateVmlinux(out)
		if verr != nil {
			errs = append(errs, fmt.Errorf("%s at %d: %w", c.name, off, verr))
			return nil, false
		}
		info.Compression, info.PayloadOffset, info.PVH, info.Size = c.name, int64(off), pvh, int64(len(out))
		return out, true
	}

	if off, ok := bzImagePayloadOffset(image); ok {
		for _, c := range compressors {
			if bytes.HasPrefix(image[off:], c.magic) {
				if out, ok := try(off, c); ok {
					return out, info, nil
				}
			}
		}
	}
	// Scan for the earliest magic of any format.
	const maxCandidates = 64
	tried := 0
	for pos := 0; pos < len(image) && tried < maxCandidates; {
		best, bestC := -1, compressor{}
		for _, c := range compressors {
			i := bytes.Index(image[pos:], c.magic)
			if i >= 0 && (best < 0 || pos+i < best) {
				best, bestC = pos+i, c
			}
		}
		if best < 0 {
			break
		}
		tried++
		if out, ok := try(best, bestC); ok {
			return out, info, nil
		}
		pos = best + 1
	}
	if len(errs) == 0 {
		return nil, info, errors.New("bootkit: no compressed kernel payload found (not a bzImage?)")
	}
	return nil, info, fmt.Errorf("bootkit: no payload decompressed to a vmlinux ELF: %w", errors.Join(errs...))
}

// bzImagePayloadOffset reads the x86 boot protocol header (>= 2.08).
func bzImagePayloadOffset(image []byte) (int, bool) {
	if len(image) < 0x250 || string(image[0x202:0x206]) != "HdrS" {
		return 0, false
	}
	if binary.LittleEndian.Uint16(image[0x206:]) < 0x208 {
		return 0, false
	}
	setupSects := int(image[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	off := (setupSects+1)*512 + int(binary.LittleEndian.Uint32(image[0x248:]))
	length := int(binary.LittleEndian.Uint32(image[0x24c:]))
	if off <= 0 || length <= 0 || off+length > len(image) {
		return 0, false
	}
	return off, true
}

func bzImageVersion(image []byte) string {
	if len(image) < 0x210 || string(image[0x202:0x206]) != "HdrS" {
		return ""
	}
	p := int(binary.LittleEndian.Uint16(image[0x20e:])) + 0x200
	if p <= 0x200 || p >= len(image) {
		return ""
	}
	end := bytes.IndexByte(image[p:min(len(image), p+256)], 0)
	if end < 0 {
		return ""
	}
	s := string(image[p : p+end])
	for _, r := range s {
		if r < 0x20 || r > 0x7e {
			return ""
		}
	}
	return s
}

// validateVmlinux checks that b is a loadable x86-64 ELF executable and
// reports whether it has a PVH entry note.
func validateVmlinux(b []byte) (pvh bool, err error) {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return false, fmt.Errorf("not an ELF: %w", err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return false, fmt.Errorf("ELF is %v/%v, want ELFCLASS64/EM_X86_64", f.Class, f.Machine)
	}
	if f.Type != elf.ET_EXEC {
		return false, fmt.Errorf("ELF type %v, want ET_EXEC", f.Type)
	}
	loads := 0
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			loads++
			if p.Off+p.Filesz > uint64(len(b)) {
				return false, errors.New("ELF segment extends past the end of the file")
			}
		}
		if p.Type == elf.PT_NOTE && p.Off+p.Filesz <= uint64(len(b)) {
			if hasPVHNote(b[p.Off : p.Off+p.Filesz]) {
				pvh = true
			}
		}
	}
	if loads == 0 {
		return false, errors.New("ELF has no PT_LOAD segment")
	}
	return pvh, nil
}

// hasPVHNote looks for a "Xen" note of type XEN_ELFNOTE_PHYS32_ENTRY (18).
func hasPVHNote(notes []byte) bool {
	for len(notes) >= 12 {
		namesz := int(binary.LittleEndian.Uint32(notes[0:]))
		descsz := int(binary.LittleEndian.Uint32(notes[4:]))
		typ := binary.LittleEndian.Uint32(notes[8:])
		align := func(n int) int { return (n + 3) &^ 3 }
		next := 12 + align(namesz) + align(descsz)
		if namesz < 0 || descsz < 0 || next > len(notes) || next <= 0 {
			return false
		}
		name := notes[12 : 12+namesz]
		if typ == 18 && bytes.Equal(bytes.TrimRight(name, "\x00"), []byte("Xen")) {
			return true
		}
		notes = notes[next:]
	}
	return false
}

func readLimited(r io.Reader, limit int64) ([]byte, error) {
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(r, limit+1))
	if n > limit {
		return nil, fmt.Errorf("output exceeds %d bytes", limit)
	}
	return buf.Bytes(), err
}

func decodeGzip(data []byte, limit int64) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	zr.Multistream(false)
	return readLimited(zr, limit)
}

func decodeZstd(data []byte, limit int64) ([]byte, error) {
	zr, err := zstd.NewReader(bytes.NewReader(data), zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxMemory(uint64(limit)), zstd.WithDecoderMaxWindow(1<<30))
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	return readLimited(zr, limit)
}

func decodeBzip2(data []byte, limit int64) ([]byte, error) {
	return readLimited(bzip2.NewReader(bytes.NewReader(data)), limit)
}

func decodeLZMA(data []byte, limit int64) ([]byte, error) {
	lr, err := lzma.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	return readLimited(lr, limit)
}
