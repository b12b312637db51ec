package guestboot

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	line := `console=ttyS0 quiet paddock.root=LABEL=root paddock.ro paddock.rootwait=2.5 paddock.hostname=web1 ` +
		`paddock.ip=10.0.0.2/24,fd00::2/64 paddock.gw=10.0.0.1 paddock.dns=1.1.1.1,9.9.9.9 paddock.mtu=1400 ` +
		`paddock.ctl=ctl0 paddock.vsock=1024 paddock.restart=on-failure paddock.onexit=poweroff paddock.growfs=yes ` +
		`paddock.stoptimeout=1 paddock.etc=0 "paddock.rootflags=discard,commit=30" paddock.debug paddock.config=/dev/vdb ` +
		`paddock.rootfstype=ext4 paddock.ifname=eth1 "init arg" -- x` + "\n"
	got, err := Parse(line)
	if err != nil {
		t.Fatal(err)
	}
	want := BootArgs{
		Root: "LABEL=root", RootFSType: "ext4", RootFlags: "discard,commit=30", RootRO: true, RootWait: 2500 * time.Millisecond,
		GrowFS: true, Hostname: "web1",
		IPs:      []netip.Prefix{netip.MustParsePrefix("10.0.0.2/24"), netip.MustParsePrefix("fd00::2/64")},
		Gateways: []netip.Addr{netip.MustParseAddr("10.0.0.1")},
		DNS:      []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("9.9.9.9")},
		IfName:   "eth1", MTU: 1400, NoEtc: true, Serial: "ctl0", Vsock: 1024, Config: "/dev/vdb",
		Restart: RestartOnFailure, OnExit: OnExitPowerOff, StopTimeout: time.Second, Debug: true,
		Kernel: []string{"console=ttyS0", "quiet", "init arg", "--", "x"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Parse:\n got %+v\nwant %+v", got, want)
	}
	again, err := Parse(got.String())
	if err != nil || !reflect.DeepEqual(again, got) {
		t.Fatalf("round trip through %q: %+v %v", got.String(), again, err)
	}
}

