package probe

import (
	"net/netip"
	"reflect"
	"testing"
)

func TestDedupe(t *testing.T) {
	ip := netip.MustParseAddr
	any4, any6 := netip.IPv4Unspecified(), netip.IPv6Unspecified()
	tests := []struct {
		name   string
		in     []Port
		hidden []uint16
		want   []Port
	}{
		{name: "empty", in: nil, want: []Port{}},
		{
			name: "0.0.0.0 and :: are one port, sorted by port",
			in: []Port{
				{"tcp6", any6, 8080, 10, "web"},
				{"tcp", any4, 9000, 11, "svc"},
				{"tcp", any4, 8080, 10, "web"},
				{"tcp6", any6, 22, 1, "sshd"},
			},
			want: []Port{
				{"tcp", any6, 22, 1, "sshd"},
				{"tcp", any4, 8080, 10, "web"},
				{"tcp", any4, 9000, 11, "svc"},
			},
		},
		{
			name: "the agent's own ports are hidden",
			in: []Port{
				{"tcp", any4, 1024, 1, "paddock-agent"},
				{"tcp6", any6, 1024, 1, "paddock-agent"},
				{"tcp", any4, 80, 2, "nginx"},
				{"tcp", any4, 81, 2, "nginx"},
			},
			hidden: []uint16{1024, 81},
			want:   []Port{{"tcp", any4, 80, 2, "nginx"}},
		},
		{
			name: "specific addresses collapse; loopback loses to a routable one",
			in: []Port{
				{"tcp", ip("127.0.0.1"), 5432, 7, "postgres"},
				{"tcp", ip("10.77.0.2"), 5432, 7, "postgres"},
				{"tcp6", ip("::1"), 5432, 7, "postgres"},
			},
			want: []Port{{"tcp", ip("10.77.0.2"), 5432, 7, "postgres"}},
		},
		{
			name: "loopback only stays, marked by its address",
			in: []Port{
				{"tcp6", ip("::1"), 6379, 0, ""},
				{"tcp", ip("127.0.0.1"), 6379, 8, "redis"},
			},
			want: []Port{{"tcp", ip("127.0.0.1"), 6379, 8, "redis"}},
		},
		{
			name: "an owner is borrowed when the widest entry has none",
			in: []Port{
				{"tcp", any4, 443, 0, ""},
				{"tcp6", any6, 443, 42, "caddy"},
			},
			want: []Port{{"tcp", any4, 443, 42, "caddy"}},
		},
		{
			name: "v4-mapped addresses, port 0 and protocol spelling",
			in: []Port{
				{"TCP4", ip("::ffff:10.77.0.2"), 7000, 3, "a"},
				{"", any4, 0, 4, "b"},
				{"udp6", any6, 7000, 5, "c"},
			},
			want: []Port{
				{"tcp", ip("10.77.0.2"), 7000, 3, "a"},
				{"udp", any6, 7000, 5, "c"},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]Port(nil), tc.in...)
			got := Dedupe(tc.in, tc.hidden...)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Dedupe =\n %v\nwant\n %v", got, tc.want)
			}
			if !reflect.DeepEqual(in, tc.in) {
				t.Errorf("Dedupe modified its input: %v", tc.in)
			}
		})
	}
}
