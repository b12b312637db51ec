package netdev

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// referenceLink returns a constructor for the cheapest plain link type the
// kernel offers (dummy, else ifb, else a veth pair), the reference the tap
// figures are compared to.
func referenceLink(b *testing.B, tns *testNS) (string, func() netlink.Link) {
	b.Helper()
	kinds := []struct {
		name string
		mk   func() netlink.Link
	}{
		{"dummy", func() netlink.Link {
			a := netlink.NewLinkAttrs()
			a.Name = "pdkref0"
			return &netlink.Dummy{LinkAttrs: a}
		}},
		{"ifb", func() netlink.Link {
			a := netlink.NewLinkAttrs()
			a.Name = "pdkref0"
			return &netlink.Ifb{LinkAttrs: a}
		}},
		{"veth", func() netlink.Link {
			a := netlink.NewLinkAttrs()
			a.Name = "pdkref0"
			return &netlink.Veth{LinkAttrs: a, PeerName: "pdkref1"}
		}},
	}
	for _, k := range kinds {
		l := k.mk()
		err := tns.h.LinkAdd(l)
		if errors.Is(err, unix.EOPNOTSUPP) {
			continue
		}
		if err != nil {
			b.Fatalf("add %s: %v", k.name, err)
		}
		if err := tns.h.LinkDel(l); err != nil {
			b.Fatalf("del %s: %v", k.name, err)
		}
		return k.name, k.mk
	}
	b.Fatal("no reference link type available")
	return "", nil
}

// BenchmarkAcquireReleaseTap measures AcquireTap+ReleaseTap (bridge already
// present) and, interleaved in the same run, the creation and deletion of a
// plain link through netlink; it reports the ratio as "x-ref".
func BenchmarkAcquireReleaseTap(b *testing.B) {
	tns := newNS(b)
	ctx := context.Background()
	m, err := New(Config{}, tns.ns)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	if _, err := m.EnsureBridge(ctx); err != nil {
		b.Fatal(err)
	}
	kind, mk := referenceLink(b, tns)
	owner := Owner{UID: 65534, GID: 65534}
	var tapTime, acqTime, refTime time.Duration
	for b.Loop() {
		t0 := time.Now()
		tap, err := m.AcquireTap(ctx, vmA, owner)
		if err != nil {
			b.Fatal(err)
		}
		acqTime += time.Since(t0)
		if err := m.ReleaseTap(ctx, tap.Name, tap.Ifindex); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		l := mk()
		if err := tns.h.LinkAdd(l); err != nil {
			b.Fatal(err)
		}
		if err := tns.h.LinkDel(l); err != nil {
			b.Fatal(err)
		}
		tapTime += t1.Sub(t0)
		refTime += time.Since(t1)
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(tapTime.Nanoseconds())/n, "tap-ns/op")
	b.ReportMetric(float64(acqTime.Nanoseconds())/n, "acquire-ns/op")
	b.ReportMetric(float64(refTime.Nanoseconds())/n, kind+"-ns/op")
	b.ReportMetric(float64(tapTime)/float64(refTime), "x-ref")
	if err := m.ReleaseBridge(ctx, ""); err != nil {
		b.Fatal(err)
	}
}
