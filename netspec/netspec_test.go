package netspec

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
)

func TestParsePort(t *testing.T) {
	ip := netip.MustParseAddr
	cases := []struct {
		in   string
		want PortMapping
		err  string // a substring of the error; "" for none
	}{
		{"8080:80", PortMapping{HostPort: 8080, GuestPort: 80, Proto: TCP}, ""},
		{"8080:80/tcp", PortMapping{HostPort: 8080, GuestPort: 80, Proto: TCP}, ""},
		{"53:53/udp", PortMapping{HostPort: 53, GuestPort: 53, Proto: UDP}, ""},
		{"127.0.0.1:8080:80", PortMapping{HostIP: ip("127.0.0.1"), HostPort: 8080, GuestPort: 80, Proto: TCP}, ""},
		{"0.0.0.0:8080:80/udp", PortMapping{HostPort: 8080, GuestPort: 80, Proto: UDP}, ""},
		{"65535:1", PortMapping{HostPort: 65535, GuestPort: 1, Proto: TCP}, ""},
		{"0:80", PortMapping{}, "HOSTPORT 0 is out of range"},
		{"80:0", PortMapping{}, "GUESTPORT 0 is out of range"},
		{"65536:80", PortMapping{}, "HOSTPORT 65536 is out of range"},
		{"80:99999999999", PortMapping{}, "GUESTPORT 99999999999 is out of range"},
		{"80", PortMapping{}, "missing GUESTPORT"},
		{"", PortMapping{}, "missing GUESTPORT"},
		{":80", PortMapping{}, "HOSTPORT is empty"},
		{"80:", PortMapping{}, "GUESTPORT is empty"},
		{"x:80", PortMapping{}, `HOSTPORT "x" is not a number`},
		{"+80:80", PortMapping{}, `HOSTPORT "+80" is not a number`},
		{"8080-8090:80", PortMapping{}, "port ranges are not supported"},
		{"8080:80/sctp", PortMapping{}, `protocol "sctp" is not tcp or udp`},
		{"8080:80/", PortMapping{}, `protocol "" is not tcp or udp`},
		{"8080:80/TCP", PortMapping{}, `protocol "TCP" is not tcp or udp`},
		{"host:8080:80", PortMapping{}, `HOSTIP "host" is not an IPv4 address`},
		{"::1:8080:80", PortMapping{}, "must be an IPv4 address"},
		{"[::1]:8080:80", PortMapping{}, "must be an IPv4 address"},
		{"::ffff:1.2.3.4:8080:80", PortMapping{}, "must be an IPv4 address"},
		{"1.2.3.4:8080:80:1", PortMapping{}, "must be an IPv4 address"},
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			got, err := ParsePort(c.in)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("ParsePort(%q) = %v, %v; want an error with %q", c.in, got, err, c.err)
				}
				if !strings.Contains(err.Error(), `"`+c.in+`"`) {
					t.Errorf("error %q does not name the mapping %q", err, c.in)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("ParsePort(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
			}
			// String is the canonical form, and reads back the same.
			back, err := ParsePort(got.String())
			if err != nil || back != got {
				t.Fatalf("ParsePort(%q) = %+v, %v; want %+v", got.String(), back, err, got)
			}
		})
	}
}

func TestPortJSON(t *testing.T) {
	for _, m := range []PortMapping{
		{HostPort: 8080, GuestPort: 80, Proto: TCP},
		{HostIP: netip.MustParseAddr("10.0.0.1"), HostPort: 53, GuestPort: 5353, Proto: UDP},
	} {
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var back PortMapping
		if err := json.Unmarshal(b, &back); err != nil || back != m {
			t.Fatalf("%s -> %+v, %v; want %+v", b, back, err, m)
		}
	}
}

