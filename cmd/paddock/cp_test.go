package main

import (
	"archive/tar"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSplitVMPath(t *testing.T) {
	for _, tc := range []struct {
		arg, vm, path string
		inVM          bool
	}{
		{"web:/tmp/x", "web", "/tmp/x", true},
		{"web:", "web", "", true},
		{"./a:b", "", "./a:b", false},
		{"dir/a:b", "", "dir/a:b", false},
		{":x", "", ":x", false},
		{"/abs/path", "", "/abs/path", false},
		{"plain", "", "plain", false},
	} {
		vm, p, in := splitVMPath(tc.arg)
		if vm != tc.vm || p != tc.path || in != tc.inVM {
			t.Errorf("splitVMPath(%q) = %q %q %v, want %q %q %v", tc.arg, vm, p, in, tc.vm, tc.path, tc.inVM)
		}
	}
}

// A hostile guest's stream is refused naming the entry, nothing written
// outside the destination, and a stream cut short is an error even when
// the daemon's call succeeds.
func TestReceiveTreeHostile(t *testing.T) {
	entry := func(name, link string, typ byte, size int64) *tar.Header {
		return &tar.Header{Name: name, Linkname: link, Typeflag: typ, Size: size, Mode: 0o644}
	}
	for _, tc := range []struct {
		name  string
		hs    []*tar.Header
		close bool // end-of-archive marker
		want  string
	}{
		{"escape", []*tar.Header{entry("x/../../evil", "", tar.TypeReg, 0)}, true, "x/../../evil"},
		{"another name", []*tar.Header{entry("y", "", tar.TypeReg, 0)}, true, "y: entry escapes"},
		{"through a link", []*tar.Header{entry("x", "", tar.TypeDir, 0), entry("x/l", "/", tar.TypeSymlink, 0), entry("x/l/evil", "", tar.TypeReg, 0)}, true, "x/l/evil"},
		{"device", []*tar.Header{entry("x", "", tar.TypeBlock, 0)}, true, "x: unsupported entry type"},
		{"absurd size", []*tar.Header{entry("x", "", tar.TypeReg, 1<<62)}, false, "x: 4611686018427387904 bytes do not fit"},
		{"cut short", []*tar.Header{entry("x", "", tar.TypeDir, 0)}, false, "cut short"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			dst := filepath.Join(base, "in")
			if err := os.Mkdir(dst, 0o755); err != nil {
				t.Fatal(err)
			}
			err := receiveTree(context.Background(), dst, "x", func(_ context.Context, w *os.File) error {
				tw := tar.NewWriter(w)
				for _, h := range tc.hs {
					if err := tw.WriteHeader(h); err != nil {
						return err
					}
				}
				if tc.close {
					_ = tw.Close()
				} else {
					_ = tw.Flush()
				}
				return nil // the daemon says all went well
			})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error naming %q", err, tc.want)
			}
			if ents, _ := os.ReadDir(base); len(ents) != 1 {
				t.Fatalf("written beside the destination: %v", ents)
			}
		})
	}
}
