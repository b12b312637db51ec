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

// endless repeats chunk forever after head, counting what is read.
type endless struct {
	head, chunk []byte
	off         int
	n           int64
	onRead      func(n int64)
}

func (e *endless) Read(p []byte) (int, error) {
	k := 0
	for k < len(p) {
		if len(e.head) > 0 {
			c := copy(p[k:], e.head)
			e.head = e.head[c:]
			k += c
			continue
		}
		c := copy(p[k:], e.chunk[e.off:])
		e.off = (e.off + c) % len(e.chunk)
		k += c
	}
	e.n += int64(k)
	if e.onRead != nil {
		e.onRead(e.n)
	}
	return k, nil
}

// Bombs that cost reading but grow no tree stop early: endless zeros after
// the end-of-archive marker, endless entries that unpack to nothing, and any
// stream once the caller's context ends.
func TestBombsStopEarly(t *testing.T) {
	whiteouts := ft.Tar(t, ft.Whiteout("x"))
	whiteouts = whiteouts[:len(whiteouts)-1024] // one entry, no end marker: repeats forever
	cases := []struct {
		name     string
		stream   *endless
		limit    int64
		cancel   bool
		sentinel error
		most     int64
	}{
		{"zeros after the end", &endless{head: ft.Tar(t, ft.File("a", "a", 0)), chunk: make([]byte, 4096)}, 0, false,
			flatten.ErrBadEntry, flatten.MaxTrailingBytes + 64<<10},
		{"endless whiteouts", &endless{chunk: whiteouts}, 4 << 20, false, flatten.ErrTooLarge, 4<<20 + 64<<10},
		{"client gone", &endless{chunk: whiteouts}, 0, true, context.Canceled, 64 << 20},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.cancel {
				tc.stream.onRead = func(n int64) {
					if n > 1<<20 {
						cancel()
					}
				}
			}
			scratch := t.TempDir()
			_, err := flatten.Flatten(ctx, []flatten.Layer{flatten.ReaderLayer("sha256:bomb", tc.stream)},
				flatten.Options{ImageRef: "bomb", ScratchDir: scratch, MaxUnpackedSize: tc.limit})
			if !errors.Is(err, tc.sentinel) {
				t.Fatalf("err = %v, want %v", err, tc.sentinel)
			}
			if tc.sentinel != context.Canceled && !strings.Contains(err.Error(), "sha256:bomb") {
				t.Errorf("%v does not name the layer", err)
			}
			if tc.stream.n > tc.most {
				t.Errorf("read %d bytes before stopping, want at most %d", tc.stream.n, tc.most)
			}
			t.Logf("stopped after reading %d bytes: %v", tc.stream.n, err)
			if ents, _ := os.ReadDir(scratch); len(ents) != 0 {
				t.Errorf("scratch left: %v", ents)
			}
		})
	}
}
