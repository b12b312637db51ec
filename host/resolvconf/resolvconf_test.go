package resolvconf

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, x := range s {
		out = append(out, netip.MustParseAddr(x))
	}
	return out
}

func TestParse(t *testing.T) {
	cases := []struct {
		name, in string
		want     []netip.Addr
	}{
		{"empty", "", nil},
		{"plain", "nameserver 192.0.2.1\nnameserver 192.0.2.2\n", addrs("192.0.2.1", "192.0.2.2")},
		{"resolved stub", "# This is /run/systemd/resolve/stub-resolv.conf\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n", addrs("127.0.0.53")},
		{"comments and blanks", "; a comment\n\n  # another\nnameserver 192.0.2.1 # trailing\nnameserver\t192.0.2.9;x\n", addrs("192.0.2.1", "192.0.2.9")},
		{"IPv6 and mapped", "nameserver 2001:db8::1\nnameserver ::ffff:192.0.2.7\n", addrs("2001:db8::1", "192.0.2.7")},
		{"zoned link-local skipped", "nameserver fe80::1%eth0\nnameserver 192.0.2.1\n", addrs("192.0.2.1")},
		{"garbage skipped", "nameserver not-an-ip\nnameservers 192.0.2.3\nnameserver 192.0.2.4\n", addrs("192.0.2.4")},
		{"no final newline", "nameserver 192.0.2.5", addrs("192.0.2.5")},
		{"CRLF", "nameserver 192.0.2.6\r\n", addrs("192.0.2.6")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Parse(strings.NewReader(c.in))
			if err != nil || !slices.Equal(got, c.want) {
				t.Fatalf("Parse = %v, %v; want %v", got, err, c.want)
			}
		})
	}
}

// A hostile or broken file is read only up to MaxSize.
func TestParseBounded(t *testing.T) {
	big := "nameserver 192.0.2.1\n" + strings.Repeat("#"+strings.Repeat("x", 1000)+"\n", 2*MaxSize/1000) + "nameserver 192.0.2.2\n"
	got, err := Parse(strings.NewReader(big))
	if err != nil || !slices.Equal(got, addrs("192.0.2.1")) {
		t.Fatalf("Parse = %v, %v; want only the server in the first %d bytes", got, err, MaxSize)
	}
	if _, err := Parse(strings.NewReader(strings.Repeat("x", MaxSize+10))); err == nil {
		t.Fatal("a line longer than MaxSize was read")
	}
}

func TestUpstream(t *testing.T) {
	got := Upstream(addrs("127.0.0.53", "192.0.2.1", "2001:db8::1", "0.0.0.0", "192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"))
	if want := addrs("192.0.2.1", "192.0.2.2", "192.0.2.3"); !slices.Equal(got, want) {
		t.Fatalf("Upstream = %v; want %v", got, want)
	}
}

func TestHostNameservers(t *testing.T) {
	const stub = "nameserver 127.0.0.53\noptions edns0\n"
	const upstream = "nameserver 198.51.100.1\nnameserver 198.51.100.2\n"
	cases := []struct {
		name             string
		system, resolved string // "" when the file is missing
		want             []netip.Addr
		from             string // "system" or "resolved"
	}{
		{"system's upstream", "nameserver 192.0.2.1\n", upstream, addrs("192.0.2.1"), "system"},
		{"loopback and upstream keeps upstream", "nameserver 127.0.0.1\nnameserver 192.0.2.1\n", upstream, addrs("192.0.2.1"), "system"},
		{"resolved stub", stub, upstream, addrs("198.51.100.1", "198.51.100.2"), "resolved"},
		{"no nameserver means the local host", "search lan\n", upstream, addrs("198.51.100.1", "198.51.100.2"), "resolved"},
		{"no system file", "", upstream, addrs("198.51.100.1", "198.51.100.2"), "resolved"},
		{"stub without resolved's file", stub, "", nil, "system"},
		{"resolved lists only loopback", stub, stub, nil, "resolved"},
		{"IPv6 only", "nameserver 2001:db8::1\n", upstream, nil, "system"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			files := map[string]string{"system": filepath.Join(dir, "resolv.conf"), "resolved": filepath.Join(dir, "resolved.conf")}
			for k, body := range map[string]string{"system": c.system, "resolved": c.resolved} {
				if body != "" {
					if err := os.WriteFile(files[k], []byte(body), 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
			got, from, err := HostNameservers(files["system"], files["resolved"])
			if err != nil || !slices.Equal(got, c.want) || from != files[c.from] {
				t.Fatalf("HostNameservers = %v, %s, %v; want %v from %s", got, from, err, c.want, files[c.from])
			}
		})
	}
}
