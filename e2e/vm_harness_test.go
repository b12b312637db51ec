package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/vishvananda/netns"

	"github.com/paddock-vm/paddock/host/dm"
	"github.com/paddock-vm/paddock/host/loop"
	"github.com/paddock-vm/paddock/host/netfilter"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// newNetns makes a named network namespace for one test: every tap, bridge
// and packet of the test lives there, and it is deleted at the end.
func newNetns(t *testing.T) string {
	t.Helper()
	testenv.RequireRoot(t, "network namespace")
	testenv.BootsVM(t) // every test that makes a namespace here boots VMs in it
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "pdk-e2e-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v %s", name, err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v %s", err, out)
	}
	return name
}

// registryIn serves a registry on 127.0.0.1 inside the namespace ns: the
// listening socket is made on a thread that has entered ns.
func registryIn(t *testing.T, ns string) string {
	t.Helper()
	var ln net.Listener
	var lerr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // this thread ends in ns: never unlocked, so it dies with the goroutine
		h, err := netns.GetFromName(ns)
		if err != nil {
			lerr = err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			lerr = err
			return
		}
		ln, lerr = net.Listen("tcp", "127.0.0.1:0")
	}()
	<-done
	if lerr != nil {
		t.Fatalf("listen in %s: %v", ns, lerr)
	}
	h := registry.New(registry.Logger(nilLogger()))
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	// The same registry, also on the test's own loopback, for pushes.
	side := httptest.NewServer(h)
	t.Cleanup(side.Close)
	registrySides.Store(ln.Addr().String(), strings.TrimPrefix(side.URL, "http://"))
	return ln.Addr().String()
}

// inNetns runs paddockd inside ns.
func inNetns(ns string) func(*exec.Cmd) {
	return func(c *exec.Cmd) {
		nsenter, _ := exec.LookPath("nsenter")
		c.Args = append([]string{nsenter, "--net=/run/netns/" + ns, "--"}, c.Args...)
		c.Path = nsenter
	}
}

// bootKit imports the cached Debian kernel as the default boot kit.
func (e *env) bootKit(t *testing.T) { e.bootKitNamed(t, "default") }

// bootKitNamed imports the cached Debian kernel as the boot kit name.
func (e *env) bootKitNamed(t *testing.T, name string) {
	t.Helper()
	vmlinuz, modules := testenv.RequireKernel(t)
	e.cli(t, nil, "kernel", "import", vmlinuz, "--modules", modules, "--name", name).ok(t, "kernel import "+name)
}

// leaks counts what a VM may leave behind, all five kinds: taps in ns,
// loop devices backed by files under the state dir, device-mapper devices
// of paddock's over such loop devices, VMM processes of VMs of this env,
// and VM directories. A count that cannot be taken fails the test: an
// error is never a zero.
type leaks struct {
	taps, loops, dms, vmms, rules, passts, dirs int
	detail                                      []string
}

// host is every host object counted (all but the VM directories).
func (l leaks) host() int { return l.taps + l.loops + l.dms + l.vmms + l.rules + l.passts }

func (e *env) leaks(t *testing.T, ns string) leaks {
	t.Helper()
	var l leaks
	out, err := exec.Command("ip", "-n", ns, "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("counting taps: ip -n %s link show: %v %s", ns, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, " pdk-") {
			l.taps++
			l.detail = append(l.detail, "tap: "+line)
		}
	}
	devs, err := loop.List()
	if err != nil {
		t.Fatalf("counting loop devices: %v", err)
	}
	ours := map[string]bool{} // loopN backed under the state dir
	for _, d := range devs {
		if strings.HasPrefix(d.Backing, e.state) {
			l.loops++
			ours[filepath.Base(d.Path)] = true
			l.detail = append(l.detail, "loop: "+d.Path+" "+d.Backing)
		}
	}
	for _, d := range dmDevices(t) {
		// this env's when it maps one of this env's loop devices
		slaves, err := os.ReadDir(fmt.Sprintf("/sys/dev/block/%d:%d/slaves", d.Major, d.Minor))
		if errors.Is(err, os.ErrNotExist) {
			continue // removed since the list was taken
		}
		if err != nil {
			t.Fatalf("counting device-mapper devices: %s: %v", d.Name, err)
		}
		for _, s := range slaves {
			if ours[s.Name()] {
				l.dms++
				l.detail = append(l.detail, "dm: "+d.Name+" on "+s.Name())
				break
			}
		}
	}
	procs, err := vmm.Find("")
	if err != nil {
		t.Fatalf("counting VMM processes: %v", err)
	}
	for _, p := range procs {
		if strings.Contains(strings.Join(p.Cmdline, " "), e.dir) {
			l.vmms++
			l.detail = append(l.detail, fmt.Sprintf("vmm: pid %d %s", p.PID, p.VMID))
		}
	}
	passts, err := vmm.Scan(func(argv []string) bool {
		return len(argv) > 0 && filepath.Base(argv[0]) == "passt" && strings.Contains(strings.Join(argv, " "), e.dir)
	})
	if err != nil {
		t.Fatalf("counting passt processes: %v", err)
	}
	for _, p := range passts {
		l.passts++
		l.detail = append(l.detail, fmt.Sprintf("passt: pid %d %q", p.PID, p.Cmdline))
	}
	vms, err := vmRules(ns)
	if err != nil {
		t.Fatalf("counting VM packet rules in %s: %v", ns, err)
	}
	for _, id := range vms {
		l.rules++
		l.detail = append(l.detail, "rules of VM "+id)
	}
	ents, err := os.ReadDir(filepath.Join(e.state, "vms"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("counting VM directories: %v", err)
	}
	for _, en := range ents {
		l.dirs++
		l.detail = append(l.detail, "dir: "+en.Name())
	}
	return l
}

// vmRules lists the VMs owning rules in paddock's nftables table of the
// network namespace ns (the daemon's defaults: every env's daemon uses them).
func vmRules(ns string) ([]string, error) {
	h, err := netns.GetFromName(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	m, err := netfilter.New(netfilter.Config{Bridge: "paddock0", Subnet: netip.MustParsePrefix("10.77.0.0/16"), Gateway: netip.MustParseAddr("10.77.0.1")}, h)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return m.ListVMs(ctx)
}

// dmDevices lists paddock's device-mapper devices. A kernel without
// device-mapper has none; any other failure to list fails the test.
func dmDevices(t *testing.T) []dm.Device {
	t.Helper()
	misc, err := os.ReadFile("/proc/misc")
	if err != nil {
		t.Fatalf("counting device-mapper devices: %v", err)
	}
	if !regexp.MustCompile(`(?m)^\s*\d+ device-mapper$`).Match(misc) {
		return nil
	}
	c, err := dm.Open()
	if err != nil {
		t.Fatalf("counting device-mapper devices: %v", err)
	}
	defer c.Close()
	devs, err := c.List(dm.Prefix)
	if err != nil {
		t.Fatalf("counting device-mapper devices: %v", err)
	}
	return devs
}

// killVMMs kills the env's VMM processes from outside, as an OOM kill would.
func (e *env) killVMMs(t *testing.T) int {
	t.Helper()
	procs, err := vmm.Find("")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range procs {
		if strings.Contains(strings.Join(p.Cmdline, " "), e.dir) {
			if err := syscallKill(p.PID); err == nil {
				n++
			}
		}
	}
	return n
}

var registrySides sync.Map // in-namespace registry host:port -> same registry on the test's loopback
