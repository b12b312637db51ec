package workspace_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/imaging/flatten"
	"github.com/paddock-vm/paddock/workspace"
)

// tarEntries is a tar stream of name -> entry: "dir/" names a directory,
// "@target" a symbolic link, "=name" a hard link, anything else a file's
// content.
func tarEntries(t *testing.T, names []string, es map[string]string) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, n := range names {
		v := es[n]
		h := &tar.Header{Name: n, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(v))}
		switch {
		case strings.HasSuffix(n, "/"):
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		case strings.HasPrefix(v, "@"):
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, v[1:], 0
		case strings.HasPrefix(v, "="):
			h.Typeflag, h.Linkname, h.Size = tar.TypeLink, v[1:], 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(v)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// treeOf exports vol and describes it like tarEntries' input.
func treeOf(t *testing.T, vol, scratch string) map[string]string {
	t.Helper()
	var b bytes.Buffer
	if err := workspace.Export(context.Background(), vol, &b, workspace.ExportSpec{Name: "m", ScratchDir: scratch}); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	tr := tar.NewReader(&b)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		n := strings.TrimPrefix(h.Name, "./")
		switch h.Typeflag {
		case tar.TypeDir:
			if n = strings.TrimSuffix(n, "/"); n != "" && n != "." {
				out[n+"/"] = ""
			}
		case tar.TypeSymlink:
			out[n] = "@" + h.Linkname
		case tar.TypeLink:
			out[n] = "=" + h.Linkname
		default:
			body, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			out[n] = string(body)
		}
	}
}

// Merge is a push into a workspace no VM holds: the pushed tree lands by
// cp's rules over the old one (files replaced, directories merged), or is
// refused naming the culprit with the old volume left as it was.
func TestMerge(t *testing.T) {
	requireTools(t)
	base := map[string]string{"a/": "", "a/b.txt": "old b", "a/keep": "kept", "link": "@a", "f": "file"}
	baseNames := []string{"a/", "a/b.txt", "a/keep", "link", "f"}
	with := func(extra map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for k, v := range extra {
			if v == "<gone>" {
				delete(m, k)
				continue
			}
			m[k] = v
		}
		return m
	}
	for _, tc := range []struct {
		name    string
		dst     workspace.PushDest
		push    []string
		entries map[string]string
		want    map[string]string
		refused string // in the error; the volume stays as it was
	}{
		{name: "directory into the root", dst: workspace.PushDest{Path: "/", Name: "x"},
			push: []string{"x/", "x/1", "x/sub/", "x/sub/2", "x/h"}, entries: map[string]string{"x/1": "one", "x/sub/2": "two", "x/h": "=x/1"},
			want: with(map[string]string{"x/": "", "x/1": "one", "x/sub/": "", "x/sub/2": "two", "x/h": "=x/1"})},
		{name: "file into a directory replaces its namesake", dst: workspace.PushDest{Path: "a", Name: "b.txt"},
			push: []string{"b.txt"}, entries: map[string]string{"b.txt": "new b"},
			want: with(map[string]string{"a/b.txt": "new b"})},
		{name: "directory merged into an existing one", dst: workspace.PushDest{Path: "", Name: "a"},
			push: []string{"a/", "a/n"}, entries: map[string]string{"a/n": "n"},
			want: with(map[string]string{"a/n": "n"})},
		{name: "a new name", dst: workspace.PushDest{Path: "a/renamed", Name: "src"},
			push: []string{"src/", "src/in"}, entries: map[string]string{"src/in": "in"},
			want: with(map[string]string{"a/renamed/": "", "a/renamed/in": "in"})},
		{name: "a file replaced", dst: workspace.PushDest{Path: "f", Name: "g"},
			push: []string{"g"}, entries: map[string]string{"g": "replaced"},
			want: with(map[string]string{"f": "replaced"})},
		{name: "symbolic link on the way", dst: workspace.PushDest{Path: "link/x", Name: "g"},
			push: []string{"g"}, entries: map[string]string{"g": "g"}, refused: "link is a symbolic link"},
		{name: "symbolic link as the destination", dst: workspace.PushDest{Path: "link", Name: "g"},
			push: []string{"g"}, entries: map[string]string{"g": "g"}, refused: "link is a symbolic link"},
		{name: "missing parent", dst: workspace.PushDest{Path: "nodir/x", Name: "g"},
			push: []string{"g"}, entries: map[string]string{"g": "g"}, refused: "no directory nodir"},
		{name: "file as a parent", dst: workspace.PushDest{Path: "f/x", Name: "g"},
			push: []string{"g"}, entries: map[string]string{"g": "g"}, refused: "f is not a directory"},
		{name: "entry outside the pushed tree", dst: workspace.PushDest{Path: "", Name: "x"},
			push: []string{"x/", "y"}, entries: map[string]string{"y": "y"}, refused: "outside the pushed tree x"},
		{name: "escape", dst: workspace.PushDest{Path: "", Name: "x"},
			push: []string{"x/", "x/../../etc/passwd"}, entries: map[string]string{"x/../../etc/passwd": "p"}, refused: "outside the pushed tree x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			scratch, dir := t.TempDir(), t.TempDir()
			vol := filepath.Join(dir, "vol.ext4")
			spec := workspace.Spec{Name: "m", Size: workspace.MinSize, UID: 1000, GID: 1000, ScratchDir: scratch}
			if _, err := workspace.Build(ctx, bytes.NewReader(tarEntries(t, baseNames, base)), vol, spec); err != nil {
				t.Fatal(err)
			}
			var exported bytes.Buffer
			if err := workspace.Export(ctx, vol, &exported, workspace.ExportSpec{Name: "m", ScratchDir: scratch}); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, "new.ext4")
			_, err := workspace.Merge(ctx, &exported, bytes.NewReader(tarEntries(t, tc.push, tc.entries)), tc.dst, out, spec)
			if tc.refused != "" {
				if err == nil || !strings.Contains(err.Error(), tc.refused) || !errors.Is(err, flatten.ErrBadEntry) {
					t.Fatalf("got %v, want a refusal saying %q", err, tc.refused)
				}
				if _, serr := os.Stat(out); !os.IsNotExist(serr) {
					t.Fatalf("a refused push left %s (%v)", out, serr)
				}
				left, _ := os.ReadDir(scratch)
				if len(left) != 0 {
					t.Fatalf("scratch left: %v", left)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			fsckClean(t, out)
			got := treeOf(t, out, scratch)
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s: got %q, want %q", k, got[k], v)
				}
			}
			for k, v := range got {
				if _, ok := tc.want[k]; !ok {
					t.Errorf("unexpected %s: %q", k, v)
				}
			}
			if in := stat(t, out, "/a/b.txt"); in.uid != "1000" {
				t.Errorf("owner of a/b.txt: %+v", in)
			}
		})
	}
}
