package netfilter

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables/expr"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/netspec"
)

var (
	testCfg = Config{Bridge: "paddock0", Subnet: netip.MustParsePrefix("10.77.0.0/16"), Gateway: netip.MustParseAddr("10.77.0.1"), NAT: true}
	testMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0a}
	testVM  = VM{ID: "0123456789abcdef01234567", Tap: "pdk-0123456789a", MAC: testMAC, IP: netip.MustParseAddr("10.77.0.10")}
)

func render(rs []rule) string {
	var b strings.Builder
	for _, r := range rs {
		b.WriteString(r.String())
		b.WriteByte('\n')
	}
	return b.String()
}

func TestBaseRules(t *testing.T) {
	noNAT := testCfg
	noNAT.NAT = false
	access := testCfg
	access.HostAccess = []netspec.Service{{Proto: "udp", Port: 53}, {Proto: "tcp", Port: 53}}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"nat", testCfg, `inet prerouting: jump published comment "paddock:base"
inet output: jump published comment "paddock:base"
inet postrouting: oifname != "paddock0" meta nfproto ipv4 ip saddr 10.77.0.0/16 masquerade comment "paddock:base"
inet postrouting: oifname "paddock0" meta nfproto ipv4 ip saddr 127.0.0.0/8 masquerade comment "paddock:base"
inet input: iifname "paddock0" ct state established,related accept comment "paddock:base"
inet input: iifname "paddock0" meta nfproto ipv4 ip daddr 127.0.0.0/8 drop comment "paddock:base"
inet input: iifname "paddock0" meta nfproto ipv4 ip daddr 10.77.0.1 icmp type echo-request accept comment "paddock:base"
inet input: iifname "paddock0" drop comment "paddock:base"
inet forward: oifname "paddock0" ct state established,related accept comment "paddock:base"
inet forward: oifname "paddock0" ct status dnat accept comment "paddock:base"
inet forward: iifname "paddock0" oifname "paddock0" jump groups comment "paddock:base"
inet forward: iifname "paddock0" oifname "paddock0" drop comment "paddock:base"
inet forward: oifname "paddock0" drop comment "paddock:base"
inet forward: iifname "paddock0" ct state established,related accept comment "paddock:base"
inet forward: iifname "paddock0" accept comment "paddock:base"
bridge prerouting: iifname "pdk-*" jump antispoof comment "paddock:base"
bridge prerouting: iifname "pdk-*" drop comment "paddock:base"
`},
		{"no nat: no masquerade of the subnet, no egress", noNAT, `inet prerouting: jump published comment "paddock:base"
inet output: jump published comment "paddock:base"
inet postrouting: oifname "paddock0" meta nfproto ipv4 ip saddr 127.0.0.0/8 masquerade comment "paddock:base"
inet input: iifname "paddock0" ct state established,related accept comment "paddock:base"
inet input: iifname "paddock0" meta nfproto ipv4 ip daddr 127.0.0.0/8 drop comment "paddock:base"
inet input: iifname "paddock0" meta nfproto ipv4 ip daddr 10.77.0.1 icmp type echo-request accept comment "paddock:base"
inet input: iifname "paddock0" drop comment "paddock:base"
inet forward: oifname "paddock0" ct state established,related accept comment "paddock:base"
inet forward: oifname "paddock0" ct status dnat accept comment "paddock:base"
inet forward: iifname "paddock0" oifname "paddock0" jump groups comment "paddock:base"
inet forward: iifname "paddock0" oifname "paddock0" drop comment "paddock:base"
inet forward: oifname "paddock0" drop comment "paddock:base"
inet forward: iifname "paddock0" ct state established,related accept comment "paddock:base"
inet forward: iifname "paddock0" drop comment "paddock:base"
bridge prerouting: iifname "pdk-*" jump antispoof comment "paddock:base"
bridge prerouting: iifname "pdk-*" drop comment "paddock:base"
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := render(baseRules(tc.cfg.WithDefaults()))
			if got != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
	// Host access: accepted on the gateway only, before the final drop.
	got := render(baseRules(access.WithDefaults()))
	want := `inet input: iifname "paddock0" meta nfproto ipv4 ip daddr 10.77.0.1 meta l4proto udp th dport 53 accept comment "paddock:base"
inet input: iifname "paddock0" meta nfproto ipv4 ip daddr 10.77.0.1 meta l4proto tcp th dport 53 accept comment "paddock:base"
inet input: iifname "paddock0" drop comment "paddock:base"
`
	if !strings.Contains(got, want) {
		t.Errorf("host access rules: got:\n%s\nwant in it:\n%s", got, want)
	}
}

func TestVMRules(t *testing.T) {
	tag := `comment "paddock:vm:0123456789abcdef01234567"`
	antispoof := `bridge antispoof: iifname "pdk-0123456789a" ether saddr 02:00:00:00:00:0a ether type ip ip saddr 10.77.0.10 accept ` + tag + `
bridge antispoof: iifname "pdk-0123456789a" ether saddr 02:00:00:00:00:0a ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether 02:00:00:00:00:0a arp saddr ip 10.77.0.10 accept ` + tag + `
bridge antispoof: iifname "pdk-0123456789a" drop ` + tag + `
`
	withPorts := testVM
	withPorts.Ports = []netspec.PortMapping{
		{HostPort: 8080, GuestPort: 80, Proto: "tcp"},
		{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 5353, GuestPort: 53, Proto: "udp"},
	}
	grouped := testVM
	grouped.Group = "1000:web"
	g := groupChain("1000:web")
	for _, tc := range []struct {
		name string
		vm   VM
		want string
	}{
		{"anti-spoofing only", testVM, antispoof},
		{"published ports", withPorts, antispoof +
			`inet published: meta nfproto ipv4 fib daddr type local meta l4proto tcp th dport 8080 dnat ip to 10.77.0.10:80 ` + tag + `
inet published: meta nfproto ipv4 ip daddr 127.0.0.1 meta l4proto udp th dport 5353 dnat ip to 10.77.0.10:53 ` + tag + `
`},
		{"shared group", grouped, antispoof +
			`inet groups: meta nfproto ipv4 ip saddr 10.77.0.10 jump ` + g + ` ` + tag + `
inet ` + g + `: meta nfproto ipv4 ip daddr 10.77.0.10 accept ` + tag + `
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.vm.Validate(testCfg); err != nil {
				t.Fatal(err)
			}
			rs := vmRules(testCfg.WithDefaults(), tc.vm)
			if got := render(rs); got != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tc.want)
			}
			// Every rule marshals, and its key is stable.
			for _, r := range rs {
				k1, err := ruleKey(r.fam, r.exprs())
				k2, _ := ruleKey(r.fam, r.exprs())
				if err != nil || k1 != k2 || k1 == "" {
					t.Errorf("rule %s: key %v", r, err)
				}
			}
		})
	}
}

