package source

import (
	"context"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Blob is one layer as its source holds it: compressed or not, the bytes
// that travel. The importer decompresses, hashes and checks it.
type Blob struct {
	// Digest is what the manifest says the blob hashes to; zero when the
	// source has no such claim (a docker archive, a rootfs tar).
	Digest v1.Hash
	// Size is the blob's size as the source says it; 0 when unknown.
	Size int64
	// Open returns the blob's bytes. ctx bounds what opening reads (a
	// docker archive is scanned for the layer's entry).
	Open func(ctx context.Context) (io.ReadCloser, error)
}

// Blobs returns the image's layers, in order, as their sources hold them.
// Nothing is read yet.
func (img *Image) Blobs() ([]Blob, error) {
	if img.blobs != nil {
		return img.blobs, nil
	}
	if img.Image == nil {
		return nil, fmt.Errorf("image %s: no layers", img.Ref)
	}
	ls, err := img.Layers()
	if err != nil {
		return nil, err
	}
	out := make([]Blob, len(ls))
	for i, l := range ls {
		d, err := l.Digest()
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i+1, err)
		}
		size, _ := l.Size()
		out[i] = Blob{Digest: d, Size: size, Open: func(context.Context) (io.ReadCloser, error) { return l.Compressed() }}
	}
	return out, nil
}
