package source

import (
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// rawLayer is an uncompressed tar layer (OCI media type
// application/vnd.oci.image.layer.v1.tar) whose diff id is already known:
// a rootfs tar's, learnt while it was flattened. Its blob is the tar
// itself, so its digest is its diff id; nothing here reads the layer, so
// building the image's config costs no pass over it.
type rawLayer struct {
	open func() (io.ReadCloser, error)
	hash v1.Hash
	size int64
}

func (l *rawLayer) DiffID() (v1.Hash, error)             { return l.hash, nil }
func (l *rawLayer) Digest() (v1.Hash, error)             { return l.hash, nil }
func (l *rawLayer) Size() (int64, error)                 { return l.size, nil }
func (l *rawLayer) Uncompressed() (io.ReadCloser, error) { return l.open() }
func (l *rawLayer) Compressed() (io.ReadCloser, error)   { return l.open() }
func (l *rawLayer) MediaType() (types.MediaType, error)  { return types.OCIUncompressedLayer, nil }
