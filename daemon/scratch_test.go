package daemon

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// What a crash left of a build goes at start-up; anything else stays.
func TestSweepScratch(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"paddock-flatten-1/x", "paddock-ext4-2/tree/y", "other/z"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "paddock-flatten-file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	swept, err := sweepScratch(dir)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(swept)
	if !slices.Equal(swept, []string{"paddock-ext4-2", "paddock-flatten-1"}) {
		t.Fatalf("swept %v", swept)
	}
	es, _ := os.ReadDir(dir)
	var left []string
	for _, e := range es {
		left = append(left, e.Name())
	}
	if !slices.Equal(left, []string{"other", "paddock-flatten-file"}) {
		t.Fatalf("left %v", left)
	}
	if swept, err := sweepScratch(filepath.Join(dir, "missing")); err != nil || swept != nil {
		t.Fatalf("a missing scratch dir: %v %v", swept, err)
	}
}
