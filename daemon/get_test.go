package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/varlink"
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

// Get's reply is encoded once per record, and never outlives the record or
// the configuration it showed: a change of either is in the next answer.
func TestGetAnswersTheCurrentRecord(t *testing.T) {
	d := newTestDaemon(t)
	if _, err := imagetest.SeedImage(d.config().StateDir, "alpine"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	root, alice := varlink.Peer{UID: 0}, varlink.Peer{UID: 1000, GID: 1000}
	get := func(p varlink.Peer, ref string) (api.VM, error) {
		raw, err := d.server.Invoke(ctx, p, api.Interface+".Get", api.VMRef{VM: ref}, nil)
		if err != nil {
			return api.VM{}, err
		}
		var out api.VMOut
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatal(err)
		}
		return out.VM, nil
	}
	if _, err := d.server.Invoke(ctx, alice, api.Interface+".Create", api.CreateIn{Name: "web", Image: "alpine"}, nil); err != nil {
		t.Fatal(err)
	}
	vm, err := get(alice, "web")
	if err != nil || vm.Spec.CPUs == 3 {
		t.Fatalf("get: %+v %v", vm, err)
	}
	if _, err := d.server.Invoke(ctx, alice, api.Interface+".Set", api.SetIn{VM: "web", CPUs: ptrTo(3)}, nil); err != nil {
		t.Fatal(err)
	}
	if vm, err = get(alice, "web"); err != nil || vm.Spec.CPUs != 3 {
		t.Fatalf("get right after set: %+v %v", vm.Spec, err)
	}
	// Another user's VM answers as a missing one does.
	_, errOther := get(varlink.Peer{UID: 1001, GID: 1001}, "web")
	_, errNone := get(varlink.Peer{UID: 1001, GID: 1001}, "nope")
	if errOther == nil || strings.ReplaceAll(errOther.Error(), "web", "nope") != errNone.Error() {
		t.Fatalf("another user's Get: %v; of a missing VM: %v", errOther, errNone)
	}
	// A reload that changes the default network shows in the next answer.
	before := vm.Network.Mode
	cfg := *d.config()
	cfg.VM.Network = map[string]string{"bridge": "user", "user": "bridge", "none": "user"}[before]
	d.cfg.Store(&cfg)
	if vm, err = get(root, vm.ID); err != nil || vm.Network.Mode != cfg.VM.Network {
		t.Fatalf("get after the default network changed from %s to %s: %+v %v", before, cfg.VM.Network, vm.Network, err)
	}
}

func ptrTo[T any](v T) *T { return &v }
