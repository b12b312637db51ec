package qemurun

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/bootkit"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// fixture is built once per test binary: the agent, a kit, the bare
// reference initramfs.
type fixture struct {
	dir        string
	agent      string
	kit        *bootkit.Kit
	bareInitrd string
}

var (
	fixOnce sync.Once
	fix     *fixture
	fixErr  string
)

func getFixture(t testing.TB) *fixture {
	t.Helper()
	testenv.RequireRoot(t, "network namespaces, taps")
	testenv.BootsVM(t)
	for _, tool := range []struct{ name, pkg string }{{"qemu-system-x86_64", "qemu-system-x86"}, {"mkfs.ext4", "e2fsprogs"}, {"busybox", "busybox-static"}} {
		testenv.RequireTool(t, tool.name, tool.pkg)
	}
	vmlinuz, modules := testenv.RequireKernel(t)
	fixOnce.Do(func() {
		dir, err := os.MkdirTemp("", "paddock-qemurun-")
		if err != nil {
			fixErr = err.Error()
			return
		}
		f := &fixture{dir: dir, agent: filepath.Join(dir, "paddock-agent")}
		build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w -X main.Version=test", "-o", f.agent, "github.com/paddock-vm/paddock/cmd/paddock-agent")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			fixErr = "building paddock-agent: " + err.Error() + ": " + string(out)
			return
		}
		start := time.Now()
		f.kit, err = bootkit.Import(context.Background(), vmlinuz, modules, "debian", filepath.Join(dir, "state"), bootkit.WithAgent(f.agent))
		if err != nil {
			fixErr = err.Error()
			return
		}
		importTime = time.Since(start)
		agentBin, _ := os.ReadFile(f.agent)
		var buf bytes.Buffer
		if err := bootkit.WriteInitramfs(&buf, bootkit.InitramfsSpec{Init: agentBin, KitName: "bare"}); err != nil {
			fixErr = err.Error()
			return
		}
		f.bareInitrd = filepath.Join(dir, "bare.cpio.gz")
		if err := os.WriteFile(f.bareInitrd, buf.Bytes(), 0o644); err != nil {
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

var importTime time.Duration

func TestMain(m *testing.M) {
	code := m.Run()
	if fix != nil {
		os.RemoveAll(fix.dir)
	}
	os.Exit(code)
}

// imageTree builds a root tree: static busybox with applet links, users,
// a data file and the image config.
func imageTree(t testing.TB, dir string, config any) {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Require(t, isStatic(bb), bb+" is not statically linked (apt-get install busybox-static)")
	for _, d := range []string{"bin", "sbin", "etc", "tmp", "run", "srv", "data", "www", "root", ".paddock", "dev", "proc", "sys"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	_ = os.Chmod(filepath.Join(dir, "tmp"), 0o1777)
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
		if applet == "busybox" {
			continue
		}
		_ = os.Symlink("busybox", filepath.Join(dir, "bin", applet))
	}
	files := map[string]string{
		"etc/passwd":     "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/srv:/bin/sh\n",
		"etc/group":      "root:x:0:\napp:x:1000:\n",
		"data/hello.txt": "hello from the image\n",
		"www/index.html": "paddock-guest-web\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_ = os.Chown(filepath.Join(dir, "srv"), 1000, 1000)
	if config != nil {
		b, _ := json.Marshal(config)
		if err := os.WriteFile(filepath.Join(dir, ".paddock/config.json"), b, 0o644); err != nil {
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
