package bootkit

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// DefaultModules are the modules a paddock guest loads: virtio-mmio transport,
// block, network and console devices, vsock over virtio, ext4, and the ACPI
// power button with the event device it reports on (QMP system_powerdown
// reaches paddock-agent as KEY_POWER on /dev/input/event*). Their
// dependencies (hard and soft "pre:") are added by ResolveModules.
var DefaultModules = []string{
	"virtio_mmio", "virtio_blk", "virtio_net", "virtio_console",
	"vsock", "vmw_vsock_virtio_transport", "ext4", "button", "evdev",
}

// Module is one kernel module resolved from a module tree.
type Module struct {
	// Name with '-' normalized to '_', e.g. "virtio_blk".
	Name string `json:"name"`
	// Path relative to the module tree, as found (may end in .ko.xz).
	Source string `json:"source"`
	// Path inside the initramfs (always an uncompressed .ko).
	Path string `json:"path"`
	// Depends lists the hard dependencies and resolved soft pre-dependencies.
	Depends []string `json:"depends,omitempty"`
	// Size of the (decompressed, possibly signature-stripped) module.
	Size int `json:"size"`
	// Data is the module content to load.
	Data []byte `json:"-"`
}

// ModuleSet is the result of ResolveModules.
type ModuleSet struct {
	// Release is the kernel release (the module tree's directory name).
	Release string `json:"release"`
	// Modules in load order: every module comes after its dependencies.
	Modules []Module `json:"modules"`
	// Builtin lists requested or depended-on modules built into the kernel.
	Builtin []string `json:"builtin,omitempty"`
	// Unresolved lists soft dependencies that no module provides (not fatal).
	Unresolved []string `json:"unresolved,omitempty"`
	// DepSource is "modules.dep" or "modinfo".
	DepSource string `json:"dep_source"`
}

// ResolveOptions tune ResolveModules.
type ResolveOptions struct {
	// StripSignatures drops appended module signatures (faster loading under
	// TCG; the kernel is then tainted 'E' unless it enforces signatures, in
	// which case loading fails).
	StripSignatures bool
	// DropDebugTables hides from the kernel the modules' sections that it
	// processes at every load for stack traces and tracing only (see
	// debugTables): under TCG, most of the modules' load time. Modules that
	// keep a signature are left as they are (see prepareModule).
	DropDebugTables bool
}

type moduleTree struct {
	dir      string
	files    map[string]string   // normalized name → relative path
	builtin  map[string]bool     // normalized names
	dep      map[string][]string // from modules.dep (names), nil when absent
	aliases  map[string][]string // from modules.alias, nil when absent
	softdeps map[string][]string // from modules.softdep (pre only), nil when absent
	cache    map[string]*Module
	soft     map[string][]string // soft pre-dependencies by module
}

func normName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// moduleName turns "kernel/fs/ext4/ext4.ko.xz" into "ext4".
func moduleName(rel string) (string, bool) {
	base := filepath.Base(rel)
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(base, ext) {
			return normName(strings.TrimSuffix(base, ext)), true
		}
	}
	return "", false
}

func openModuleTree(dir string) (*moduleTree, error) {
	t := &moduleTree{dir: dir, files: map[string]string{}, builtin: map[string]bool{}, cache: map[string]*Module{}, soft: map[string][]string{}}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		name, ok := moduleName(p)
		if !ok {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if old, dup := t.files[name]; !dup || rel < old {
			t.files[name] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bootkit: reading module tree: %w", err)
	}
	if len(t.files) == 0 {
		return nil, fmt.Errorf("bootkit: no kernel modules under %s", dir)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if name, ok := moduleName(strings.TrimSpace(line)); ok {
				t.builtin[name] = true
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.dep")); err == nil {
		t.dep = map[string][]string{}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			name, ok := moduleName(strings.TrimSpace(k))
			if !ok {
				continue
			}
			var deps []string
			for _, f := range strings.Fields(v) {
				if dn, ok := moduleName(f); ok {
					deps = append(deps, dn)
				}
			}
			t.dep[name] = deps
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.alias")); err == nil {
		t.aliases = map[string][]string{}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 3 && f[0] == "alias" {
				t.aliases[f[1]] = append(t.aliases[f[1]], normName(f[2]))
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.softdep")); err == nil {
		t.softdeps = map[string][]string{}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[0] == "softdep" {
				t.softdeps[normName(f[1])] = append(t.softdeps[normName(f[1])], softPre(strings.Join(f[2:], " "))...)
			}
		}
	}
	return t, nil
}

// softPre extracts the "pre:" names of a softdep value ("pre: a b post: c").
func softPre(v string) []string {
	var out []string
	in := false
	for _, f := range strings.Fields(v) {
		switch f {
		case "pre:":
			in = true
		case "post:":
			in = false
		default:
			if in {
				out = append(out, f)
			}
		}
	}
	return out
}

// load reads, decompresses and parses one module.
func (t *moduleTree) load(name string, opts ResolveOptions) (*Module, error) {
	if m, ok := t.cache[name]; ok {
		return m, nil
	}
	rel, ok := t.files[name]
	if !ok {
		return nil, fmt.Errorf("bootkit: module %s not found under %s (and not built in)", name, t.dir)
	}
	raw, err := os.ReadFile(filepath.Join(t.dir, rel))
	if err != nil {
		return nil, fmt.Errorf("bootkit: %w", err)
	}
	data, err := decompressModule(rel, raw)
	if err != nil {
		return nil, fmt.Errorf("bootkit: module %s: %w", rel, err)
	}
	info, err := modinfo(data)
	if err != nil {
		return nil, fmt.Errorf("bootkit: module %s: %w", rel, err)
	}
	data = prepareModule(data, opts)
	m := &Module{Name: name, Source: rel, Data: data, Size: len(data)}
	m.Path = strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(rel, ".xz"), ".zst"), ".gz")
	var deps []string
	if t.dep != nil {
		deps = append(deps, t.dep[name]...)
	} else {
		for _, v := range info["depends"] {
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					deps = append(deps, normName(d))
				}
			}
		}
	}
	var soft []string
	if t.softdeps != nil {
		soft = append(soft, t.softdeps[name]...)
	}
	for _, v := range info["softdep"] {
		soft = append(soft, softPre(v)...)
	}
	m.Depends = deps
	t.cache[name] = m
	t.soft[name] = soft
	return m, nil
}

