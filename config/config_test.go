package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/netspec"
)

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "paddock.toml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// The shipped example must load and must equal the built-in root defaults, so
// the file cannot drift from the code.
func TestExampleMatchesDefaults(t *testing.T) {
	for _, e := range []string{"STATE_DIRECTORY", "RUNTIME_DIRECTORY", "CACHE_DIRECTORY"} {
		t.Setenv(e, "")
	}
	c, err := Load("../config.example.toml")
	if err != nil {
		t.Fatalf("example config: %v", err)
	}
	d := Default()
	d.StateDir, d.RuntimeDir, d.CacheDir = "/var/lib/paddock", "/run/paddock", "/var/cache/paddock"
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	if diff := c.Diff(d); len(diff) != 0 {
		t.Fatalf("config.example.toml differs from defaults: %+v", diff)
	}
}

func TestNoFileGivesWorkingDefaults(t *testing.T) {
	t.Setenv("STATE_DIRECTORY", "")
	t.Setenv("RUNTIME_DIRECTORY", "")
	t.Setenv("CACHE_DIRECTORY", "")
	t.Setenv("XDG_STATE_HOME", "/tmp/xs")
	t.Setenv("XDG_RUNTIME_DIR", "/tmp/xr")
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if c.StateDir != "/var/lib/paddock" || c.API.Socket != "/run/paddock/io.paddock.v1" {
			t.Fatalf("root defaults: %s %s", c.StateDir, c.API.Socket)
		}
	} else if c.StateDir != "/tmp/xs/paddock" || c.API.Socket != "/tmp/xr/paddock/io.paddock.v1" {
		t.Fatalf("user defaults: %s %s", c.StateDir, c.API.Socket)
	}
	t.Setenv("STATE_DIRECTORY", "/var/lib/private/paddock")
	c, err = Load("")
	if err != nil {
		t.Fatal(err)
	}
	if c.StateDir != "/var/lib/private/paddock" {
		t.Fatalf("STATE_DIRECTORY not honoured: %s", c.StateDir)
	}
}

