package flatten

import (
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// V1Layer adapts a go-containerregistry layer. Open uses Uncompressed(),
// which sniffs and removes gzip or zstd compression whatever the media
// type says, and (for registry layers) verifies the blob digest at EOF.
// label names the layer in errors, usually its manifest digest.
func V1Layer(l v1.Layer, label string) Layer {
	return Layer{Digest: label, Open: l.Uncompressed}
}

// V1Layers adapts layers in order, labelled by their Digest(). That is
// cheap for registry, OCI-layout and cache layers; for layers built from
// an uncompressed tarball go-containerregistry computes Digest() by
// compressing the whole layer, so label those with V1Layer instead.
func V1Layers(layers []v1.Layer) ([]Layer, error) {
	out := make([]Layer, 0, len(layers))
	for i, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return nil, fmt.Errorf("layer %d: digest: %w", i, err)
		}
		out = append(out, V1Layer(l, d.String()))
	}
	return out, nil
}
