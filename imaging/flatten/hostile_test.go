package flatten_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/imaging/flatten"
	ft "github.com/paddock-vm/paddock/imaging/flatten/flattentest"
)

func TestHostile(t *testing.T) {
	canary, check := ft.Canary(t)
	defer check()
	for _, h := range ft.HostileCases(canary) {
		t.Run(h.Name, func(t *testing.T) {
			scratch := t.TempDir()
			opts := h.Opts
			opts.ScratchDir, opts.ImageRef = scratch, "example.com/hostile:"+h.Name
			res, err := flatten.Flatten(context.Background(), ft.HostileLayers(t, h), opts)
			if err == nil {
				res.Close()
				t.Fatalf("Flatten accepted a hostile image")
			}
			ft.AssertRejected(t, err, h, opts.ImageRef)
			if ents, _ := os.ReadDir(scratch); len(ents) != 0 {
				t.Errorf("scratch dir not empty after failure: %v", ents)
			}
		})
	}
}

// countingReader counts what Flatten consumed.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// TestTooLargeStopsEarly: the limit is enforced before the content that
// would cross it is read, not after unpacking it.
func TestTooLargeStopsEarly(t *testing.T) {
	big := ft.Tar(t, ft.File("small", "s", 0), ft.File("big", strings.Repeat("z", 8<<20), 0))
	cr := &countingReader{r: bytes.NewReader(big)}
	_, err := flatten.Flatten(context.Background(), []flatten.Layer{flatten.ReaderLayer("sha256:big", cr)},
		flatten.Options{MaxUnpackedSize: 1 << 20, ScratchDir: t.TempDir()})
	if !errors.Is(err, flatten.ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
	if cr.n > 64<<10 {
		t.Errorf("read %d bytes of the layer before rejecting; want the limit checked before the content", cr.n)
	}
}
