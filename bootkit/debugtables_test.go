package bootkit

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"strings"
	"testing"
)

type testSection struct {
	name  string
	typ   elf.SectionType
	flags elf.SectionFlag
}

// elfWithSections builds an x86-64 (or machine) ELF64 relocatable object
// with the given sections (plus the null section and .shstrtab); each
// section holds 16 bytes of its index. Names are packed the way ld does
// (".rela.X" shares "X"'s bytes when X follows it), so a rename must not
// touch another section's name.
func elfWithSections(machine elf.Machine, secs []testSection) []byte {
	strtab := []byte{0}
	nameOff := map[string]int{}
	for _, s := range secs {
		if i := bytes.Index(strtab, []byte(s.name+"\x00")); i >= 0 && s.name != "" {
			nameOff[s.name] = i
			continue
		}
		nameOff[s.name] = len(strtab)
		strtab = append(append(strtab, s.name...), 0)
		// make ".rela.X" reachable as "X" too
		if rest, ok := strings.CutPrefix(s.name, ".rela"); ok {
			nameOff[rest] = nameOff[s.name] + len(".rela")
		}
	}
	shstrName := len(strtab)
	strtab = append(append(strtab, ".shstrtab"...), 0)
	const ehsize, shsize = 64, 64
	off := ehsize
	var body []byte
	offs := make([]int, len(secs))
	for i := range secs {
		offs[i] = off + len(body)
		body = append(body, bytes.Repeat([]byte{byte(i + 1)}, 16)...)
	}
	strOff := off + len(body)
	body = append(body, strtab...)
	shOff := (off + len(body) + 7) &^ 7
	shnum := len(secs) + 2
	b := make([]byte, 0, shOff+shnum*shsize)
	b = append(b, 0x7f, 'E', 'L', 'F', 2, 1, 1, 0)
	b = append(b, make([]byte, 8)...)
	b = binary.LittleEndian.AppendUint16(b, 1) // ET_REL
	b = binary.LittleEndian.AppendUint16(b, uint16(machine))
	b = binary.LittleEndian.AppendUint32(b, 1)
	b = binary.LittleEndian.AppendUint64(b, 0)
	b = binary.LittleEndian.AppendUint64(b, 0)
	b = binary.LittleEndian.AppendUint64(b, uint64(shOff))
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint16(b, ehsize)
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint16(b, shsize)
	b = binary.LittleEndian.AppendUint16(b, uint16(shnum))
	b = binary.LittleEndian.AppendUint16(b, uint16(shnum-1)) // shstrndx
	b = append(b, body...)
	for len(b) < shOff {
		b = append(b, 0)
	}
	sh := func(name int, typ elf.SectionType, flags elf.SectionFlag, off, size int) {
		b = binary.LittleEndian.AppendUint32(b, uint32(name))
		b = binary.LittleEndian.AppendUint32(b, uint32(typ))
		b = binary.LittleEndian.AppendUint64(b, uint64(flags))
		b = binary.LittleEndian.AppendUint64(b, 0)
		b = binary.LittleEndian.AppendUint64(b, uint64(off))
		b = binary.LittleEndian.AppendUint64(b, uint64(size))
		b = binary.LittleEndian.AppendUint32(b, 0)
		b = binary.LittleEndian.AppendUint32(b, 0)
		b = binary.LittleEndian.AppendUint64(b, 1)
		b = binary.LittleEndian.AppendUint64(b, 0)
	}
	sh(0, 0, 0, 0, 0)
	for i, s := range secs {
		sh(nameOff[s.name], s.typ, s.flags, offs[i], 16)
	}
	sh(shstrName, elf.SHT_STRTAB, 0, strOff, len(strtab))
	return b
}

