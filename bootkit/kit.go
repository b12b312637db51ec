// Package bootkit builds and stores boot kits: an uncompressed vmlinux ELF
// extracted from a kernel's bzImage plus a gzip-compressed newc initramfs
// holding paddock-agent as /init and exactly the kernel modules a paddock
// guest needs. Kits live under <stateDir>/kernels/<name>/ as vmlinux,
// initramfs.cpio.gz and kit.json, and are replaced atomically.
package bootkit

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// KitSchema is the version of kit.json.
const KitSchema = 1

// File names inside a kit directory.
const (
	VmlinuxFile = "vmlinux"
	// InitramfsRawFile is a kit's uncompressed initramfs: the guest's
	// kernel copies it instead of inflating it, under TCG about 0.2 s of
	// every boot saved for twice the bytes on disk.
	InitramfsRawFile = "initramfs.cpio"
	// InitramfsFile is the gzip-compressed initramfs of the kits made
	// before (kit.json without "initramfs").
	InitramfsFile = "initramfs.cpio.gz"
	KitFile       = "kit.json"
)

// Paths inside the initramfs that paddock-agent reads.
const (
	// InitramfsModuleList lists the modules to load in load order, one a
	// line: the absolute path, then the names of the listed modules it
	// depends on (so independent modules may load concurrently).
	InitramfsModuleList = "/etc/paddock/modules"
	// InitramfsKitInfo holds the kit's name and kernel release as JSON.
	InitramfsKitInfo = "/etc/paddock/kit.json"
)

// ErrNotFound is returned (wrapped) for a kit that does not exist.
var ErrNotFound = errors.New("boot kit not found")

