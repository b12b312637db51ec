package bootkit

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/crc64"
	"io"

	"github.com/ulikunitz/xz/lzma"
)

// The kernel compresses itself with `xz --check=crc32 --x86 --lzma2=...`: an xz
// stream whose block carries a BCJ x86 filter in front of LZMA2. The
// github.com/ulikunitz/xz stream reader supports only a bare LZMA2 filter
// chain, so this file parses the xz container itself, decodes LZMA2 with
// ulikunitz's raw LZMA2 reader, and applies the BCJ x86 filter afterwards.

var xzMagic = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}

const (
	xzFilterX86   = 0x04
	xzFilterLZMA2 = 0x21
)

var crc64Table = crc64.MakeTable(crc64.ECMA)

// decodeXZ decodes the first xz stream in data (trailing bytes are ignored)
// and returns its content. limit bounds the output size.
func decodeXZ(data []byte, limit int64) ([]byte, error) {
	if len(data) < 12 || !bytes.Equal(data[:6], xzMagic) {
		return nil, errors.New("xz: no stream header")
	}
	flags := data[6:8]
	if crc32.ChecksumIEEE(flags) != binary.LittleEndian.Uint32(data[8:12]) {
		return nil, errors.New("xz: stream header CRC mismatch")
	}
	if flags[0] != 0 || flags[1]&0xf0 != 0 {
		return nil, errors.New("xz: unsupported stream flags")
	}
	check := flags[1] & 0x0f
	r := bytes.NewReader(data[12:])
	var out bytes.Buffer
	for {
		first, err := r.ReadByte()
		if err != nil {
			return nil, fmt.Errorf("xz: truncated stream: %w", err)
		}
		if first == 0 { // index indicator: all blocks are done
			return out.Bytes(), nil
		}
		if err := decodeXZBlock(r, first, check, &out, limit); err != nil {
			return nil, err
		}
	}
}

type xzFilter struct {
	id    uint64
	props []byte
}

func decodeXZBlock(r *bytes.Reader, sizeByte byte, check byte, out *bytes.Buffer, limit int64) error {
	hdrLen := (int(sizeByte) + 1) * 4
	hdr := make([]byte, hdrLen)
	hdr[0] = sizeByte
	if _, err := io.ReadFull(r, hdr[1:]); err != nil {
		return fmt.Errorf("xz: truncated block header: %w", err)
	}
	if crc32.ChecksumIEEE(hdr[:hdrLen-4]) != binary.LittleEndian.Uint32(hdr[hdrLen-4:]) {
		return errors.New("xz: block header CRC mismatch")
	}
	hr := bytes.NewReader(hdr[1 : hdrLen-4])
	bflags, _ := hr.ReadByte()
	nfilters := int(bflags&3) + 1
	if bflags&0x3c != 0 {
		return errors.New("xz: reserved block flags set")
	}
	if bflags&0x40 != 0 { // compressed size present
		if _, err := binary.ReadUvarint(hr); err != nil {
			return fmt.Errorf("xz: block header: %w", err)
		}
	}
	if bflags&0x80 != 0 { // uncompressed size present
		if _, err := binary.ReadUvarint(hr); err != nil {
			return fmt.Errorf("xz: block header: %w", err)
		}
	}
	filters := make([]xzFilter, 0, nfilters)
	for i := 0; i < nfilters; i++ {
		id, err := binary.ReadUvarint(hr)
		if err != nil {
			return fmt.Errorf("xz: filter flags: %w", err)
		}
		n, err := binary.ReadUvarint(hr)
		if err != nil || n > uint64(hr.Len()) {
			return errors.New("xz: bad filter properties size")
		}
		props := make([]byte, n)
		_, _ = io.ReadFull(hr, props)
		filters = append(filters, xzFilter{id: id, props: props})
	}
	last := filters[len(filters)-1]
	if last.id != xzFilterLZMA2 || len(last.props) != 1 {
		return fmt.Errorf("xz: unsupported last filter %#x (want LZMA2)", last.id)
	}
	dictCap, err := lzma2DictSize(last.props[0])
	if err != nil {
		return err
	}
	var bcjStart uint32
	bcj := false
	for _, f := range filters[:len(filters)-1] {
		switch f.id {
		case xzFilterX86:
			bcj = true
			switch len(f.props) {
			case 0:
			case 4:
				bcjStart = binary.LittleEndian.Uint32(f.props)
			default:
				return errors.New("xz: bad x86 BCJ properties")
			}
		default:
			return fmt.Errorf("xz: unsupported filter %#x", f.id)
		}
	}

	start := r.Size() - int64(r.Len())
	lr, err := lzma.Reader2Config{DictCap: dictCap}.NewReader2(r)
	if err != nil {
		return fmt.Errorf("xz: lzma2: %w", err)
	}
	blockStart := out.Len()
	n, err := io.Copy(out, io.LimitReader(lr, limit-int64(blockStart)+1))
	if err != nil {
		return fmt.Errorf("xz: lzma2: %w", err)
	}
	if int64(blockStart)+n > limit {
		return fmt.Errorf("xz: output exceeds %d bytes", limit)
	}
	consumed := r.Size() - int64(r.Len()) - start
	// Block padding to a multiple of four bytes (counting the header).
	for (int64(hdrLen)+consumed)%4 != 0 {
		b, err := r.ReadByte()
		if err != nil || b != 0 {
			return errors.New("xz: bad block padding")
		}
		consumed++
	}
	block := out.Bytes()[blockStart:]
	if bcj {
		bcjX86(block, bcjStart, false)
	}
	var sum []byte
	switch check {
	case 0:
	case 1:
		sum = binary.LittleEndian.AppendUint32(nil, crc32.ChecksumIEEE(block))
	case 4:
		sum = binary.LittleEndian.AppendUint64(nil, crc64.Checksum(block, crc64Table))
	case 10:
		s := sha256.Sum256(block)
		sum = s[:]
	default:
		return fmt.Errorf("xz: unsupported check type %d", check)
	}
	got := make([]byte, len(sum))
	if _, err := io.ReadFull(r, got); err != nil {
		return errors.New("xz: truncated block check")
	}
	if !bytes.Equal(got, sum) {
		return errors.New("xz: block check mismatch")
	}
	return nil
}

