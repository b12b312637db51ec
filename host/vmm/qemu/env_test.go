package qemu

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/paddock-vm/paddock/bootkit"
	"github.com/paddock-vm/paddock/bootkit/qemurun"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// fixture is built once per test binary: paddock-agent and a boot kit from
// the cached Debian kernel.
type fixture struct {
	dir string
	kit *bootkit.Kit
}

var (
	fixOnce sync.Once
	fix     *fixture
	fixErr  string
)

func getFixture(t testing.TB) *fixture {
	t.Helper()
	testenv.RequireRoot(t, "network namespace, tap, cgroup")
	testenv.BootsVM(t)
	for _, tool := range []struct{ name, pkg string }{{"qemu-system-x86_64", "qemu-system-x86"}, {"mkfs.ext4", "e2fsprogs"}, {"busybox", "busybox-static"}} {
		testenv.RequireTool(t, tool.name, tool.pkg)
	}
	vmlinuz, modules := testenv.RequireKernel(t)
	fixOnce.Do(func() {
		d, err := os.MkdirTemp("", "paddock-vmm-qemu-")
		if err != nil {
			fixErr = err.Error()
			return
		}
		f := &fixture{dir: d}
		agentBin := filepath.Join(d, "paddock-agent")
		build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w -X main.Version=test", "-o", agentBin, "github.com/paddock-vm/paddock/cmd/paddock-agent")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			fixErr = "building paddock-agent: " + err.Error() + ": " + string(out)
			return
		}
		if f.kit, err = bootkit.Import(context.Background(), vmlinuz, modules, "debian", filepath.Join(d, "state"), bootkit.WithAgent(agentBin)); err != nil {
			fixErr = err.Error()
			return
		}
		fix = f
	})
	if fix == nil {
		t.Fatalf("fixture: %s", fixErr)
	}
	return fix
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
	if fix != nil {
		os.RemoveAll(fix.dir)
	}
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

// imageTree builds a root tree: static busybox with applet links, users, a
// data file and an image config whose main process sleeps.
func imageTree(t testing.TB, dir string) {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Require(t, isStatic(bb), bb+" is not statically linked (apt-get install busybox-static)")
	for _, d := range []string{"bin", "etc", "tmp", "run", "srv", "data", "root", ".paddock", "dev", "proc", "sys"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	list, err := exec.Command(bb, "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet != "busybox" {
			_ = os.Symlink("busybox", filepath.Join(dir, "bin", applet))
		}
	}
	cfg, _ := json.Marshal(map[string]any{"config": map[string]any{"Entrypoint": []string{"/bin/sleep"}, "Cmd": []string{"3600"}, "Env": []string{"PATH=/bin"}}})
	for name, content := range map[string]string{
		"etc/passwd":           "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":            "root:x:0:\n",
		"data/hello.txt":       "hello from the image\n",
		".paddock/config.json": string(cfg),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func isStatic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// rootDisk builds the test root image once per test (64 MiB ext4).
func rootDisk(t testing.TB, dir string) string {
	t.Helper()
	tree := filepath.Join(dir, "tree")
	imageTree(t, tree)
	img := filepath.Join(dir, "root.ext4")
	if err := qemurun.BuildExt4(context.Background(), tree, img, 64, "paddockroot"); err != nil {
		t.Fatal(err)
	}
	return img
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
	if err := qemurun.BuildExt4(context.Background(), tree, img, 8, ""); err != nil {
		t.Fatal(err)
	}
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