// resolveAlias maps a softdep target (a module name or an alias such as
// "crypto-crc32c") to module names.
func (t *moduleTree) resolveAlias(target string, opts ResolveOptions) []string {
	n := normName(target)
	if _, ok := t.files[n]; ok || t.builtin[n] {
		return []string{n}
	}
	if t.aliases != nil {
		if mods := t.aliases[target]; len(mods) > 0 {
			return mods[:1]
		}
	}
	// No modules.alias: guess the providers from the crypto naming scheme
	// ("crypto-crc32c" → crc32c_generic, crc32c) and confirm with modinfo.
	base := normName(strings.TrimPrefix(target, "crypto-"))
	for _, cand := range []string{base + "_generic", base} {
		if t.builtin[cand] {
			return []string{cand}
		}
		if _, ok := t.files[cand]; !ok {
			continue
		}
		m, err := t.load(cand, opts)
		if err != nil {
			continue
		}
		info, err := modinfo(m.Data)
		if err != nil {
			continue
		}
		for _, a := range info["alias"] {
			if a == target {
				return []string{cand}
			}
		}
	}
	return nil
}

// ResolveModules finds the named modules and everything they need in the
// module tree dir (e.g. /lib/modules/6.1.0-56-amd64), decompresses them and
// returns them in load order. Dependencies come from modules.dep when the
// tree has one, else from each module's own .modinfo ("depends=", and
// "softdep=" pre-dependencies, resolved through modules.alias or the module
// naming scheme). Modules built into the kernel are skipped.
func ResolveModules(dir string, names []string, opts ResolveOptions) (*ModuleSet, error) {
	t, err := openModuleTree(dir)
	if err != nil {
		return nil, err
	}
	set := &ModuleSet{Release: filepath.Base(filepath.Clean(dir)), DepSource: "modinfo"}
	if t.dep != nil {
		set.DepSource = "modules.dep"
	}

	state := map[string]int{} // 0 new, 1 visiting, 2 done
	builtin := map[string]bool{}
	unresolved := map[string]bool{}
	var visit func(name string, chain []string, soft bool) error
	visit = func(name string, chain []string, soft bool) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("bootkit: module dependency cycle: %s", strings.Join(append(chain, name), " → "))
		case 2:
			return nil
		}
		if t.builtin[name] {
			builtin[name] = true
			state[name] = 2
			return nil
		}
		m, err := t.load(name, opts)
		if err != nil {
			if soft {
				unresolved[name] = true
				state[name] = 2
				return nil
			}
			return err
		}
		state[name] = 1
		chain = append(chain, name)
		var deps []string
		for _, s := range t.soft[name] {
			provs := t.resolveAlias(s, opts)
			if len(provs) == 0 {
				unresolved[s] = true
			}
			for _, p := range provs {
				if p != name {
					if err := visit(p, chain, true); err != nil {
						return err
					}
					if state[p] == 2 && !unresolved[p] {
						deps = append(deps, p)
					}
				}
			}
		}
		for _, d := range m.Depends {
			if err := visit(d, chain, false); err != nil {
				return err
			}
		}
		m.Depends = append(append([]string{}, m.Depends...), deps...)
		state[name] = 2
		set.Modules = append(set.Modules, *m)
		return nil
	}
	for _, n := range names {
		if err := visit(normName(n), nil, false); err != nil {
			return nil, err
		}
	}
	for n := range builtin {
		set.Builtin = append(set.Builtin, n)
	}
	for n := range unresolved {
		set.Unresolved = append(set.Unresolved, n)
	}
	sort.Strings(set.Builtin)
	sort.Strings(set.Unresolved)
	return set, nil
}

