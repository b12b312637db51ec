package netdev

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
)

func mustAlloc(t testing.TB, s string) *Allocator {
	t.Helper()
	a, err := NewAllocator(netip.MustParsePrefix(s))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAllocatorShape(t *testing.T) {
	tests := []struct {
		subnet, gw, gwPrefix string
		size                 int
		first, last          string
	}{
		{"10.77.0.0/16", "10.77.0.1", "10.77.0.1/16", 65533, "10.77.0.2", "10.77.255.254"},
		{"192.168.9.0/24", "192.168.9.1", "192.168.9.1/24", 253, "192.168.9.2", "192.168.9.254"},
		{"10.0.0.4/30", "10.0.0.5", "10.0.0.5/30", 1, "10.0.0.6", "10.0.0.6"},
		{"10.9.9.9/29", "10.9.9.9", "10.9.9.9/29", 5, "10.9.9.10", "10.9.9.14"}, // masked to 10.9.9.8/29
	}
	for _, tc := range tests {
		a := mustAlloc(t, tc.subnet)
		if a.Gateway().String() != tc.gw || a.GatewayPrefix().String() != tc.gwPrefix || a.Size() != tc.size {
			t.Errorf("%s: gw %v %v size %d", tc.subnet, a.Gateway(), a.GatewayPrefix(), a.Size())
		}
		first, last := netip.MustParseAddr(tc.first), netip.MustParseAddr(tc.last)
		if !a.Usable(first) || !a.Usable(last) || a.Usable(first.Prev()) || a.Usable(last.Next()) {
			t.Errorf("%s: range not %v..%v", tc.subnet, first, last)
		}
		if a.Usable(a.Gateway()) || a.Usable(a.Subnet().Addr()) {
			t.Errorf("%s: gateway or network usable", tc.subnet)
		}
	}
	for _, bad := range []string{"10.0.0.0/31", "10.0.0.0/32", "fd00::/64", "0.0.0.0/0"} {
		if _, err := NewAllocator(netip.MustParsePrefix(bad)); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v", bad, err)
		}
	}
	if _, err := NewAllocator(netip.Prefix{}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("zero prefix: %v", err)
	}
}

func TestAllocate(t *testing.T) {
	a := mustAlloc(t, "10.77.0.0/16")
	// Deterministic, usable, and stable across calls.
	x, err := a.Allocate("vm1", nil)
	if err != nil || !a.Usable(x) {
		t.Fatalf("Allocate: %v %v", x, err)
	}
	if y, _ := a.Allocate("vm1", map[netip.Addr]bool{}); y != x {
		t.Errorf("not deterministic: %v then %v", x, y)
	}
	// Golden: the hash must not change between versions.
	if g, _ := a.Allocate("0123456789abcdef01234567", nil); g.String() != "10.77.181.227" {
		t.Errorf("preferred address changed: %v", g)
	}
	// Collision: the preferred address is taken, so the next one is used.
	y, err := a.Allocate("vm1", map[netip.Addr]bool{x: true})
	if err != nil || y == x || !a.Usable(y) {
		t.Errorf("probe: %v %v", y, err)
	}
	if _, err := a.Allocate("bad id", nil); !errors.Is(err, ErrInvalidVMID) {
		t.Errorf("bad id: %v", err)
	}
	// Different ids spread over the subnet.
	seen := map[netip.Addr]bool{}
	for i := range 100 {
		ip, _ := a.Allocate(fmt.Sprintf("vm%d", i), nil)
		seen[ip] = true
	}
	if len(seen) < 99 {
		t.Errorf("100 ids got only %d distinct preferred addresses", len(seen))
	}
}

func TestAllocateTable(t *testing.T) {
	tests := []struct {
		name   string
		subnet string
		taken  []string
		want   []string // acceptable results; nil: ErrExhausted
	}{
		{"single slot free", "10.0.0.0/30", nil, []string{"10.0.0.2"}},
		{"single slot taken", "10.0.0.0/30", []string{"10.0.0.2"}, nil},
		{"gateway in taken is irrelevant", "10.0.0.0/30", []string{"10.0.0.1", "10.0.0.3"}, []string{"10.0.0.2"}},
		{"only last left", "10.0.0.0/29", []string{"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"}, []string{"10.0.0.6"}},
		{"only first left", "10.0.0.0/29", []string{"10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"}, []string{"10.0.0.2"}},
		{"full /29", "10.0.0.0/29", []string{"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"}, nil},
		{"outside addresses ignored", "10.0.0.0/29", []string{"10.0.1.2", "192.168.0.1"}, []string{"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := mustAlloc(t, tc.subnet)
			taken := map[netip.Addr]bool{}
			for _, s := range tc.taken {
				taken[netip.MustParseAddr(s)] = true
			}
			for _, id := range []string{"a", "b", "c", "vm-x", "0123456789abcdef01234567"} {
				got, err := a.Allocate(id, taken)
				if tc.want == nil {
					if !errors.Is(err, ErrExhausted) {
						t.Errorf("%s: got %v, %v; want ErrExhausted", id, got, err)
					}
					continue
				}
				if err != nil || !slices.Contains(tc.want, got.String()) {
					t.Errorf("%s: got %v, %v; want one of %v", id, got, err, tc.want)
				}
			}
		})
	}
}

// Filling a subnet one VM at a time hands out every guest address exactly
// once, never the network, gateway or broadcast address, then reports
// ErrExhausted.
func TestAllocateFill(t *testing.T) {
	for _, subnet := range []string{"10.5.0.0/30", "10.5.0.0/28", "10.5.0.0/24"} {
		a := mustAlloc(t, subnet)
		taken := map[netip.Addr]bool{}
		for i := range a.Size() {
			ip, err := a.Allocate(fmt.Sprintf("vm%d", i), taken)
			if err != nil {
				t.Fatalf("%s: vm%d: %v", subnet, i, err)
			}
			if taken[ip] || !a.Usable(ip) || ip == a.Gateway() {
				t.Fatalf("%s: vm%d got %v", subnet, i, ip)
			}
			taken[ip] = true
		}
		if _, err := a.Allocate("one-more", taken); !errors.Is(err, ErrExhausted) {
			t.Fatalf("%s: full subnet: %v", subnet, err)
		}
	}
}

func TestGuestNet(t *testing.T) {
	a := mustAlloc(t, "10.77.0.0/16")
	g, err := a.Guest(netip.MustParseAddr("10.77.4.2"), 1400)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"paddock.ip=10.77.4.2/16", "paddock.gw=10.77.0.1", "paddock.mtu=1400"}
	if got := g.KernelArgs(); !slices.Equal(got, want) {
		t.Errorf("KernelArgs = %q, want %q", got, want)
	}
	g, _ = a.Guest(netip.MustParseAddr("10.77.0.2"), 0)
	if got := g.KernelArgs(); len(got) != 2 {
		t.Errorf("KernelArgs without mtu = %q", got)
	}
	for _, bad := range []string{"10.77.0.1", "10.77.0.0", "10.77.255.255", "10.78.0.2", "::1"} {
		if _, err := a.Guest(netip.MustParseAddr(bad), 0); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("Guest(%s): %v", bad, err)
		}
	}
}

func BenchmarkAllocateNearlyFull(b *testing.B) {
	a := mustAlloc(b, "10.77.0.0/20")
	taken := map[netip.Addr]bool{}
	for i := range a.Size() - 1 {
		ip, _ := a.Allocate(fmt.Sprintf("vm%d", i), taken)
		taken[ip] = true
	}
	for b.Loop() {
		if _, err := a.Allocate("last", taken); err != nil {
			b.Fatal(err)
		}
	}
}
