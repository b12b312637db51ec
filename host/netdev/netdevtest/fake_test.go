package netdevtest

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/paddock-vm/paddock/host/netdev"
)

type fakeHost struct{ f *Fake }

func (h fakeHost) AddForeign(name string) error    { h.f.AddForeign(name, "veth", ""); return nil }
func (h fakeHost) RemoveForeign(name string) error { h.f.Remove(name); return nil }
func (h fakeHost) Exists(name string) bool {
	ex, _, _ := h.f.ProbeTap(name)
	return ex
}

func TestFakeContract(t *testing.T) {
	f := New(netdev.Config{})
	Contract(t, f, fakeHost{f})
}

func TestFakeRecordsAndFails(t *testing.T) {
	ctx := context.Background()
	f := New(netdev.Config{})
	boom := errors.New("boom")
	f.FailNext(OpAcquireTap, boom)
	if _, err := f.AcquireTap(ctx, "vm1", netdev.Owner{UID: 1000, GID: 1000}); !errors.Is(err, boom) {
		t.Fatalf("injected failure: %v", err)
	}
	if f.State() != "" {
		t.Errorf("a failed call changed state:\n%s", f.State())
	}
	if _, err := f.AcquireTap(ctx, "vm1", netdev.Owner{UID: 1000, GID: 1000}); err != nil {
		t.Fatal(err)
	}
	orphan := f.AddOrphan("vm9")
	f.AddForeign("eth0", "veth", "")
	wantState := "veth eth0 up\n" +
		"bridge paddock0 alias=paddock:bridge up\n" +
		"tuntap pdk-vm1 alias=paddock:vm:vm1 master=paddock0 owner=1000:1000 up\n" +
		"tuntap pdk-vm9 alias=paddock:vm:vm9 master=paddock0 owner=-1:-1 up\n"
	if got := f.State(); got != wantState {
		t.Errorf("State:\n%s\nwant:\n%s", got, wantState)
	}

	// An orphan sweep as the daemon does it: release taps of unknown VMs.
	known := map[string]bool{"vm1": true}
	owned, err := f.ListOwned(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range owned {
		if o.Kind == netdev.KindTap && o.Valid && !known[o.VMID] {
			if err := f.ReleaseTap(ctx, o.Name, o.Ifindex); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := f.Taps(); !slices.Equal(got, []string{"pdk-vm1"}) || orphan != "pdk-vm9" {
		t.Errorf("after sweep: %v", got)
	}
	wantCalls := []string{
		"AcquireTap vm1 owner=1000:1000 -> boom",
		"AcquireTap vm1 owner=1000:1000 -> pdk-vm1 created",
		"ListOwned -> 3",
		"ReleaseTap pdk-vm9 5 -> deleted",
	}
	if got := f.Calls(); !slices.Equal(got, wantCalls) {
		t.Errorf("Calls:\n%q\nwant\n%q", got, wantCalls)
	}
	f.ResetCalls()
	if len(f.Calls()) != 0 {
		t.Error("ResetCalls")
	}
}
