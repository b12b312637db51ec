package testenv

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/internal/tbtest"
)

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
			f := tbtest.Run(nil, func(tb testing.TB) { SkipBecause(tb, tc.reason) })
			if f.Failed() != tc.wantFail || f.Skipped() == tc.wantFail {
				t.Errorf("skipped=%v failed=%v, want failed=%v", f.Skipped(), f.Failed(), tc.wantFail)
			}
			if !strings.Contains(f.Msg(), tc.reason) {
				t.Errorf("message %q lacks the reason", f.Msg())
			}
		})
	}
}

func TestRequire(t *testing.T) {
	t.Setenv("CI", "true")
	if f := tbtest.Run(nil, func(tb testing.TB) { Require(tb, true, "x") }); f.Skipped() || f.Failed() {
		t.Errorf("a met prerequisite: skipped=%v failed=%v", f.Skipped(), f.Failed())
	}
	if f := tbtest.Run(nil, func(tb testing.TB) { Require(tb, false, "no x") }); !f.Failed() {
		t.Errorf("an unmet prerequisite under CI: skipped=%v failed=%v", f.Skipped(), f.Failed())
	}
}

func TestRequireTool(t *testing.T) {
	t.Setenv("CI", "")
	var path string
	if f := tbtest.Run(nil, func(tb testing.TB) { path = RequireTool(tb, "sh", "dash") }); f.Skipped() || f.Failed() || !filepath.IsAbs(path) {
		t.Errorf("sh: %q skipped=%v failed=%v", path, f.Skipped(), f.Failed())
	}
	f := tbtest.Run(nil, func(tb testing.TB) { RequireTool(tb, "paddock-no-such-tool", "paddock-pkg") })
	if !f.Skipped() || !strings.Contains(f.Msg(), "paddock-no-such-tool") || !strings.Contains(f.Msg(), "apt-get install paddock-pkg") {
		t.Errorf("missing tool: skipped=%v %q", f.Skipped(), f.Msg())
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
			f := tbtest.Run(nil, func(tb testing.TB) { v, m = RequireKernel(tb) })
			if f.Skipped() != tc.skipped || f.Failed() != tc.failed || v != tc.vmlinuz || m != tc.modules {
				t.Errorf("skipped=%v failed=%v %q %q (%s)", f.Skipped(), f.Failed(), v, m, f.Msg())
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
		if f := tbtest.Run(nil, fn); !f.Skipped() || f.Failed() || !strings.Contains(f.Msg(), "-short") {
			t.Errorf("%s under -short: skipped=%v failed=%v %q", name, f.Skipped(), f.Failed(), f.Msg())
		}
	}
}
