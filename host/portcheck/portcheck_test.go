package portcheck

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/netspec"
)

const tcp4 = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 555 1 0000000000000000 100 0 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 556 1 0000000000000000 100 0 0 10 0
   2: 0F02000A:1F91 0102000A:D2A4 01 00000000:00000000 00:00000000 00000000  1000        0 557 1 0000000000000000 20 4 30 10 -1
   3: 0F02000A:2382 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 558 1 0000000000000000 100 0 0 10 0
`

const tcp6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F92 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 600 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F93 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 601 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:1F94 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 602 1 0000000000000000 100 0 0 10 0
`

const udp4 = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 700 2 0000000000000000 0
  101: 0100007F:A000 08080808:0035 01 00000000:00000000 00:00000000 00000000     0        0 701 2 0000000000000000 0
`

// fakeProc writes a /proc tree: net tables under thread-self, and process
// 42 ("web\n") holding socket 555 and 600; socket 556's holder is not
// visible.
func fakeProc(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	files := map[string]string{"thread-self/net/tcp": tcp4, "thread-self/net/tcp6": tcp6, "thread-self/net/udp": udp4, "42/comm": "web\n", "7/comm": "other\n"}
	for p, body := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{"42/fd/3": "socket:[555]", "42/fd/4": "socket:[600]", "42/fd/0": "/dev/null", "7/fd/1": "socket:[999]", "7/fd/5": "socket:[700]"} {
		full := filepath.Join(root, link)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, full); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestListeners(t *testing.T) {
	proc := fakeProc(t)
	ip := netip.MustParseAddr
	cases := []struct {
		name string
		m    netspec.PortMapping
		want []string // the holders, as String names them
	}{
		{"every address, loopback listener", netspec.PortMapping{HostPort: 8080, Proto: "tcp"}, []string{`process "web" (pid 42, listening on 127.0.0.1:8080)`}},
		{"same address", netspec.PortMapping{HostIP: ip("127.0.0.1"), HostPort: 8080, Proto: "tcp"}, []string{`process "web" (pid 42, listening on 127.0.0.1:8080)`}},
		{"other address", netspec.PortMapping{HostIP: ip("10.0.2.15"), HostPort: 8080, Proto: "tcp"}, nil},
		{"wildcard listener, hidden holder", netspec.PortMapping{HostIP: ip("10.0.2.15"), HostPort: 80, Proto: "tcp"}, []string{"another process (listening on 0.0.0.0:80)"}},
		{"connected socket is no listener", netspec.PortMapping{HostPort: 8081, Proto: "tcp"}, nil},
		{"specific listener, other address", netspec.PortMapping{HostIP: ip("127.0.0.1"), HostPort: 9090, Proto: "tcp"}, nil},
		{"specific listener, every address", netspec.PortMapping{HostPort: 9090, Proto: "tcp"}, []string{"another process (listening on 10.0.2.15:9090)"}},
		{"IPv6 any takes IPv4", netspec.PortMapping{HostIP: ip("10.0.2.15"), HostPort: 8082, Proto: "tcp"}, []string{`process "web" (pid 42, listening on [::]:8082)`}},
		{"IPv6 loopback does not", netspec.PortMapping{HostPort: 8083, Proto: "tcp"}, nil},
		{"IPv4-mapped", netspec.PortMapping{HostIP: ip("127.0.0.1"), HostPort: 8084, Proto: "tcp"}, []string{"another process (listening on [::ffff:127.0.0.1]:8084)"}},
		{"other protocol", netspec.PortMapping{HostPort: 8080, Proto: "udp"}, nil},
		{"udp bound", netspec.PortMapping{HostPort: 5353, Proto: "udp"}, []string{`process "other" (pid 7, listening on 0.0.0.0:5353)`}},
		{"udp connected is no listener", netspec.PortMapping{HostPort: 40960, Proto: "udp"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hs, err := Checker{Proc: proc}.Listeners(context.Background(), c.m)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, h := range hs {
				got = append(got, h.String())
			}
			if strings.Join(got, "|") != strings.Join(c.want, "|") {
				t.Fatalf("holders = %q, want %q", got, c.want)
			}
			err = Checker{Proc: proc}.Check(context.Background(), c.m)
			if len(c.want) == 0 {
				if err != nil {
					t.Fatalf("Check = %v", err)
				}
				return
			}
			var ie *InUseError
			if !errors.Is(err, ErrInUse) || !errors.As(err, &ie) || !strings.Contains(err.Error(), c.m.HostString()+" is already in use by "+c.want[0]) {
				t.Fatalf("Check = %v", err)
			}
		})
	}
}

func TestParseTableRefusesGarbage(t *testing.T) {
	for _, body := range []string{
		"hdr\n 0: 0100007F 00000000:0000 0A 0 0 0 0 0 55 1\n",
		"hdr\n 0: 0100007:1F90 00000000:0000 0A 0 0 0 0 0 55 1\n",
		"hdr\n 0: 0100007F:XYZ 00000000:0000 0A 0 0 0 0 0 55 1\n",
		"hdr\n 0: 0100007F:1F90 00000000:0000 0A 0 0 0 0 0 -5 1\n",
	} {
		if _, err := parseTable(strings.NewReader(body), "0A", "t"); err == nil {
			t.Errorf("parseTable(%q) took it", body)
		}
	}
}

// A real listener of this process, in this process's network namespace
// (nothing is sent), is found and named.
func TestListenersLive(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	u, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	comm, _ := os.ReadFile("/proc/self/comm")
	for _, m := range []netspec.PortMapping{
		{HostPort: uint16(l.Addr().(*net.TCPAddr).Port), Proto: "tcp"},
		{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: uint16(u.LocalAddr().(*net.UDPAddr).Port), Proto: "udp"},
	} {
		hs, err := Checker{}.Listeners(context.Background(), m)
		if err != nil {
			t.Fatal(err)
		}
		if len(hs) != 1 || hs[0].PID != os.Getpid() || hs[0].Comm != strings.TrimSpace(string(comm)) {
			t.Fatalf("%s: holders %+v, want this process (%d)", m, hs, os.Getpid())
		}
	}
}

func TestCheckVMs(t *testing.T) {
	p := func(s string) netspec.PortMapping {
		m, err := netspec.ParsePort(s)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	others := []Published{
		{VMID: "a", VMName: "web", Owner: 1000, Mapping: p("8080:80")},
		{VMID: "b", VMName: "secret", Owner: 2000, Mapping: p("127.0.0.1:9090:90")},
		{VMID: "c", VMName: "dns", Owner: 2000, Mapping: p("5353:53/udp")},
	}
	alice, admin := Viewer{UID: 1000}, Viewer{Admin: true}
	cases := []struct {
		name string
		want []netspec.PortMapping
		v    Viewer
		err  string
	}{
		{"free", []netspec.PortMapping{p("8081:80"), p("5353:53")}, alice, ""},
		{"another address", []netspec.PortMapping{p("192.0.2.1:9090:90")}, alice, ""},
		{"own VM", []netspec.PortMapping{p("127.0.0.1:8080:80")}, alice, "port mapping 127.0.0.1:8080:80/tcp: host port 127.0.0.1:8080/tcp is already in use by your VM web (8080/tcp)"},
		{"another user's VM", []netspec.PortMapping{p("9090:90")}, alice, "already in use by another user's VM (127.0.0.1:9090/tcp)"},
		{"admin sees whose", []netspec.PortMapping{p("5353:53/udp")}, admin, "already in use by VM dns of uid 2000 (5353/udp)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := CheckVMs(c.want, others, c.v)
			if c.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInUse) || err.Error() != c.err && !strings.Contains(err.Error(), c.err) {
				t.Fatalf("CheckVMs = %v, want %q", err, c.err)
			}
			if c.v == alice && strings.Contains(err.Error(), "secret") {
				t.Fatalf("another user's VM named: %v", err)
			}
		})
	}
}
