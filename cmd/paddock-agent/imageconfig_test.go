package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/guestboot"
)

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

// TestLoadImageConfig reads the config the way the host writes it (a seed
// disk through guestboot) and as a plain file in the root.
func TestLoadImageConfig(t *testing.T) {
	dir := t.TempDir()
	seed := filepath.Join(dir, "seed.img")
	if err := guestboot.WriteSeed(seed, []byte(`{"config":{"Cmd":["sh"],"Env":["A=1"]}}`)); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "config.json")
	bad := filepath.Join(dir, "bad.json")
	_ = os.WriteFile(plain, []byte(`{"Cmd":["sh"],"Env":["A=1"]}`+"\n"), 0o644)
	_ = os.WriteFile(bad, []byte(`{"Cmd":"sh"}`), 0o644)
	for _, path := range []string{seed, plain} {
		c, err := loadImageConfig(path)
		if err != nil || c == nil || strings.Join(c.argv(), " ") != "sh" || c.Env[0] != "A=1" {
			t.Errorf("%s: %+v %v", path, c, err)
		}
	}
	if c, err := loadImageConfig(filepath.Join(dir, "missing")); c != nil || err != nil {
		t.Errorf("missing file: %+v %v", c, err)
	}
	if _, err := loadImageConfig(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("bad config: %v", err)
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
		"crc32c_generic", "jbd2 crc32c_generic", "mbcache", "crc16", "ext4 jbd2 mbcache crc16 crc32c_generic", "button", "evdev")
	names := func(ms []*kmod) string {
		var n []string
		for _, m := range ms {
			n = append(n, m.name)
		}
		return strings.Join(n, " ")
	}
	cfg, _ := guestboot.Parse("")
	now, later := splitModules(mods, &cfg)
	if names(later) != "failover net_failover virtio_net vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport button evdev" {
		t.Errorf("later: %s", names(later))
	}
	if len(now)+len(later) != len(mods) {
		t.Errorf("now %s", names(now))
	}
	cfg, _ = guestboot.Parse("paddock.ip=10.0.0.2/24 paddock.vsock=1024")
	if now, later = splitModules(mods, &cfg); names(later) != "button evdev" || len(now) != len(mods)-2 {
		t.Errorf("with net and vsock: later %s", names(later))
	}
}

func TestImageConfigMounts(t *testing.T) {
	c, err := parseImageConfig([]byte(`{"config":{"Entrypoint":["/bin/sh"],"PaddockMounts":[{"device":"/dev/vdc","path":"/src","ro":true,"uid":7,"gid":8},{"device":"/dev/vdd","path":"/workspace","uid":1000,"gid":1001}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Mounts) != 2 || c.Mounts[0].Device != "/dev/vdc" || !c.Mounts[0].ReadOnly || c.Mounts[1].Path != "/workspace" {
		t.Fatalf("mounts %+v", c.Mounts)
	}
	if u := c.user(); u != "1000:1001" {
		t.Fatalf("user without one in the image: %q, want the read-write workspace's 1000:1001", u)
	}
	c.User = "app"
	if u := c.user(); u != "app" {
		t.Fatalf("the image's user: %q", u)
	}
	for _, bad := range []string{
		`{"PaddockMounts":[{"device":"/dev/vdc","path":"relative"}]}`,
		`{"PaddockMounts":[{"device":"/dev/vdc","path":"/"}]}`,
		`{"PaddockMounts":[{"device":"vdc","path":"/w"}]}`,
		`{"PaddockMounts":[{"device":"/dev/vdc","path":"/w/../etc"}]}`,
	} {
		if _, err := parseImageConfig([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

// Disks are named in the order virtio_blk binds them, which is the VMM's
// order only when the transport has added every device first: a slow
// virtio_mmio must still finish before virtio_blk (and the other virtio
// drivers) load, while unrelated chains go on concurrently.
func TestLoadModulesAfterTransport(t *testing.T) {
	mods := []*kmod{}
	for _, p := range []string{"virtio_ring", "virtio virtio_ring", "virtio_mmio virtio virtio_ring",
		"virtio_blk virtio virtio_ring", "virtio_console virtio virtio_ring", "crc16", "ext4 crc16"} {
		f := strings.Fields(p)
		mods = append(mods, &kmod{name: f[0], deps: f[1:], done: make(chan struct{})})
	}
	afterTransports(mods)
	var mu sync.Mutex
	var order []string
	saved := loadKmod
	t.Cleanup(func() { loadKmod = saved })
	loadKmod = func(m *kmod) error {
		if m.name == "virtio_mmio" {
			time.Sleep(50 * time.Millisecond)
		}
		mu.Lock()
		order = append(order, m.name)
		mu.Unlock()
		if m.name == "crc16" {
			return errors.New("no such module")
		}
		return nil
	}
	err := loadModules(mods, false)
	if err == nil || !strings.Contains(err.Error(), "crc16") || !strings.Contains(err.Error(), "ext4: dependency crc16 failed") {
		t.Errorf("errors: %v", err)
	}
	pos := map[string]int{}
	for i, n := range order {
		pos[n] = i
	}
	for _, drv := range []string{"virtio_blk", "virtio_console"} {
		if pos[drv] < pos["virtio_mmio"] {
			t.Errorf("%s loaded before virtio_mmio: %v", drv, order)
		}
	}
	if _, ok := pos["ext4"]; ok {
		t.Errorf("ext4 loaded although crc16 failed: %v", order)
	}
	for _, m := range mods {
		if m.name == "virtio_mmio" && len(m.after) != 0 || m.name == "ext4" && len(m.after) != 0 {
			t.Errorf("%s ordered after %v", m.name, m.after)
		}
	}
}

// TestSeedAhead: a seed device read ahead is waited for when its node comes
// late, and one that never comes is an error naming it (never taken for an
// image without a config); a plain file is read when asked for.
func TestSeedAhead(t *testing.T) {
	dir := t.TempDir()
	seed, err := guestboot.EncodeSeed([]byte(`{"Entrypoint":["/bin/app"]}`))
	if err != nil {
		t.Fatal(err)
	}
	late := filepath.Join(dir, "vdb")
	get := readAhead(late, time.Minute)
	time.Sleep(20 * time.Millisecond)
	// A device node appears with its content there: the file is made
	// aside and renamed into place (written in place, the reader could
	// find it still empty).
	if err := os.WriteFile(late+".tmp", seed, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(late+".tmp", late); err != nil {
		t.Fatal(err)
	}
	b, err := get()
	if c, err := imageConfigOf(late, b, err); err != nil || c == nil || c.argv()[0] != "/bin/app" {
		t.Fatalf("a late seed: %+v, %v", c, err)
	}

	never := filepath.Join(dir, "vdc")
	b, err = readAhead(never, 30*time.Millisecond)()
	if b != nil || err == nil || !strings.Contains(err.Error(), never) {
		t.Fatalf("a seed that never comes: %q, %v; want an error naming it", b, err)
	}

	plain := filepath.Join(dir, "config.json")
	get = seedAhead(plain, time.Minute) // not under /dev: read when asked
	if err := os.WriteFile(plain, []byte(`{"Cmd":["sh"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err = get()
	if c, err := imageConfigOf(plain, b, err); err != nil || c == nil || c.argv()[0] != "sh" {
		t.Fatalf("a plain file: %+v, %v", c, err)
	}
	if b, err := seedAhead(filepath.Join(dir, "missing.json"), time.Minute)(); b != nil || err != nil {
		t.Fatalf("a missing plain file: %q, %v; want no config, no error", b, err)
	}
}
