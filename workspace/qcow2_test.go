package workspace_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/paddock-vm/paddock/internal/testenv"
	"github.com/paddock-vm/paddock/workspace"
)

// qcowHeader is the qcow2 header's fields (docs/interop/qcow2.txt).
type qcowHeader struct {
	Magic, Version        uint32
	BackingFileOffset     uint64
	BackingFileSize       uint32
	ClusterBits           uint32
	Size                  uint64
	CryptMethod, L1Size   uint32
	L1TableOffset         uint64
	RefcountTableOffset   uint64
	RefcountTableClusters uint32
	NbSnapshots           uint32
	SnapshotsOffset       uint64
	Incompatible          uint64
	Compatible            uint64
	Autoclear             uint64
	RefcountOrder         uint32
	HeaderLength          uint32
	CompressionType       uint8
}

func readHeader(t *testing.T, b []byte) qcowHeader {
	t.Helper()
	var h qcowHeader
	if err := binary.Read(bytes.NewReader(b), binary.BigEndian, &h); err != nil {
		t.Fatal(err)
	}
	return h
}

// qemuInfo is what `qemu-img info` says of an image, its file's own name
// and allocation left out.
func qemuInfo(t *testing.T, img string) map[string]any {
	t.Helper()
	out, err := exec.Command(tool(t, "qemu-img"), "info", "--output=json", img).Output()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v", img, err)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "filename")
	delete(m, "actual-size")
	return m
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(tool(t, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The native overlay is what qemu-img create writes for the same empty
// overlay, byte for byte (header fields compared one by one first), and
// real QEMU tools take it: qemu-img check finds it clean, info reports
// the same size, backing and format, compare finds it equal to its
// backing, and a write through qemu-io lands in the overlay, never in the
// backing file. Whatever the virtual size, it takes a few KiB.
func TestOverlayLikeQemuImg(t *testing.T) {
	testenv.RequireTool(t, "qemu-img", "qemu-utils")
	for _, c := range []struct {
		name   string
		size   int64
		format string
		bits   uint32
		write  bool
	}{
		{"64MiB raw", 64 << 20, "raw", 0, true},
		{"513MiB raw (two L1 entries)", 513 << 20, "raw", 0, false},
		{"10GiB raw", 10 << 30, "raw", 0, false},
		{"4TiB raw (L1 over two clusters)", 4 << 40, "raw", 0, false},
		{"64MiB over qcow2", 64 << 20, "qcow2", 0, true},
		{"3GiB with 2MiB clusters", 3 << 30, "raw", 21, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			ws, layers := filepath.Join(root, "ws"), filepath.Join(root, ".layers")
			for _, d := range []string{ws, layers} {
				if err := os.Mkdir(d, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			// The backing layer: the virtual size, data at its start and
			// 1 MiB in, a hole elsewhere.
			backing := filepath.Join(layers, "l1."+map[string]string{"raw": "ext4", "qcow2": "qcow2"}[c.format])
			if c.format == "raw" {
				f, err := os.Create(backing)
				if err != nil {
					t.Fatal(err)
				}
				for _, off := range []int64{0, 1 << 20} {
					if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, 4096), off); err != nil {
						t.Fatal(err)
					}
				}
				if err := f.Truncate(c.size); err != nil {
					t.Fatal(err)
				}
				_ = f.Close()
			} else {
				run(t, "qemu-img", "create", "-q", "-f", "qcow2", backing, strconv.FormatInt(c.size, 10))
				testenv.RequireTool(t, "qemu-io", "qemu-utils")
				run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 4k", "-c", "write -P 0x5a 1M 4k", backing)
			}
			ref := "../.layers/" + filepath.Base(backing)
			native, want := filepath.Join(ws, "native.qcow2"), filepath.Join(ws, "qemu.qcow2")
			o := workspace.Overlay{Size: c.size, Backing: ref, BackingFormat: c.format, ClusterBits: c.bits}
			if err := workspace.WriteOverlay(native, o); err != nil {
				t.Fatal(err)
			}
			args := []string{"create", "-q", "-f", "qcow2", "-b", ref, "-F", c.format}
			if c.bits != 0 {
				args = append(args, "-o", fmt.Sprintf("cluster_size=%d", 1<<c.bits))
			}
			run(t, "qemu-img", append(args, want, strconv.FormatInt(c.size, 10))...)

			got, _ := os.ReadFile(native)
			exp, _ := os.ReadFile(want)
			if g, w := readHeader(t, got), readHeader(t, exp); g != w {
				t.Fatalf("header:\n native %+v\nqemu-img %+v", g, w)
			}
			if !bytes.Equal(got, exp) {
				i := 0
				for i < min(len(got), len(exp)) && got[i] == exp[i] {
					i++
				}
				t.Fatalf("native overlay (%d bytes) differs from qemu-img's (%d bytes) from offset %#x", len(got), len(exp), i)
			}
			if st, err := os.Stat(native); err != nil || st.Mode().Perm() != 0o600 || st.Sys().(*syscall.Stat_t).Blocks*512 > 1<<20 {
				t.Fatalf("native overlay: %v %v", st, err)
			}
			if ents, _ := os.ReadDir(ws); len(ents) != 2 {
				t.Fatalf("left beside the overlay: %v", ents)
			}

			run(t, "qemu-img", "check", "-q", native)
			if g, w := qemuInfo(t, native), qemuInfo(t, want); fmt.Sprint(g) != fmt.Sprint(w) {
				t.Fatalf("qemu-img info:\n native %v\nqemu-img %v", g, w)
			}
			if info := qemuInfo(t, native); info["virtual-size"] != float64(c.size) || info["backing-filename"] != ref || info["backing-filename-format"] != c.format {
				t.Fatalf("qemu-img info: %v", info)
			}
			run(t, "qemu-img", "compare", "-q", "-f", "qcow2", "-F", c.format, native, backing)
			if !c.write {
				return
			}

			before, _ := os.ReadFile(backing)
			run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1M 64k", native)
			if after, _ := os.ReadFile(backing); !bytes.Equal(before, after) {
				t.Fatal("a write through the overlay changed its backing file")
			}
			run(t, "qemu-img", "check", "-q", native)
			flat := filepath.Join(root, "flat.raw")
			run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", native, flat)
			b, _ := os.ReadFile(flat)
			if int64(len(b)) != c.size || b[0] != 0x5a || b[4095] != 0x5a || b[4096] != 0 ||
				!bytes.Equal(b[1<<20:1<<20+64<<10], bytes.Repeat([]byte{0xab}, 64<<10)) || b[1<<20+64<<10] != 0 {
				t.Fatal("the overlay read back raw is not its backing with the write over it")
			}
		})
	}
}

// What the native writer refuses, it refuses with a reason (ErrOverlay
// Refused: the layer code then tries qemu-img) and no file: bad sizes,
// backing names the layer code never passes (QEMU protocols, unclean or
// too long paths, control characters), formats and cluster sizes it does
// not lay out. An existing file is never replaced.
func TestOverlayRefused(t *testing.T) {
	good := workspace.Overlay{Size: 64 << 20, Backing: "../.layers/l1.ext4", BackingFormat: "raw"}
	with := func(f func(*workspace.Overlay)) workspace.Overlay {
		o := good
		f(&o)
		return o
	}
	for _, c := range []struct {
		name string
		o    workspace.Overlay
		want string
	}{
		{"size 0", with(func(o *workspace.Overlay) { o.Size = 0 }), "virtual size 0"},
		{"negative size", with(func(o *workspace.Overlay) { o.Size = -512 }), "positive multiple of 512"},
		{"size not sectors", with(func(o *workspace.Overlay) { o.Size = 64<<20 + 1 }), "multiple of 512"},
		{"huge size", with(func(o *workspace.Overlay) { o.Size = 1 << 62 }), "L1 table"},
		{"largest size", with(func(o *workspace.Overlay) { o.Size = 1<<63 - 512 }), "L1 table"},
		{"no backing", with(func(o *workspace.Overlay) { o.Backing = "" }), "is empty"},
		{"backing too long", with(func(o *workspace.Overlay) { o.Backing = "../.layers/" + strings.Repeat("a", 1013) }), "longer than qcow2's 1023"},
		{"backing with newline", with(func(o *workspace.Overlay) { o.Backing = "../.layers/l1\n.ext4" }), "control characters"},
		{"json protocol", with(func(o *workspace.Overlay) { o.Backing = `json:{"file.filename":"/etc/shadow"}` }), "protocol"},
		{"nbd protocol", with(func(o *workspace.Overlay) { o.Backing = "nbd://host/x" }), "protocol"},
		{"unclean dot", with(func(o *workspace.Overlay) { o.Backing = "./l1.ext4" }), "clean path"},
		{"unclean dotdot", with(func(o *workspace.Overlay) { o.Backing = "../.layers/../x/l1.ext4" }), "clean path"},
		{"a directory", with(func(o *workspace.Overlay) { o.Backing = ".." }), "directory"},
		{"not UTF-8", with(func(o *workspace.Overlay) { o.Backing = "l1\xff.ext4" }), "UTF-8"},
		{"format vmdk", with(func(o *workspace.Overlay) { o.BackingFormat = "vmdk" }), "neither raw nor qcow2"},
		{"small clusters", with(func(o *workspace.Overlay) { o.ClusterBits = 9 }), "cluster size"},
		{"huge clusters", with(func(o *workspace.Overlay) { o.ClusterBits = 30 }), "cluster size"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			err := workspace.WriteOverlay(filepath.Join(dir, "top.qcow2"), c.o)
			if !errors.Is(err, workspace.ErrOverlayRefused) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want a refusal saying %q", err, c.want)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Fatalf("a refused overlay left %v", ents)
			}
		})
	}
	t.Run("existing file", func(t *testing.T) {
		dir := t.TempDir()
		p := filepath.Join(dir, "top.qcow2")
		if err := os.WriteFile(p, []byte("mine"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := workspace.WriteOverlay(p, good); err == nil || errors.Is(err, workspace.ErrOverlayRefused) {
			t.Fatalf("over an existing file: %v", err)
		}
		if b, _ := os.ReadFile(p); string(b) != "mine" {
			t.Fatalf("the existing file was replaced: %q", b)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 1 {
			t.Fatalf("left: %v", ents)
		}
	})
}
