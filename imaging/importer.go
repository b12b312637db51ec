package imaging

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/paddock-vm/paddock/imaging/flatten"
	"github.com/paddock-vm/paddock/imaging/source"
	"github.com/paddock-vm/paddock/state"
)

// Progress is one report of an import's advance. Layer sizes are those of
// the layers' blobs, as the source has them (compressed, from a registry).
type Progress struct {
	Phase  string `json:"phase"` // resolve, layers, build, store, done
	Layer  int    `json:"layer"` // 1-based layer being read
	Layers int    `json:"layers"`
	// Digest, LayerBytes and LayerSize describe the layer being read: the
	// bytes of its blob read so far, and the blob's size (0: unknown).
	Digest     string `json:"digest,omitempty"`
	LayerBytes int64  `json:"layer_bytes,omitempty"`
	LayerSize  int64  `json:"layer_size,omitempty"`
	Bytes      int64  `json:"bytes"` // blob bytes of all layers read so far
	Total      int64  `json:"total"` // blob size of all layers (0: unknown)
	// Built and BuildSize tell how far the disk image is written: the
	// bytes it holds so far, and about what it will hold.
	Built     int64 `json:"built,omitempty"`
	BuildSize int64 `json:"build_size,omitempty"`
}

// tickEvery is how often a layer being read reports its progress.
const tickEvery = 100 * time.Millisecond

// BuildFunc writes a flattened tree as an ext4 filesystem image at out.
type BuildFunc func(ctx context.Context, res *flatten.Result, out string) error

// Importer turns opened images into stored ext4 bases. It is safe for
// concurrent use on different digests; the Import actor keeps one flight per
// digest.
type Importer struct {
	Store      *Store
	ScratchDir string // spill files and partial bases live here until done
	Limits     flatten.Options
	Build      BuildFunc
}

// Key is the digest an image is stored under: its config digest, so the
// same content reached by any route is stored once.
func Key(img *source.Image) (string, error) {
	d, err := img.ConfigName()
	if err != nil {
		return "", fmt.Errorf("image %s: config digest: %w", img.Ref, err)
	}
	return d.String(), nil
}

// Cached returns the stored image for digest, adding names to it, or nil.
func (im *Importer) Cached(digest string, names []string) (*Image, error) {
	img, err := im.Store.Get(digest)
	if err != nil || img == nil {
		return nil, err
	}
	if added := img.addNames(names); added {
		if err := im.Store.Add(img); err != nil {
			return nil, err
		}
	}
	return img, nil
}

// Import flattens, builds and stores src. Nothing partial is left behind
// on any failure or cancellation.
func (im *Importer) Import(ctx context.Context, src *source.Image, progress func(Progress)) (*Image, error) {
	if progress == nil {
		progress = func(Progress) {}
	}
	digest, err := Key(src)
	if err != nil {
		return nil, err
	}
	if img, err := im.Cached(digest, src.Names); err != nil || img != nil {
		return img, err
	}
	progress(Progress{Phase: "resolve"})
	// A rootfs tar has no manifest of its own; making one would gzip the
	// whole layer just to learn its compressed digest.
	var manifest []byte
	if src.Kind != source.RootfsTar {
		if manifest, err = src.RawManifest(); err != nil {
			return nil, fmt.Errorf("image %s: manifest: %w", src.Ref, err)
		}
	}
	config, err := src.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", src.Ref, err)
	}
	layers, err := src.Layers()
	if err != nil {
		return nil, fmt.Errorf("image %s: layers: %w", src.Ref, err)
	}
	sizes, total := layerSizes(src.Kind, layers)
	if err := os.MkdirAll(im.ScratchDir, 0o750); err != nil {
		return nil, fmt.Errorf("scratch dir %s: %w", im.ScratchDir, err)
	}
	tmp, err := os.MkdirTemp(im.Store.Root, ".import-")
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", src.Ref, err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(tmp)
		}
	}()

	var read atomic.Int64
	fl := make([]flatten.Layer, len(layers))
	for i, l := range layers {
		label, err := layerLabel(l, i, src.Kind == source.RootfsTar)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", src.Ref, err)
		}
		i, l := i, l
		fl[i] = flatten.Layer{Digest: label, Open: func() (io.ReadCloser, error) {
			p := Progress{Phase: "layers", Layer: i + 1, Layers: len(layers), Digest: label, LayerSize: sizes[i], Total: total}
			tick := func(n int64) {
				p.LayerBytes, p.Bytes = n, read.Add(n-p.LayerBytes)
				progress(p)
			}
			tick(0)
			return openLayer(src.Kind, l, tick)
		}}
	}
	opts := im.Limits
	opts.ImageRef = src.Ref
	opts.ScratchDir = im.ScratchDir
	res, err := flatten.Flatten(ctx, fl, opts)
	if err != nil {
		return nil, err
	}
	defer res.Close()
	after := Progress{Layers: len(layers), Bytes: read.Load(), Total: total}
	rootfs := filepath.Join(tmp, "rootfs.ext4")
	if err := im.build(ctx, res, rootfs, after, progress); err != nil {
		return nil, fmt.Errorf("image %s: build ext4: %w", src.Ref, err)
	}
	after.Built = allocatedUnder(tmp)
	after.BuildSize = after.Built
	if err := os.Chmod(rootfs, 0o440); err != nil {
		return nil, err
	}
	after.Phase = "store"
	progress(after)
	for name, b := range map[string][]byte{"manifest.json": manifest, "config.json": config} {
		if b == nil {
			continue
		}
		if err := state.WriteFileAtomic(filepath.Join(tmp, name), b, 0o640); err != nil {
			return nil, err
		}
	}
	var size int64
	if fi, err := os.Stat(rootfs); err == nil {
		size = fi.Size()
	}
	img := &Image{Digest: digest, Names: src.Names, Size: size, Created: time.Now().UTC(), RootFS: "rootfs.ext4"}
	if err := writeImageJSON(tmp, img); err != nil {
		return nil, err
	}
	final := im.Store.Dir(digest)
	if err := os.Rename(tmp, final); err != nil {
		if errors.Is(err, os.ErrExist) || errors.Is(err, os.ErrNotExist) {
			// Someone stored it meanwhile (another daemon instance): theirs wins.
			return im.Cached(digest, src.Names)
		}
		return nil, fmt.Errorf("store image %s: %w", digest, err)
	}
	ok = true
	if err := state.SyncDir(im.Store.Root); err != nil {
		return nil, err
	}
	after.Phase = "done"
	progress(after)
	return img, nil
}