func TestGroupChain(t *testing.T) {
	a, b := groupChain("1000:web"), groupChain("1001:web")
	if a == b || a != groupChain("1000:web") || !strings.HasPrefix(a, groupChainPrefix) || len(a) != len(groupChainPrefix)+16 {
		t.Errorf("group chains %q %q", a, b)
	}
}

// A rule whose contents differ in any term has a different key: the
// comparison with the kernel's copy sees every change.
func TestRuleKeyDiffers(t *testing.T) {
	base := []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
	k1, _ := ruleKey(1, base)
	for _, es := range [][]expr.Any{
		{&expr.Verdict{Kind: expr.VerdictDrop}},
		{&expr.Verdict{Kind: expr.VerdictJump, Chain: "x"}},
		append(ifname(true, "a", true).exprs, base...),
	} {
		k2, err := ruleKey(1, es)
		if err != nil || k1 == k2 {
			t.Errorf("%v: same key (%v)", es, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string // "" = valid; else a piece of the error
	}{
		{"ok", func(*Config) {}, ""},
		{"host access", func(c *Config) { c.HostAccess = []netspec.Service{{Proto: "udp", Port: 53}, {Proto: "tcp", Port: 53}} }, ""},
		{"no bridge", func(c *Config) { c.Bridge = "" }, "bridge"},
		{"bridge with the tap prefix", func(c *Config) { c.Bridge = "pdk-br" }, "tap prefix"},
		{"table with a quote", func(c *Config) { c.Table = `a"b` }, "table"},
		{"ipv6 subnet", func(c *Config) { c.Subnet = netip.MustParsePrefix("fd00::/64") }, "subnet fd00::/64"},
		{"gateway outside", func(c *Config) { c.Gateway = netip.MustParseAddr("10.78.0.1") }, "gateway 10.78.0.1"},
		{"gateway is the network", func(c *Config) { c.Gateway = netip.MustParseAddr("10.77.0.0") }, "gateway 10.77.0.0"},
		{"access proto", func(c *Config) { c.HostAccess = []netspec.Service{{Proto: "sctp", Port: 1}} }, `"sctp/1"`},
		{"access port 0", func(c *Config) { c.HostAccess = []netspec.Service{{Proto: "tcp", Port: 0}} }, `"tcp/0"`},
		{"access twice", func(c *Config) { c.HostAccess = []netspec.Service{{Proto: "tcp", Port: 53}, {Proto: "tcp", Port: 53}} }, "tcp/53 listed twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testCfg
			tc.mod(&c)
			err := c.Validate()
			checkErr(t, err, tc.want, ErrInvalidConfig)
		})
	}
}

func TestVMValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*VM)
		want string
	}{
		{"ok", func(*VM) {}, ""},
		{"ports on all and one address", func(v *VM) {
			v.Ports = []netspec.PortMapping{{HostPort: 80, GuestPort: 80, Proto: "tcp"}, {HostPort: 80, GuestPort: 80, Proto: "udp"},
				{HostIP: netip.MustParseAddr("192.0.2.1"), HostPort: 81, GuestPort: 80, Proto: "tcp"},
				{HostIP: netip.MustParseAddr("192.0.2.2"), HostPort: 81, GuestPort: 80, Proto: "tcp"}}
		}, ""},
		{"bad id", func(v *VM) { v.ID = "a/b" }, `VM id "a/b"`},
		{"tap without prefix", func(v *VM) { v.Tap = "eth0" }, `tap "eth0"`},
		{"tap is the prefix", func(v *VM) { v.Tap = "pdk-" }, `tap "pdk-"`},
		{"multicast mac", func(v *VM) { v.MAC = net.HardwareAddr{1, 0, 0x5e, 0, 0, 1} }, "MAC"},
		{"short mac", func(v *VM) { v.MAC = net.HardwareAddr{2, 0} }, "MAC"},
		{"ip outside", func(v *VM) { v.IP = netip.MustParseAddr("10.78.0.5") }, "address 10.78.0.5"},
		{"ip is gateway", func(v *VM) { v.IP = netip.MustParseAddr("10.77.0.1") }, "address 10.77.0.1"},
		{"ip is broadcast", func(v *VM) { v.IP = netip.MustParseAddr("10.77.255.255") }, "address 10.77.255.255"},
		{"proto", func(v *VM) { v.Ports = []netspec.PortMapping{{HostPort: 1, GuestPort: 1, Proto: "sctp"}} }, `published port 1:1/sctp: protocol "sctp"`},
		{"port 0", func(v *VM) { v.Ports = []netspec.PortMapping{{HostPort: 0, GuestPort: 1, Proto: "tcp"}} }, "published port 0:1/tcp"},
		{"ipv6 host ip", func(v *VM) {
			v.Ports = []netspec.PortMapping{{HostIP: netip.MustParseAddr("::1"), HostPort: 1, GuestPort: 1, Proto: "tcp"}}
		}, "host address ::1"},
		{"duplicate", func(v *VM) {
			v.Ports = []netspec.PortMapping{{HostPort: 8080, GuestPort: 80, Proto: "tcp"}, {HostPort: 8080, GuestPort: 81, Proto: "tcp"}}
		}, "8080:80/tcp and 8080:81/tcp both claim host port 8080/tcp"},
		{"duplicate, one on all addresses", func(v *VM) {
			v.Ports = []netspec.PortMapping{{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 8080, GuestPort: 80, Proto: "tcp"}, {HostPort: 8080, GuestPort: 81, Proto: "tcp"}}
		}, "both claim host port 8080/tcp"},
		{"long group", func(v *VM) { v.Group = strings.Repeat("g", 129) }, "group"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := testVM
			tc.mod(&v)
			checkErr(t, v.Validate(testCfg), tc.want, ErrInvalidVM)
		})
	}
}

func checkErr(t *testing.T, err error, want string, sentinel error) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("unexpected error: %v", err)
	case want == "":
	case err == nil:
		t.Errorf("no error, want one with %q", want)
	case !errors.Is(err, sentinel) || !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), want):
		t.Errorf("error %q: want %v and %q in it", err, sentinel, want)
	}
}

func TestParseTag(t *testing.T) {
	for _, tc := range []struct {
		tag, id string
		ok      bool
	}{
		{VMTag("abc"), "abc", true},
		{BaseTag, "", false},
		{"paddock:vm:", "", false},
		{"paddock:vm:a b", "", false},
		{"other", "", false},
	} {
		if id, ok := ParseTag(tc.tag); id != tc.id || ok != tc.ok {
			t.Errorf("ParseTag(%q) = %q, %v", tc.tag, id, ok)
		}
	}
}
