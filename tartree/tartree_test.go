package tartree_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/tartree"
)

func write(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

// copyTo archives src as name and unpacks it for dst as cp does.
func copyTo(t *testing.T, src, name, dst string, o tartree.Options) error {
	t.Helper()
	var b bytes.Buffer
	if err := tartree.Archive(context.Background(), src, name, &b); err != nil {
		t.Fatal(err)
	}
	root, rename, err := tartree.OpenDestination(dst, name)
	if err != nil {
		return err
	}
	defer root.Close()
	o.Rename = rename
	return tartree.Extract(context.Background(), &b, root, o)
}

func TestCopyLikeCp(t *testing.T) {
	src := filepath.Join(t.TempDir(), "proj")
	write(t, filepath.Join(src, "a/b.txt"), "b", 0o644)
	write(t, filepath.Join(src, "run.sh"), "#!/bin/sh\n", 0o755)
	if err := os.Symlink("/etc/passwd", filepath.Join(src, "abs")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		dst   func(base string) string // made under base
		check string                   // where b.txt lands, relative to base
	}{
		{"into an existing directory", func(b string) string { return b }, "proj/a/b.txt"},
		{"to a new name", func(b string) string { return filepath.Join(b, "new") }, "new/a/b.txt"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			if err := copyTo(t, src, "proj", tc.dst(base), tartree.Options{Replace: true}); err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(filepath.Join(base, tc.check)); err != nil || string(b) != "b" {
				t.Fatalf("%s: %q %v", tc.check, b, err)
			}
			top := filepath.Dir(filepath.Dir(filepath.Join(base, tc.check)))
			if fi, err := os.Stat(filepath.Join(top, "run.sh")); err != nil || fi.Mode().Perm() != 0o755 {
				t.Fatalf("run.sh: %v %v", fi, err)
			}
			if l, err := os.Readlink(filepath.Join(top, "abs")); err != nil || l != "/etc/passwd" {
				t.Fatalf("abs: %q %v", l, err)
			}
		})
	}
	// A single file onto an existing file replaces it.
	base := t.TempDir()
	write(t, filepath.Join(base, "x"), "old", 0o644)
	if err := copyTo(t, filepath.Join(src, "a/b.txt"), "b.txt", filepath.Join(base, "x"), tartree.Options{Replace: true}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(base, "x")); string(b) != "b" {
		t.Fatalf("x = %q", b)
	}
	// A destination whose parent is missing is refused.
	if err := copyTo(t, src, "proj", filepath.Join(base, "no/such"), tartree.Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing parent: %v", err)
	}
}

func TestArchiveNeverFollowsLinks(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "outside/secret"), "s", 0o644)
	if err := os.Symlink(filepath.Join(dir, "outside"), filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{filepath.Join(dir, "link")} {
		var b bytes.Buffer
		if err := tartree.Archive(context.Background(), src, "link", &b); err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(&b)
		var names []string
		for {
			h, err := tr.Next()
			if err != nil {
				break
			}
			names = append(names, h.Name+":"+string(h.Typeflag))
		}
		if len(names) != 1 || names[0] != "link:"+string(tar.TypeSymlink) {
			t.Fatalf("archive of a link to a directory: %v, want the link alone", names)
		}
	}
}

type ent struct {
	name, link string
	typ        byte
	size       int64
}

func tarOf(t *testing.T, es ...ent) *bytes.Buffer {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Size: e.size, Mode: 0o644}); err != nil {
			t.Fatal(err)
		}
		if e.size > 0 {
			_, _ = tw.Write(bytes.Repeat([]byte("x"), int(e.size)))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &b
}

func TestExtractRefusesHostile(t *testing.T) {
	tests := []struct {
		name string
		es   []ent
		o    tartree.Options
		want string
	}{
		{"dot-dot", []ent{{name: "proj/../../x", typ: tar.TypeReg}}, tartree.Options{}, "proj/../../x"},
		{"absolute", []ent{{name: "/etc/x", typ: tar.TypeReg}}, tartree.Options{}, "/etc/x"},
		{"outside the copy", []ent{{name: "other/x", typ: tar.TypeReg}}, tartree.Options{}, "other/x"},
		{"through an absolute link", []ent{{name: "proj", typ: tar.TypeDir}, {name: "proj/l", link: "/tmp", typ: tar.TypeSymlink}, {name: "proj/l/x", typ: tar.TypeReg}}, tartree.Options{}, "proj/l/x"},
		{"through a climbing link", []ent{{name: "proj", typ: tar.TypeDir}, {name: "proj/l", link: "../../..", typ: tar.TypeSymlink}, {name: "proj/l/x", typ: tar.TypeReg}}, tartree.Options{}, "proj/l/x"},
		{"hardlink out", []ent{{name: "proj", typ: tar.TypeDir}, {name: "proj/h", link: "../etc/passwd", typ: tar.TypeLink}}, tartree.Options{}, "proj/h"},
		{"device", []ent{{name: "proj", typ: tar.TypeChar}}, tartree.Options{}, "proj"},
		{"absurd size", []ent{{name: "proj", typ: tar.TypeReg, size: 4096}}, tartree.Options{MaxBytes: 1024}, "proj: 4096 bytes do not fit"},
		{"too many", []ent{{name: "proj", typ: tar.TypeDir}, {name: "proj/a", typ: tar.TypeDir}}, tartree.Options{MaxEntries: 1}, "proj/a: more than 1 entries"},
		{"replacing without Replace", []ent{{name: "proj", typ: tar.TypeDir}, {name: "proj/f", typ: tar.TypeReg}, {name: "proj/f", typ: tar.TypeReg}}, tartree.Options{}, "proj/f"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			dir := filepath.Join(base, "in")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			root, rename, err := tartree.OpenDestination(dir, "proj")
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			tc.o.Rename = rename
			err = tartree.Extract(context.Background(), tarOf(t, tc.es...), root, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error naming %q", err, tc.want)
			}
			ents, _ := os.ReadDir(base)
			if len(ents) != 1 {
				t.Fatalf("something was written beside the destination: %v", ents)
			}
		})
	}
}