// layerLabel names a layer in errors without forcing go-containerregistry
// to compress an uncompressed tarball just to learn its digest.
func layerLabel(l v1.Layer, i int, uncompressed bool) (string, error) {
	if !uncompressed {
		if d, err := l.Digest(); err == nil {
			return d.String(), nil
		}
	}
	d, err := l.DiffID()
	if err != nil {
		return fmt.Sprintf("layer %d", i+1), nil
	}
	return d.String(), nil
}

// layerSizes are the blob sizes of the layers and their sum, where they
// are known without reading: from the manifest (registry, OCI layout), or
// from the hashing pass a rootfs tar had already (its blob is the tar). A
// docker archive's layer sizes would cost a gzip pass: unknown, 0.
func layerSizes(kind source.Kind, layers []v1.Layer) ([]int64, int64) {
	sizes := make([]int64, len(layers))
	if kind == source.DockerArchive {
		return sizes, 0
	}
	var total int64
	for i, l := range layers {
		if n, err := l.Size(); err == nil && n > 0 {
			sizes[i] = n
			total += n
		} else {
			return make([]int64, len(layers)), 0
		}
	}
	return sizes, total
}

// openLayer opens a layer's tar stream, telling tick how many bytes of its
// blob were read. A registry's or OCI layout's blob is read as it is and
// decompressed here, so the count is of what travels; the registry's
// reader checks the blob's digest at its end (flatten reads to the end).
func openLayer(kind source.Kind, l v1.Layer, tick func(int64)) (io.ReadCloser, error) {
	if kind != source.Registry && kind != source.OCILayout {
		rc, err := l.Uncompressed()
		if err != nil {
			return nil, err
		}
		return &countingRC{ReadCloser: rc, tick: tick}, nil
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	return source.Decompress(&countingRC{ReadCloser: rc, tick: tick})
}

// countingRC counts what is read through it and tells tick, at most every
// tickEvery and at the end.
type countingRC struct {
	io.ReadCloser
	n    int64
	last time.Time
	tick func(int64)
}

func (c *countingRC) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n += int64(n)
	if now := time.Now(); err != nil || now.Sub(c.last) >= tickEvery {
		c.last = now
		c.tick(c.n)
	}
	return n, err
}

// build runs the Build step, reporting how much of the disk image is
// written while it runs.
func (im *Importer) build(ctx context.Context, res *flatten.Result, out string, p Progress, progress func(Progress)) error {
	p.Phase = "build"
	p.BuildSize = max(res.Summary.Blocks*4096, res.Summary.ContentBytes)
	progress(p)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(4 * tickEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				// The written image holds metadata too: it may pass the
				// estimate, and is not done until the build says so.
				p.Built = min(allocatedUnder(filepath.Dir(out)), p.BuildSize*99/100)
				progress(p)
			}
		}
	}()
	err := im.Build(ctx, res, out)
	close(stop)
	<-done
	return err
}

// allocatedUnder is what the files directly in dir take on disk.
func allocatedUnder(dir string) int64 {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
	}
	return n
}

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
