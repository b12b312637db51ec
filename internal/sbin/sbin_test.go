package sbin

import (
	"os"
	"path/filepath"
	"testing"
)

func TestLook(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "paddock-tool")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "plain-file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", "/nonexistent")
	old := Dirs
	Dirs = []string{dir}
	t.Cleanup(func() { Dirs = old })
	for _, tc := range []struct {
		name, want string
		ok         bool
	}{
		{"paddock-tool", exe, true},
		{"plain-file", "", false}, // not executable
		{"absent", "", false},
	} {
		got, err := Look(tc.name)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("Look(%q) = %q, %v; want %q (ok %v)", tc.name, got, err, tc.want, tc.ok)
		}
	}
}