// Kit is a stored boot kit.
type Kit struct {
	Schema  int       `json:"schema"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	// Kernel describes the extracted vmlinux.
	Kernel KernelInfo `json:"kernel"`
	// Release is the kernel release the modules belong to.
	Release string `json:"release"`
	// Modules in load order, as packed in the initramfs.
	Modules []Module `json:"modules"`
	// Builtin lists needed modules that are built into the kernel.
	Builtin []string `json:"builtin,omitempty"`
	// StrippedSignatures reports whether module signatures were dropped.
	StrippedSignatures bool `json:"stripped_signatures"`
	// DroppedDebugTables reports whether the modules' unwind and tracing
	// tables were hidden from the kernel (WithDropDebugTables).
	DroppedDebugTables bool `json:"dropped_debug_tables"`
	// Source paths the kit was built from.
	SourceKernel  string `json:"source_kernel"`
	SourceModules string `json:"source_modules"`
	// Content digests.
	VmlinuxSHA256   string `json:"vmlinux_sha256"`
	InitramfsSHA256 string `json:"initramfs_sha256"`
	AgentSHA256     string `json:"agent_sha256"`
	// Initramfs is the initramfs' file name in the kit's directory:
	// InitramfsRawFile, or InitramfsFile when empty (older kits).
	Initramfs string `json:"initramfs,omitempty"`

	// Dir is the kit's directory (not stored).
	Dir string `json:"-"`
	// Err is set by List for a kit whose kit.json is unreadable.
	Err error `json:"-"`
}

// VmlinuxPath is the uncompressed kernel ELF.
func (k *Kit) VmlinuxPath() string { return filepath.Join(k.Dir, VmlinuxFile) }

// InitramfsPath is the initramfs (uncompressed, or compressed in kits made
// before).
func (k *Kit) InitramfsPath() string { return filepath.Join(k.Dir, k.initramfsFile()) }

func (k *Kit) initramfsFile() string {
	if k.Initramfs == InitramfsRawFile {
		return InitramfsRawFile
	}
	return InitramfsFile
}

// Option configures Import.
type Option func(*options)

type options struct {
	agent     string
	modules   []string
	stripSig  bool
	dropDebug bool
}

// WithAgent sets the paddock-agent binary to pack as /init. Without it Import
// uses $PADDOCK_AGENT, then paddock-agent next to the running executable, then
// ../libexec/paddock/paddock-agent from it (the Debian package's layout:
// /usr/bin/paddockd, /usr/libexec/paddock/paddock-agent), then paddock-agent
// on $PATH.
func WithAgent(path string) Option { return func(o *options) { o.agent = path } }

// WithExtraModules adds modules (and their dependencies) beyond DefaultModules.
func WithExtraModules(names ...string) Option {
	return func(o *options) { o.modules = append(o.modules, names...) }
}

// WithStripSignatures controls whether appended module signatures are dropped
// (default true: it saves ~0.2 s of boot under TCG; the guest kernel is then
// tainted 'E'; disable for kernels that enforce module signatures).
func WithStripSignatures(strip bool) Option { return func(o *options) { o.stripSig = strip } }

// WithDropDebugTables controls whether the modules' ftrace call sites, ORC
// unwind tables and trace enum maps are hidden from the kernel (default
// true: under TCG processing them was two thirds of the modules' load time,
// ~170 ms of every boot, most of it ext4's). The modules' functions then
// cannot be traced with ftrace and stack traces through them are marked
// unreliable; the kernel is not tainted. Modules that keep their signature
// (WithStripSignatures(false)) keep their tables: changed, they would fail
// the signature check, which the kernel refuses even when not enforcing.
func WithDropDebugTables(drop bool) Option { return func(o *options) { o.dropDebug = drop } }

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidName reports whether name can name a kit.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("bootkit: invalid kit name %q (want [A-Za-z0-9][A-Za-z0-9._-]{0,63})", name)
	}
	return nil
}

// KernelsDir is where kits live under a state directory.
func KernelsDir(stateDir string) string { return filepath.Join(stateDir, "kernels") }

// FindAgent locates the paddock-agent binary (see WithAgent).
func FindAgent() (string, error) {
	if p := os.Getenv("PADDOCK_AGENT"); p != "" {
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		for _, p := range agentBesides(exe) {
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
				return p, nil
			}
		}
	}
	p, err := exec.LookPath("paddock-agent")
	if err != nil {
		return "", errors.New("bootkit: paddock-agent binary not found (set PADDOCK_AGENT or pass WithAgent)")
	}
	return p, nil
}

// agentBesides lists where FindAgent looks for paddock-agent relative to
// the running executable exe, in order.
func agentBesides(exe string) []string {
	dir := filepath.Dir(exe)
	return []string{
		filepath.Join(dir, "paddock-agent"),
		filepath.Join(dir, "..", "libexec", "paddock", "paddock-agent"),
	}
}

// checkStaticELF verifies that b is a statically linked x86-64 executable.
func checkStaticELF(b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("not an ELF executable: %w", err)
	}
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("agent is built for %v, want x86-64", f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("agent is dynamically linked (build it with CGO_ENABLED=0)")
		}
	}
	return nil
}

// Import builds a boot kit named name from a kernel image (bzImage, or an
// already uncompressed vmlinux) and its module tree, and stores it under
// stateDir/kernels/name, replacing an existing kit of that name atomically.
func Import(ctx context.Context, vmlinuzPath, modulesDir, name, stateDir string, opts ...Option) (*Kit, error) {
	o := options{stripSig: true, dropDebug: true}
	for _, f := range opts {
		f(&o)
	}
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if o.agent == "" {
		p, err := FindAgent()
		if err != nil {
			return nil, err
		}
		o.agent = p
	}
	agent, err := os.ReadFile(o.agent)
	if err != nil {
		return nil, fmt.Errorf("bootkit: reading agent: %w", err)
	}
	if err := checkStaticELF(agent); err != nil {
		return nil, fmt.Errorf("bootkit: %s: %w", o.agent, err)
	}
	image, err := os.ReadFile(vmlinuzPath)
	if err != nil {
		return nil, fmt.Errorf("bootkit: reading kernel: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	vmlinux, kinfo, err := ExtractVmlinux(image)
	if err != nil {
		return nil, fmt.Errorf("bootkit: %s: %w", vmlinuzPath, err)
	}
	image = nil
	if !kinfo.PVH {
		return nil, fmt.Errorf("bootkit: %s: the kernel has no PVH entry point (CONFIG_PVH): QEMU cannot boot its vmlinux", vmlinuzPath)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	mods := append(append([]string{}, DefaultModules...), o.modules...)
	set, err := ResolveModules(modulesDir, mods, ResolveOptions{StripSignatures: o.stripSig, DropDebugTables: o.dropDebug})
	if err != nil {
		return nil, err
	}
	if kinfo.Release != "" && set.Release != kinfo.Release {
		return nil, fmt.Errorf("bootkit: kernel release %q does not match module tree %q", kinfo.Release, set.Release)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	kit := &Kit{
		Schema: KitSchema, Name: name, Created: time.Now().UTC(), Kernel: kinfo,
		Release: set.Release, Modules: set.Modules, Builtin: set.Builtin,
		StrippedSignatures: o.stripSig, DroppedDebugTables: o.dropDebug, SourceKernel: vmlinuzPath, SourceModules: modulesDir,
		AgentSHA256: sha256hex(agent), VmlinuxSHA256: sha256hex(vmlinux), Initramfs: InitramfsRawFile,
	}
	var initrd bytes.Buffer
	if err := WriteInitramfs(&initrd, InitramfsSpec{Init: agent, Modules: set.Modules, Release: set.Release, KitName: name, Uncompressed: true}); err != nil {
		return nil, err
	}
	kit.InitramfsSHA256 = sha256hex(initrd.Bytes())
	meta, err := json.MarshalIndent(kit, "", "  ")
	if err != nil {
		return nil, err
	}

	kdir := KernelsDir(stateDir)
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		return nil, fmt.Errorf("bootkit: %w", err)
	}
	tmp, err := os.MkdirTemp(kdir, ".tmp-"+name+"-")
	if err != nil {
		return nil, fmt.Errorf("bootkit: %w", err)
	}
	defer os.RemoveAll(tmp) // no-op after the rename
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{VmlinuxFile, vmlinux, 0o644},
		{InitramfsRawFile, initrd.Bytes(), 0o644},
		{KitFile, append(meta, '\n'), 0o644},
	} {
		if err := writeFileSync(filepath.Join(tmp, f.name), f.data, f.mode); err != nil {
			return nil, fmt.Errorf("bootkit: %w", err)
		}
	}
	if err := syncDir(tmp); err != nil {
		return nil, fmt.Errorf("bootkit: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	final := filepath.Join(kdir, name)
	unlock, err := lockDir(kdir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var old string
	if _, err := os.Lstat(final); err == nil {
		old = filepath.Join(kdir, ".old-"+name+"-"+randHex())
		if err := os.Rename(final, old); err != nil {
			return nil, fmt.Errorf("bootkit: %w", err)
		}
	}
	if err := os.Rename(tmp, final); err != nil {
		if old != "" {
			_ = os.Rename(old, final)
		}
		return nil, fmt.Errorf("bootkit: %w", err)
	}
	if err := syncDir(kdir); err != nil {
		return nil, fmt.Errorf("bootkit: %w", err)
	}
	if old != "" {
		_ = os.RemoveAll(old)
	}
	kit.Dir = final
	return kit, nil
}

// InitramfsSpec describes an initramfs for WriteInitramfs.
type InitramfsSpec struct {
	// Init is the /init binary (paddock-agent).
	Init []byte
	// Modules in load order; packed under /lib/modules/<Release>/ and
	// listed in InitramfsModuleList.
	Modules []Module
	Release string
	KitName string
	// GzipLevel (gzip.DefaultCompression when 0).
	GzipLevel int
	// Uncompressed writes the cpio archive as it is (GzipLevel unused).
	Uncompressed bool
}

// WriteInitramfs writes a newc cpio initramfs, gzip-compressed unless
// spec.Uncompressed: /init, the /dev/console and /dev/null nodes, mount
// points, the modules and their load order list. Entry times are zero, so
// equal inputs give equal archives.
func WriteInitramfs(w io.Writer, spec InitramfsSpec) error {
	level := spec.GzipLevel
	if level == 0 {
		level = gzip.DefaultCompression
	}
	var zw io.WriteCloser = nopCloser{w}
	if !spec.Uncompressed {
		var err error
		if zw, err = gzip.NewWriterLevel(w, level); err != nil {
			return err
		}
	}
	c := NewCPIOWriter(zw, 0)
	steps := []func() error{
		func() error { return c.Mkdir("dev", 0o755) },
		func() error { return c.CharDev("dev/console", 0o600, 5, 1) },
		func() error { return c.CharDev("dev/null", 0o666, 1, 3) },
		func() error { return c.Mkdir("proc", 0o555) },
		func() error { return c.Mkdir("sys", 0o555) },
		func() error { return c.Mkdir("run", 0o755) },
		func() error { return c.Mkdir("tmp", 0o1777) },
		func() error { return c.Mkdir("newroot", 0o755) },
		func() error { return c.WriteFile("init", 0o755, spec.Init) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	var list strings.Builder
	packed := map[string]bool{}
	for _, m := range spec.Modules {
		p := "/lib/modules/" + spec.Release + "/" + m.Path
		if err := c.WriteFile(p, 0o644, m.Data); err != nil {
			return err
		}
		list.WriteString(p)
		for _, d := range m.Depends {
			if packed[d] {
				list.WriteString(" " + d)
			}
		}
		list.WriteString("\n")
		packed[m.Name] = true
	}
	if len(spec.Modules) > 0 {
		if err := c.WriteFile(InitramfsModuleList, 0o644, []byte(list.String())); err != nil {
			return err
		}
	}
	info, _ := json.Marshal(map[string]string{"name": spec.KitName, "release": spec.Release})
	if err := c.WriteFile(InitramfsKitInfo, 0o644, info); err != nil {
		return err
	}
	if err := c.Close(); err != nil {
		return err
	}
	return zw.Close()
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// Get loads the kit named name.
func Get(stateDir, name string) (*Kit, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	return load(filepath.Join(KernelsDir(stateDir), name))
}

func load(dir string) (*Kit, error) {
	b, err := os.ReadFile(filepath.Join(dir, KitFile))
	if errors.Is(err, fs.ErrNotExist) {
		if _, derr := os.Stat(dir); errors.Is(derr, fs.ErrNotExist) {
			return nil, fmt.Errorf("bootkit: %s: %w", filepath.Base(dir), ErrNotFound)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("bootkit: %w", err)
	}
	var k Kit
	if err := json.Unmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("bootkit: %s: corrupt %s: %w", filepath.Base(dir), KitFile, err)
	}
	if k.Schema != KitSchema {
		return nil, fmt.Errorf("bootkit: %s: unsupported kit schema %d", filepath.Base(dir), k.Schema)
	}
	k.Dir = dir
	if k.Initramfs != "" && k.Initramfs != InitramfsRawFile {
		return &k, fmt.Errorf("bootkit: %s: unknown initramfs %q in %s", k.Name, k.Initramfs, KitFile)
	}
	for _, f := range []string{VmlinuxFile, k.initramfsFile()} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return &k, fmt.Errorf("bootkit: %s: %w", k.Name, err)
		}
	}
	return &k, nil
}

// List returns the stored kits sorted by name. A kit that cannot be read is
// listed with Err set rather than failing the whole listing.
func List(stateDir string) ([]*Kit, error) {
	ents, err := os.ReadDir(KernelsDir(stateDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("bootkit: %w", err)
	}
	var kits []*Kit
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		dir := filepath.Join(KernelsDir(stateDir), e.Name())
		k, err := load(dir)
		if err != nil {
			if k == nil {
				k = &Kit{Name: e.Name(), Dir: dir}
			}
			k.Err = err
		}
		kits = append(kits, k)
	}
	sort.Slice(kits, func(i, j int) bool { return kits[i].Name < kits[j].Name })
	return kits, nil
}

// Remove deletes the kit named name. A missing kit yields an error wrapping
// ErrNotFound. Leftovers of interrupted imports are swept as well.
func Remove(stateDir, name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	kdir := KernelsDir(stateDir)
	unlock, err := lockDir(kdir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("bootkit: %s: %w", name, ErrNotFound)
		}
		return err
	}
	defer unlock()
	final := filepath.Join(kdir, name)
	if _, err := os.Lstat(final); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("bootkit: %s: %w", name, ErrNotFound)
	}
	trash := filepath.Join(kdir, ".rm-"+name+"-"+randHex())
	if err := os.Rename(final, trash); err != nil {
		return fmt.Errorf("bootkit: %w", err)
	}
	if err := syncDir(kdir); err != nil {
		return fmt.Errorf("bootkit: %w", err)
	}
	sweep(kdir)
	return nil
}

// sweep removes leftovers (.tmp-, .old-, .rm-) of interrupted operations that
// are older than a minute (younger ones may belong to a running import).
func sweep(kdir string) {
	ents, _ := os.ReadDir(kdir)
	for _, e := range ents {
		n := e.Name()
		if !(strings.HasPrefix(n, ".tmp-") || strings.HasPrefix(n, ".old-") || strings.HasPrefix(n, ".rm-")) {
			continue
		}
		if info, err := e.Info(); err == nil && (strings.HasPrefix(n, ".rm-") || time.Since(info.ModTime()) > time.Minute) {
			_ = os.RemoveAll(filepath.Join(kdir, n))
		}
	}
}

func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("bootkit: lock: %w", err)
	}
	return func() { _ = unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}

func writeFileSync(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func randHex() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
