package main

import "testing"

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
