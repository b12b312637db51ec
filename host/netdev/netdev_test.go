package netdev

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestTapName(t *testing.T) {
	tests := []struct {
		id, want string
	}{
		{"0123456789abcdef01234567", "pdk-0123456789a"}, // a paddock id (24 hex)
		{"vm1", "pdk-vm1"},
		{"abcdefghijk", "pdk-abcdefghijk"},
		{"abcdefghijkl", "pdk-abcdefghijk"},
		{"Web_1.x-y", "pdk-Web_1.x-y"},
	}
	for _, tc := range tests {
		if got := TapName(tc.id); got != tc.want {
			t.Errorf("TapName(%q) = %q, want %q", tc.id, got, tc.want)
		}
	}
	// Invalid ids hash to a valid interface name, deterministically.
	for _, id := range []string{"", "a/b", "has space", "x:y", strings.Repeat("a", 65), "é"} {
		n := TapName(id)
		if err := validIfName(n); err != nil || !strings.HasPrefix(n, TapPrefix) || len(n) != 15 {
			t.Errorf("TapName(%q) = %q (%v)", id, n, err)
		}
		if TapName(id) != n {
			t.Errorf("TapName(%q) not deterministic", id)
		}
	}
	if TapName("a/b") == TapName("a/c") {
		t.Error("hashed names collide")
	}
	// Every name fits IFNAMSIZ.
	for i := range 200 {
		id := fmt.Sprintf("%024x", uint64(i)*0x9e3779b97f4a7c15)
		if n := TapName(id); len(n) > 15 || validIfName(n) != nil {
			t.Fatalf("TapName(%q) = %q", id, n)
		}
	}
}

func TestAlias(t *testing.T) {
	tests := []struct {
		alias string
		kind  Kind
		id    string
		ok    bool
	}{
		{"paddock:vm:abc", KindTap, "abc", true},
		{"paddock:bridge", KindBridge, "", true},
		{"paddock:vm:", KindUnknown, "", true},
		{"paddock:vm:a b", KindUnknown, "", true},
		{"paddock:future", KindUnknown, "", true},
		{"", "", "", false},
		{"docker0", "", "", false},
		{"Paddock:vm:abc", "", "", false},
	}
	for _, tc := range tests {
		k, id, ok := ParseAlias(tc.alias)
		if k != tc.kind || id != tc.id || ok != tc.ok {
			t.Errorf("ParseAlias(%q) = %q %q %v, want %q %q %v", tc.alias, k, id, ok, tc.kind, tc.id, tc.ok)
		}
	}
	if k, id, _ := ParseAlias(TapAlias("vm7")); k != KindTap || id != "vm7" {
		t.Errorf("round trip: %v %v", k, id)
	}
	if _, ok := tapTagFor(TapAlias("vm7"), TapName("vm7")); !ok {
		t.Error("tag of vm7 not accepted for its own tap")
	}
	// Two ids sharing an 11-byte prefix share a tap name; each tag is valid
	// for that name, but the tap is only adopted by the VM named in its tag.
	if _, ok := tapTagFor(TapAlias("vm8"), TapName("vm7")); ok {
		t.Error("tag of vm8 accepted for vm7's tap")
	}
}

func TestMACs(t *testing.T) {
	ids := []string{"vm1", "vm2", "0123456789abcdef01234567"}
	seen := map[string]bool{}
	for _, id := range ids {
		for _, mac := range [][]byte{GuestMAC(id), HostMAC(id)} {
			if len(mac) != 6 {
				t.Fatalf("%s: mac %x", id, mac)
			}
			if mac[0]&0x01 != 0 {
				t.Errorf("%s: %x is multicast", id, mac)
			}
			if mac[0]&0x02 == 0 {
				t.Errorf("%s: %x is not locally administered", id, mac)
			}
			if seen[string(mac)] {
				t.Errorf("%s: %x repeats", id, mac)
			}
			seen[string(mac)] = true
		}
		if HostMAC(id)[0] != 0xfe {
			t.Errorf("%s: host mac %v", id, HostMAC(id))
		}
	}
	// Golden values: these derivations must never change, or a new paddock
	// would not recognise what an older one created (the bridge marker) and
	// guests would see new MACs.
	const id = "0123456789abcdef01234567"
	if g, h, b := GuestMAC(id).String(), HostMAC(id).String(), BridgeMAC("paddock0").String(); g != "92:59:c1:73:c3:b8" || h != "fe:dc:f3:2b:8e:a8" || b != "02:d8:1f:64:8a:ef" {
		t.Errorf("derivation changed: guest %s host %s bridge %s", g, h, b)
	}
	b := BridgeMAC("paddock0")
	if b[0] != 0x02 || b.String() != BridgeMAC("paddock0").String() || b.String() == BridgeMAC("paddock1").String() {
		t.Errorf("BridgeMAC: %v", b)
	}
}

func TestConfig(t *testing.T) {
	c := Config{}.WithDefaults()
	if c.Bridge != "paddock0" || c.Subnet != DefaultSubnet {
		t.Fatalf("defaults: %+v", c)
	}
	if c := (Config{Subnet: netip.MustParsePrefix("10.1.2.3/16")}).WithDefaults(); c.Subnet.String() != "10.1.0.0/16" {
		t.Errorf("not masked: %v", c.Subnet)
	}
	tests := []struct {
		cfg  Config
		want error
	}{
		{Config{}, nil},
		{Config{Bridge: "br-test", Subnet: netip.MustParsePrefix("192.168.50.0/24"), MTU: 1400}, nil},
		{Config{Bridge: "this-is-too-long0"}, ErrInvalidConfig},
		{Config{Bridge: "a b"}, ErrInvalidConfig},
		{Config{Bridge: "pdk-br"}, ErrInvalidConfig},
		{Config{Subnet: netip.MustParsePrefix("fd00::/64")}, ErrInvalidConfig},
		{Config{Subnet: netip.MustParsePrefix("10.0.0.0/31")}, ErrInvalidConfig},
		{Config{Subnet: netip.MustParsePrefix("10.0.0.0/7")}, ErrInvalidConfig},
		{Config{MTU: 10}, ErrInvalidConfig},
	}
	for _, tc := range tests {
		err := tc.cfg.Validate()
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("Validate(%+v) = %v, want %v", tc.cfg, err, tc.want)
		}
	}
}

func TestValidVMID(t *testing.T) {
	for _, id := range []string{"a", "0123456789abcdef01234567", "A-b_c.d", strings.Repeat("x", 64)} {
		if err := ValidVMID(id); err != nil {
			t.Errorf("%q: %v", id, err)
		}
	}
	for _, id := range []string{"", "a b", "a:b", "a/b", strings.Repeat("x", 65), "ü"} {
		if err := ValidVMID(id); !errors.Is(err, ErrInvalidVMID) {
			t.Errorf("%q: %v", id, err)
		}
	}
}
