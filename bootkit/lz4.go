package bootkit

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The kernel's lz4 payload uses LZ4's legacy frame format: the magic
// 0x184C2102, then blocks each preceded by a 4-byte little-endian compressed
// size, each decompressing to at most 8 MiB. The stream has no end marker; the
// kernel appends the uncompressed size, which is larger than any valid block
// size and so ends the loop here.

const (
	lz4LegacyBlock = 8 << 20
	lz4MaxCBlock   = lz4LegacyBlock + lz4LegacyBlock/255 + 16
)

func decodeLZ4Legacy(data []byte, limit int64) ([]byte, error) {
	if len(data) < 4 || binary.LittleEndian.Uint32(data) != 0x184c2102 {
		return nil, errors.New("lz4: no legacy magic")
	}
	data = data[4:]
	var out []byte
	for len(data) >= 4 {
		n := binary.LittleEndian.Uint32(data)
		if n == 0x184c2102 { // a concatenated stream
			data = data[4:]
			continue
		}
		if n == 0 || n > lz4MaxCBlock || int(n) > len(data)-4 {
			break
		}
		var err error
		out, err = lz4Block(out, data[4:4+n], limit)
		if err != nil {
			return out, err
		}
		data = data[4+n:]
	}
	if len(out) == 0 {
		return nil, errors.New("lz4: no blocks")
	}
	return out, nil
}

// lz4Block appends the decompression of one LZ4 block to dst.
func lz4Block(dst, src []byte, limit int64) ([]byte, error) {
	i := 0
	for i < len(src) {
		token := src[i]
		i++
		lit := int(token >> 4)
		if lit == 15 {
			for {
				if i >= len(src) {
					return dst, errors.New("lz4: truncated literal length")
				}
				b := src[i]
				i++
				lit += int(b)
				if b != 255 {
					break
				}
			}
		}
		if lit > len(src)-i {
			return dst, errors.New("lz4: literal run past end of block")
		}
		if int64(len(dst)+lit) > limit {
			return dst, fmt.Errorf("lz4: output exceeds %d bytes", limit)
		}
		dst = append(dst, src[i:i+lit]...)
		i += lit
		if i == len(src) { // the last sequence has literals only
			break
		}
		if i+2 > len(src) {
			return dst, errors.New("lz4: truncated match offset")
		}
		off := int(binary.LittleEndian.Uint16(src[i:]))
		i += 2
		if off == 0 || off > len(dst) {
			return dst, fmt.Errorf("lz4: bad match offset %d", off)
		}
		ml := int(token & 15)
		if ml == 15 {
			for {
				if i >= len(src) {
					return dst, errors.New("lz4: truncated match length")
				}
				b := src[i]
				i++
				ml += int(b)
				if b != 255 {
					break
				}
			}
		}
		ml += 4
		if int64(len(dst)+ml) > limit {
			return dst, fmt.Errorf("lz4: output exceeds %d bytes", limit)
		}
		start := len(dst) - off
		for k := 0; k < ml; k++ { // may overlap: copy byte by byte
			dst = append(dst, dst[start+k])
		}
	}
	return dst, nil
}
