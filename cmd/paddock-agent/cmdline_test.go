package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseCmdline(t *testing.T) {
	line := `console=ttyS0 quiet paddock.root=LABEL=root paddock.ro paddock.rootwait=2.5 paddock.hostname=web1 ` +
		`paddock.ip=10.0.0.2/24,fd00::2/64 paddock.gw=10.0.0.1 paddock.dns=1.1.1.1,9.9.9.9 paddock.mtu=1400 ` +
		`paddock.ctl=ctl0 paddock.vsock=1024 paddock.restart=on-failure paddock.onexit=poweroff ` +
		`paddock.stoptimeout=1 paddock.etc=0 "paddock.rootflags=discard,commit=30" paddock.debug`
	c, err := parseCmdline(line)
	if err != nil {
		t.Fatal(err)
	}
	if c.Root != "LABEL=root" || !c.RootRO || c.RootWait != 2500*time.Millisecond || c.Hostname != "web1" ||
		len(c.IPs) != 2 || c.IPs[1].String() != "fd00::2/64" || c.Gateways[0].String() != "10.0.0.1" ||
		len(c.DNS) != 2 || c.MTU != 1400 || c.CtlPort != "ctl0" || c.VsockPort != 1024 ||
		c.Restart != "on-failure" || c.OnExit != "poweroff" || c.StopTimeout != time.Second || c.WriteEtc ||
		c.RootFlags != "discard,commit=30" || !c.Debug || c.RootFSType != "ext4" || c.IfName != "eth0" {
		t.Fatalf("parsed %+v", c)
	}
	d, err := parseCmdline("console=ttyS0")
	if err != nil || d.CtlPort != "paddock.agent" || d.ConfigPath != "/.paddock/config.json" || d.OnExit != "keep" || d.Root != "" {
		t.Fatalf("defaults %+v %v", d, err)
	}
	_, err = parseCmdline("paddock.ip=300.1.1.1/24 paddock.mtu=1 paddock.restart=sometimes paddock.bogus=1 paddock.ro=maybe")
	for _, want := range []string{"paddock.ip", "paddock.mtu", "paddock.restart", "unknown key paddock.bogus", "paddock.ro"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %s", err, want)
		}
	}
}

func TestSplitCmdline(t *testing.T) {
	got := splitCmdline(` a  "b c"=d e="f g" ` + "\n")
	if strings.Join(got, "|") != "a|b c=d|e=f g" {
		t.Fatalf("%q", got)
	}
}

func TestParseImageConfig(t *testing.T) {
	oci := `{"architecture":"amd64","config":{"Entrypoint":["/bin/app"],"Cmd":["-v"],"Env":["A=1"],"WorkingDir":"/srv","User":"app:app"},"Restart":"always"}`
	c, err := parseImageConfig([]byte(oci))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.argv(), " ") != "/bin/app -v" || c.Env[0] != "A=1" || c.WorkingDir != "/srv" || c.User != "app:app" || c.Restart != "always" {
		t.Fatalf("%+v", c)
	}
	flat, err := parseImageConfig([]byte(`{"Cmd":["sh"],"Restart":"on-failure"}`))
	if err != nil || strings.Join(flat.argv(), " ") != "sh" || flat.Restart != "on-failure" {
		t.Fatalf("%+v %v", flat, err)
	}
	for _, bad := range []string{`{"Restart":"sometimes"}`, `not json`, `{"Cmd":"sh"}`} {
		if _, err := parseImageConfig([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestSplitModules(t *testing.T) {
	list := func(pairs ...string) []*kmod {
		var out []*kmod
		for _, p := range pairs {
			f := strings.Fields(p)
			out = append(out, &kmod{name: f[0], deps: f[1:]})
		}
		return out
	}
	mods := list("virtio_ring", "virtio virtio_ring", "virtio_mmio virtio virtio_ring", "virtio_blk virtio virtio_ring",
		"failover", "net_failover failover", "virtio_net virtio_ring virtio net_failover", "virtio_console virtio virtio_ring",
		"vsock", "vmw_vsock_virtio_transport_common vsock", "vmw_vsock_virtio_transport virtio vmw_vsock_virtio_transport_common virtio_ring vsock",
		"crc32c_generic", "jbd2 crc32c_generic", "mbcache", "crc16", "ext4 jbd2 mbcache crc16 crc32c_generic")
	names := func(ms []*kmod) string {
		var n []string
		for _, m := range ms {
			n = append(n, m.name)
		}
		return strings.Join(n, " ")
	}
	cfg, _ := parseCmdline("")
	now, later := splitModules(mods, cfg)
	if names(later) != "failover net_failover virtio_net vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport" {
		t.Errorf("later: %s", names(later))
	}
	if len(now)+len(later) != len(mods) {
		t.Errorf("now %s", names(now))
	}
	cfg, _ = parseCmdline("paddock.ip=10.0.0.2/24 paddock.vsock=1024")
	if now, later = splitModules(mods, cfg); len(later) != 0 || len(now) != len(mods) {
		t.Errorf("with net and vsock: later %s", names(later))
	}
}