func TestParseNetwork(t *testing.T) {
	cases := []struct {
		in, mode, group, err string
	}{
		{"", "", "", ""},
		{"bridge", Bridge, "", ""},
		{"user", User, "", ""},
		{"shared:web", Bridge, "web", ""},
		{"shared:a-1", Bridge, "a-1", ""},
		{"shared:", "", "", `group "" must be`},
		{"shared:Web", "", "", `group "Web" must be`},
		{"shared:-a", "", "", `group "-a" must be`},
		{"shared:" + strings.Repeat("a", 33), "", "", "must be 1-32"},
		{"host", "", "", `network "host" is not bridge, user or shared:GROUP`},
		{"none", "", "", `network "none" is not`},
		{"Bridge", "", "", `network "Bridge" is not`},
	}
	for _, c := range cases {
		mode, group, err := ParseNetwork(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseNetwork(%q) = %q, %q, %v; want an error with %q", c.in, mode, group, err, c.err)
			}
			continue
		}
		if err != nil || mode != c.mode || group != c.group {
			t.Errorf("ParseNetwork(%q) = %q, %q, %v; want %q, %q", c.in, mode, group, err, c.mode, c.group)
		}
	}
}

func TestValidate(t *testing.T) {
	p := func(s string) PortMapping {
		m, err := ParsePort(s)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	host := Facts{HostAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.0.2.10")},
		UnprivilegedPortStart: 1024, Networks: []string{Bridge, User}}
	admin := host
	admin.Admin = true
	many := make([]PortMapping, MaxPorts+1)
	for i := range many {
		many[i] = PortMapping{HostPort: uint16(2000 + i), GuestPort: 80, Proto: TCP}
	}
	cases := []struct {
		name    string
		ports   []PortMapping
		network string
		f       Facts
		err     string
	}{
		{"none", nil, "", host, ""},
		{"two protocols on one port", []PortMapping{p("8080:80"), p("8080:80/udp")}, "", host, ""},
		{"two addresses on one port", []PortMapping{p("127.0.0.1:8080:80"), p("192.0.2.10:8080:81")}, "bridge", host, ""},
		{"one guest port twice", []PortMapping{p("8080:80"), p("8081:80")}, "", host, ""},
		{"shared", []PortMapping{p("8080:80")}, "shared:g", host, ""},
		{"privileged for an admin", []PortMapping{p("80:80")}, "", admin, ""},
		{"floor at 0", []PortMapping{p("80:80")}, "", Facts{UnprivilegedPortStart: 0}, ""},
		{"unchecked facts", []PortMapping{p("198.51.100.1:8080:80")}, "user", Facts{}, ""},
		{"twice", []PortMapping{p("8080:80"), p("8080:81/tcp")}, "", host, "host port 8080/tcp is published twice"},
		{"twice on one address", []PortMapping{p("127.0.0.1:8080:80"), p("127.0.0.1:8080:80")}, "", host, "host port 127.0.0.1:8080/tcp is published twice"},
		{"every address and one", []PortMapping{p("8080:80"), p("127.0.0.1:8080:81")}, "", host, "already published by 8080:80/tcp"},
		{"one and every address", []PortMapping{p("127.0.0.1:8080:81"), p("8080:80")}, "", host, "already published by 127.0.0.1:8080:81/tcp"},
		{"foreign HOSTIP", []PortMapping{p("198.51.100.1:8080:80")}, "", host, "HOSTIP 198.51.100.1 is not an address of this host"},
		{"privileged", []PortMapping{p("80:8080")}, "", host, "host port 80 is privileged (below net.ipv4.ip_unprivileged_port_start = 1024): publishing it needs CAP_NET_BIND_SERVICE"},
		{"privileged under a lower floor", []PortMapping{p("100:80")}, "", Facts{UnprivilegedPortStart: 443}, "below net.ipv4.ip_unprivileged_port_start = 443"},
		{"port 0", []PortMapping{{HostPort: 0, GuestPort: 80, Proto: TCP}}, "", host, "HOSTPORT 0 is out of range"},
		{"guest port 0", []PortMapping{{HostPort: 8080, GuestPort: 0, Proto: TCP}}, "", host, "GUESTPORT 0 is out of range"},
		{"bad proto", []PortMapping{{HostPort: 8080, GuestPort: 80, Proto: "sctp"}}, "", host, `protocol "sctp" is not tcp or udp`},
		{"IPv6 HOSTIP", []PortMapping{{HostIP: netip.MustParseAddr("::1"), HostPort: 8080, GuestPort: 80, Proto: TCP}}, "", host, "HOSTIP ::1 must be an IPv4 address"},
		{"0.0.0.0 given", []PortMapping{{HostIP: netip.MustParseAddr("0.0.0.0"), HostPort: 8080, GuestPort: 80, Proto: TCP}}, "", host, "not 0.0.0.0"},
		{"too many", many, "", host, "129 port mappings: at most 128 per VM"},
		{"bad network", nil, "host", host, `network "host" is not bridge, user or shared:GROUP`},
		{"mode not offered", nil, "user", Facts{Networks: []string{Bridge}}, `network "user": this daemon offers bridge only`},
		{"shared not offered", nil, "shared:g", Facts{Networks: []string{User}}, `network "shared:g": this daemon offers user only`},
		{"no network at all", nil, "bridge", Facts{Networks: []string{}}, `vm.network = "none"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Validate(c.ports, c.network, c.f)
			if c.err == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Fatalf("Validate = %v; want an error with %q", err, c.err)
			}
		})
	}
}

func TestOverlaps(t *testing.T) {
	a := netip.MustParseAddr("127.0.0.1")
	b := netip.MustParseAddr("192.0.2.1")
	cases := []struct {
		x, y PortMapping
		want bool
	}{
		{PortMapping{HostPort: 80, Proto: TCP}, PortMapping{HostPort: 80, Proto: TCP}, true},
		{PortMapping{HostPort: 80, Proto: TCP}, PortMapping{HostPort: 80, Proto: UDP}, false},
		{PortMapping{HostPort: 80, Proto: TCP}, PortMapping{HostPort: 81, Proto: TCP}, false},
		{PortMapping{HostIP: a, HostPort: 80, Proto: TCP}, PortMapping{HostPort: 80, Proto: TCP}, true},
		{PortMapping{HostIP: a, HostPort: 80, Proto: TCP}, PortMapping{HostIP: a, HostPort: 80, Proto: TCP}, true},
		{PortMapping{HostIP: a, HostPort: 80, Proto: TCP}, PortMapping{HostIP: b, HostPort: 80, Proto: TCP}, false},
	}
	for _, c := range cases {
		if got := Overlaps(c.x, c.y); got != c.want {
			t.Errorf("Overlaps(%s, %s) = %v", c.x, c.y, got)
		}
		if got := Overlaps(c.y, c.x); got != c.want {
			t.Errorf("Overlaps(%s, %s) = %v", c.y, c.x, got)
		}
	}
}

func TestHostFacts(t *testing.T) {
	f, err := HostFacts(false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !contains(f.HostAddrs, netip.MustParseAddr("127.0.0.1")) {
		t.Errorf("host addresses %v lack 127.0.0.1", f.HostAddrs)
	}
	if f.UnprivilegedPortStart < 0 || f.UnprivilegedPortStart > 65536 {
		t.Errorf("unprivileged port start %d", f.UnprivilegedPortStart)
	}
}

func TestHostIPsPresent(t *testing.T) {
	have := []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	for _, tc := range []struct {
		name string
		p    PortMapping
		err  string
	}{
		{"every address", PortMapping{HostPort: 1, GuestPort: 1, Proto: TCP}, ""},
		{"present", PortMapping{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 1, GuestPort: 1, Proto: TCP}, ""},
		{"gone", PortMapping{HostIP: netip.MustParseAddr("192.0.2.5"), HostPort: 1, GuestPort: 1, Proto: TCP}, "HOSTIP 192.0.2.5 is no longer"},
	} {
		err := HostIPsPresent([]PortMapping{tc.p}, have)
		if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.err)
		}
	}
}
