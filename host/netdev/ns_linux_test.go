package netdev

// Test harness: private network namespaces and an unprivileged tap-attach
// helper. Every device a test creates lives in a namespace the test created;
// the host's own interfaces are only ever read (to prove nothing leaked).

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/internal/netnstest"
	"github.com/paddock-vm/paddock/internal/testenv"
)

const (
	helperEnv       = "PADDOCK_NETDEV_TEST_HELPER" // "attach"
	helperTunEnv    = "PADDOCK_NETDEV_TEST_TUN"
	helperTapEnv    = "PADDOCK_NETDEV_TEST_TAP"
	helperNetNSEnv  = "PADDOCK_NETDEV_TEST_NETNS"
	helperOKMessage = "attached"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "attach" {
		os.Exit(attachHelper())
	}
	os.Exit(m.Run())
}

// attachHelper runs in a child process as an unprivileged uid, inside the
// test's namespace: it attaches to an existing tap the way a VMM does.
func attachHelper() int {
	ns, err := os.Readlink("/proc/self/ns/net")
	if err != nil || ns != os.Getenv(helperNetNSEnv) {
		fmt.Printf("wrong netns %q (%v), want %q\n", ns, err, os.Getenv(helperNetNSEnv))
		return 2
	}
	fd, err := unix.Open(os.Getenv(helperTunEnv), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Printf("open: %v\n", err)
		return 1
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(os.Getenv(helperTapEnv))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		fmt.Printf("TUNSETIFF uid=%d: %s\n", os.Getuid(), unix.ErrnoName(err.(syscall.Errno)))
		return 1
	}
	fmt.Printf("%s uid=%d\n", helperOKMessage, os.Getuid())
	return 0
}

func requireRoot(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t, "creates a private network namespace (CAP_SYS_ADMIN) and links in it (CAP_NET_ADMIN)")
}

// testNS is a private network namespace created by a test.
type testNS struct {
	ns    netns.NsHandle
	h     *netlink.Handle
	ident string // "net:[inode]"
}

// hostTaps lists the names of pdk- links in the test process's own
// namespace (read only).
func hostTaps(t testing.TB) map[string]bool {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		t.Fatalf("list host links: %v", err)
	}
	out := map[string]bool{}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, TapPrefix) || strings.HasPrefix(l.Attrs().Alias, AliasPrefix) {
			out[l.Attrs().Name] = true
		}
	}
	return out
}

// newNS creates a network namespace for the test and registers its teardown:
// at the end no link the test added may remain in it (a leak fails the test),
// no pdk- link may have appeared in the host namespace, and the namespace
// must be gone (no task or descriptor of this process refers to it).
func newNS(t testing.TB) *testNS {
	t.Helper()
	requireRoot(t)
	hostBefore := hostTaps(t)
	type res struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan res, 1)
	go func() {
		// Create the namespace on a locked thread and move the thread back.
		// If that fails the thread stays locked and is discarded when this
		// goroutine returns (or, on the main thread, parked forever — which
		// the reference check at the end would report).
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- res{-1, err}
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			ch <- res{-1, err}
			return
		}
		if err := netns.Set(orig); err != nil {
			ns.Close()
			ch <- res{-1, fmt.Errorf("return to the original namespace: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- res{ns, nil}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("create network namespace: %v", r.err)
	}
	ident, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", int(r.ns)))
	if err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(r.ns)
	if err != nil {
		r.ns.Close()
		t.Fatalf("netlink handle in test namespace: %v", err)
	}
	tns := &testNS{ns: r.ns, h: h, ident: ident}
	initial := map[string]bool{}
	links, err := h.LinkList()
	if err != nil {
		t.Fatalf("list links in test namespace: %v", err)
	}
	for _, l := range links {
		initial[l.Attrs().Name] = true // lo, and tunl0 & co. when their modules are loaded
	}
	t.Cleanup(func() {
		links, err := h.LinkList()
		if err != nil {
			t.Errorf("list links in test namespace: %v", err)
		}
		for _, l := range links {
			if !initial[l.Attrs().Name] {
				t.Errorf("leaked link %s (%s, alias %q) in the test namespace", l.Attrs().Name, l.Type(), l.Attrs().Alias)
			}
		}
		h.Close()
		r.ns.Close()
		for name := range hostTaps(t) {
			if !hostBefore[name] {
				t.Errorf("link %s appeared in the host namespace", name)
			}
		}
		deadline := time.Now().Add(3 * time.Second)
		for {
			refs := netnstest.Refs(ident)
			if len(refs) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("namespace %s still referenced by %v", ident, refs)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	return tns
}

// run calls fn on a thread inside the namespace. The thread is discarded
// afterwards unless it could be moved back.
func (tns *testNS) run(fn func() error) error { return netnstest.Run(tns.ns, fn) }

// helperDir holds a world-readable copy of the test binary and a 0666
// /dev/net/tun node, so an unprivileged child can run and open it whatever
// the mode of the host's /dev/net/tun (0600 on some minimal images).
type helperDir struct {
	bin, tun string
}

func newHelperDir(t testing.TB) *helperDir {
	t.Helper()
	dir, err := os.MkdirTemp("", "paddock-netdev-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "netdev.test")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	tun := filepath.Join(dir, "tun")
	if err := unix.Mknod(tun, unix.S_IFCHR|0o666, int(unix.Mkdev(10, 200))); err != nil {
		t.Fatalf("mknod tun node: %v", err)
	}
	if err := os.Chmod(tun, 0o666); err != nil {
		t.Fatal(err)
	}
	return &helperDir{bin: bin, tun: tun}
}

// attachAs runs the attach helper as uid:gid inside tns and returns its output.
func (hd *helperDir) attachAs(tns *testNS, tap string, uid, gid uint32) (string, error) {
	var out []byte
	err := tns.run(func() error {
		cmd := exec.Command(hd.bin)
		cmd.Dir = filepath.Dir(hd.bin)
		cmd.Env = []string{helperEnv + "=attach", helperTunEnv + "=" + hd.tun, helperTapEnv + "=" + tap, helperNetNSEnv + "=" + tns.ident}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
		var err error
		out, err = cmd.CombinedOutput()
		return err
	})
	return strings.TrimSpace(string(out)), err
}
