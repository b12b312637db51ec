package bootkit

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A kit made before uncompressed initramfs (kit.json without "initramfs")
// still loads and boots its initramfs.cpio.gz; a kit.json naming another
// file is refused.
func TestKitInitramfsFile(t *testing.T) {
	state := t.TempDir()
	write := func(name string, kit map[string]any, files ...string) {
		dir := filepath.Join(KernelsDir(state), name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(kit)
		files = append(files, VmlinuxFile)
		for _, f := range files {
			if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, KitFile), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("old", map[string]any{"schema": KitSchema, "name": "old"}, InitramfsFile)
	write("new", map[string]any{"schema": KitSchema, "name": "new", "initramfs": InitramfsRawFile}, InitramfsRawFile)
	write("odd", map[string]any{"schema": KitSchema, "name": "odd", "initramfs": "../../x"}, InitramfsRawFile)
	write("lost", map[string]any{"schema": KitSchema, "name": "lost", "initramfs": InitramfsRawFile}, InitramfsFile)
	for name, want := range map[string]string{"old": InitramfsFile, "new": InitramfsRawFile} {
		k, err := Get(state, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if filepath.Base(k.InitramfsPath()) != want {
			t.Errorf("%s: initramfs %s, want %s", name, k.InitramfsPath(), want)
		}
	}
	if _, err := Get(state, "odd"); err == nil || !strings.Contains(err.Error(), "unknown initramfs") {
		t.Errorf("odd: %v", err)
	}
	if _, err := Get(state, "lost"); err == nil {
		t.Error("a kit without its initramfs loaded")
	}
}
