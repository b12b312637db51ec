package workspace_test

import (
	"archive/tar"
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/internal/looptest"
	"github.com/paddock-vm/paddock/internal/testenv"
	"github.com/paddock-vm/paddock/state"
	"github.com/paddock-vm/paddock/tartree"
	"github.com/paddock-vm/paddock/workspace"
)

// A top layer over a frozen layer (with real qemu-img and e2fsprogs): a
// reflink where the host has them, else a qcow2 overlay naming the layer
// relative to itself; flattened, it is the layer's volume byte for byte;
// grown, its file system is bigger and still holds the tree; an export
// reads through a qcow2 top.
func TestLayers(t *testing.T) {
	requireTools(t)
	testenv.RequireTool(t, "qemu-img", "qemu-utils")
	testenv.RequireTool(t, "resize2fs", "e2fsprogs")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := t.TempDir()
	wsDir, layers := filepath.Join(root, "ws"), filepath.Join(root, state.LayersDir)
	for _, d := range []string{wsDir, layers} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	vol := filepath.Join(wsDir, "volume.ext4")
	tree := tarOf(t, entry{h: tar.Header{Name: "a.txt", Typeflag: tar.TypeReg}, body: "v1\n"})
	if _, err := workspace.Build(ctx, tree, vol, workspace.Spec{Name: "proj", Size: 64 << 20, UID: 1000, GID: 1000, ScratchDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	layer := filepath.Join(layers, "l1.ext4")
	if err := os.Link(vol, layer); err != nil {
		t.Fatal(err)
	}
	l := workspace.Layers{}
	top, how, err := l.NewTop(ctx, wsDir, layer, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("new top %s: %s", top, how)
	topPath := filepath.Join(wsDir, top)
	switch how {
	case workspace.TopOverlay:
		out, err := exec.Command(tool(t, "qemu-img"), "info", "--output=json", topPath).CombinedOutput()
		if err != nil || !strings.Contains(string(out), `"backing-filename": "../.layers/l1.ext4"`) || !strings.Contains(string(out), `"virtual-size": 67108864`) {
			t.Fatalf("qemu-img info: %v\n%s", err, out)
		}
		var st os.FileInfo
		if st, err = os.Stat(topPath); err != nil || st.Size() > 1<<20 {
			t.Fatalf("overlay: %v %v", st, err)
		}
	case workspace.TopReflink:
	default:
		t.Fatalf("new top made by %s, want a reflink or an overlay", how)
	}

	flat := filepath.Join(t.TempDir(), "flat.ext4")
	if err := l.Flatten(ctx, topPath, flat); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(vol)
	b, _ := os.ReadFile(flat)
	if !bytes.Equal(a, b) {
		t.Fatal("the flattened volume differs from the layer")
	}
	if err := l.Grow(ctx, flat, 128<<20); err != nil {
		t.Fatal(err)
	}
	fsckClean(t, flat)
	if st := debugfs(t, flat, "stats"); !strings.Contains(st, "Block count:              32768") {
		t.Fatalf("grown file system:\n%s", st)
	}
	if got := debugfs(t, flat, "cat /a.txt"); !strings.Contains(got, "v1") {
		t.Fatalf("grown volume's a.txt: %q", got)
	}

	var tarOut bytes.Buffer
	if err := workspace.Export(ctx, topPath, &tarOut, workspace.ExportSpec{Name: "proj", ScratchDir: t.TempDir(), Layers: l}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	if err := tartree.Untar(ctx, &tarOut, out); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(out, "a.txt")); err != nil || string(b) != "v1\n" {
		t.Fatalf("the export of the top layer: a.txt %q %v", b, err)
	}
}

// Growing refuses a volume that is not an ext4 file system, naming the
// check, and leaves it as it was.
func TestGrowRefusesDamaged(t *testing.T) {
	requireTools(t)
	testenv.RequireTool(t, "resize2fs", "e2fsprogs")
	bad := filepath.Join(t.TempDir(), "bad.ext4")
	if err := os.WriteFile(bad, bytes.Repeat([]byte("x"), 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	err := workspace.Layers{}.Grow(context.Background(), bad, 64<<20)
	if err == nil || !strings.Contains(err.Error(), "check before growing") {
		t.Fatalf("grow of a damaged volume: %v", err)
	}
	if st, _ := os.Stat(bad); st.Size() != 1<<20 {
		t.Fatalf("the damaged volume was changed: %d bytes", st.Size())
	}
}

// On a file system with reflinks (a loop-backed xfs) a new top over a raw
// layer is a FICLONE: raw, the layer's bytes, sharing its extents (no
// blocks of its own until written), and needs no backing.
func TestNewTopReflink(t *testing.T) {
	requireTools(t)
	root := looptest.XFSDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	wsDir, layers := filepath.Join(root, "ws"), filepath.Join(root, state.LayersDir)
	for _, d := range []string{wsDir, layers} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	layer := filepath.Join(layers, "l1.ext4")
	tree := tarOf(t, entry{h: tar.Header{Name: "a.txt", Typeflag: tar.TypeReg}, body: "v1\n"})
	if _, err := workspace.Build(ctx, tree, layer, workspace.Spec{Name: "proj", Size: 64 << 20, UID: 1000, GID: 1000, ScratchDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	var before unix.Statfs_t
	if err := unix.Statfs(root, &before); err != nil {
		t.Fatal(err)
	}
	top, how, err := workspace.Layers{}.NewTop(ctx, wsDir, layer, 64<<20)
	if err != nil || how != workspace.TopReflink || state.LayerFormat(top) != "raw" {
		t.Fatalf("new top on xfs: %s %s %v, want a raw reflink", top, how, err)
	}
	var after unix.Statfs_t
	if err := unix.Statfs(root, &after); err != nil {
		t.Fatal(err)
	}
	if used := int64(before.Bfree-after.Bfree) * after.Bsize; used > 1<<20 {
		t.Fatalf("the reflinked top took %d bytes of the file system", used)
	}
	a, _ := os.ReadFile(layer)
	b, _ := os.ReadFile(filepath.Join(wsDir, top))
	if !bytes.Equal(a, b) {
		t.Fatal("the reflinked top differs from its layer")
	}
	fsckClean(t, filepath.Join(wsDir, top))
}

// A new qcow2 top over a raw layer on a file system without reflinks is
// written natively; where the native writer refuses (a layer name with a
// colon, which it never writes into a header) qemu-img writes it. Either
// way the top names its layer relative to itself, qemu-img check finds
// it clean, and nothing else is left in the workspace's directory.
func TestNewTopOverlay(t *testing.T) {
	testenv.RequireTool(t, "qemu-img", "qemu-utils")
	for _, layer := range []string{"l1.ext4", "l:1.ext4"} {
		t.Run(layer, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			root := t.TempDir()
			wsDir, layers := filepath.Join(root, "ws"), filepath.Join(root, state.LayersDir)
			for _, d := range []string{wsDir, layers} {
				if err := os.Mkdir(d, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(layers, layer), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(filepath.Join(layers, layer), 64<<20); err != nil {
				t.Fatal(err)
			}
			var log bytes.Buffer
			l := workspace.Layers{Log: slog.New(slog.NewTextHandler(&log, nil))}
			top, how, err := l.NewTop(ctx, wsDir, filepath.Join(layers, layer), 64<<20)
			if err != nil {
				t.Fatal(err)
			}
			if byQemuImg := strings.Contains(log.String(), "written by qemu-img"); byQemuImg != strings.Contains(layer, ":") {
				t.Fatalf("written by qemu-img: %v; log:\n%s", byQemuImg, log.String())
			}
			if how == workspace.TopReflink {
				t.Skip("the temporary directory's file system has reflinks")
			}
			if how != workspace.TopOverlay {
				t.Fatalf("new top made by %s", how)
			}
			out, err := exec.Command(tool(t, "qemu-img"), "check", filepath.Join(wsDir, top)).CombinedOutput()
			if err != nil {
				t.Fatalf("qemu-img check: %v\n%s", err, out)
			}
			out, err = exec.Command(tool(t, "qemu-img"), "info", "--output=json", filepath.Join(wsDir, top)).CombinedOutput()
			if err != nil || !strings.Contains(string(out), `"backing-filename": "../.layers/`+layer+`"`) || !strings.Contains(string(out), `"backing-filename-format": "raw"`) {
				t.Fatalf("qemu-img info: %v\n%s", err, out)
			}
			if ents, _ := os.ReadDir(wsDir); len(ents) != 1 {
				t.Fatalf("the workspace directory holds %v", ents)
			}
		})
	}
}
