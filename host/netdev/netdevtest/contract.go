package netdevtest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/paddock-vm/paddock/host/netdev"
)

// Host gives the contract test access to the host an implementation works
// on, to plant links that are not paddock's.
type Host interface {
	// AddForeign creates an untagged, non-tap link called name.
	AddForeign(name string) error
	// RemoveForeign deletes a link made by AddForeign.
	RemoveForeign(name string) error
	// Exists reports whether a link called name exists.
	Exists(name string) bool
}

// Contract checks the behaviour callers rely on, against any implementation
// of netdev.Interface working on an empty host: the real Manager (in a
// private namespace) and Fake both pass it, so tests written against Fake
// hold for the real thing. It leaves the bridge in place.
func Contract(t *testing.T, ni netdev.Interface, host Host) {
	t.Helper()
	ctx := context.Background()
	const vm1, vm2 = "ct-vm1", "ct-vm2"

	br, err := ni.EnsureBridge(ctx)
	if err != nil || !br.Created {
		t.Fatalf("EnsureBridge: %+v %v", br, err)
	}
	if br2, err := ni.EnsureBridge(ctx); err != nil || br2.Created || br2.Ifindex != br.Ifindex {
		t.Fatalf("EnsureBridge again: %+v %v", br2, err)
	}

	t1, err := ni.AcquireTap(ctx, vm1, netdev.Owner{UID: 1000, GID: 1000})
	if err != nil || t1.Adopted || t1.Name != netdev.TapName(vm1) || t1.Alias != netdev.TapAlias(vm1) || t1.Bridge != br.Name {
		t.Fatalf("AcquireTap %s: %+v %v", vm1, t1, err)
	}
	if t1.MAC.String() != netdev.GuestMAC(vm1).String() || t1.Ifindex <= 0 {
		t.Errorf("AcquireTap %s: mac %v ifindex %d", vm1, t1.MAC, t1.Ifindex)
	}
	t2, err := ni.AcquireTap(ctx, vm2, netdev.NoOwner)
	if err != nil {
		t.Fatalf("AcquireTap %s: %v", vm2, err)
	}
	if again, err := ni.AcquireTap(ctx, vm1, netdev.Owner{UID: 1000, GID: 1000}); err != nil || !again.Adopted || again.Ifindex != t1.Ifindex {
		t.Errorf("AcquireTap %s again: %+v %v", vm1, again, err)
	}
	if _, err := ni.AcquireTap(ctx, "bad id", netdev.NoOwner); !errors.Is(err, netdev.ErrInvalidVMID) {
		t.Errorf("AcquireTap with a bad id: %v", err)
	}
	if ex, ours, err := ni.ProbeTap(t1.Name); !ex || !ours || err != nil {
		t.Errorf("ProbeTap %s: %v %v %v", t1.Name, ex, ours, err)
	}
	if ex, ours, err := ni.ProbeTap(netdev.TapName("never")); ex || ours || err != nil {
		t.Errorf("ProbeTap absent: %v %v %v", ex, ours, err)
	}

	foreign := netdev.TapName("ct-foreign")
	if err := host.AddForeign(foreign); err != nil {
		t.Fatal(err)
	}
	if _, err := ni.AcquireTap(ctx, "ct-foreign", netdev.NoOwner); !errors.Is(err, netdev.ErrNameTaken) {
		t.Errorf("AcquireTap over a foreign link: %v", err)
	}
	if err := ni.ReleaseTap(ctx, foreign, 0); !errors.Is(err, netdev.ErrNotOurs) {
		t.Errorf("ReleaseTap of a foreign link: %v", err)
	}
	if ex, ours, _ := ni.ProbeTap(foreign); !ex || ours || !host.Exists(foreign) {
		t.Errorf("foreign link after refusal: exists=%v ours=%v", ex, ours)
	}

	owned, err := ni.ListOwned(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range owned {
		got = append(got, fmt.Sprintf("%s %s %s %v", o.Kind, o.Name, o.VMID, o.Valid))
	}
	slices.Sort(got)
	want := []string{
		fmt.Sprintf("bridge %s  true", br.Name),
		fmt.Sprintf("tap %s %s true", t1.Name, vm1),
		fmt.Sprintf("tap %s %s true", t2.Name, vm2),
	}
	if !slices.Equal(got, want) {
		t.Errorf("ListOwned:\n got %q\nwant %q", got, want)
	}

	for i := range 2 {
		if err := ni.ReleaseTap(ctx, t1.Name, t1.Ifindex); err != nil {
			t.Errorf("ReleaseTap %s #%d: %v", t1.Name, i+1, err)
		}
	}
	if err := ni.ReleaseTap(ctx, "", t2.Ifindex); err != nil {
		t.Errorf("ReleaseTap by ifindex: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := ni.ReleaseTap(cancelled, t2.Name, t2.Ifindex); err != nil {
		t.Errorf("ReleaseTap under a cancelled context: %v", err)
	}
	for _, name := range []string{t1.Name, t2.Name} {
		if host.Exists(name) {
			t.Errorf("%s still exists after release", name)
		}
	}
	if err := host.RemoveForeign(foreign); err != nil {
		t.Fatal(err)
	}
	owned, err = ni.ListOwned(ctx)
	if err != nil || len(owned) != 1 || owned[0].Kind != netdev.KindBridge {
		t.Errorf("ListOwned at the end: %+v %v", owned, err)
	}
}
