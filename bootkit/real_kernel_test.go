package bootkit

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/internal/testenv"
)

func TestRealKernel(t *testing.T) {
	vmlinuz, modules := testenv.RequireKernel(t)
	image, err := os.ReadFile(vmlinuz)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	vm, info, err := ExtractVmlinux(image)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("extracted %d-byte vmlinux (%s at %d, PVH %v, release %s) in %v", len(vm), info.Compression, info.PayloadOffset, info.PVH, info.Release, time.Since(start).Round(time.Millisecond))
	if !info.PVH || info.Release != filepath.Base(modules) {
		t.Fatalf("info %+v, module tree %s", info, modules)
	}
	// The kernel appends the uncompressed size to its payload.
	if off, ok := bzImagePayloadOffset(image); ok {
		n := int(binary.LittleEndian.Uint32(image[0x24c:]))
		if size := binary.LittleEndian.Uint32(image[off+n-4:]); int(size) != len(vm) {
			t.Errorf("vmlinux is %d bytes, the kernel says %d", len(vm), size)
		}
	}
	// Byte-exact against xz(1) when it is installed (it checks the BCJ filter).
	if xzBin, err := exec.LookPath("xz"); err == nil {
		cmd := exec.Command(xzBin, "-dc", "--single-stream")
		cmd.Stdin = bytes.NewReader(image[info.PayloadOffset:])
		want, err := cmd.Output()
		if err != nil && len(want) == 0 {
			t.Fatalf("xz -dc: %v", err)
		}
		if !bytes.Equal(vm, want) {
			t.Fatal("vmlinux differs from xz -dc output")
		}
	} else {
		t.Log("xz(1) not installed: byte comparison not done")
	}

	set, err := ResolveModules(modules, DefaultModules, ResolveOptions{StripSignatures: true, DropDebugTables: true})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	hidden := 0
	for _, m := range set.Modules {
		names = append(names, m.Name)
		f, err := elf.NewFile(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatalf("%s: %v", m.Name, err)
		}
		for _, s := range debugTables {
			if f.Section(s) != nil {
				t.Errorf("%s: %s not hidden", m.Name, s)
			}
			if f.Section(s[1:]) != nil {
				hidden++
			}
		}
	}
	if hidden == 0 {
		t.Error("no debug table found to hide: the kernel's modules have none, or they are named otherwise now")
	}
	t.Logf("modules (%s): %v; builtin %v; unresolved soft deps %v", set.DepSource, names, set.Builtin, set.Unresolved)
	for _, want := range append(append([]string{}, DefaultModules...), "crc32c_generic", "jbd2", "virtio") {
		found := false
		for _, n := range names {
			found = found || n == want
		}
		if !found && !contains(set.Builtin, want) {
			t.Errorf("module %s missing", want)
		}
	}

	// A full import with a stand-in agent (any static x86-64 ELF).
	state := t.TempDir()
	agent := filepath.Join(state, "agent")
	if err := os.WriteFile(agent, tinyELF(false, 1000), 0o755); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	kit, err := Import(context.Background(), vmlinuz, modules, "debian", state, WithAgent(agent))
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(kit.InitramfsPath())
	t.Logf("import took %v; initramfs %d bytes", time.Since(start).Round(time.Millisecond), st.Size())
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
