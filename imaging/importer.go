package imaging

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/paddock-vm/paddock/imaging/blobcache"
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
	// Cache, when set, keeps registry blobs by digest (verified ones only).
	Cache *blobcache.Cache
}

// Key is the digest an image is stored under: its config digest, so the
// same content reached by any route is stored once. It is "" for a rootfs
// tar, whose digest only reading it tells.
func Key(img *source.Image) (string, error) {
	if img.Pending() {
		return "", nil
	}
	d, err := img.ConfigName()
	if err != nil {
		return "", fmt.Errorf("image %s: config digest: %w", img.Ref, err)
	}
	return d.String(), nil
}

// Cached returns the stored image for digest, or nil. An entry stored
// before content was verified is not served: the import that finds it
// builds it again from verified content. Names are the Import actor's to
// give (per owner, Store.Hold).
func (im *Importer) Cached(digest string) (*Image, error) {
	img, err := im.Store.Get(digest)
	if err != nil || img == nil || !img.Verified {
		return nil, err
	}
	return img, nil
}

// Import flattens, builds and stores src. Every layer is checked while it
// is flattened, in the same pass: its blob against the manifest's digest,
// its content against the config's diff id, and the config against the
// digest the image is stored under; nothing enters the store otherwise.
// Nothing partial is left behind on any failure or cancellation.
func (im *Importer) Import(ctx context.Context, src *source.Image, progress func(Progress)) (*Image, error) {
	if progress == nil {
		progress = func(Progress) {}
	}
	digest, err := Key(src)
	if err != nil {
		return nil, err
	}
	if digest != "" {
		if img, err := im.Cached(digest); err != nil || img != nil {
			return img, err
		}
	}
	progress(Progress{Phase: "resolve"})
	var manifest, config []byte
	var diffIDs []v1.Hash
	if digest != "" {
		if config, diffIDs, err = verifiedConfig(src, digest); err != nil {
			return nil, err
		}
	}
	// A rootfs tar and a docker archive have no manifest of their own;
	// making one would hash (or gzip) every layer just to learn digests.
	if src.Kind == source.Registry || src.Kind == source.OCILayout {
		if manifest, err = src.RawManifest(); err != nil {
			return nil, fmt.Errorf("image %s: manifest: %w", src.Ref, err)
		}
		var m struct {
			Config struct {
				Digest string `json:"digest"`
			} `json:"config"`
		}
		if err := json.Unmarshal(manifest, &m); err != nil {
			return nil, fmt.Errorf("image %s: manifest: %v: %w", src.Ref, err, ErrBadBlob)
		}
		if m.Config.Digest != digest {
			return nil, fmt.Errorf("image %s: the config blob hashes to %s, not to the manifest's config digest %q: refused: %w", src.Ref, digest, m.Config.Digest, ErrMismatch)
		}
	}
	blobs, err := src.Blobs()
	if err != nil {
		return nil, fmt.Errorf("image %s: layers: %w", src.Ref, err)
	}
	if digest != "" && len(blobs) != len(diffIDs) {
		return nil, fmt.Errorf("image %s: the manifest lists %d layers but the config's rootfs.diff_ids names %d: refused: %w",
			src.Ref, len(blobs), len(diffIDs), ErrMismatch)
	}
	sizes, total := layerSizes(blobs)
	if err := os.MkdirAll(im.ScratchDir, 0o750); err != nil {
		return nil, fmt.Errorf("scratch dir %s: %w", im.ScratchDir, err)
	}

	limit := im.Limits.MaxUnpackedSize
	if limit <= 0 {
		limit = flatten.DefaultMaxUnpackedSize
	}
	var read, blobTotal atomic.Int64
	checks := make([]*layerCheck, len(blobs))
	fl := make([]flatten.Layer, len(blobs))
	for i, b := range blobs {
		c := &layerCheck{name: fmt.Sprintf("image %s: layer %d of %d", src.Ref, i+1, len(blobs)), blob: b.Digest}
		if digest != "" {
			c.diffID = diffIDs[i]
		}
		checks[i] = c
		label := layerLabel(b, c, i, len(blobs))
		i, b := i, b
		fl[i] = flatten.Layer{Digest: label, Open: func() (io.ReadCloser, error) {
			p := Progress{Phase: "layers", Layer: i + 1, Layers: len(blobs), Digest: progressDigest(b, c), LayerSize: sizes[i], Total: total}
			tick := throttle(func(n int64) {
				p.LayerBytes, p.Bytes = n, read.Add(n-p.LayerBytes)
				progress(p)
			})
			tick(0, true)
			return im.openLayer(ctx, src.Kind, b, c, &blobTotal, limit, tick)
		}}
	}
	opts := im.Limits
	opts.ImageRef = src.Ref
	opts.ScratchDir = im.ScratchDir
	res, err := flatten.Flatten(ctx, fl, opts)
	for _, c := range checks {
		if c.err != nil && ctx.Err() == nil {
			// The layer's own failure (a mismatch, the limit) says more
			// than what the flattener made of the stream ending there.
			if res != nil {
				res.Close()
			}
			return nil, c.err
		}
	}
	if err != nil {
		return nil, err
	}
	defer res.Close()
	for _, c := range checks {
		if !c.verified {
			return nil, fmt.Errorf("%s: not read to its end, so not verified: refused: %w", c.name, ErrMismatch)
		}
	}
	if digest == "" {
		// A rootfs tar: its diff id is now known, and with it the digest.
		if err := src.Complete(checks[0].gotDiff, checks[0].size); err != nil {
			return nil, err
		}
		if digest, err = Key(src); err != nil {
			return nil, err
		}
		if img, err := im.Cached(digest); err != nil || img != nil {
			return img, err
		}
		if config, err = src.RawConfigFile(); err != nil {
			return nil, fmt.Errorf("image %s: config: %w", src.Ref, err)
		}
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
	after := Progress{Layers: len(blobs), Bytes: read.Load(), Total: total}
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
	img := &Image{Digest: digest, Size: size, Created: time.Now().UTC(), RootFS: "rootfs.ext4", Verified: true}
	stored, err := im.Store.put(tmp, img)
	if err != nil {
		return nil, err
	}
	ok = true
	if stored != img {
		// Someone stored it meanwhile (another daemon instance): theirs wins.
		return im.Cached(digest)
	}
	after.Phase = "done"
	progress(after)
	return img, nil
}

// layerLabel names a layer in the flattener's errors: its blob's digest, or
// its diff id, and its place.
func layerLabel(b source.Blob, c *layerCheck, i, n int) string {
	switch {
	case b.Digest != (v1.Hash{}):
		return fmt.Sprintf("%d of %d (%s)", i+1, n, b.Digest)
	case c.diffID != (v1.Hash{}):
		return fmt.Sprintf("%d of %d (%s)", i+1, n, c.diffID)
	}
	return fmt.Sprintf("%d of %d", i+1, n)
}

// progressDigest is the digest a layer's progress reports carry.
func progressDigest(b source.Blob, c *layerCheck) string {
	switch {
	case b.Digest != (v1.Hash{}):
		return b.Digest.String()
	case c.diffID != (v1.Hash{}):
		return c.diffID.String()
	}
	return ""
}

// layerSizes are the blob sizes of the layers and their sum, where the
// source knows them without reading (a manifest, a file's size); else 0.
func layerSizes(blobs []source.Blob) ([]int64, int64) {
	sizes := make([]int64, len(blobs))
	var total int64
	for i, b := range blobs {
		if b.Size <= 0 {
			return make([]int64, len(blobs)), 0
		}
		sizes[i] = b.Size
		total += b.Size
	}
	return sizes, total
}

// openLayer opens a layer's blob (from the cache when it holds it) and
// returns its decompressed tar stream, hashed and checked as it is read.
func (im *Importer) openLayer(ctx context.Context, kind source.Kind, b source.Blob, c *layerCheck, total *atomic.Int64, limit int64, tick func(int64, bool)) (io.ReadCloser, error) {
	var rc io.ReadCloser
	var pending *blobcache.Pending
	var fromCache *blobcache.Cache
	useCache := im.Cache != nil && kind == source.Registry && b.Digest != (v1.Hash{})
	if useCache {
		f, err := im.Cache.Get(b.Digest.String())
		if err != nil {
			return nil, err
		}
		if f != nil {
			rc, fromCache = f, im.Cache
		}
	}
	if rc == nil {
		var err error
		if rc, err = b.Open(ctx); err != nil {
			return nil, fmt.Errorf("%s: %w", c.name, err)
		}
		if useCache {
			if pending, err = im.Cache.Begin(b.Digest.String()); err != nil {
				pending = nil // no cache this time; the import goes on
			}
		}
	}
	br := &blobReader{ctx: ctx, rc: rc, name: c.name, want: b.Digest, size: b.Size, total: total, limit: limit, tick: tick}
	if b.Digest != (v1.Hash{}) {
		br.hash = sha256.New()
	}
	if pending != nil {
		br.tee = pending
	}
	dec, err := source.Decompress(br)
	if err != nil {
		if pending != nil {
			pending.Abort()
		}
		return nil, fmt.Errorf("%s: %w", c.name, err)
	}
	return &layerStream{check: c, blob: br, dec: dec, diffHash: sha256.New(), pending: pending, cache: fromCache}, nil
}

// throttle calls report with a layer's count at most every tickEvery, and
// always when forced (its start and end).
func throttle(report func(int64)) func(n int64, force bool) {
	var last time.Time
	return func(n int64, force bool) {
		if now := time.Now(); force || now.Sub(last) >= tickEvery {
			last = now
			report(n)
		}
	}
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
