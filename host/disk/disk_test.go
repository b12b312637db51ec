package disk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/host/dm"
	"github.com/paddock-vm/paddock/internal/looptest"
	"github.com/paddock-vm/paddock/internal/testenv"
)

const (
	testBaseSize = 64 << 20
	testDataSize = 8 << 20
)

// backendEnv prepares a state dir for backend name (an xfs mount for
// reflink when the temp dir's file system has no reflinks) and returns the
// options and the images dir, or skips with the probe's reason: only a
// kernel without device-mapper may skip under CI.
func backendEnv(t testing.TB, name string) (Options, string) {
	t.Helper()
	opts, images, skip := envFor(t, name)
	if skip != "" {
		testenv.SkipBecause(t, skip)
	}
	return opts, images
}

// envFor is backendEnv that returns the skip reason instead of skipping.
func envFor(t testing.TB, name string) (opts Options, images, skip string) {
	t.Helper()
	root := t.TempDir()
	if name == Reflink {
		if err := probeReflink(Options{Dir: root}); err != nil {
			// The temp dir's file system has no reflinks (the probe tried
			// FICLONE): test on a loop-mounted xfs.
			root = looptest.XFSDir(t)
		}
	}
	images, vms := filepath.Join(root, "images"), filepath.Join(root, "vms")
	for _, d := range []string{images, vms} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts = Options{Dir: vms, BaseDir: images, QCOW2: true}
	for _, st := range Probe(context.Background(), opts) {
		if st.Name != name || st.Usable {
			continue
		}
		if name == DM {
			testenv.RequireRoot(t, "the dm backend")
			if errors.Is(probeDM(opts), dm.ErrUnsupported) {
				// The kernel lacks device-mapper or a target.
				return opts, "", testenv.NoDeviceMapper + ": " + st.Reason
			}
		}
		t.Fatalf("%s unusable: %s", name, st.Reason)
	}
	return opts, images, ""
}

