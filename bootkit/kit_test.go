package bootkit

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// fakeModule builds an ELF64 relocatable object with a .modinfo section.
func fakeModule(modinfo []string, body int, signed bool) []byte {
	var mi []byte
	for _, kv := range modinfo {
		mi = append(append(mi, kv...), 0)
	}
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00.text\x00")
	text := bytes.Repeat([]byte{0x90}, body)
	const ehsize, shsize = 64, 64
	off := ehsize
	miOff := off
	off += len(mi)
	strOff := off
	off += len(shstr)
	textOff := off
	off += len(text)
	shOff := (off + 7) &^ 7
	b := make([]byte, 0, shOff+4*shsize)
	b = append(b, 0x7f, 'E', 'L', 'F', 2, 1, 1, 0)
	b = append(b, make([]byte, 8)...)
	b = binary.LittleEndian.AppendUint16(b, 1)  // ET_REL
	b = binary.LittleEndian.AppendUint16(b, 62) // x86-64
	b = binary.LittleEndian.AppendUint32(b, 1)
	b = binary.LittleEndian.AppendUint64(b, 0)
	b = binary.LittleEndian.AppendUint64(b, 0)
	b = binary.LittleEndian.AppendUint64(b, uint64(shOff))
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint16(b, ehsize)
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint16(b, shsize)
	b = binary.LittleEndian.AppendUint16(b, 4) // shnum
	b = binary.LittleEndian.AppendUint16(b, 2) // shstrndx
	b = append(b, mi...)
	b = append(b, shstr...)
	b = append(b, text...)
	for len(b) < shOff {
		b = append(b, 0)
	}
	sh := func(name, typ uint32, off, size int) {
		b = binary.LittleEndian.AppendUint32(b, name)
		b = binary.LittleEndian.AppendUint32(b, typ)
		b = binary.LittleEndian.AppendUint64(b, 0)
		b = binary.LittleEndian.AppendUint64(b, 0)
		b = binary.LittleEndian.AppendUint64(b, uint64(off))
		b = binary.LittleEndian.AppendUint64(b, uint64(size))
		b = binary.LittleEndian.AppendUint32(b, 0)
		b = binary.LittleEndian.AppendUint32(b, 0)
		b = binary.LittleEndian.AppendUint64(b, 1)
		b = binary.LittleEndian.AppendUint64(b, 0)
	}
	sh(0, 0, 0, 0)
	sh(1, 1, miOff, len(mi))      // .modinfo PROGBITS
	sh(10, 3, strOff, len(shstr)) // .shstrtab STRTAB
	sh(20, 1, textOff, len(text)) // .text
	if signed {
		sig := bytes.Repeat([]byte{0xaa}, 300)
		b = append(b, sig...)
		b = append(b, 0, 0, 2, 0, 0, 0, 0, 0) // algo, hash, id_type=PKEY_ID_PKCS7, signer_len, key_id_len, pad
		b = binary.BigEndian.AppendUint32(b, uint32(len(sig)))
		b = append(b, modSigMagic...)
	}
	return b
}

type fakeMod struct {
	path    string // relative, may end in .xz/.zst/.gz
	depends string
	softdep string
	aliases []string
	signed  bool
}

var fakeMods = []fakeMod{
	{path: "kernel/drivers/virtio/virtio_ring.ko"},
	{path: "kernel/drivers/virtio/virtio.ko", depends: "virtio_ring"},
	{path: "kernel/drivers/virtio/virtio_mmio.ko", depends: "virtio,virtio_ring"},
	{path: "kernel/drivers/block/virtio_blk.ko", depends: "virtio,virtio_ring", signed: true},
	{path: "kernel/net/core/failover.ko"},
	{path: "kernel/drivers/net/net_failover.ko", depends: "failover"},
	{path: "kernel/drivers/net/virtio_net.ko.zst", depends: "virtio_ring,virtio,net_failover"},
	{path: "kernel/drivers/char/virtio_console.ko", depends: "virtio,virtio_ring"},
	{path: "kernel/net/vmw_vsock/vsock.ko"},
	{path: "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko", depends: "vsock"},
	{path: "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko", depends: "virtio,vmw_vsock_virtio_transport_common,virtio_ring,vsock"},
	{path: "kernel/crypto/crc32c_generic.ko.gz", aliases: []string{"crypto-crc32c", "crypto-crc32c-generic"}},
	{path: "kernel/arch/x86/crypto/crc32c-intel.ko", aliases: []string{"crypto-crc32c-intel"}},
	{path: "kernel/fs/jbd2/jbd2.ko", softdep: "pre: crypto-crc32c"},
	{path: "kernel/fs/mbcache.ko"},
	{path: "kernel/lib/crc16.ko"},
	{path: "kernel/fs/ext4/ext4.ko.xz", depends: "jbd2,mbcache,crc16", softdep: "pre: crypto-crc32c"},
	{path: "kernel/drivers/acpi/button.ko"},
	{path: "kernel/drivers/input/evdev.ko"},
	{path: "kernel/sound/core/snd.ko"},
}

