package bootkit

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"hash/crc32"
	"math/rand"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// tinyELF builds a minimal x86-64 ET_EXEC with one PT_LOAD and, when pvh is
// set, a PT_NOTE carrying the Xen PHYS32_ENTRY note. The loaded bytes look
// like code with many call/jmp opcodes so BCJ actually rewrites them.
func tinyELF(pvh bool, codeLen int) []byte {
	const ehsize, phsize = 64, 56
	nph := 1
	if pvh {
		nph = 2
	}
	note := []byte{}
	if pvh {
		note = binary.LittleEndian.AppendUint32(note, 4)  // namesz
		note = binary.LittleEndian.AppendUint32(note, 4)  // descsz
		note = binary.LittleEndian.AppendUint32(note, 18) // XEN_ELFNOTE_PHYS32_ENTRY
		note = append(note, 'X', 'e', 'n', 0)
		note = binary.LittleEndian.AppendUint32(note, 0x1000000)
	}
	r := rand.New(rand.NewSource(1))
	code := make([]byte, codeLen)
	for i := range code {
		switch r.Intn(8) {
		case 0:
			code[i] = 0xe8 // call rel32
		case 1:
			code[i] = 0xe9 // jmp rel32
		case 2:
			code[i] = 0x00
		case 3:
			code[i] = 0xff
		default:
			code[i] = byte(r.Intn(256))
		}
	}
	noteOff := ehsize + nph*phsize
	codeOff := noteOff + len(note)
	b := make([]byte, 0, codeOff+codeLen)
	b = append(b, 0x7f, 'E', 'L', 'F', 2, 1, 1, 0)
	b = append(b, make([]byte, 8)...)
	b = binary.LittleEndian.AppendUint16(b, 2)  // ET_EXEC
	b = binary.LittleEndian.AppendUint16(b, 62) // EM_X86_64
	b = binary.LittleEndian.AppendUint32(b, 1)  // version
	b = binary.LittleEndian.AppendUint64(b, 0x1000000)
	b = binary.LittleEndian.AppendUint64(b, ehsize) // phoff
	b = binary.LittleEndian.AppendUint64(b, 0)      // shoff
	b = binary.LittleEndian.AppendUint32(b, 0)      // flags
	b = binary.LittleEndian.AppendUint16(b, ehsize)
	b = binary.LittleEndian.AppendUint16(b, phsize)
	b = binary.LittleEndian.AppendUint16(b, uint16(nph))
	b = binary.LittleEndian.AppendUint16(b, 64) // shentsize
	b = binary.LittleEndian.AppendUint16(b, 0)  // shnum
	b = binary.LittleEndian.AppendUint16(b, 0)  // shstrndx
	ph := func(typ, flags uint32, off, addr, size uint64) {
		b = binary.LittleEndian.AppendUint32(b, typ)
		b = binary.LittleEndian.AppendUint32(b, flags)
		b = binary.LittleEndian.AppendUint64(b, off)
		b = binary.LittleEndian.AppendUint64(b, addr)
		b = binary.LittleEndian.AppendUint64(b, addr)
		b = binary.LittleEndian.AppendUint64(b, size)
		b = binary.LittleEndian.AppendUint64(b, size)
		b = binary.LittleEndian.AppendUint64(b, 4)
	}
	ph(1, 5, uint64(codeOff), 0x1000000, uint64(codeLen)) // PT_LOAD
	if pvh {
		ph(4, 4, uint64(noteOff), 0, uint64(len(note))) // PT_NOTE
	}
	b = append(b, note...)
	return append(b, code...)
}

// fakeBzImage wraps payload (already compressed, plus the kernel's
// appended size) in a boot-protocol header.
func fakeBzImage(payload []byte, version string, withHeader bool) []byte {
	const setupSects = 1
	img := make([]byte, (setupSects+1)*512)
	img[0x1f1] = setupSects
	if withHeader {
		copy(img[0x202:], "HdrS")
		binary.LittleEndian.PutUint16(img[0x206:], 0x20f)
		copy(img[0x300:], version+"\x00")
		binary.LittleEndian.PutUint16(img[0x20e:], 0x300-0x200)
		binary.LittleEndian.PutUint32(img[0x248:], 64) // payload_offset
		binary.LittleEndian.PutUint32(img[0x24c:], uint32(len(payload)))
	}
	// Decompressor "code" between the setup and the payload, with a
	// false gzip magic to exercise the scanner.
	stub := make([]byte, 64)
	copy(stub[8:], []byte{0x1f, 0x8b, 0x08, 0x00, 0xde, 0xad})
	img = append(img, stub...)
	return append(img, payload...)
}

