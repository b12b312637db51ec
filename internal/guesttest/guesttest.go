// Package guesttest holds the fixtures of tests that boot real QEMU guests:
// a boot kit built from the cached Debian kernel (testenv.RequireKernel) with
// this tree's paddock-agent, image trees on static busybox, and ext4 disks
// made from them.
//
// A missing prerequisite skips the test (package testenv decides how).
package guesttest

import (
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/bootkit"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// Fixture is built once per test binary: paddock-agent (static, version
// "test") and a boot kit named "debian" from the cached kernel.
type Fixture struct {
	Dir   string
	Agent string // the paddock-agent binary
	Kit   *bootkit.Kit
	// ImportTime is how long the kit import took.
	ImportTime time.Duration
}

var (
	fixOnce sync.Once
	fix     *Fixture
	fixErr  error
)

// fixtureTimeout bounds building the agent and importing the kit.
const fixtureTimeout = 5 * time.Minute

// Kit returns the shared fixture, building it at the first call (the test
// boots a VM: skipped under -short). Call Cleanup from TestMain after m.Run.
func Kit(t testing.TB) *Fixture {
	t.Helper()
	testenv.BootsVM(t)
	for _, tool := range []struct{ name, pkg string }{{"qemu-system-x86_64", "qemu-system-x86"}, {"mkfs.ext4", "e2fsprogs"}, {"busybox", "busybox-static"}} {
		testenv.RequireTool(t, tool.name, tool.pkg)
	}
	vmlinuz, modules := testenv.RequireKernel(t)
	fixOnce.Do(func() { fix, fixErr = build(vmlinuz, modules) })
	if fixErr != nil {
		t.Fatalf("guest fixture: %v", fixErr)
	}
	return fix
}

func build(vmlinuz, modules string) (*Fixture, error) {
	ctx, cancel := context.WithTimeout(context.Background(), fixtureTimeout)
	defer cancel()
	dir, err := os.MkdirTemp("", "paddock-guesttest-")
	if err != nil {
		return nil, err
	}
	// f is returned with every error, so that Cleanup removes dir
	f := &Fixture{Dir: dir, Agent: filepath.Join(dir, "paddock-agent")}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w -X main.Version=test", "-o", f.Agent,
		"github.com/paddock-vm/paddock/cmd/paddock-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return f, fmt.Errorf("building paddock-agent: %w: %s", err, out)
	}
	start := time.Now()
	if f.Kit, err = bootkit.Import(ctx, vmlinuz, modules, "debian", filepath.Join(dir, "state"), bootkit.WithAgent(f.Agent)); err != nil {
		return f, err
	}
	f.ImportTime = time.Since(start)
	return f, nil
}

// Cleanup removes the fixture's files (from TestMain, after m.Run).
func Cleanup() {
	if fix != nil {
		os.RemoveAll(fix.Dir)
	}
}

// ImageTree fills dir with a root tree: static busybox with its applet
// links, users root and app (1000), /data/hello.txt ("hello from the
// image\n"), /www/index.html ("paddock-guest-web\n") and, unless config is
// nil, config as JSON in /.paddock/config.json.
func ImageTree(t testing.TB, dir string, config any) {
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
		if applet != "busybox" {
			_ = os.Symlink("busybox", filepath.Join(dir, "bin", applet))
		}
	}
	files := map[string]string{
		"etc/passwd":     "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/srv:/bin/sh\n",
		"etc/group":      "root:x:0:\napp:x:1000:\n",
		"data/hello.txt": "hello from the image\n",
		"www/index.html": "paddock-guest-web\n",
	}
	if config != nil {
		b, err := json.Marshal(config)
		if err != nil {
			t.Fatal(err)
		}
		files[".paddock/config.json"] = string(b)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_ = os.Chown(filepath.Join(dir, "srv"), 1000, 1000)
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

// BuildExt4 makes a raw ext4 image of sizeMiB from the directory tree dir
// with mkfs.ext4 -d (no root, loop device or mount needed).
func BuildExt4(t testing.TB, dir, out string, sizeMiB int, label string) {
	t.Helper()
	args := []string{"-q", "-F", "-t", "ext4", "-d", dir}
	if label != "" {
		args = append(args, "-L", label)
	}
	args = append(args, out, strconv.Itoa(sizeMiB)+"M")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if b, err := exec.CommandContext(ctx, "mkfs.ext4", args...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, strings.TrimSpace(string(b)))
	}
}

// SleepConfig is an image config whose main process sleeps for an hour.
var SleepConfig = map[string]any{"config": map[string]any{
	"Entrypoint": []string{"/bin/sleep"}, "Cmd": []string{"3600"}, "Env": []string{"PATH=/bin"}}}

// RootDisk builds a 64 MiB ext4 root disk (label "paddockroot") in dir
// from ImageTree with config.
func RootDisk(t testing.TB, dir string, config any) string {
	t.Helper()
	tree := filepath.Join(dir, "tree")
	ImageTree(t, tree, config)
	img := filepath.Join(dir, "root.ext4")
	BuildExt4(t, tree, img, 64, "paddockroot")
	return img
}

// Median of xs (0 for none).
func Median(xs []float64) float64 {
	s := append([]float64{}, xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
