package dm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
)

// The wire layout of <linux/dm-ioctl.h>, interface version 4. Every request
// is one buffer: a struct dm_ioctl header, then (at data_start) a payload
// whose shape depends on the command. Fields are in host byte order.
//
//	struct dm_ioctl {                  offset size
//		__u32 version[3];                0    12
//		__u32 data_size;                12     4  whole buffer, header included
//		__u32 data_start;               16     4  payload offset from the header
//		__u32 target_count;             20     4
//		__s32 open_count;               24     4
//		__u32 flags;                    28     4
//		__u32 event_nr;                 32     4
//		__u32 padding;                  36     4
//		__u64 dev;                      40     8
//		char name[DM_NAME_LEN];         48   128
//		char uuid[DM_UUID_LEN];        176   129
//		char data[7];                  305     7  sizeof = 312
//	};
//	struct dm_target_spec {
//		__u64 sector_start;              0     8
//		__u64 length;                    8     8
//		__s32 status;                   16     4
//		__u32 next;                     20     4  DM_TABLE_LOAD: from this spec to the next
//		char target_type[16];           24    16  sizeof = 40, then the NUL-terminated
//	};                                            parameter string, padded to 8 bytes
//	struct dm_name_list {
//		__u64 dev;                       0     8
//		__u32 next;                      8     4  from this record to the next, 0 = last
//		char name[];                    12        then, 8-aligned: __u32 event_nr,
//	};                                            __u32 flags, char uuid[] (4.46+)
//	struct dm_target_versions {
//		__u32 next;                      0     4
//		__u32 version[3];                4    12
//		char name[];                    16
//	};
const (
	sizeofIoctl      = 312
	sizeofTargetSpec = 40
	offVersion       = 0
	offDataSize      = 12
	offDataStart     = 16
	offTargetCount   = 20
	offOpenCount     = 24
	offFlags         = 28
	offEventNr       = 32
	offDev           = 40
	offName          = 48
	offUUID          = 176
	nameLen          = 128 // DM_NAME_LEN, NUL included
	uuidLen          = 129 // DM_UUID_LEN, NUL included
	typeLen          = 16  // DM_MAX_TYPE_NAME, NUL included
	align            = 8

	// Interface version we speak. The kernel accepts any request whose major
	// matches and whose minor is not newer than its own.
	versionMajor = 4
	versionMinor = 0
)

// Command numbers: _IOWR(0xfd, nr, struct dm_ioctl).
const (
	cmdVersion          = 0xc138fd00
	cmdListDevices      = 0xc138fd02
	cmdDevCreate        = 0xc138fd03
	cmdDevRemove        = 0xc138fd04
	cmdDevSuspend       = 0xc138fd06
	cmdDevStatus        = 0xc138fd07
	cmdTableLoad        = 0xc138fd09
	cmdListVersions     = 0xc138fd0d
	cmdGetTargetVersion = 0xc138fd11
)

// Header flags.
const (
	flagReadOnly        = 1 << 0
	flagSuspend         = 1 << 1
	flagActivePresent   = 1 << 5
	flagInactivePresent = 1 << 6
	flagBufferFull      = 1 << 8
	flagDeferredRemove  = 1 << 17

	nameListHasUUID = 1 // DM_NAME_LIST_FLAG_HAS_UUID
)

var native = binary.NativeEndian

// header is the decoded struct dm_ioctl.
type header struct {
	Version     [3]uint32
	DataSize    uint32
	DataStart   uint32
	TargetCount uint32
	OpenCount   int32
	Flags       uint32
	EventNr     uint32
	Dev         uint64
	Name        string
	UUID        string
}

func checkName(name string) error {
	switch {
	case name == "" || name == "." || name == ".." || name == "control":
		return fmt.Errorf("dm: bad device name %q", name)
	case len(name) >= nameLen:
		return fmt.Errorf("dm: device name %q longer than %d bytes", name, nameLen-1)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("dm: device name %q contains '/' or NUL", name)
	}
	return nil
}

func checkUUID(uuid string) error {
	if len(uuid) >= uuidLen || strings.ContainsRune(uuid, 0) {
		return fmt.Errorf("dm: bad uuid %q (at most %d bytes, no NUL)", uuid, uuidLen-1)
	}
	return nil
}

// encode builds a request: the header, then payload at data_start, in a
// buffer of at least size bytes (room for the kernel's answer).
func encode(h header, payload []byte, size int) ([]byte, error) {
	if h.Name != "" {
		if err := checkName(h.Name); err != nil {
			return nil, err
		}
	}
	if err := checkUUID(h.UUID); err != nil {
		return nil, err
	}
	n := sizeofIoctl + len(payload)
	if size > n {
		n = size
	}
	n = roundUp(n, align)
	b := make([]byte, n)
	native.PutUint32(b[offVersion:], versionMajor)
	native.PutUint32(b[offVersion+4:], versionMinor)
	native.PutUint32(b[offVersion+8:], 0)
	native.PutUint32(b[offDataSize:], uint32(n))
	native.PutUint32(b[offDataStart:], sizeofIoctl)
	native.PutUint32(b[offTargetCount:], h.TargetCount)
	native.PutUint32(b[offOpenCount:], uint32(h.OpenCount))
	native.PutUint32(b[offFlags:], h.Flags)
	native.PutUint32(b[offEventNr:], h.EventNr)
	native.PutUint64(b[offDev:], h.Dev)
	copy(b[offName:offName+nameLen-1], h.Name)
	copy(b[offUUID:offUUID+uuidLen-1], h.UUID)
	copy(b[sizeofIoctl:], payload)
	return b, nil
}