func withSize(payload []byte, n int) []byte {
	return binary.LittleEndian.AppendUint32(payload, uint32(n))
}

// xzWithBCJ builds an xz stream whose one block uses the x86 BCJ filter
// followed by LZMA2, like the kernel's xz_wrap.sh, using our encoder side.
func xzWithBCJ(t *testing.T, data []byte) []byte {
	t.Helper()
	filtered := append([]byte{}, data...)
	bcjX86(filtered, 0, true)
	var raw bytes.Buffer
	w, err := lzma.Writer2Config{DictCap: 1 << 20}.NewWriter2(&raw)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(filtered); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	out := append([]byte{}, xzMagic...)
	flags := []byte{0, 1} // CRC32 check
	out = append(out, flags...)
	out = binary.LittleEndian.AppendUint32(out, crc32.ChecksumIEEE(flags))
	// block header: flags (2 filters), x86 {id 4, 0 props}, LZMA2 {id 0x21, 1 prop}
	hdr := []byte{0, 0x01, 0x04, 0x00, 0x21, 0x01, 16 /* 1 MiB dict: (2|0)<<(8+11) */}
	for (len(hdr)+4)%4 != 0 {
		hdr = append(hdr, 0)
	}
	hdr[0] = byte((len(hdr)+4)/4 - 1)
	hdr = binary.LittleEndian.AppendUint32(hdr, crc32.ChecksumIEEE(hdr))
	out = append(out, hdr...)
	out = append(out, raw.Bytes()...)
	for (len(hdr)+raw.Len())%4 != 0 {
		out = append(out, 0)
		raw.WriteByte(0)
	}
	out = binary.LittleEndian.AppendUint32(out, crc32.ChecksumIEEE(data))
	out = append(out, 0) // index indicator (the decoder stops here)
	return out
}

func TestBCJRoundTrip(t *testing.T) {
	data := tinyELF(true, 100000)
	enc := append([]byte{}, data...)
	bcjX86(enc, 0, true)
	if bytes.Equal(enc, data) {
		t.Fatal("BCJ encoding changed nothing")
	}
	bcjX86(enc, 0, false)
	if !bytes.Equal(enc, data) {
		t.Fatal("BCJ decode(encode(x)) != x")
	}
}

func TestExtractVmlinux(t *testing.T) {
	elfData := tinyELF(true, 200000)
	compress := map[string]func() []byte{
		"xz": func() []byte {
			var b bytes.Buffer
			w, err := xz.NewWriter(&b)
			if err != nil {
				t.Fatal(err)
			}
			w.Write(elfData)
			w.Close()
			return b.Bytes()
		},
		"xz+bcj": func() []byte { return xzWithBCJ(t, elfData) },
		"gzip": func() []byte {
			var b bytes.Buffer
			w := gzip.NewWriter(&b)
			w.Write(elfData)
			w.Close()
			return b.Bytes()
		},
		"zstd": func() []byte {
			w, _ := zstd.NewWriter(nil)
			return w.EncodeAll(elfData, nil)
		},
		"lz4": func() []byte { return lz4LegacyLiteral(elfData) },
	}
	for name, fn := range compress {
		for _, header := range []bool{true, false} {
			t.Run(name+map[bool]string{true: "/header", false: "/scan"}[header], func(t *testing.T) {
				img := fakeBzImage(withSize(fn(), len(elfData)), "6.1.0-test (x@y) #1", header)
				out, info, err := ExtractVmlinux(img)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(out, elfData) {
					t.Fatal("extracted ELF differs")
				}
				if !info.PVH || info.Size != int64(len(elfData)) {
					t.Fatalf("info %+v", info)
				}
				want := map[string]string{"xz+bcj": "xz"}[name]
				if want == "" {
					want = name
				}
				if info.Compression != want {
					t.Fatalf("compression %q, want %q", info.Compression, want)
				}
				if header && info.Release != "6.1.0-test" {
					t.Fatalf("release %q", info.Release)
				}
			})
		}
	}
}