func decompressModule(rel string, raw []byte) ([]byte, error) {
	switch {
	case strings.HasSuffix(rel, ".ko"):
		return raw, nil
	case strings.HasSuffix(rel, ".xz"):
		return decodeXZ(raw, 256<<20)
	case strings.HasSuffix(rel, ".zst"):
		zr, err := zstd.NewReader(bytes.NewReader(raw), zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		defer zr.Close()
		return readLimited(zr, 256<<20)
	case strings.HasSuffix(rel, ".gz"):
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, err
		}
		return readLimited(zr, 256<<20)
	}
	return nil, errors.New("unknown module compression")
}

// modinfo parses a module's .modinfo section into key → values.
func modinfo(ko []byte) (map[string][]string, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, fmt.Errorf("not an ELF module: %w", err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("no .modinfo section")
	}
	data, err := sec.Data()
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 4096), len(data)+1)
	sc.Split(func(d []byte, atEOF bool) (int, []byte, error) {
		if i := bytes.IndexByte(d, 0); i >= 0 {
			return i + 1, d[:i], nil
		}
		if atEOF && len(d) > 0 {
			return len(d), d, nil
		}
		return 0, nil, nil
	})
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			out[k] = append(out[k], v)
		}
	}
	return out, sc.Err()
}

const modSigMagic = "~Module signature appended~\n"

// stripSignature drops an appended module signature, if any.
func stripSignature(ko []byte) []byte {
	if !bytes.HasSuffix(ko, []byte(modSigMagic)) {
		return ko
	}
	end := len(ko) - len(modSigMagic)
	if end < 12 {
		return ko
	}
	sig := ko[end-12 : end]
	total := 12 + int(binary.BigEndian.Uint32(sig[8:])) + int(sig[3]) + int(sig[4])
	if total > end {
		return ko
	}
	return ko[:end-total]
}

// prepareModule strips the signature of a module and hides its debug
// tables as opts say. A module that keeps its signature keeps its tables:
// changed, it would fail its signature check, and the kernel refuses such a
// module even when it does not enforce signatures (only a missing
// signature or key is let through, with a taint).
func prepareModule(ko []byte, opts ResolveOptions) []byte {
	if opts.StripSignatures {
		ko = stripSignature(ko)
	}
	if opts.DropDebugTables && !bytes.HasSuffix(ko, []byte(modSigMagic)) {
		ko = dropDebugTables(ko)
	}
	return ko
}

// debugTables are sections of an x86-64 module that the kernel processes at
// every load for stack traces and tracing only. Under TCG they were most of
// the module phase (instruction counts, -icount: ext4 189 → 38 ms, all the
// boot's modules 255 → 87 ms):
//   - __mcount_loc, the ftrace call sites: for each, ftrace_module_enable
//     looks the address up in the module's symbols, a linear scan (ext4:
//     854 sites × 3667 symbols), ~115 ms; the sites keep their call to
//     __fentry__ (a bare return): the module's functions cannot be traced
//     with ftrace (kprobes still work), and cost a call more each;
//   - .orc_unwind, .orc_unwind_ip, the ORC unwind tables, heap-sorted at
//     load (unwind_module_init), ~30 ms: stack traces through the module
//     become the unwinder's frame-pointer guess, marked unreliable, as for
//     JIT code;
//   - _ftrace_eval_map, the enum names of trace events' formats, matched
//     against every trace event of the kernel, ~20 ms: tools reading the
//     module's trace events show those enums as numbers.
var debugTables = []string{"__mcount_loc", ".orc_unwind", ".orc_unwind_ip", "_ftrace_eval_map"}

// dropDebugTables hides debugTables from the kernel: each such section is
// renamed (to its name without its first byte, which the kernel does not
// look for) and loses SHF_ALLOC, so it is neither loaded nor relocated (the
// kernel skips the relocations of a section not allocated). The ELF is
// patched in a copy; anything but an x86-64 ELF64 is returned as it is.
func dropDebugTables(ko []byte) []byte {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil || f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB || f.Machine != elf.EM_X86_64 {
		return ko
	}
	shoff := binary.LittleEndian.Uint64(ko[0x28:])
	shentsize := uint64(binary.LittleEndian.Uint16(ko[0x3a:]))
	var out []byte
	for i, s := range f.Sections {
		if !slices.Contains(debugTables, s.Name) || s.Flags&elf.SHF_ALLOC == 0 {
			continue
		}
		h := shoff + uint64(i)*shentsize
		if shentsize < 64 || h+64 > uint64(len(ko)) {
			return ko
		}
		if out == nil {
			out = slices.Clone(ko)
		}
		binary.LittleEndian.PutUint32(out[h:], binary.LittleEndian.Uint32(out[h:])+1)
		binary.LittleEndian.PutUint64(out[h+8:], uint64(s.Flags&^elf.SHF_ALLOC))
	}
	if out == nil {
		return ko
	}
	return out
}