func decodeHeader(b []byte) (header, error) {
	if len(b) < sizeofIoctl {
		return header{}, fmt.Errorf("dm: short ioctl buffer (%d bytes)", len(b))
	}
	return header{
		Version:     [3]uint32{native.Uint32(b[0:]), native.Uint32(b[4:]), native.Uint32(b[8:])},
		DataSize:    native.Uint32(b[offDataSize:]),
		DataStart:   native.Uint32(b[offDataStart:]),
		TargetCount: native.Uint32(b[offTargetCount:]),
		OpenCount:   int32(native.Uint32(b[offOpenCount:])),
		Flags:       native.Uint32(b[offFlags:]),
		EventNr:     native.Uint32(b[offEventNr:]),
		Dev:         native.Uint64(b[offDev:]),
		Name:        cstring(b[offName : offName+nameLen]),
		UUID:        cstring(b[offUUID : offUUID+uuidLen]),
	}, nil
}

// payload returns the kernel's answer: data_start up to data_size.
func payload(b []byte) ([]byte, error) {
	h, err := decodeHeader(b)
	if err != nil {
		return nil, err
	}
	if h.DataStart < sizeofIoctl || h.DataSize < h.DataStart || int(h.DataSize) > len(b) {
		return nil, fmt.Errorf("dm: bad answer: data_start %d data_size %d buffer %d", h.DataStart, h.DataSize, len(b))
	}
	return b[h.DataStart:h.DataSize], nil
}

// encodeTargets lays out a DM_TABLE_LOAD payload.
func encodeTargets(ts []Target) ([]byte, error) {
	var out []byte
	for i, t := range ts {
		if t.Type == "" || len(t.Type) >= typeLen || strings.ContainsRune(t.Type, 0) {
			return nil, fmt.Errorf("dm: target %d: bad type %q", i, t.Type)
		}
		if strings.ContainsAny(t.Params, "\x00\n") {
			return nil, fmt.Errorf("dm: target %d: parameters contain NUL or newline", i)
		}
		if t.Length == 0 {
			return nil, fmt.Errorf("dm: target %d: zero length", i)
		}
		if i > 0 && t.Start != ts[i-1].Start+ts[i-1].Length {
			return nil, fmt.Errorf("dm: target %d starts at %d, want %d (targets must be contiguous)", i, t.Start, ts[i-1].Start+ts[i-1].Length)
		}
		size := roundUp(sizeofTargetSpec+len(t.Params)+1, align)
		spec := make([]byte, size)
		native.PutUint64(spec[0:], t.Start)
		native.PutUint64(spec[8:], t.Length)
		native.PutUint32(spec[20:], uint32(size))
		copy(spec[24:24+typeLen-1], t.Type)
		copy(spec[sizeofTargetSpec:], t.Params)
		out = append(out, spec...)
	}
	if len(ts) > 0 && ts[0].Start != 0 {
		return nil, fmt.Errorf("dm: table starts at sector %d, want 0", ts[0].Start)
	}
	return out, nil
}

// nameEntry is one record of a DM_LIST_DEVICES answer.
type nameEntry struct {
	Dev     uint64
	Name    string
	UUID    string
	HasUUID bool // the kernel (4.46+) reported the uuid in the list
}

func parseNameList(p []byte) ([]nameEntry, error) {
	if len(p) < 12 {
		return nil, nil // no devices
	}
	var out []nameEntry
	for off := 0; ; {
		if off+12 > len(p) {
			return nil, fmt.Errorf("dm: device list truncated at %d", off)
		}
		rec := p[off:]
		next := int(native.Uint32(rec[8:]))
		end := len(rec)
		if next != 0 {
			if next < 12 || next > len(rec) {
				return nil, fmt.Errorf("dm: device list: bad next %d at %d", next, off)
			}
			end = next
		}
		rec = rec[:end]
		e := nameEntry{Dev: native.Uint64(rec[0:])}
		nul := bytes.IndexByte(rec[12:], 0)
		if nul < 0 {
			return nil, fmt.Errorf("dm: device list: unterminated name at %d", off)
		}
		e.Name = string(rec[12 : 12+nul])
		// event_nr and flags follow the name, 8-aligned from the record start.
		ext := roundUp(12+nul+1, align)
		if ext+8 <= len(rec) && native.Uint32(rec[ext+4:])&nameListHasUUID != 0 {
			e.HasUUID = true
			e.UUID = cstring(rec[ext+8:])
		}
		if off == 0 && e.Dev == 0 {
			return nil, nil // "dev = 0 flags no data"
		}
		out = append(out, e)
		if next == 0 {
			return out, nil
		}
		off += next
	}
}

// parseTargetVersions reads a DM_LIST_VERSIONS (or GET_TARGET_VERSION) answer.
func parseTargetVersions(p []byte) (map[string][3]uint32, error) {
	out := map[string][3]uint32{}
	for off := 0; off+16 <= len(p); {
		rec := p[off:]
		name := cstring(rec[16:])
		if name == "" {
			break
		}
		out[name] = [3]uint32{native.Uint32(rec[4:]), native.Uint32(rec[8:]), native.Uint32(rec[12:])}
		next := int(native.Uint32(rec[0:]))
		if next == 0 {
			break
		}
		if next < 16 {
			return nil, fmt.Errorf("dm: target list: bad next %d", next)
		}
		off += next
	}
	return out, nil
}

func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

func roundUp(n, a int) int { return (n + a - 1) / a * a }
