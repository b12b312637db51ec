package layoutref

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSplit(t *testing.T) {
	dir := t.TempDir()
	lay := filepath.Join(dir, "lay")
	if err := os.Mkdir(lay, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "a:b.tar")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ in, path, sel string }{
		{lay, lay, ""},
		{lay + ":1", lay, "1"},
		{lay + "@sha256:abc", lay, "sha256:abc"},
		{file, file, ""},                                 // a colon in a file name
		{dir + "/missing:tag", dir + "/missing:tag", ""}, // not a directory: no selector
		{"rel/dir:x/y", "rel/dir:x/y", ""},
	} {
		p, s := Split(c.in)
		if p != c.path || s != c.sel {
			t.Errorf("Split(%q) = %q, %q; want %q, %q", c.in, p, s, c.path, c.sel)
		}
	}
}