func TestErrorsNameTheKey(t *testing.T) {
	cases := []struct {
		name, body string
		want       []string
	}{
		{"unknown top key", "stat_dir = \"/x\"\n", []string{"unknown key", "stat_dir"}},
		{"unknown nested key", "[api]\nsokcet = \"/x\"\n", []string{"unknown key", "api.sokcet"}},
		{"wrong type", "[defaults]\ncpus = \"two\"\n", []string{"line 2", "cpus"}},
		{"bad duration", "[api]\nrequest_timeout = \"soon\"\n", []string{"line 2", "request_timeout", "soon"}},
		{"bad size", "[defaults]\nmemory = \"lots\"\n", []string{"memory", "lots"}},
		{"bad level", "[log]\nlevel = \"loud\"\n", []string{"log.level", "loud"}},
		{"relative dir", "state_dir = \"var/lib\"\n", []string{"state_dir", "absolute"}},
		{"bad mode", "[api]\nsocket_mode = \"rw\"\n", []string{"api.socket_mode"}},
		{"zero cpus", "[defaults]\ncpus = 0\n", []string{"defaults.cpus"}},
		{"syntax", "[api\n", []string{"line "}},
		{"tiny message size", "[api]\nmax_message_size = \"10B\"\n", []string{"api.max_message_size"}},
		{"tiny VMM memory overhead", "[vm]\nvmm_memory_overhead = \"1MiB\"\n", []string{"vm.vmm_memory_overhead", "1MiB"}},
		{"too few VMM pids", "[vm]\nvmm_pids_max = 8\n", []string{"vm.vmm_pids_max", "8"}},
		{"per-user cap above the users' share", "[api]\nmax_connections = 10\nadmin_reserved_connections = 4\nmax_connections_per_user = 7\n", []string{"api.max_connections_per_user", "1..6", "got 7"}},
		{"no connection per user", "[api]\nmax_connections_per_user = 0\n", []string{"api.max_connections_per_user"}},
		{"reserve takes every connection", "[api]\nmax_connections = 8\nadmin_reserved_connections = 8\nmax_connections_per_user = 1\n", []string{"api.admin_reserved_connections", "less than api.max_connections (8)"}},
		{"negative reserve", "[api]\nadmin_reserved_connections = -1\n", []string{"api.admin_reserved_connections"}},
		{"idle timeout too short", "[api]\nidle_timeout = \"10ms\"\n", []string{"api.idle_timeout", "10ms"}},
		{"bad network", "[vm]\nnetwork = \"host\"\n", []string{"vm.network", `"host" is not one of bridge, user, none`}},
		{"bad nat", "[vm]\nnat = \"yes\"\n", []string{"vm.nat", `"yes" is not one of on, off`}},
		{"dns not an address", "[vm]\ndns = [\"one.one\"]\n", []string{"vm.dns", `"one.one" is not an IP address`}},
		{"dns loopback", "[vm]\ndns = [\"127.0.0.53\"]\n", []string{"vm.dns", "127.0.0.53 is not reachable from a guest"}},
		{"dns too many", "[vm]\ndns = [\"192.0.2.1\", \"192.0.2.2\", \"192.0.2.3\", \"192.0.2.4\"]\n", []string{"vm.dns", "at most 3"}},
		{"dns not a list", "[vm]\ndns = \"192.0.2.1\"\n", []string{"dns"}},
		{"host access without proto", "[vm]\nhost_access = [\"53\"]\n", []string{"vm.host_access", `"53" is not tcp/PORT or udp/PORT`}},
		{"host access bad proto", "[vm]\nhost_access = [\"icmp/1\"]\n", []string{"vm.host_access", `"icmp/1"`}},
		{"host access port 0", "[vm]\nhost_access = [\"tcp/0\"]\n", []string{"vm.host_access", `port "0" is not 1-65535`}},
		{"host access port too big", "[vm]\nhost_access = [\"udp/65536\"]\n", []string{"vm.host_access", `port "65536"`}},
		{"host access twice", "[vm]\nhost_access = [\"udp/53\", \"udp/53\"]\n", []string{"vm.host_access", `"udp/53" is listed twice`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(write(t, tc.body))
			if err == nil {
				t.Fatal("want error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v is not ErrInvalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestDiffMarksLiveKeys(t *testing.T) {
	a, b := Default(), Default()
	b.Log.Level = "debug"
	b.StateDir = "/elsewhere"
	b.Defaults.AutoStop = Duration{time.Minute}
	got := map[string]bool{}
	for _, c := range b.Diff(a) {
		got[c.Key] = c.Live
	}
	want := map[string]bool{"log.level": true, "state_dir": false, "defaults.auto_stop": true}
	if len(got) != len(want) {
		t.Fatalf("diff %v, want %v", got, want)
	}
	for k, v := range want {
		if live, ok := got[k]; !ok || live != v {
			t.Errorf("%s: live=%v ok=%v, want live=%v", k, live, ok, v)
		}
	}
}

func TestSizeAndDuration(t *testing.T) {
	sizes := map[string]int64{"512MiB": 512 << 20, "2G": 2 << 30, "4096": 4096, "1KiB": 1024}
	for in, want := range sizes {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "-1", "1.5G", "MiB", "99999999999TiB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
	if FormatSize(512<<20) != "512MiB" || FormatSize(1000) != "1000" {
		t.Error("FormatSize")
	}
	if d, err := ParseDuration("off"); err != nil || d != 0 {
		t.Error("off")
	}
	if _, err := ParseDuration("-1s"); err == nil {
		t.Error("negative accepted")
	}
}

func TestConnectionLimitKeys(t *testing.T) {
	cases := []struct {
		body              string
		perUser, reserved int
		idle              time.Duration
	}{
		{"", 32, 16, 5 * time.Minute},
		{"[api]\nidle_timeout = \"off\"\n", 32, 16, 0},
		{"[api]\nmax_connections = 4\nadmin_reserved_connections = 0\nmax_connections_per_user = 4\nidle_timeout = \"1s\"\n", 4, 0, time.Second},
		// Left out, they scale with max_connections.
		{"[api]\nmax_connections = 7\n", 1, 0, 5 * time.Minute},
		{"[api]\nmax_connections = 64\n", 8, 4, 5 * time.Minute},
		{"[api]\nmax_connections = 64\nadmin_reserved_connections = 0\n", 8, 0, 5 * time.Minute},
	}
	for _, tc := range cases {
		c, err := Load(write(t, tc.body))
		if err != nil {
			t.Fatalf("%q: %v", tc.body, err)
		}
		if c.API.MaxConnectionsPerUser != tc.perUser || c.API.AdminReservedConnections != tc.reserved || c.API.IdleTimeout.Duration != tc.idle {
			t.Errorf("%q: per user %d reserved %d idle %s", tc.body, c.API.MaxConnectionsPerUser, c.API.AdminReservedConnections, c.API.IdleTimeout.Duration)
		}
	}
}

func TestNetworkKeys(t *testing.T) {
	c, err := Load(write(t, "[vm]\nnetwork = \"user\"\nnat = \"off\"\ndns = [\"192.0.2.1\", \"2001:db8::1\"]\nhost_access = [\"udp/53\", \"tcp/53\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	ns, err := c.VM.Nameservers()
	if err != nil || len(ns) != 2 || ns[0].String() != "192.0.2.1" || ns[1].String() != "2001:db8::1" {
		t.Fatalf("Nameservers = %v, %v", ns, err)
	}
	ha, err := c.VM.HostAccessRules()
	if err != nil || len(ha) != 2 || ha[0] != (netspec.Service{Proto: "udp", Port: 53}) || ha[1] != (netspec.Service{Proto: "tcp", Port: 53}) {
		t.Fatalf("HostAccessRules = %v, %v", ha, err)
	}
	if c.VM.Network != "user" || c.VM.NAT != "off" {
		t.Fatalf("network %q nat %q", c.VM.Network, c.VM.NAT)
	}
	d := Default()
	if d.VM.NAT != "on" || d.VM.Network != "bridge" || len(d.VM.DNS) != 0 || len(d.VM.HostAccess) != 0 {
		t.Fatalf("defaults: %+v", d.VM)
	}
	keys := map[string]bool{}
	for _, ch := range c.Diff(d) {
		keys[ch.Key] = !ch.Live
	}
	for _, k := range []string{"vm.network", "vm.nat", "vm.dns", "vm.host_access"} {
		if !keys[k] {
			t.Errorf("Diff does not report %s as needing a restart: %v", k, keys)
		}
	}
}