func TestBackends(t *testing.T) {
	for _, name := range Order {
		t.Run(name, func(t *testing.T) {
			opts, images := backendEnv(t, name)
			base := makeBase(t, images, testBaseSize, testDataSize)
			baseHash := testenv.FileSHA256(t, base)
			b, err := Get(name, opts)
			if err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				name       string
				size, want int64
			}{
				{"grow", 200<<20 + 1, 200<<20 + 4096},
				{"base-size", 0, testBaseSize},
				{"smaller-than-base", 16 << 20, testBaseSize},
			} {
				t.Run(tc.name, func(t *testing.T) {
					vmDir := filepath.Join(opts.Dir, "vm-"+tc.name)
					if err := os.Mkdir(vmDir, 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(filepath.Join(vmDir, "vm.json"), []byte("{}"), 0o600); err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { looptest.NoLoopsOn(t, vmDir, base) })
					plan := b.Plan(vmDir)
					free0 := freeBytes(t, vmDir)
					d, err := b.Create(context.Background(), vmDir, base, tc.size)
					if err != nil {
						t.Fatal(err)
					}
					defer b.Release(context.Background(), d)
					if name == Reflink {
						// Shared extents, not a copy: the clone (plus what
						// resize2fs writes) costs far less than the data.
						if used := free0 - freeBytes(t, vmDir); used > testDataSize/2 {
							t.Errorf("reflink layer took %d bytes for %d bytes of data", used, testDataSize)
						}
					}

					// The handle: what the plan promised, nothing else.
					if d.Backend != name || d.Dir != vmDir || d.Size != tc.want || d.Base != base {
						t.Errorf("disk %+v", d)
					}
					for _, f := range d.Files {
						if !slices.Contains(plan.Files, f) {
							t.Errorf("file %s not in the plan %v", f, plan.Files)
						}
					}
					for _, n := range d.DM {
						if !slices.Contains(plan.DM, n) {
							t.Errorf("dm device %s not in the plan %v", n, plan.DM)
						}
					}
					want := []string{"vm.json"}
					for _, f := range d.Files {
						want = append(want, filepath.Base(f))
					}
					slices.Sort(want)
					if got := dirList(t, vmDir); !slices.Equal(got, want) {
						t.Errorf("vm dir holds %v, want %v", got, want)
					}

					switch d.Format {
					case FormatRaw:
						checkRawLayer(t, d, tc.want)
					case FormatQCOW2:
						checkQCOW2Layer(t, d, tc.want)
					default:
						t.Fatalf("format %q", d.Format)
					}
					if testenv.FileSHA256(t, base) != baseHash {
						t.Fatal("the base changed")
					}

					// A second Create over the layer is refused and harms nothing.
					if _, err := b.Create(context.Background(), vmDir, base, tc.size); !errors.Is(err, fs.ErrExist) {
						t.Errorf("Create over an existing layer: %v, want fs.ErrExist", err)
					}
					if got := dirList(t, vmDir); !slices.Equal(got, want) {
						t.Errorf("after the refused Create the vm dir holds %v, want %v", got, want)
					}

					// Stop and start: the host objects go, the layer stays.
					if err := b.Deactivate(context.Background(), d); err != nil {
						t.Fatal(err)
					}
					if name == DM {
						noDMDevices(t, vmDir)
						looptest.NoLoopsOn(t, vmDir)
					}
					if got := dirList(t, vmDir); !slices.Equal(got, want) {
						t.Errorf("after Deactivate the vm dir holds %v, want %v", got, want)
					}
					if d, err = b.Activate(context.Background(), d); err != nil {
						t.Fatal(err)
					}
					if d.Format == FormatRaw {
						if got := debugfs(t, d.Path, false, "cat /hello"); got != "written by the VM\n" {
							t.Errorf("after Activate /hello = %q", got)
						}
						if got := fsSize(t, d.Path); got != tc.want {
							t.Errorf("after Activate the file system is %d bytes, want %d", got, tc.want)
						}
					} else {
						qemuIO(t, d.Path, "read -P 0xab 0 512")
					}

					// Release works from the JSON handle alone, twice.
					js, err := json.Marshal(d)
					if err != nil {
						t.Fatal(err)
					}
					for i := 0; i < 2; i++ {
						var back Disk
						if err := json.Unmarshal(js, &back); err != nil {
							t.Fatal(err)
						}
						rb, err := ForDisk(&back, Options{})
						if err != nil {
							t.Fatal(err)
						}
						if err := rb.Release(context.Background(), &back); err != nil {
							t.Fatalf("Release #%d: %v", i+1, err)
						}
					}
					if got := dirList(t, vmDir); !slices.Equal(got, []string{"vm.json"}) {
						t.Errorf("after Release the vm dir holds %v", got)
					}
					if testenv.FileSHA256(t, base) != baseHash {
						t.Fatal("the base changed")
					}
					looptest.NoLoopsOn(t, vmDir, base)
					if name == DM {
						noDMDevices(t, vmDir)
					}
				})
			}
		})
	}
}

func noDMDevices(t *testing.T, vmDir string) {
	t.Helper()
	c, err := dm.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	devs, err := c.List(dm.Prefix + vmID(vmDir))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		t.Errorf("dm device %s left", d.Name)
		_ = c.Remove(context.Background(), d.Name)
	}
}

