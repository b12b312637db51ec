package imaging_test

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/imaging/flatten"
	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/imaging/source"
)

// fakeBuild writes a disk image of 1 MiB of data, so the build's progress
// has bytes to see; it stands in for mkfs here.
func fakeBuild(_ context.Context, _ *flatten.Result, out string) error {
	b := make([]byte, 1<<20)
	_, _ = rand.Read(b)
	return os.WriteFile(out, b, 0o644)
}

type recorder struct {
	mu sync.Mutex
	ps []imaging.Progress
}

func (r *recorder) add(p imaging.Progress) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ps = append(r.ps, p)
}

// A pull reports, per layer, its digest, its blob size as the manifest
// says and the blob bytes read, ending at that size; then the build's
// bytes; and phases in order.
func TestImportProgress(t *testing.T) {
	big := make([]byte, 600<<10)
	_, _ = rand.Read(big) // incompressible: the blob is about this size
	img := imagetest.Image(t, nil,
		imagetest.LayerTar(t, imagetest.Entry{Name: "big", Body: string(big)}),
		imagetest.LayerTar(t, imagetest.Entry{Name: "small", Body: "x"}))
	reg := imagetest.Registry(t)
	imagetest.Push(t, reg+"/app:1", img)
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	store, err := imaging.OpenStore(root)
	if err != nil {
		t.Fatal(err)
	}
	im := &imaging.Importer{Store: store, ScratchDir: filepath.Join(root, "scratch"), Build: fakeBuild}
	src, err := source.Pull(context.Background(), reg+"/app:1", source.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var rec recorder
	if _, err := im.Import(context.Background(), src, rec.add); err != nil {
		t.Fatal(err)
	}

	var phases []string
	last := map[int]imaging.Progress{}
	var total int64
	for _, l := range m.Layers {
		total += l.Size
	}
	for _, p := range rec.ps {
		if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
			phases = append(phases, p.Phase)
		}
		if p.Phase != "layers" {
			continue
		}
		want := m.Layers[p.Layer-1]
		if p.Layers != 2 || p.Digest != want.Digest.String() || p.LayerSize != want.Size || p.Total != total {
			t.Fatalf("layer report %+v; want layer %s of size %d, total %d", p, want.Digest, want.Size, total)
		}
		if prev, ok := last[p.Layer]; ok && (p.LayerBytes < prev.LayerBytes || p.Bytes < prev.Bytes) {
			t.Fatalf("counts went back: %+v after %+v", p, prev)
		}
		last[p.Layer] = p
	}
	if want := []string{"resolve", "layers", "build", "store", "done"}; !slices.Equal(phases, want) {
		t.Fatalf("phases %v, want %v", phases, want)
	}
	for i, l := range m.Layers {
		if p := last[i+1]; p.LayerBytes != l.Size {
			t.Errorf("layer %d ended at %d of %d bytes", i+1, p.LayerBytes, l.Size)
		}
	}
	done := rec.ps[len(rec.ps)-1]
	if done.Bytes != total || done.Built < 1<<20 || done.Built != done.BuildSize {
		t.Fatalf("done: %+v; want bytes %d and the whole image built", done, total)
	}
	for _, p := range rec.ps {
		if p.Phase == "build" && (p.BuildSize <= 0 || p.Built > p.BuildSize) {
			t.Fatalf("build report %+v", p)
		}
	}
}

// A rootfs tar is its own blob: its size is known from the hashing pass,
// and the count ends there.
func TestImportProgressRootfsTar(t *testing.T) {
	dir := t.TempDir()
	tarPath := filepath.Join(dir, "root.tar")
	body := imagetest.LayerTar(t, imagetest.Entry{Name: "etc/", Type: tar.TypeDir}, imagetest.Entry{Name: "etc/motd", Body: "hello"})
	if err := os.WriteFile(tarPath, body, 0o644); err != nil {
		t.Fatal(err)
	}
	store, err := imaging.OpenStore(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	im := &imaging.Importer{Store: store, ScratchDir: filepath.Join(dir, "scratch"), Build: fakeBuild}
	src, err := source.Import(context.Background(), tarPath, source.Options{Name: "root:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Release()
	var rec recorder
	if _, err := im.Import(context.Background(), src, rec.add); err != nil {
		t.Fatal(err)
	}
	var end imaging.Progress
	for _, p := range rec.ps {
		if p.Phase == "layers" {
			end = p
		}
	}
	if end.LayerSize != int64(len(body)) || end.LayerBytes != end.LayerSize || end.Total != end.LayerSize {
		t.Fatalf("last layer report %+v, want %d bytes of %d", end, len(body), len(body))
	}
}
