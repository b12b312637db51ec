// Package testenv decides whether a test can run here. A test whose
// prerequisite is missing (root, a tool, the guest kernel) is skipped with
// the reason, except under CI=true: CI must run every integration test, so
// there a skip is a failure, unless the host kernel lacks device-mapper or
// vhost-vsock, the two things a CI machine cannot be made to have. Under
// -short (make unit) every test that needs root or boots a VM is skipped.
package testenv

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/internal/sbin"
)

// The reasons a skip is allowed under CI=true. A reason given to
// SkipBecause is one of them when it starts with it.
const (
	NoDeviceMapper = "no device-mapper"
	NoVhostVsock   = "no vhost-vsock"
)

// CI reports whether the tests run under CI (CI=true).
func CI() bool { return os.Getenv("CI") == "true" }

// allowed reports whether reason may skip under CI.
func allowed(reason string) bool {
	return strings.HasPrefix(reason, NoDeviceMapper) || strings.HasPrefix(reason, NoVhostVsock)
}

// SkipBecause skips t with reason; under CI=true it fails instead, unless
// reason starts with NoDeviceMapper or NoVhostVsock.
func SkipBecause(t testing.TB, reason string) {
	t.Helper()
	if CI() && !allowed(reason) {
		t.Fatalf("CI=true, so this test may not skip: %s", reason)
	}
	t.Skip(reason)
}

// Require calls SkipBecause(t, reason) unless ok.
func Require(t testing.TB, ok bool, reason string) {
	t.Helper()
	if !ok {
		SkipBecause(t, reason)
	}
}

// Short skips t under -short, saying why it is not a unit test; a -short
// run never fails for it, CI or not.
func Short(t testing.TB, why string) {
	t.Helper()
	if testing.Short() {
		t.Skip("not under -short: " + why)
	}
}

// RequireRoot skips under -short, and otherwise calls SkipBecause unless
// the test runs as root. why says what root is for.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	Short(t, "needs root ("+why+")")
	if os.Geteuid() != 0 {
		SkipBecause(t, "needs root ("+why+")")
	}
}

// BootsVM skips under -short: the test boots a VM, which takes long under
// TCG.
func BootsVM(t testing.TB) {
	t.Helper()
	Short(t, "boots a VM")
}

// RequireTool returns the path of the program name, or calls SkipBecause
// naming the Debian package that has it (make deps installs them all).
func RequireTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := sbin.Look(name)
	if err != nil {
		SkipBecause(t, fmt.Sprintf("%s not installed (apt-get install %s, or make deps)", name, pkg))
	}
	return p
}

// ErrNoKernelDir: PADDOCK_KERNEL_DIR is not set.
var ErrNoKernelDir = errors.New("PADDOCK_KERNEL_DIR is not set: run make kernel (or .ci/fetch-kernel.sh DIR) and export PADDOCK_KERNEL_DIR=DIR")

// FindKernel returns the Debian guest kernel (vmlinuz) and its module tree
// from PADDOCK_KERNEL_DIR, the directory .ci/fetch-kernel.sh fills.
func FindKernel() (vmlinuz, modules string, err error) {
	dir := os.Getenv("PADDOCK_KERNEL_DIR")
	if dir == "" {
		return "", "", ErrNoKernelDir
	}
	vs, _ := filepath.Glob(filepath.Join(dir, "*", "boot", "vmlinuz-*"))
	ms, _ := filepath.Glob(filepath.Join(dir, "*", "lib", "modules", "*"))
	sort.Strings(vs)
	sort.Strings(ms)
	if len(vs) == 0 || len(ms) == 0 {
		return "", "", fmt.Errorf("no boot/vmlinuz-* and lib/modules/* under PADDOCK_KERNEL_DIR=%s (run make kernel)", dir)
	}
	return vs[0], ms[0], nil
}

// RequireKernel returns FindKernel's answer. It calls SkipBecause when
// PADDOCK_KERNEL_DIR is not set, and fails when it is set but holds no
// kernel: that is a broken setup, not a missing one.
func RequireKernel(t testing.TB) (vmlinuz, modules string) {
	t.Helper()
	v, m, err := FindKernel()
	if errors.Is(err, ErrNoKernelDir) {
		SkipBecause(t, err.Error())
	} else if err != nil {
		t.Fatal(err)
	}
	return v, m
}

// FileSHA256 is the hex sha256 of the file at path (to show that a file
// was, or was not, written).
func FileSHA256(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
