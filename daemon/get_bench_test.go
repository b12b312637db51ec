package daemon

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"testing"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/imaging/imagetest"
)

// BenchmarkGet times Get over a real socket against 1,000 records, as
// `make bench` does, with its allocations (client and server together).
func BenchmarkGet(b *testing.B) {
	d := newTestDaemon(b)
	if _, err := imagetest.SeedImage(d.config().StateDir, "alpine"); err != nil {
		b.Fatal(err)
	}
	sock := filepath.Join(b.TempDir(), "sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = d.server.Serve(ln) }()
	b.Cleanup(func() { _ = d.server.Shutdown(context.Background()) })
	ctx := context.Background()
	c, err := api.Dial(ctx, sock)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	const n = 1000
	for i := range n {
		if _, err := c.Create(ctx, api.CreateIn{Name: fmt.Sprintf("vm-%04d", i), Image: "alpine"}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := c.Get(ctx, fmt.Sprintf("vm-%04d", i%n)); err != nil {
			b.Fatal(err)
		}
	}
}
