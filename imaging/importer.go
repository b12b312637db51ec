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
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/paddock-vm/paddock/imaging/flatten"
	"github.com/paddock-vm/paddock/imaging/source"
	"github.com/paddock-vm/paddock/state"
)

// Progress is one report of an import's advance.
type Progress struct {
	Phase  string `json:"phase"` // resolve, layers, build, store, done
	Layer  int    `json:"layer"` // 1-based layer being read
	Layers int    `json:"layers"`
	Bytes  int64  `json:"bytes"` // uncompressed bytes read so far
	Total  int64  `json:"total"` // compressed size of all layers (as the manifest says)
}

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
	var total int64
	if manifest != nil {
		if m, err := src.Manifest(); err == nil {
			for _, l := range m.Layers {
				total += l.Size
			}
		}
	}
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
			progress(Progress{Phase: "layers", Layer: i + 1, Layers: len(layers), Bytes: read.Load(), Total: total})
			rc, err := l.Uncompressed()
			if err != nil {
				return nil, err
			}
			return &countingRC{ReadCloser: rc, n: &read, every: 8 << 20, tick: func(n int64) {
				progress(Progress{Phase: "layers", Layer: i + 1, Layers: len(layers), Bytes: n, Total: total})
			}}, nil
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
	progress(Progress{Phase: "build", Layers: len(layers), Bytes: read.Load(), Total: total})
	rootfs := filepath.Join(tmp, "rootfs.ext4")
	if err := im.Build(ctx, res, rootfs); err != nil {
		return nil, fmt.Errorf("image %s: build ext4: %w", src.Ref, err)
	}
	if err := os.Chmod(rootfs, 0o440); err != nil {
		return nil, err
	}
	progress(Progress{Phase: "store", Layers: len(layers), Bytes: read.Load(), Total: total})
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
	progress(Progress{Phase: "done", Layers: len(layers), Bytes: read.Load(), Total: total})
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

type countingRC struct {
	io.ReadCloser
	n     *atomic.Int64
	every int64
	since int64
	tick  func(int64)
}

func (c *countingRC) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	total := c.n.Add(int64(n))
	c.since += int64(n)
	if c.since >= c.every {
		c.since = 0
		c.tick(total)
	}
	return n, err
}

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
