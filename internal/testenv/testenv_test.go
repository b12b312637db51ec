package testenv

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// fakeTB records Skip/Fatal instead of acting on them.
type fakeTB struct {
	testing.TB
	mu      sync.Mutex
	skipped bool
	failed  bool
	msg     string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Skip(args ...any) {
	f.mu.Lock()
	f.skipped, f.msg = true, fmt.Sprint(args...)
	f.mu.Unlock()
	runtime.Goexit()
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.failed, f.msg = true, fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}
func (f *fakeTB) Fatal(args ...any) { f.Fatalf("%s", fmt.Sprint(args...)) }

// run calls fn on a fresh fakeTB in its own goroutine (Skip and Fatal end
// it, as they end a test).
func run(fn func(testing.TB)) *fakeTB {
	f := &fakeTB{}
	done := make(chan struct{})
	go func() { defer close(done); fn(f) }()
	<-done
	return f
}

func TestSkipBecause(t *testing.T) {
	for _, tc := range []struct {
		ci, reason string
		wantFail   bool
	}{
		{"", "no frobnicator", false},
		{"true", "no frobnicator", true},
		{"true", "needs root (mknod)", true},
		{"true", NoDeviceMapper + ": no snapshot target", false},
		{"true", NoVhostVsock + " on this host", false},
		{"true", "frobnicator: " + NoDeviceMapper, true}, // only a reason that starts with one is allowed
		{"false", "no frobnicator", false},
	} {
		t.Run(tc.ci+"/"+tc.reason, func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			f := run(func(tb testing.TB) { SkipBecause(tb, tc.reason) })
			if f.failed != tc.wantFail || f.skipped == tc.wantFail {
				t.Errorf("skipped=%v failed=%v, want failed=%v", f.skipped, f.failed, tc.wantFail)
			}
			if !strings.Contains(f.msg, tc.reason) {
				t.Errorf("message %q lacks the reason", f.msg)
			}
		})
	}
}

func TestRequire(t *testing.T) {
	t.Setenv("CI", "true")
	if f := run(func(tb testing.TB) { Require(tb, true, "x") }); f.skipped || f.failed {
		t.Errorf("a met prerequisite: skipped=%v failed=%v", f.skipped, f.failed)
	}
	if f := run(func(tb testing.TB) { Require(tb, false, "no x") }); !f.failed {
		t.Errorf("an unmet prerequisite under CI: skipped=%v failed=%v", f.skipped, f.failed)
	}
}

func TestRequireTool(t *testing.T) {
	t.Setenv("CI", "")
	var path string
	if f := run(func(tb testing.TB) { path = RequireTool(tb, "sh", "dash") }); f.skipped || f.failed || !filepath.IsAbs(path) {
		t.Errorf("sh: %q skipped=%v failed=%v", path, f.skipped, f.failed)
	}
	f := run(func(tb testing.TB) { RequireTool(tb, "paddock-no-such-tool", "paddock-pkg") })
	if !f.skipped || !strings.Contains(f.msg, "paddock-no-such-tool") || !strings.Contains(f.msg, "apt-get install paddock-pkg") {
		t.Errorf("missing tool: skipped=%v %q", f.skipped, f.msg)
	}
}

func TestRequireKernel(t *testing.T) {
	empty := t.TempDir()
	full := t.TempDir()
	for _, p := range []string{"k/boot/vmlinuz-6.1.0-1-amd64", "k/lib/modules/6.1.0-1-amd64/"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(full, p)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(full, "k/boot/vmlinuz-6.1.0-1-amd64"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(full, "k/lib/modules/6.1.0-1-amd64"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CI", "")
	for _, tc := range []struct {
		name, dir        string
		skipped, failed  bool
		vmlinuz, modules string
	}{
		{"unset", "", true, false, "", ""},
		{"empty", empty, false, true, "", ""},
		{"kernel", full, false, false, filepath.Join(full, "k/boot/vmlinuz-6.1.0-1-amd64"), filepath.Join(full, "k/lib/modules/6.1.0-1-amd64")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("PADDOCK_KERNEL_DIR", tc.dir)
			var v, m string
			f := run(func(tb testing.TB) { v, m = RequireKernel(tb) })
			if f.skipped != tc.skipped || f.failed != tc.failed || v != tc.vmlinuz || m != tc.modules {
				t.Errorf("skipped=%v failed=%v %q %q (%s)", f.skipped, f.failed, v, m, f.msg)
			}
		})
	}
}

// Under -short, root and VM boots are skipped even where they would run,
// and even under CI.
func TestShort(t *testing.T) {
	was := flag.Lookup("test.short").Value.String()
	if err := flag.Set("test.short", "true"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = flag.Set("test.short", was) })
	t.Setenv("CI", "true")
	for name, fn := range map[string]func(testing.TB){
		"RequireRoot": func(tb testing.TB) { RequireRoot(tb, "mknod") },
		"BootsVM":     BootsVM,
	} {
		if f := run(fn); !f.skipped || f.failed || !strings.Contains(f.msg, "-short") {
			t.Errorf("%s under -short: skipped=%v failed=%v %q", name, f.skipped, f.failed, f.msg)
		}
	}
}