func TestParseDefaults(t *testing.T) {
	b, err := Parse("console=ttyS0")
	if err != nil {
		t.Fatal(err)
	}
	d := b.WithDefaults()
	if d.Serial != "" || d.Vsock != 0 || d.Config != DefaultConfigPath || d.OnExit != OnExitKeep || d.RootFSType != "ext4" ||
		d.IfName != "eth0" || d.RootWait != 30*time.Second || d.StopTimeout != 5*time.Second || d.NoEtc || d.Root != "" {
		t.Fatalf("defaults %+v", d)
	}
	if b.String() != "console=ttyS0" {
		t.Fatalf("String of an almost empty line: %q", b.String())
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		line string
		want string // in the error
		keep BootArgs
	}{
		{"paddock.ip=300.1.1.1/24", `paddock.ip: "300.1.1.1/24" is not an address/prefix length`, BootArgs{}},
		{"paddock.gw=fe80::1%eth0", `paddock.gw: "fe80::1%eth0" is not an IP address`, BootArgs{}},
		{"paddock.mtu=1", `paddock.mtu: "1" is not an MTU`, BootArgs{}},
		{"paddock.dns=1.1.1.1,fe80::1%eth0", `paddock.dns: "fe80::1%eth0" is not an IP address`, BootArgs{}},
		{"paddock.dns=192.0.2.1,192.0.2.2,192.0.2.3,192.0.2.4 paddock.hostname=a", "paddock.dns: 4 nameservers: at most 3", BootArgs{Hostname: "a"}},
		{"paddock.dns=resolver", `paddock.dns: "resolver" is not an IP address`, BootArgs{}},
		{"paddock.restart=sometimes", `paddock.restart: want no or on-failure or always, got "sometimes"`, BootArgs{}},
		{"paddock.onexit=reboot", `paddock.onexit: want keep or poweroff`, BootArgs{}},
		{"paddock.bogus=1 paddock.hostname=a", "unknown key paddock.bogus", BootArgs{Hostname: "a"}},
		{"paddock.ro=maybe", `paddock.ro: "maybe" is not a boolean`, BootArgs{}},
		{"paddock.rootwait=0", `paddock.rootwait: "0" is not a number of seconds`, BootArgs{}},
		{"paddock.rootwait=3600.5", "paddock.rootwait", BootArgs{}},
		{"paddock.stoptimeout=1e3", "paddock.stoptimeout", BootArgs{}},
		{"paddock.vsock=0", `paddock.vsock: "0" is not a vsock port`, BootArgs{}},
		{"paddock.vsock=4294967295", "paddock.vsock", BootArgs{}},
		{"paddock.hostname=-bad", `paddock.hostname: "-bad" is not a host name`, BootArgs{}},
		{"paddock.hostname=" + strings.Repeat("a", 65), "longer than 64 bytes", BootArgs{}},
		{"paddock.root=sda1", `paddock.root: "sda1" is not /dev/NAME`, BootArgs{}},
		{"paddock.config=etc/x.json", `paddock.config: "etc/x.json" is not an absolute path`, BootArgs{}},
		{"paddock.ctl=a,b", `paddock.ctl: port name "a,b"`, BootArgs{}},
		{"paddock.ifname=a/b", "paddock.ifname", BootArgs{}},
		{"paddock.root", "paddock.root: needs a value", BootArgs{}},
		{"paddock.hostname=\"a\tb\"", "control character", BootArgs{}},
		// a key given twice keeps its last value, and says so
		{"paddock.ctl=paddock.agent paddock.ctl=", "paddock.ctl: given more than once", BootArgs{}},
		{"paddock.ctl= paddock.ctl=paddock.agent", "paddock.ctl: given more than once", BootArgs{Serial: "paddock.agent"}},
		// a bad value leaves an earlier good one in place
		{"paddock.mtu=1400 paddock.mtu=x", "given more than once", BootArgs{MTU: 1400}},
	} {
		t.Run(tc.line, func(t *testing.T) {
			b, err := Parse(tc.line)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if !reflect.DeepEqual(b, tc.keep) {
				t.Fatalf("kept %+v, want %+v", b, tc.keep)
			}
		})
	}
}