func TestDropDebugTables(t *testing.T) {
	const alloc, allocX = elf.SHF_ALLOC, elf.SHF_ALLOC | elf.SHF_EXECINSTR
	module := []testSection{
		{".text", elf.SHT_PROGBITS, allocX},
		{".rela__mcount_loc", elf.SHT_RELA, elf.SHF_INFO_LINK},
		{"__mcount_loc", elf.SHT_PROGBITS, alloc},
		{".orc_unwind", elf.SHT_PROGBITS, alloc},
		{".rela.orc_unwind_ip", elf.SHT_RELA, elf.SHF_INFO_LINK},
		{".orc_unwind_ip", elf.SHT_PROGBITS, alloc},
		{"_ftrace_eval_map", elf.SHT_PROGBITS, alloc | elf.SHF_WRITE},
		{"_ftrace_events", elf.SHT_PROGBITS, alloc | elf.SHF_WRITE},
		{".modinfo", elf.SHT_PROGBITS, alloc},
	}
	for _, tc := range []struct {
		name string
		in   []byte
		// hidden: the sections renamed and no longer allocated; nil: the
		// input comes back as it is.
		hidden map[string]string
	}{
		{"module", elfWithSections(elf.EM_X86_64, module), map[string]string{
			"__mcount_loc": "_mcount_loc", ".orc_unwind": "orc_unwind", ".orc_unwind_ip": "orc_unwind_ip", "_ftrace_eval_map": "ftrace_eval_map"}},
		{"no tables", elfWithSections(elf.EM_X86_64, module[:1]), nil},
		{"other machine", elfWithSections(elf.EM_AARCH64, module), nil},
		{"not ELF", []byte("not an ELF file at all, but long enough to look at its header fields........"), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := bytes.Clone(tc.in)
			out := dropDebugTables(tc.in)
			if !bytes.Equal(tc.in, in) {
				t.Fatal("input modified")
			}
			if tc.hidden == nil {
				if !bytes.Equal(out, in) {
					t.Fatal("changed")
				}
				return
			}
			if len(out) != len(in) {
				t.Fatalf("size %d, want %d", len(out), len(in))
			}
			before, err := elf.NewFile(bytes.NewReader(in))
			if err != nil {
				t.Fatal(err)
			}
			after, err := elf.NewFile(bytes.NewReader(out))
			if err != nil {
				t.Fatalf("output is no ELF: %v", err)
			}
			for i, s := range after.Sections {
				b := before.Sections[i]
				want, hide := tc.hidden[b.Name]
				switch {
				case hide && (s.Name != want || s.Flags != b.Flags&^elf.SHF_ALLOC):
					t.Errorf("%s: now %q flags %v, want %q without SHF_ALLOC", b.Name, s.Name, s.Flags, want)
				case !hide && (s.Name != b.Name || s.Flags != b.Flags):
					t.Errorf("%s: now %q flags %v, want it unchanged (flags %v)", b.Name, s.Name, s.Flags, b.Flags)
				}
				if s.Offset != b.Offset || s.Size != b.Size || s.Type != b.Type {
					t.Errorf("%s: placement or type changed", b.Name)
				}
			}
			for _, name := range debugTables {
				if after.Section(name) != nil {
					t.Errorf("%s still found by name", name)
				}
			}
		})
	}
}

// A module that keeps its signature keeps its tables: the kernel refuses a
// module whose signature fails, even when it does not enforce signatures.
func TestPrepareModule(t *testing.T) {
	plain := elfWithSections(elf.EM_X86_64, []testSection{
		{".text", elf.SHT_PROGBITS, elf.SHF_ALLOC | elf.SHF_EXECINSTR},
		{"__mcount_loc", elf.SHT_PROGBITS, elf.SHF_ALLOC},
	})
	sign := func(ko []byte) []byte {
		sig := bytes.Repeat([]byte{0xaa}, 300)
		out := append(bytes.Clone(ko), sig...)
		out = append(out, 0, 0, 2, 0, 0, 0, 0, 0)
		out = binary.BigEndian.AppendUint32(out, uint32(len(sig)))
		return append(out, modSigMagic...)
	}
	for _, tc := range []struct {
		name        string
		in          []byte
		opts        ResolveOptions
		signed, dbg bool // what the result keeps
	}{
		{"signed, strip and drop", sign(plain), ResolveOptions{StripSignatures: true, DropDebugTables: true}, false, false},
		{"signed, drop only", sign(plain), ResolveOptions{DropDebugTables: true}, true, true},
		{"unsigned, drop only", plain, ResolveOptions{DropDebugTables: true}, false, false},
		{"signed, strip only", sign(plain), ResolveOptions{StripSignatures: true}, false, true},
		{"signed, neither", sign(plain), ResolveOptions{}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := prepareModule(tc.in, tc.opts)
			if got := bytes.HasSuffix(out, []byte(modSigMagic)); got != tc.signed {
				t.Errorf("signed %v, want %v", got, tc.signed)
			}
			if tc.signed && !bytes.Equal(out, tc.in) {
				t.Error("a module keeping its signature was changed")
			}
			f, err := elf.NewFile(bytes.NewReader(out))
			if err != nil {
				t.Fatal(err)
			}
			if got := f.Section("__mcount_loc") != nil; got != tc.dbg {
				t.Errorf("debug tables kept %v, want %v", got, tc.dbg)
			}
		})
	}
}