func lzma2DictSize(p byte) (int, error) {
	if p > 40 {
		return 0, fmt.Errorf("xz: bad LZMA2 dictionary size %d", p)
	}
	var size uint64 = 0xffffffff
	if p < 40 {
		size = uint64(2|(p&1)) << (p/2 + 11)
	}
	if size < lzma.MinDictCap {
		size = lzma.MinDictCap
	}
	if size > 1<<30 {
		return 0, fmt.Errorf("xz: LZMA2 dictionary of %d bytes is too large", size)
	}
	return int(size), nil
}

// bcjX86 runs the x86 branch/call/jump filter over buf in place (a port of
// liblzma's simple/x86.c). startPos is the stream position of buf[0].
func bcjX86(buf []byte, startPos uint32, encode bool) {
	maskToAllowed := [8]bool{true, true, true, false, true, false, false, false}
	maskToBitNum := [8]uint32{0, 1, 2, 2, 3, 3, 3, 3}
	testMS := func(b byte) bool { return b == 0x00 || b == 0xff }
	if len(buf) <= 4 {
		return
	}
	size := len(buf) - 4
	prevPos := -1
	var prevMask uint32
	for i := 0; i < size; i++ {
		if buf[i]&0xfe != 0xe8 {
			continue
		}
		d := i - prevPos
		if d > 3 {
			prevMask = 0
		} else {
			prevMask = (prevMask << uint(d-1)) & 7
			if prevMask != 0 {
				b := buf[i+4-int(maskToBitNum[prevMask])]
				if !maskToAllowed[prevMask] || testMS(b) {
					prevPos = i
					prevMask = (prevMask << 1) | 1
					continue
				}
			}
		}
		prevPos = i
		if testMS(buf[i+4]) {
			src := binary.LittleEndian.Uint32(buf[i+1:])
			var dest uint32
			for {
				if encode {
					dest = src + (startPos + uint32(i) + 5)
				} else {
					dest = src - (startPos + uint32(i) + 5)
				}
				if prevMask == 0 {
					break
				}
				j := maskToBitNum[prevMask] * 8
				b := byte(dest >> (24 - j))
				if !testMS(b) {
					break
				}
				src = dest ^ ((1 << (32 - j)) - 1)
			}
			dest &= 0x01ffffff
			dest |= 0 - (dest & 0x01000000)
			binary.LittleEndian.PutUint32(buf[i+1:], dest)
			i += 4
		} else {
			prevMask = (prevMask << 1) | 1
		}
	}
}