func TestString(t *testing.T) {
	for _, tc := range []struct {
		b    BootArgs
		want string
	}{
		{BootArgs{}, ""},
		{BootArgs{Root: "/dev/vda", Hostname: "web1", Config: "/dev/vdb", GrowFS: true,
			IPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/24")}, Gateways: []netip.Addr{netip.MustParseAddr("10.0.0.1")}},
			"paddock.root=/dev/vda paddock.growfs paddock.hostname=web1 paddock.ip=10.0.0.2/24 paddock.gw=10.0.0.1 paddock.config=/dev/vdb"},
		{BootArgs{Kernel: []string{"console=ttyS0", "a b", ""}, RootFlags: "x y", NoEtc: true, RootWait: 1500 * time.Millisecond, Vsock: 1024},
			`console=ttyS0 "a b" "" "paddock.rootflags=x y" paddock.rootwait=1.5 paddock.etc=0 paddock.vsock=1024`},
		{BootArgs{StopTimeout: time.Nanosecond, MTU: 9000, Serial: DefaultSerialPort},
			"paddock.mtu=9000 paddock.ctl=paddock.agent paddock.stoptimeout=0.000000001"},
	} {
		if got := tc.b.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
		if err := tc.b.Validate(); err != nil {
			t.Errorf("Validate(%q): %v", tc.want, err)
		}
		back, err := Parse(tc.want)
		if err != nil || !reflect.DeepEqual(back, tc.b) {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", tc.want, back, err, tc.b)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		b    BootArgs
		want string
	}{
		{BootArgs{Hostname: `a"b`}, "paddock.hostname"},
		{BootArgs{Hostname: "under_score"}, "not a host name"},
		{BootArgs{RootFlags: "a\nb"}, "control character"},
		{BootArgs{MTU: 10}, "paddock.mtu"},
		{BootArgs{RootWait: -time.Second}, "paddock.rootwait"},
		{BootArgs{Gateways: []netip.Addr{{}}}, "paddock.gw"},
		{BootArgs{DNS: []netip.Addr{{}}}, "paddock.dns"},
		{BootArgs{DNS: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3"), netip.MustParseAddr("192.0.2.4")}}, "paddock.dns: 4 nameservers"},
		{BootArgs{Restart: "sometimes"}, "paddock.restart"},
		{BootArgs{Kernel: []string{"paddock.ctl=x"}}, `kernel word "paddock.ctl=x"`},
		{BootArgs{Kernel: []string{`a"b`}}, "double quote"},
	} {
		if err := tc.b.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.b, err, tc.want)
		}
	}
}

// TestSetControl: the driver's control channel replaces the caller's, so
// exactly one paddock.ctl reaches the guest.
func TestSetControl(t *testing.T) {
	b, err := Parse("console=ttyS0 paddock.root=/dev/vda paddock.ctl=paddock.agent paddock.vsock=7")
	if err != nil {
		t.Fatal(err)
	}
	b.SetControl("", 1024)
	line := b.String()
	if strings.Count(line, "paddock.ctl") != 0 || strings.Count(line, "paddock.vsock=1024") != 1 || strings.Contains(line, "vsock=7") {
		t.Fatalf("%q", line)
	}
	b.SetControl("port1", 0)
	if line = b.String(); strings.Count(line, "paddock.ctl=port1") != 1 || strings.Contains(line, "vsock") {
		t.Fatalf("%q", line)
	}
}

// FuzzParse: whatever Parse accepts (even in part) is valid, and its String
// parses back to the same BootArgs.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"",
		"console=ttyS0 panic=-1 quiet paddock.root=/dev/vda paddock.hostname=web1 paddock.config=/dev/vdb paddock.ctl=paddock.agent",
		"paddock.ip=10.0.0.2/24,fd00::2/64 paddock.gw=10.0.0.1 paddock.dns=1.1.1.1 paddock.growfs paddock.mtu=1400",
		`"paddock.rootflags=a b" paddock.rootwait=0.5 paddock.stoptimeout=3600 paddock.etc=off paddock.vsock=1024`,
		`a"b c"d "" paddock.restart=always paddock.onexit=poweroff paddock.debug=0 paddock.poweroff -- init args`,
		"paddock.ctl=x paddock.ctl= paddock.bogus paddock.ro=maybe paddock.root=UUID=abc\tpaddock.ifname=eth0",
		"paddock.ip=::ffff:1.2.3.4/128 paddock.gw=0:0::1 paddock.hostname=A.b-c \x00 \xff\xfe",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, _ := Parse(s)
		if err := b.Validate(); err != nil {
			t.Fatalf("Parse(%q) gave an invalid %+v: %v", s, b, err)
		}
		line := b.String()
		back, err := Parse(line)
		if err != nil {
			t.Fatalf("Parse(String()) of %q: %v (line %q)", s, err, line)
		}
		if !reflect.DeepEqual(back, b) {
			t.Fatalf("round trip of %q through %q:\n got %+v\nwant %+v", s, line, back, b)
		}
	})
}

// The guest's resolv.conf carries paddock.dns, in order, through the
// command line and back.
func TestResolvConf(t *testing.T) {
	if got := (BootArgs{}).ResolvConf(); got != nil {
		t.Fatalf("no DNS: %q, want nothing written", got)
	}
	b := BootArgs{DNS: []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("2001:db8::53")}}
	back, err := Parse(b.String())
	if err != nil {
		t.Fatal(err)
	}
	want := "# written by paddock-agent from paddock.dns\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n"
	if got := string(back.ResolvConf()); got != want {
		t.Fatalf("ResolvConf = %q, want %q", got, want)
	}
}