// fakeTree writes a module tree; withDepmod adds modules.dep/alias/softdep
// and removes the depends= from .modinfo so only modules.dep can be used.
func fakeTree(t *testing.T, root string, withDepmod bool, builtin []string) string {
	t.Helper()
	dir := filepath.Join(root, "lib/modules/6.1.0-test")
	var dep, alias, soft strings.Builder
	for _, m := range fakeMods {
		name, _ := moduleName(m.path)
		info := []string{"name=" + name, "license=GPL"}
		if m.depends != "" && !withDepmod {
			info = append(info, "depends="+m.depends)
		}
		if m.softdep != "" && !withDepmod {
			info = append(info, "softdep="+m.softdep)
		}
		for _, a := range m.aliases {
			info = append(info, "alias="+a)
			fmt.Fprintf(&alias, "alias %s %s\n", a, name)
		}
		if m.softdep != "" {
			fmt.Fprintf(&soft, "softdep %s %s\n", name, m.softdep)
		}
		data := fakeModule(info, 2000, m.signed)
		switch {
		case strings.HasSuffix(m.path, ".xz"):
			var b bytes.Buffer
			w, _ := xz.NewWriter(&b)
			w.Write(data)
			w.Close()
			data = b.Bytes()
		case strings.HasSuffix(m.path, ".zst"):
			w, _ := zstd.NewWriter(nil)
			data = w.EncodeAll(data, nil)
		case strings.HasSuffix(m.path, ".gz"):
			var b bytes.Buffer
			w := gzip.NewWriter(&b)
			w.Write(data)
			w.Close()
			data = b.Bytes()
		}
		p := filepath.Join(dir, m.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		// modules.dep lists transitive dependencies by path
		var deps []string
		var walk func(n string)
		seen := map[string]bool{}
		walk = func(n string) {
			for _, fm := range fakeMods {
				if nm, _ := moduleName(fm.path); nm == n {
					for _, d := range strings.Split(fm.depends, ",") {
						if d != "" && !seen[d] {
							seen[d] = true
							for _, fm2 := range fakeMods {
								if nm2, _ := moduleName(fm2.path); nm2 == d {
									deps = append(deps, fm2.path)
								}
							}
							walk(d)
						}
					}
				}
			}
		}
		walk(name)
		fmt.Fprintf(&dep, "%s: %s\n", m.path, strings.Join(deps, " "))
	}
	if withDepmod {
		for f, s := range map[string]string{"modules.dep": dep.String(), "modules.alias": alias.String(), "modules.softdep": soft.String()} {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(s), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	var bi strings.Builder
	for _, b := range builtin {
		fmt.Fprintf(&bi, "kernel/%s.ko\n", b)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(bi.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func checkOrder(t *testing.T, set *ModuleSet, want []string) {
	t.Helper()
	pos := map[string]int{}
	var names []string
	for i, m := range set.Modules {
		pos[m.Name] = i
		names = append(names, m.Name)
	}
	for _, m := range set.Modules {
		for _, d := range m.Depends {
			if _, builtin := pos[d]; !builtin {
				continue
			}
			if pos[d] > pos[m.Name] {
				t.Errorf("%s loads before its dependency %s", m.Name, d)
			}
		}
		if len(m.Data) != m.Size || !bytes.HasPrefix(m.Data, []byte("\x7fELF")) {
			t.Errorf("%s: data not a decompressed ELF", m.Name)
		}
		if strings.HasSuffix(m.Path, ".xz") || strings.HasSuffix(m.Path, ".zst") || strings.HasSuffix(m.Path, ".gz") {
			t.Errorf("%s: initramfs path %s still compressed", m.Name, m.Path)
		}
	}
	sort.Strings(names)
	sort.Strings(want)
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("modules\n got  %v\n want %v", names, want)
	}
}

var wantMods = []string{"virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "failover", "net_failover", "virtio_net",
	"virtio_console", "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport",
	"crc32c_generic", "jbd2", "mbcache", "crc16", "ext4", "button", "evdev"}

func TestResolveModulesModinfo(t *testing.T) {
	dir := fakeTree(t, t.TempDir(), false, nil)
	set, err := ResolveModules(dir, DefaultModules, ResolveOptions{StripSignatures: true})
	if err != nil {
		t.Fatal(err)
	}
	if set.DepSource != "modinfo" || set.Release != "6.1.0-test" {
		t.Fatalf("set %+v", set)
	}
	checkOrder(t, set, wantMods)
	for _, m := range set.Modules {
		if m.Name == "virtio_blk" && bytes.HasSuffix(m.Data, []byte(modSigMagic)) {
			t.Error("signature not stripped")
		}
		if m.Name == "ext4" && !strings.Contains(strings.Join(m.Depends, ","), "crc32c_generic") {
			t.Errorf("ext4 soft dependency not resolved: %v", m.Depends)
		}
	}
}

func TestResolveModulesDepmod(t *testing.T) {
	dir := fakeTree(t, t.TempDir(), true, []string{"fs/mbcache"})
	set, err := ResolveModules(dir, DefaultModules, ResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if set.DepSource != "modules.dep" {
		t.Fatalf("dep source %q", set.DepSource)
	}
	var want []string
	for _, m := range wantMods {
		if m != "mbcache" {
			want = append(want, m)
		}
	}
	checkOrder(t, set, want)
	if strings.Join(set.Builtin, ",") != "mbcache" {
		t.Errorf("builtin %v", set.Builtin)
	}
	for _, m := range set.Modules {
		if m.Name == "virtio_blk" && !bytes.HasSuffix(m.Data, []byte(modSigMagic)) {
			t.Error("signature stripped without the option")
		}
	}
}

func TestResolveModulesMissing(t *testing.T) {
	dir := fakeTree(t, t.TempDir(), false, nil)
	_, err := ResolveModules(dir, []string{"virtio_blk", "nosuchmod"}, ResolveOptions{})
	if err == nil || !strings.Contains(err.Error(), "nosuchmod not found") {
		t.Fatalf("err = %v", err)
	}
	if _, err := ResolveModules(t.TempDir(), DefaultModules, ResolveOptions{}); err == nil {
		t.Fatal("empty tree accepted")
	}
}

type cpioEntry struct {
	name        string
	mode        uint32
	major, min_ uint32
	data        []byte
}

// readCPIO is an independent newc parser for the tests.
func readCPIO(t *testing.T, r io.Reader) []cpioEntry {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	var out []cpioEntry
	off := 0
	field := func(i int) uint32 {
		v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
		if err != nil {
			t.Fatalf("bad header field at %d: %v", off, err)
		}
		return uint32(v)
	}
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if string(b[off:off+6]) != "070701" {
			t.Fatalf("bad magic at %d", off)
		}
		mode, size, rmaj, rmin, namesz := field(1), field(6), field(9), field(10), field(11)
		name := string(b[off+110 : off+110+int(namesz)-1])
		dataOff := align(off + 110 + int(namesz))
		data := b[dataOff : dataOff+int(size)]
		off = align(dataOff + int(size))
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after trailer", len(b)-off)
			}
			return out
		}
		out = append(out, cpioEntry{name, mode, rmaj, rmin, data})
	}
}

func TestCPIOWriter(t *testing.T) {
	var buf bytes.Buffer
	w := NewCPIOWriter(&buf, 0)
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.CharDev("dev/console", 0o600, 5, 1))
	must(w.WriteFile("/init", 0o755, []byte("binary")))
	must(w.WriteFile("a/b/c.txt", 0o644, []byte("xyz")))
	must(w.Symlink("bin/sh", "busybox"))
	must(w.Mkdir("a", 0o755)) // already created as a parent
	must(w.Close())
	if err := w.WriteFile("late", 0o644, nil); err == nil {
		t.Fatal("write after close")
	}
	got := map[string]cpioEntry{}
	var order []string
	for _, e := range readCPIO(t, &buf) {
		got[e.name] = e
		order = append(order, e.name)
	}
	if strings.Join(order, " ") != "dev dev/console init a a/b a/b/c.txt bin bin/sh" {
		t.Fatalf("entries %v", order)
	}
	if e := got["dev/console"]; e.mode != 0o020600 || e.major != 5 || e.min_ != 1 {
		t.Errorf("console %+v", e)
	}
	if e := got["init"]; e.mode != 0o100755 || string(e.data) != "binary" {
		t.Errorf("init %+v", e)
	}
	if e := got["bin/sh"]; e.mode&0o170000 != 0o120000 || string(e.data) != "busybox" {
		t.Errorf("symlink %+v", e)
	}
	if _, err := cleanName(".."); err == nil {
		t.Error("'..' accepted")
	}
}

func writeFakeKernel(t *testing.T, dir string) string {
	t.Helper()
	var b bytes.Buffer
	w, _ := xz.NewWriter(&b)
	elfData := tinyELF(true, 50000)
	w.Write(elfData)
	w.Close()
	p := filepath.Join(dir, "vmlinuz-6.1.0-test")
	if err := os.WriteFile(p, fakeBzImage(withSize(b.Bytes(), len(elfData)), "6.1.0-test (test) #1", true), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestImportListRemove(t *testing.T) {
	tmp := t.TempDir()
	moddir := fakeTree(t, tmp, false, nil)
	kernel := writeFakeKernel(t, tmp)
	agentPath := filepath.Join(tmp, "paddock-agent")
	if err := os.WriteFile(agentPath, tinyELF(false, 3000), 0o755); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(tmp, "state")
	ctx := context.Background()

	kit, err := Import(ctx, kernel, moddir, "k1", state, WithAgent(agentPath))
	if err != nil {
		t.Fatal(err)
	}
	if kit.Release != "6.1.0-test" || !kit.Kernel.PVH || kit.Kernel.Compression != "xz" || len(kit.Modules) != len(wantMods) {
		t.Fatalf("kit %+v", kit)
	}
	vm, _ := os.ReadFile(kit.VmlinuxPath())
	if !bytes.Equal(vm, tinyELF(true, 50000)) {
		t.Fatal("stored vmlinux differs")
	}
	// The initramfs is stored uncompressed (the guest copies it, not
	// inflates it), and named so in kit.json.
	if kit.Initramfs != InitramfsRawFile || filepath.Base(kit.InitramfsPath()) != InitramfsRawFile {
		t.Errorf("initramfs %q at %s", kit.Initramfs, kit.InitramfsPath())
	}
	f, err := os.Open(kit.InitramfsPath())
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]cpioEntry{}
	for _, e := range readCPIO(t, f) {
		entries[e.name] = e
	}
	f.Close()
	agentBin, _ := os.ReadFile(agentPath)
	if e, ok := entries["init"]; !ok || !bytes.Equal(e.data, agentBin) || e.mode != 0o100755 {
		t.Error("initramfs /init is not the agent")
	}
	for _, n := range []string{"dev/console", "dev/null", "proc", "sys", "newroot", "etc/paddock/kit.json"} {
		if _, ok := entries[n]; !ok {
			t.Errorf("initramfs lacks %s", n)
		}
	}
	var list []string
	for _, line := range strings.Split(strings.TrimSpace(string(entries["etc/paddock/modules"].data)), "\n") {
		f := strings.Fields(line)
		list = append(list, f[0])
		if strings.HasSuffix(f[0], "/ext4.ko") && strings.Join(f[1:], " ") != "jbd2 mbcache crc16 crc32c_generic" {
			t.Errorf("ext4 line %q", line)
		}
	}
	if len(list) != len(wantMods) {
		t.Fatalf("module list %v", list)
	}
	for i, p := range list {
		if _, ok := entries[strings.TrimPrefix(p, "/")]; !ok {
			t.Errorf("listed module %s not packed", p)
		}
		if !strings.HasSuffix(p, ".ko") || kit.Modules[i].Path != strings.TrimPrefix(p, "/lib/modules/6.1.0-test/") {
			t.Errorf("list[%d] = %s, kit says %s", i, p, kit.Modules[i].Path)
		}
	}

	// re-import replaces atomically and leaves no scratch directories
	if _, err := Import(ctx, kernel, moddir, "k1", state, WithAgent(agentPath), WithStripSignatures(false), WithDropDebugTables(false)); err != nil {
		t.Fatal(err)
	}
	if _, err := Import(ctx, kernel, moddir, "k2", state, WithAgent(agentPath)); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(KernelsDir(state))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != ".lock k1 k2" {
		t.Errorf("kernels dir: %v", names)
	}
	got, err := Get(state, "k1")
	if err != nil || got.StrippedSignatures || got.DroppedDebugTables {
		t.Fatalf("get: %+v %v", got, err)
	}
	if got, err := Get(state, "k2"); err != nil || !got.StrippedSignatures || !got.DroppedDebugTables {
		t.Fatalf("get k2 (the defaults): %+v %v", got, err)
	}

	// a corrupt kit is listed with its error
	if err := os.WriteFile(filepath.Join(KernelsDir(state), "k2", KitFile), []byte("{garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	kits, err := List(state)
	if err != nil || len(kits) != 2 || kits[0].Name != "k1" || kits[0].Err != nil || kits[1].Err == nil {
		t.Fatalf("list: %v %v", kits, err)
	}

	if err := Remove(state, "k1"); err != nil {
		t.Fatal(err)
	}
	if err := Remove(state, "k1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second remove: %v", err)
	}
	if _, err := Get(state, "k1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get removed: %v", err)
	}
	if kits, _ := List(state); len(kits) != 1 {
		t.Fatalf("after remove: %v", kits)
	}
	if kits, err := List(filepath.Join(tmp, "nostate")); err != nil || len(kits) != 0 {
		t.Fatalf("empty state: %v %v", kits, err)
	}
}

func TestImportRejects(t *testing.T) {
	tmp := t.TempDir()
	moddir := fakeTree(t, tmp, false, nil)
	kernel := writeFakeKernel(t, tmp)
	agentPath := filepath.Join(tmp, "agent")
	_ = os.WriteFile(agentPath, []byte("#!/bin/sh\n"), 0o755)
	state := filepath.Join(tmp, "state")
	ctx := context.Background()
	for _, name := range []string{"", "../x", ".hidden", "a/b", strings.Repeat("x", 65)} {
		if _, err := Import(ctx, kernel, moddir, name, state, WithAgent(agentPath)); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
	if _, err := Import(ctx, kernel, moddir, "k", state, WithAgent(agentPath)); err == nil || !strings.Contains(err.Error(), "ELF") {
		t.Errorf("script agent: %v", err)
	}
	_ = os.WriteFile(agentPath, tinyELF(false, 100), 0o755)
	other := filepath.Join(tmp, "other/lib/modules/5.10.0-x")
	_ = os.MkdirAll(filepath.Dir(other), 0o755)
	_ = os.Rename(moddir, other)
	if _, err := Import(ctx, kernel, other, "k", state, WithAgent(agentPath)); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("release mismatch: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Import(cctx, kernel, other, "k", state, WithAgent(agentPath)); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
	if kits, _ := List(state); len(kits) != 0 {
		t.Errorf("failed imports left kits: %v", kits)
	}
}

// The Debian package puts paddockd in /usr/bin and the agent in
// /usr/libexec/paddock; a build tree keeps them side by side (bin/).
func TestAgentBesides(t *testing.T) {
	got := agentBesides("/usr/bin/paddockd")
	want := []string{"/usr/bin/paddock-agent", "/usr/libexec/paddock/paddock-agent"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("agentBesides(/usr/bin/paddockd) = %q, want %q", got, want)
	}
}
