package passt

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/netspec"
)

func baseSpec() Spec {
	return Spec{VMID: "vm1", RunDir: "/run/paddock/vms/vm1",
		Addr: netip.MustParsePrefix("10.0.2.15/24"), Gateway: netip.MustParseAddr("10.0.2.2")}
}

func TestArgs(t *testing.T) {
	common := []string{"passt", "-f", "-4", "-s", "/run/paddock/vms/vm1/passt.sock", "-l", "/run/paddock/vms/vm1/passt.log",
		"-a", "10.0.2.15", "-n", "24", "-g", "10.0.2.2", "--no-map-gw"}
	for _, tc := range []struct {
		name  string
		edit  func(*Spec)
		extra []string
	}{
		{"no ports", func(*Spec) {}, nil},
		{"DNS and ports", func(s *Spec) {
			s.DNS = []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("198.51.100.53")}
			s.Ports = []netspec.PortMapping{
				{HostPort: 18080, GuestPort: 8080},
				{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 18081, GuestPort: 80, Proto: TCP},
				{HostPort: 5353, GuestPort: 53, Proto: UDP},
			}
		}, []string{"-D", "192.0.2.53", "-D", "198.51.100.53", "-t", "18080:8080", "-t", "127.0.0.1/18081:80", "-u", "5353:53"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := baseSpec()
			tc.edit(&s)
			got, err := Args(s)
			if err != nil {
				t.Fatal(err)
			}
			if want := append(slices.Clone(common), tc.extra...); !slices.Equal(got, want) {
				t.Errorf("argv\n got %q\nwant %q", got, want)
			}
			if sock, ok := isPasst(got); !ok || sock != "/run/paddock/vms/vm1/passt.sock" {
				t.Errorf("isPasst(Args) = %q %v", sock, ok)
			}
		})
	}
}

func TestArgsRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		edit       func(*Spec)
	}{
		{"relative run dir", `run directory "run"`, func(s *Spec) { s.RunDir = "run" }},
		{"IPv6 guest", "guest address fd00::2/64", func(s *Spec) { s.Addr = netip.MustParsePrefix("fd00::2/64") }},
		{"no prefix", "prefix length of 1-30", func(s *Spec) { s.Addr = netip.MustParsePrefix("10.0.2.15/32") }},
		{"gateway outside", "gateway 10.0.3.1", func(s *Spec) { s.Gateway = netip.MustParseAddr("10.0.3.1") }},
		{"gateway is guest", "gateway 10.0.2.15", func(s *Spec) { s.Gateway = netip.MustParseAddr("10.0.2.15") }},
		{"IPv6 DNS", "DNS server 2001:db8::53", func(s *Spec) { s.DNS = []netip.Addr{netip.MustParseAddr("2001:db8::53")} }},
		{"port 0", "port 0:80/tcp: ports are 1-65535", func(s *Spec) { s.Ports = []netspec.PortMapping{{GuestPort: 80}} }},
		{"bad proto", `protocol "sctp"`, func(s *Spec) { s.Ports = []netspec.PortMapping{{HostPort: 1, GuestPort: 1, Proto: "sctp"}} }},
		{"IPv6 host IP", "port ::1:8080:80/tcp", func(s *Spec) {
			s.Ports = []netspec.PortMapping{{HostIP: netip.MustParseAddr("::1"), HostPort: 8080, GuestPort: 80}}
		}},
		{"duplicate", "both publish host port 8080/tcp", func(s *Spec) {
			s.Ports = []netspec.PortMapping{{HostPort: 8080, GuestPort: 80}, {HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 8080, GuestPort: 81}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := baseSpec()
			tc.edit(&s)
			_, err := Args(s)
			if !errors.Is(err, ErrInvalidSpec) || !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want ErrInvalidSpec with %q", err, tc.want)
			}
		})
	}
	// the same host port on two addresses, or for two protocols, is fine
	s := baseSpec()
	s.Ports = []netspec.PortMapping{{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 8080, GuestPort: 80},
		{HostIP: netip.MustParseAddr("192.0.2.2"), HostPort: 8080, GuestPort: 80}, {HostPort: 8080, GuestPort: 80, Proto: UDP}}
	if _, err := Args(s); err != nil {
		t.Errorf("distinct mappings refused: %v", err)
	}
}

func TestCheckNamesBinaryAndPackage(t *testing.T) {
	err := Check(filepath.Join(t.TempDir(), "passt"))
	if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "passt\"") || !strings.Contains(err.Error(), `Debian package "passt"`) {
		t.Errorf("missing binary: %v", err)
	}
	t.Setenv("PATH", t.TempDir())
	if err := Check(""); !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), `binary "passt"`) {
		t.Errorf("passt not in PATH: %v", err)
	}
}

// TestStartError maps passt's own start-up messages (as passt 2023.03
// writes them) to errors naming the culprit.
func TestStartError(t *testing.T) {
	s := baseSpec()
	s.Ports = []netspec.PortMapping{{HostPort: 18080, GuestPort: 80}, {HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 5353, GuestPort: 53, Proto: UDP}}
	for _, tc := range []struct {
		name, out, want string
		is              error
	}{
		{"tcp port", "Failed to send 46 bytes to syslog\nFailed to bind any port for '-t 18080:80', exiting\n",
			"18080:80/tcp: passt cannot bind host port 0.0.0.0:18080", ErrPortInUse},
		{"udp port with address", "Failed to bind any port for '-u 127.0.0.1/5353:53', exiting\n",
			"127.0.0.1:5353:53/udp: passt cannot bind host port 127.0.0.1:5353", ErrPortInUse},
		{"no default route", "No external routable interface for IPv4\nExternal interface not usable\n",
			"no interface with an IPv4 default route", errdefs.ErrUnavailable},
		{"anything else", "Failed to send 9 bytes to syslog\nsomething odd\n", "passt.out: something odd", errStart},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), OutName)
			if err := os.WriteFile(out, []byte(tc.out), 0o600); err != nil {
				t.Fatal(err)
			}
			err := startError(s, errStart, out)
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "syslog") {
				t.Errorf("got %v, want %v with %q", err, tc.is, tc.want)
			}
		})
	}
}

var errStart = errors.New("passt exited at start (exit status 1)")

func TestPortFlags(t *testing.T) {
	for _, tc := range []struct {
		p          netspec.PortMapping
		flag, spec string
	}{
		{netspec.PortMapping{HostPort: 8080, GuestPort: 80}, "-t", "8080:80"},
		{netspec.PortMapping{HostIP: netip.MustParseAddr("192.0.2.2"), HostPort: 53, GuestPort: 53, Proto: UDP}, "-u", "192.0.2.2/53:53"},
	} {
		if f, s := portFlag(tc.p), portSpec(tc.p); f != tc.flag || s != tc.spec {
			t.Errorf("%v: %s %s, want %s %s", tc.p, f, s, tc.flag, tc.spec)
		}
	}
}

func TestStopRefusesBadHandle(t *testing.T) {
	for _, p := range []*Process{nil, {PID: 1}, {Socket: "rel.sock"}} {
		if err := Stop(t.Context(), p); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("Stop(%+v): %v", p, err)
		}
	}
}
