package source

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// rawLayer is an uncompressed tar layer (OCI media type
// application/vnd.oci.image.layer.v1.tar). Its blob is the tar itself, so
// its digest is its diff id: one hashing pass, never a gzip of the whole
// layer as go-containerregistry's tarball layers do to learn a digest.
type rawLayer struct {
	open func() (io.ReadCloser, error)
	once sync.Once
	hash v1.Hash
	size int64
	err  error
}

// newRawLayer hashes lazily: a caller that already knows the image (a
// cached import) never reads the layer.
func newRawLayer(open func() (io.ReadCloser, error)) (*rawLayer, error) {
	return &rawLayer{open: open}, nil
}

func (l *rawLayer) compute() {
	rc, err := l.open()
	if err != nil {
		l.err = err
		return
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, rc)
	if err != nil {
		l.err = fmt.Errorf("hash layer: %w", err)
		return
	}
	l.size = n
	l.hash = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

func (l *rawLayer) DiffID() (v1.Hash, error) { l.once.Do(l.compute); return l.hash, l.err }
func (l *rawLayer) Digest() (v1.Hash, error) { return l.DiffID() }
func (l *rawLayer) Size() (int64, error) {
	l.once.Do(l.compute)
	return l.size, l.err
}
func (l *rawLayer) Uncompressed() (io.ReadCloser, error) { return l.open() }
func (l *rawLayer) Compressed() (io.ReadCloser, error)   { return l.open() }
func (l *rawLayer) MediaType() (types.MediaType, error)  { return types.OCIUncompressedLayer, nil }