func TestExtractVmlinuxRejects(t *testing.T) {
	// not a kernel at all
	if _, _, err := ExtractVmlinux(bytes.Repeat([]byte("junk"), 1000)); err == nil {
		t.Fatal("junk accepted")
	}
	// a compressed payload that is not an ELF
	var b bytes.Buffer
	w, _ := xz.NewWriter(&b)
	w.Write(bytes.Repeat([]byte("not an elf "), 1000))
	w.Close()
	_, _, err := ExtractVmlinux(fakeBzImage(b.Bytes(), "x", true))
	if err == nil {
		t.Fatal("non-ELF payload accepted")
	}
	t.Logf("error: %v", err)
	// an ELF without PVH note extracts but says so
	elfData := tinyELF(false, 1000)
	var g bytes.Buffer
	gw := gzip.NewWriter(&g)
	gw.Write(elfData)
	gw.Close()
	_, info, err := ExtractVmlinux(fakeBzImage(g.Bytes(), "x", true))
	if err != nil || info.PVH {
		t.Fatalf("no-PVH: %+v %v", info, err)
	}
	// an uncompressed ELF passes through
	out, info, err := ExtractVmlinux(elfData)
	if err != nil || info.Compression != "none" || !bytes.Equal(out, elfData) {
		t.Fatalf("plain ELF: %+v %v", info, err)
	}
}

// lz4LegacyLiteral encodes data as LZ4 legacy frames of literal-only blocks
// (valid LZ4; TestLZ4Block covers matches).
func lz4LegacyLiteral(data []byte) []byte {
	out := binary.LittleEndian.AppendUint32(nil, 0x184c2102)
	const chunk = 1 << 16
	for len(data) > 0 {
		n := min(len(data), chunk)
		blk := appendLZ4Seq(nil, data[:n], 0, 0, true)
		out = binary.LittleEndian.AppendUint32(out, uint32(len(blk)))
		out = append(out, blk...)
		data = data[n:]
	}
	return out
}

func appendLZ4Seq(b, lit []byte, off, matchLen int, last bool) []byte {
	ll := len(lit)
	ml := 0
	if !last {
		ml = matchLen - 4
	}
	tok := byte(min(ll, 15)<<4) | byte(min(max(ml, 0), 15))
	b = append(b, tok)
	if ll >= 15 {
		r := ll - 15
		for r >= 255 {
			b = append(b, 255)
			r -= 255
		}
		b = append(b, byte(r))
	}
	b = append(b, lit...)
	if last {
		return b
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(off))
	if ml >= 15 {
		r := ml - 15
		for r >= 255 {
			b = append(b, 255)
			r -= 255
		}
		b = append(b, byte(r))
	}
	return b
}

func TestLZ4Block(t *testing.T) {
	// "ab" then match offset 2 length 6 → "abababab", then literals "!"
	blk := appendLZ4Seq(nil, []byte("ab"), 2, 6, false)
	blk = appendLZ4Seq(blk, []byte("!"), 0, 0, true)
	out, err := lz4Block(nil, blk, 1<<20)
	if err != nil || string(out) != "abababab!" {
		t.Fatalf("%q %v", out, err)
	}
	if _, err := lz4Block(nil, []byte{0x0f, 'a'}, 1<<20); err == nil {
		t.Fatal("match with bad offset accepted")
	}
	if _, err := lz4Block(nil, []byte{0xf0}, 1<<20); err == nil {
		t.Fatal("truncated literal length accepted")
	}
}

func TestXZRejectsCorruption(t *testing.T) {
	data := tinyELF(true, 5000)
	good := xzWithBCJ(t, data)
	if out, err := decodeXZ(good, 1<<20); err != nil || !bytes.Equal(out, data) {
		t.Fatalf("good stream: %v", err)
	}
	bad := append([]byte{}, good...)
	bad[len(bad)-3] ^= 0xff // the CRC32 check
	if _, err := decodeXZ(bad, 1<<20); err == nil {
		t.Fatal("bad check accepted")
	}
	if _, err := decodeXZ(good, 100); err == nil {
		t.Fatal("output limit not enforced")
	}
}