// checkRawLayer: the layer has the size, a clean file system of that size,
// the base's files, and takes a write.
func checkRawLayer(t *testing.T, d *Disk, size int64) {
	t.Helper()
	f, err := os.Open(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	end, err := f.Seek(0, 2)
	f.Close()
	if err != nil || end != size {
		t.Errorf("layer %s is %d bytes (%v), want %d", d.Path, end, err, size)
	}
	if got := fsSize(t, d.Path); got != size {
		t.Errorf("file system in the layer is %d bytes, want %d", got, size)
	}
	e2fsckClean(t, d.Path)
	if got := debugfs(t, d.Path, false, "cat /etc/motd"); got != motd {
		t.Errorf("/etc/motd in the layer = %q", got)
	}
	src := filepath.Join(t.TempDir(), "hello")
	if err := os.WriteFile(src, []byte("written by the VM\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	debugfs(t, d.Path, true, "write "+src+" /hello")
	if got := debugfs(t, d.Path, false, "cat /hello"); got != "written by the VM\n" {
		t.Errorf("/hello in the layer = %q", got)
	}
	e2fsckClean(t, d.Path)
	if d.Backend == Copy {
		// Sparse: about the base's data, not the disk's size.
		if a := allocated(t, d.Path); a > testDataSize+16<<20 {
			t.Errorf("copy allocates %d bytes for %d bytes of data", a, testDataSize)
		}
	}
}

// checkQCOW2Layer: the overlay's virtual size and backing, guest writes
// through qemu-io, and the file system seen through the overlay.
func checkQCOW2Layer(t *testing.T, d *Disk, size int64) {
	t.Helper()
	qimg := requireTool(t, "qemu-img", "qemu-utils")
	out, err := exec.Command(qimg, "info", "--output=json", "-U", d.Path).Output()
	if err != nil {
		t.Fatalf("qemu-img info: %v", err)
	}
	var info struct {
		Format          string `json:"format"`
		VirtualSize     int64  `json:"virtual-size"`
		Backing         string `json:"backing-filename"`
		BackingFormat   string `json:"backing-filename-format"`
		FullBackingName string `json:"full-backing-filename"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	if info.Format != "qcow2" || info.VirtualSize != size || info.Backing != baseLink || info.BackingFormat != "raw" {
		t.Errorf("qemu-img info: %+v, want qcow2 of %d bytes backed by raw %s", info, size, baseLink)
	}
	if d.GuestResize != (size > testBaseSize) {
		t.Errorf("GuestResize = %v for %d over a %d base", d.GuestResize, size, testBaseSize)
	}
	io := func(cmds ...string) { t.Helper(); qemuIO(t, d.Path, cmds...) }
	// The boot sector (unused by ext4), and the grown tail.
	io("write -P 0xab 0 512", "read -P 0xab 0 512")
	if size > testBaseSize {
		tail := fmt.Sprint(size - 4096)
		io("read -P 0 "+tail+" 4096", "write -P 0xcd "+tail+" 4096", "read -P 0xcd "+tail+" 4096")
	}
	raw := filepath.Join(t.TempDir(), "flat.raw")
	if out, err := exec.Command(qimg, "convert", "-f", "qcow2", "-O", "raw", d.Path, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	e2fsckClean(t, raw)
	if got := fsSize(t, raw); got != testBaseSize {
		t.Errorf("file system through the overlay is %d bytes, want the base's %d (the guest grows it)", got, testBaseSize)
	}
	if got := debugfs(t, raw, false, "cat /etc/motd"); got != motd {
		t.Errorf("/etc/motd through the overlay = %q", got)
	}
}

// A failed Create leaves the VM dir as it found it.
func TestCreateFailureLeavesNothing(t *testing.T) {
	root := t.TempDir()
	base := makeBase(t, root, testBaseSize, 1<<20)
	notExt4 := filepath.Join(root, "zeros.img")
	if err := os.WriteFile(notExt4, make([]byte, 1<<20), 0o444); err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name, backend string
		opts          Options
		ctx           context.Context
		base          string
		size          int64
		existing      string // a file in the VM dir before Create
		wantErr       error
	}{
		{"copy: resize2fs fails on a non-ext4 base", Copy, Options{}, nil, notExt4, 8 << 20, "", nil},
		{"copy: missing base", Copy, Options{}, nil, filepath.Join(root, "nope"), 0, "", fs.ErrNotExist},
		{"copy: cancelled", Copy, Options{}, cancelled, base, 0, "", context.Canceled},
		{"copy: layer exists", Copy, Options{}, nil, base, 0, rawFile, fs.ErrExist},
		{"copy: resize2fs missing", Copy, Options{Resize2fs: "/nonexistent/resize2fs"}, nil, base, 128 << 20, "", nil},
		{"reflink: file system without reflinks", Reflink, Options{}, nil, base, 0, "", nil},
		{"qcow2: qemu-img fails", QCOW2, Options{QemuImg: "/bin/false"}, nil, base, 0, "", nil},
		{"qcow2: overlay exists", QCOW2, Options{}, nil, base, 0, qcowFile, fs.ErrExist},
		{"qcow2: base link exists", QCOW2, Options{}, nil, base, 0, baseLink, fs.ErrExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.backend == Reflink && probeReflink(Options{Dir: root}) == nil {
				t.Skip("this file system has reflinks")
			}
			vmDir := filepath.Join(t.TempDir(), "vm")
			if err := os.Mkdir(vmDir, 0o755); err != nil {
				t.Fatal(err)
			}
			want := []string{"vm.json"}
			os.WriteFile(filepath.Join(vmDir, "vm.json"), []byte("{}"), 0o600)
			if tc.existing != "" {
				os.WriteFile(filepath.Join(vmDir, tc.existing), []byte("keep"), 0o600)
				want = append(want, tc.existing)
				slices.Sort(want)
			}
			b, err := Get(tc.backend, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			ctx := tc.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			d, err := b.Create(ctx, vmDir, tc.base, tc.size)
			if err == nil {
				b.Release(context.Background(), d)
				t.Fatal("Create succeeded")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
			if tc.backend == Reflink && !errors.Is(err, ErrUnsupported) {
				t.Errorf("err = %v, want ErrUnsupported", err)
			}
			if got := dirList(t, vmDir); !slices.Equal(got, want) {
				t.Errorf("vm dir holds %v after a failed Create, want %v", got, want)
			}
			if tc.existing != "" {
				if b, _ := os.ReadFile(filepath.Join(vmDir, tc.existing)); string(b) != "keep" {
					t.Errorf("existing %s overwritten", tc.existing)
				}
			}
		})
	}
}

// Release refuses handles that would delete files outside the VM's disk.*.
func TestReleaseRefusesForeignFiles(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "vm.json")
	os.WriteFile(victim, []byte("{}"), 0o600)
	for _, name := range Order {
		b, _ := Get(name, Options{})
		for _, d := range []*Disk{
			{Backend: name, Dir: dir, Files: []string{victim}},
			{Backend: name, Dir: dir, Files: []string{filepath.Join(dir, "..", "disk.raw")}},
			{Backend: name, Dir: "relative", Files: []string{"relative/disk.raw"}},
			nil,
		} {
			if err := b.Release(context.Background(), d); !errors.Is(err, ErrBadHandle) {
				t.Errorf("%s: Release(%+v) = %v, want ErrBadHandle", name, d, err)
			}
		}
	}
	if _, err := os.Stat(victim); err != nil {
		t.Fatalf("victim removed: %v", err)
	}
}

// File backends: Deactivate keeps the layer, Activate finds it, and a
// release from the plan alone (crash before Create finished) works.
func TestFileBackendLifecycle(t *testing.T) {
	root := t.TempDir()
	base := makeBase(t, root, testBaseSize, 1<<20)
	for _, name := range []string{Copy, QCOW2} {
		t.Run(name, func(t *testing.T) {
			b, _ := Get(name, Options{})
			vmDir := filepath.Join(t.TempDir(), "vm")
			os.Mkdir(vmDir, 0o755)
			plan := b.Plan(vmDir)
			// Intent only: Release of the plan is a no-op success.
			if err := b.Release(context.Background(), plan); err != nil {
				t.Fatalf("Release of a plan: %v", err)
			}
			d, err := b.Create(context.Background(), vmDir, base, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Deactivate(context.Background(), d); err != nil {
				t.Fatal(err)
			}
			a, err := b.Activate(context.Background(), d)
			if err != nil || a.Path != d.Path {
				t.Fatalf("Activate = %+v, %v", a, err)
			}
			// A crash between Create's work and persisting its result: the
			// plan alone releases everything.
			if err := b.Release(context.Background(), plan); err != nil {
				t.Fatal(err)
			}
			if got := dirList(t, vmDir); len(got) != 0 {
				t.Fatalf("left %v", got)
			}
			if _, err := b.Activate(context.Background(), d); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("Activate of a released disk: %v", err)
			}
		})
	}
}

func TestSparseCopyKeepsHoles(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, _ := os.Create(src)
	// data at 0, a hole, data at 8 MiB, a hole to 32 MiB.
	f.WriteAt([]byte(strings.Repeat("a", 4096)), 0)
	f.WriteAt([]byte(strings.Repeat("b", 8192)), 8<<20)
	f.Truncate(32 << 20)
	f.Close()
	for _, tc := range []struct {
		name string
		fn   func(ctx context.Context, dst, src *os.File, off, n int64) error
	}{
		{"copy_file_range", copyRange},
		{"read-write", copyRangeRW},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := filepath.Join(dir, "dst-"+tc.name)
			s, _ := os.Open(src)
			defer s.Close()
			d, _ := os.Create(dst)
			defer d.Close()
			if tc.name == "read-write" {
				// Whole file through the fallback: zeros must stay holes.
				d.Truncate(32 << 20)
				if err := copyRangeRW(context.Background(), d, s, 0, 32<<20); err != nil {
					t.Fatal(err)
				}
			} else if err := sparseCopyFile(context.Background(), d, s, 32<<20); err != nil {
				t.Fatal(err)
			}
			if testenv.FileSHA256(t, dst) != testenv.FileSHA256(t, src) {
				t.Fatal("content differs")
			}
			if a := allocated(t, dst); a > 1<<20 {
				t.Fatalf("copy allocates %d bytes for 12 KiB of data", a)
			}
		})
	}
}

// On this host: Probe's verdicts agree with what the host can do, and New
// picks the first usable backend.
func TestProbeAndNew(t *testing.T) {
	dir := t.TempDir()
	for _, qcow := range []bool{true, false} {
		opts := Options{Dir: dir, QCOW2: qcow}
		st := Probe(context.Background(), opts)
		if len(st) != len(Order) {
			t.Fatalf("Probe = %v", st)
		}
		byName := map[string]Status{}
		for i, s := range st {
			if s.Name != Order[i] {
				t.Errorf("Probe order %v", st)
			}
			if s.Usable != (s.Reason == "") {
				t.Errorf("%s: usable=%v reason=%q", s.Name, s.Usable, s.Reason)
			}
			byName[s.Name] = s
		}
		if !byName[Copy].Usable {
			t.Errorf("copy unusable: %s", byName[Copy].Reason)
		}
		if byName[QCOW2].Usable != qcow {
			t.Errorf("qcow2 usable=%v with QCOW2=%v: %s", byName[QCOW2].Usable, qcow, byName[QCOW2].Reason)
		}
		// Reflink verdict vs cp --reflink=always, an independent judge.
		a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
		os.WriteFile(a, make([]byte, 4096), 0o600)
		cpOK := exec.Command("cp", "--reflink=always", a, b).Run() == nil
		os.Remove(a)
		os.Remove(b)
		if byName[Reflink].Usable != cpOK {
			t.Errorf("reflink usable=%v but cp --reflink=always ok=%v (%s)", byName[Reflink].Usable, cpOK, byName[Reflink].Reason)
		}
		if !cpOK && !strings.Contains(byName[Reflink].Reason, "does not support reflinks") {
			t.Errorf("reflink reason %q", byName[Reflink].Reason)
		}
		_, hasDM := os.Stat(dm.ControlPath)
		if hasDM != nil && (byName[DM].Usable || !strings.Contains(byName[DM].Reason, "device-mapper")) {
			t.Errorf("dm without %s: %+v", dm.ControlPath, byName[DM])
		}

		got, st2, err := New(context.Background(), Auto, opts)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range st2 {
			if s.Usable {
				if got.Name() != s.Name {
					t.Errorf("auto picked %s, first usable is %s", got.Name(), s.Name)
				}
				break
			}
		}
		t.Logf("QCOW2=%v: auto picks %s; probe: %v", qcow, got.Name(), st2)
		for _, s := range st2 {
			_, _, err := New(context.Background(), s.Name, opts)
			if s.Usable != (err == nil) || (!s.Usable && !errors.Is(err, ErrUnsupported)) {
				t.Errorf("New(%s) = %v with status %+v", s.Name, err, s)
			}
		}
	}
	if _, _, err := New(context.Background(), "zfs", Options{Dir: dir}); err == nil {
		t.Error("New of an unknown backend succeeded")
	}
	if _, _, err := New(context.Background(), Copy, Options{Dir: filepath.Join(dir, "missing")}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("copy into a missing dir: %v", err)
	}
}

func TestCowSize(t *testing.T) {
	for _, tc := range []struct{ size, chunks int64 }{
		{4096, 1 + 1 + 1},
		{256 * 4096, 1 + 256 + 1},
		{257 * 4096, 1 + 257 + 2},
		{2 << 30, 1 + 524288 + 2048},
	} {
		if got := cowSize(tc.size); got != tc.chunks*4096+1<<20 {
			t.Errorf("cowSize(%d) = %d, want %d chunks + 1 MiB", tc.size, got, tc.chunks)
		}
	}
}

func TestLayerSize(t *testing.T) {
	for _, tc := range []struct{ base, size, want int64 }{
		{64 << 20, 0, 64 << 20},
		{64 << 20, -1, 64 << 20},
		{64 << 20, 1, 64 << 20},
		{64 << 20, 64<<20 + 1, 64<<20 + 4096},
		{64 << 20, 1 << 30, 1 << 30},
	} {
		if got := layerSize(tc.base, tc.size); got != tc.want {
			t.Errorf("layerSize(%d, %d) = %d, want %d", tc.base, tc.size, got, tc.want)
		}
	}
}

// fsName names what statfs reports, for the probe's reasons.
func TestFSName(t *testing.T) {
	var st unix.Statfs_t
	if err := unix.Statfs(t.TempDir(), &st); err != nil {
		t.Fatal(err)
	}
	if n := fsName(t.TempDir()); n == "" || (st.Type == unix.EXT4_SUPER_MAGIC && n != "ext2/3/4") {
		t.Errorf("fsName = %q for type %#x", n, st.Type)
	}
}

// qemuIO runs qemu-io commands on a qcow2 image and fails on any error or
// pattern mismatch.
func qemuIO(t *testing.T, img string, cmds ...string) {
	t.Helper()
	qio := requireTool(t, "qemu-io", "qemu-utils")
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	if out, err := exec.Command(qio, append(args, img)...).CombinedOutput(); err != nil || strings.Contains(string(out), "fail") ||
		strings.Contains(string(out), "Pattern verification") {
		t.Fatalf("qemu-io %v: %v\n%s", cmds, err, out)
	}
}

// A dm disk still held open (a VMM that has not exited) is released with a
// deferred removal: files go at once, the devices at the last close, and a
// later Release finishes cleanly. Needs a kernel with device-mapper (it runs
// in TestDMInGuestKernel's guest otherwise).
func TestDMReleaseWhileOpen(t *testing.T) {
	opts, images := backendEnv(t, DM)
	base := makeBase(t, images, testBaseSize, 1<<20)
	b, _ := Get(DM, opts)
	vmDir := filepath.Join(opts.Dir, "vm-open")
	os.Mkdir(vmDir, 0o755)
	t.Cleanup(func() { looptest.NoLoopsOn(t, vmDir, base) })
	d, err := b.Create(context.Background(), vmDir, base, 128<<20)
	if err != nil {
		t.Fatal(err)
	}
	vmm, err := os.OpenFile(d.Path, os.O_RDWR, 0)
	if err != nil {
		b.Release(context.Background(), d)
		t.Fatal(err)
	}
	err = b.Release(context.Background(), d)
	if !errors.Is(err, dm.ErrDeferred) {
		vmm.Close()
		t.Fatalf("Release of an open disk: %v, want dm.ErrDeferred", err)
	}
	if got := dirList(t, vmDir); len(got) != 0 {
		t.Errorf("files left while the device is open: %v", got)
	}
	// The VMM still reads and writes its disk.
	if _, err := vmm.WriteAt([]byte("still here"), 64<<20); err != nil {
		t.Errorf("write through the held device: %v", err)
	}
	vmm.Close()
	if err := b.Release(context.Background(), d); err != nil {
		t.Fatalf("Release after the close: %v", err)
	}
	noDMDevices(t, vmDir)
}
