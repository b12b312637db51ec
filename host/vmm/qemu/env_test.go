package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/internal/guesttest"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// getFixture returns paddock-agent and a boot kit from the cached Debian
// kernel (built once per test binary).
func getFixture(t testing.TB) *guesttest.Fixture {
	t.Helper()
	testenv.RequireRoot(t, "network namespace, tap, cgroup")
	return guesttest.Kit(t)
}

// helperEnv makes the test binary a stand-in paddockd: it starts one VM
// (in a network namespace of its own, with a tap, when the spec has one),
// prints the handle as JSON and waits to be killed.
const helperEnv = "PADDOCK_QEMU_TEST_DAEMON"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(helperDaemon())
	}
	code := m.Run()
	guesttest.Cleanup()
	os.Exit(code)
}

func helperDaemon() int {
	var spec vmm.Spec
	if err := json.Unmarshal([]byte(os.Getenv("VMM_SPEC")), &spec); err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	// everything below runs on this thread, which is in the new netns:
	// the tap is created there and QEMU is forked from here
	runtime.LockOSThread()
	if spec.Tap != nil {
		ns, err := netns.New()
		if err != nil {
			fmt.Println("ERR netns:", err)
			return 1
		}
		defer ns.Close()
		tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: spec.Tap.Name}, Mode: netlink.TUNTAP_MODE_TAP,
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR, NonPersist: false}
		if err := netlink.LinkAdd(tap); err != nil {
			fmt.Println("ERR tap:", err)
			return 1
		}
		link, err := netlink.LinkByName(spec.Tap.Name)
		if err == nil {
			err = netlink.LinkSetUp(link)
		}
		if err != nil {
			fmt.Println("ERR tap up:", err)
			return 1
		}
	}
	d := New()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := d.Start(ctx, spec)
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	b, _ := json.Marshal(p)
	fmt.Println(string(b))
	buf := make([]byte, 1)
	_, _ = os.Stdin.Read(buf) // SIGKILLed while waiting here
	return 0
}

var idSeq atomic.Int64

func testID() string { return fmt.Sprintf("q%d-%d", os.Getpid(), idSeq.Add(1)) }

// rootDisk builds the test root image once per test (64 MiB ext4).
func rootDisk(t testing.TB, dir string) string {
	t.Helper()
	return guesttest.RootDisk(t, dir, guesttest.SleepConfig)
}

// smallDisk builds an 8 MiB ext4 holding one file.
func smallDisk(t testing.TB, dir, name, content string) string {
	t.Helper()
	tree := filepath.Join(dir, name+".tree")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "file"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, name+".ext4")
	guesttest.BuildExt4(t, tree, img, 8, "")
	return img
}

// procField returns field n (1-based, as in proc(5)) of /proc/PID/stat.
func procField(pid, n int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if n-3 < 0 || n-3 >= len(f) {
		return ""
	}
	return f[n-3]
}
