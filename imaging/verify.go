package imaging

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/imaging/blobcache"
	"github.com/paddock-vm/paddock/imaging/flatten"
	"github.com/paddock-vm/paddock/imaging/source"
)

// ErrMismatch: content does not hash to the digest that names it (a
// layer's diff id, a blob's digest in the manifest, the config's digest).
var ErrMismatch = errdefs.New(errdefs.ErrInvalidArgument, "content does not match its digest")

// ErrBadBlob: a layer's blob is not a gzip, zstd or plain tar stream.
var ErrBadBlob = errdefs.New(errdefs.ErrInvalidArgument, "malformed blob")

// ErrTooLarge: a layer's blobs are over the unpack limit.
var ErrTooLarge = errdefs.New(errdefs.ErrInvalidArgument, "blobs over the unpack limit")

func sha256Hash(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

// verifiedConfig returns the raw config of src if it hashes to digest (the
// name the image is stored under), with the diff ids it claims.
func verifiedConfig(src *source.Image, digest string) ([]byte, []v1.Hash, error) {
	raw, err := src.RawConfigFile()
	if err != nil {
		return nil, nil, fmt.Errorf("image %s: config: %w", src.Ref, err)
	}
	sum := sha256.Sum256(raw)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != digest {
		return nil, nil, fmt.Errorf("image %s: the config blob hashes to %s, not to its digest %s: refused: %w", src.Ref, got, digest, ErrMismatch)
	}
	var cf struct {
		RootFS struct {
			Type    string    `json:"type"`
			DiffIDs []v1.Hash `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(raw, &cf); err != nil {
		return nil, nil, fmt.Errorf("image %s: config %s: %w: %w", src.Ref, digest, err, errdefs.New(errdefs.ErrInvalidArgument, "bad config"))
	}
	if cf.RootFS.Type != "layers" {
		return nil, nil, fmt.Errorf("image %s: config %s: rootfs.type %q, want \"layers\": %w", src.Ref, digest, cf.RootFS.Type, errdefs.New(errdefs.ErrInvalidArgument, "bad config"))
	}
	for i, d := range cf.RootFS.DiffIDs {
		if d.Algorithm != "sha256" || len(d.Hex) != 64 {
			return nil, nil, fmt.Errorf("image %s: config %s: rootfs.diff_ids[%d] %q is not a sha256 digest: %w", src.Ref, digest, i, d, errdefs.New(errdefs.ErrInvalidArgument, "bad config"))
		}
	}
	return raw, cf.RootFS.DiffIDs, nil
}

// layerCheck is what one layer's stream must turn out to be, and what it was.
type layerCheck struct {
	name     string  // "image REF: layer 2 of 3", for errors
	blob     v1.Hash // the manifest's digest of the blob; zero: none to check
	diffID   v1.Hash // the config's diff id; zero: learn it (a rootfs tar)
	gotDiff  v1.Hash // the uncompressed stream's hash, once read to its end
	size     int64   // uncompressed bytes
	verified bool    // read to its end and every check passed
	err      error   // the first failure, the import's error
}

func (c *layerCheck) fail(err error) error {
	if c.err == nil {
		c.err = err
	}
	return c.err
}

// layerStream reads one layer for the flattener in one pass: the blob is
// read once, counted, hashed and teed to the cache; its decompressed
// stream is hashed as the flattener reads it. At the stream's end the
// hashes are checked; a mismatch fails the read, so the layer is refused
// before anything of it is kept. Only then is the cache entry committed.
type layerStream struct {
	check    *layerCheck
	blob     *blobReader
	dec      io.ReadCloser
	diffHash hash.Hash
	pending  *blobcache.Pending
	cache    *blobcache.Cache // set when blob came from it
	done     bool
}

func (s *layerStream) Read(p []byte) (int, error) {
	if s.check.err != nil {
		return 0, s.check.err
	}
	n, err := s.dec.Read(p)
	s.diffHash.Write(p[:n])
	s.check.size += int64(n)
	switch {
	case err == io.EOF:
		if ferr := s.finish(); ferr != nil {
			return n, ferr
		}
	case err != nil:
		if s.blob.err != nil {
			return n, s.check.fail(s.blob.err)
		}
		return n, s.check.fail(fmt.Errorf("%s: its blob does not decompress: %v: %w", s.check.name, err, ErrBadBlob))
	}
	return n, err
}

// finish runs at the decompressed stream's end: what follows it in the
// blob is bounded, then every hash is checked.
func (s *layerStream) finish() error {
	if s.done {
		return nil
	}
	s.done = true
	c := s.check
	if n, err := io.CopyN(io.Discard, s.blob, flatten.MaxTrailingBytes+1); err == nil {
		return c.fail(fmt.Errorf("%s: more than %d bytes follow the compressed stream in its blob: refused: %w", c.name, flatten.MaxTrailingBytes, ErrMismatch))
	} else if err != io.EOF {
		return c.fail(fmt.Errorf("%s: reading %d bytes after the compressed stream: %w", c.name, n, err))
	}
	c.gotDiff = sha256Hash(s.diffHash)
	if s.blob.want != (v1.Hash{}) {
		if got := sha256Hash(s.blob.hash); got != s.blob.want {
			if s.cache != nil {
				_ = s.cache.Remove(s.blob.want.String()) // damaged entry: fetch again next time
			}
			return c.fail(fmt.Errorf("%s (blob %s in the manifest): the blob hashes to %s: refused: %w", c.name, s.blob.want, got, ErrMismatch))
		}
	}
	if c.diffID != (v1.Hash{}) && c.gotDiff != c.diffID {
		return c.fail(fmt.Errorf("%s (diff id %s in the config): its content hashes to %s: refused: %w", c.name, c.diffID, c.gotDiff, ErrMismatch))
	}
	c.verified = true
	if s.pending != nil {
		_ = s.pending.Commit() // a cache that cannot keep it costs a download later, nothing more
		s.pending = nil
	}
	return nil
}

func (s *layerStream) Close() error {
	s.blob.tick(s.blob.read, true) // where reading stopped, whatever stopped it
	if s.pending != nil {
		s.pending.Abort()
	}
	return s.dec.Close()
}

// blobReader reads a layer's blob as its source holds it: it stops when ctx
// ends, counts every byte against the import's limit, reports progress, and
// hashes (when there is a digest to check) and tees to the cache what it reads.
type blobReader struct {
	ctx   context.Context
	rc    io.ReadCloser
	name  string
	want  v1.Hash
	size  int64 // the blob's declared size; 0: unknown
	hash  hash.Hash
	tee   io.Writer
	total *atomic.Int64 // blob bytes of every layer so far
	limit int64
	read  int64
	tick  func(n int64, force bool)
	err   error // the first error of the blob itself (not the decompressor's)
}

func (b *blobReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if err := b.ctx.Err(); err != nil {
		b.err = err
		return 0, err
	}
	n, err := b.rc.Read(p)
	if n > 0 {
		b.read += int64(n)
		if b.total.Add(int64(n)) > b.limit {
			b.err = fmt.Errorf("%s: the layers' blobs hold more than %d bytes (max_unpacked_size); reading stopped there: %w", b.name, b.limit, ErrTooLarge)
			return 0, b.err
		}
		if b.hash != nil {
			b.hash.Write(p[:n])
		}
		if b.tee != nil {
			_, _ = b.tee.Write(p[:n])
		}
	}
	b.tick(b.read, err != nil)
	if err != nil && err != io.EOF {
		b.err = fmt.Errorf("%s: reading its blob: %w", b.name, err)
		// A registry's reader checks the digest itself once it has the
		// blob's declared size, and fails the read: say what it found.
		if b.hash != nil && b.size > 0 && b.read == b.size {
			if got := sha256Hash(b.hash); got != b.want {
				b.err = fmt.Errorf("%s (blob %s in the manifest): the blob hashes to %s: refused: %w", b.name, b.want, got, ErrMismatch)
			}
		}
		return n, b.err
	}
	return n, err
}

func (b *blobReader) Close() error { return b.rc.Close() }
