package workspace_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/tartree"
	"github.com/paddock-vm/paddock/workspace"
)

// snapshot is a tree as diff -r (plus modes, link targets and file
// mtimes) sees it: relative path -> description.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		desc := fi.Mode().String()
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			tg, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + tg
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += " " + fi.ModTime().UTC().Format(time.RFC3339) + " " + string(b)
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func compareTrees(t *testing.T, want, got map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %q, want %q", k, got[k], v)
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: unexpected %q", k, v)
		}
	}
}

func TestExportRoundTrip(t *testing.T) {
	requireTools(t)
	src := t.TempDir()
	when := time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)
	write := func(rel, data string, mode os.FileMode) { writeFile(t, src, rel, data, mode, when) }
	write("run.sh", "#!/bin/sh\necho hello\n", 0o755)
	write("sub/deep/data.txt", "some data\n", 0o640)
	write("ünïcödé-文件.txt", "unicode\n", 0o644)
	write("ro/inside", "read-only dir\n", 0o444)
	write("empty", "", 0o600)
	if err := os.Link(filepath.Join(src, "sub/deep/data.txt"), filepath.Join(src, "hard.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/deep/data.txt", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/nowhere/at/all", filepath.Join(src, "dangling")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(src, "emptydir"), 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(src, "ro"), 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(filepath.Join(src, "ro"), 0o755) })

	ctx := context.Background()
	scratch := t.TempDir()
	vol := filepath.Join(t.TempDir(), "vol.img")
	var tb bytes.Buffer
	if err := tartree.TarDir(ctx, src, &tb); err != nil {
		t.Fatal(err)
	}
	if _, err := workspace.Build(ctx, &tb, vol, workspace.Spec{Name: "rt", Size: workspace.MinSize, UID: 1000, GID: 1000, ScratchDir: scratch}); err != nil {
		t.Fatal(err)
	}
	var exported bytes.Buffer
	if err := workspace.Export(ctx, vol, &exported, workspace.ExportSpec{Name: "rt", ScratchDir: scratch}); err != nil {
		t.Fatal(err)
	}
	// The scratch dump is gone.
	if ents, _ := os.ReadDir(scratch); len(ents) != 0 {
		t.Errorf("scratch left behind: %v", ents)
	}
	// No owners in the stream; no lost+found.
	tr := tar.NewReader(bytes.NewReader(exported.Bytes()))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || strings.HasPrefix(h.Name, "lost+found") {
			t.Errorf("entry %s: uid %d gid %d", h.Name, h.Uid, h.Gid)
		}
	}
	out := filepath.Join(t.TempDir(), "out")
	if err := tartree.Untar(ctx, bytes.NewReader(exported.Bytes()), out); err != nil {
		t.Fatal(err)
	}
	// The hardlink is one again.
	a, errA := os.Stat(filepath.Join(out, "hard.txt"))
	b, errB := os.Stat(filepath.Join(out, "sub/deep/data.txt"))
	if errA != nil || errB != nil || !os.SameFile(a, b) {
		t.Errorf("hard.txt and sub/deep/data.txt are not one file: %v %v", errA, errB)
	}
	t.Cleanup(func() { _ = os.Chmod(filepath.Join(out, "ro"), 0o755) })
	compareTrees(t, snapshot(t, src), snapshot(t, out))

	// A changed tree built again into the same volume (import) shows the
	// change on the next export.
	write("added.txt", "new\n", 0o644)
	tb.Reset()
	if err := tartree.TarDir(ctx, src, &tb); err != nil {
		t.Fatal(err)
	}
	if _, err := workspace.Build(ctx, &tb, vol, workspace.Spec{Name: "rt", Size: workspace.MinSize, UID: 1000, GID: 1000, ScratchDir: scratch}); err != nil {
		t.Fatal(err)
	}
	exported.Reset()
	if err := workspace.Export(ctx, vol, &exported, workspace.ExportSpec{Name: "rt", ScratchDir: scratch}); err != nil {
		t.Fatal(err)
	}
	out2 := filepath.Join(t.TempDir(), "out")
	if err := tartree.Untar(ctx, &exported, out2); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(filepath.Join(out2, "ro"), 0o755) })
	compareTrees(t, snapshot(t, src), snapshot(t, out2))
}

// TestExportGeneralPath: a volume the direct reader does not read
// (block maps, not extents) is exported through the debugfs dump, with
// the same tree.
func TestExportGeneralPath(t *testing.T) {
	requireTools(t)
	src := t.TempDir()
	when := time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)
	writeFile(t, src, "run.sh", "#!/bin/sh\necho hello\n", 0o755, when)
	writeFile(t, src, "sub/data.txt", strings.Repeat("data\n", 3000), 0o640, when)
	if err := os.Symlink("sub/data.txt", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	vol := filepath.Join(t.TempDir(), "vol.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-O", "^extent,^64bit", "-d", src, vol, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	var exported bytes.Buffer
	scratch := t.TempDir()
	if err := workspace.Export(context.Background(), vol, &exported, workspace.ExportSpec{Name: "inline", ScratchDir: scratch}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	if err := tartree.Untar(context.Background(), &exported, out); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, snapshot(t, src), snapshot(t, out))
	if ents, _ := os.ReadDir(scratch); len(ents) != 0 {
		t.Errorf("scratch left behind: %v", ents)
	}
}

func TestExportRefusesDamagedVolume(t *testing.T) {
	requireTools(t)
	vol := filepath.Join(t.TempDir(), "vol.img")
	if err := os.WriteFile(vol, bytes.Repeat([]byte{0xAA}, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	scratch := t.TempDir()
	err := workspace.Export(context.Background(), vol, io.Discard, workspace.ExportSpec{Name: "bad", ScratchDir: scratch})
	if err == nil {
		t.Fatal("export of garbage succeeded")
	}
	if ents, _ := os.ReadDir(scratch); len(ents) != 0 {
		t.Errorf("scratch left behind: %v", ents)
	}
}

func TestUntarRefusesEscapes(t *testing.T) {
	reg := func(name string) entry { return entry{h: tar.Header{Typeflag: tar.TypeReg, Name: name}, body: "x"} }
	lnk := func(name, target string, typ byte) entry {
		return entry{h: tar.Header{Typeflag: typ, Name: name, Linkname: target}}
	}
	for _, es := range [][]entry{
		{reg("../evil")},
		{reg("/abs")},
		{reg("a/../../evil")},
		{lnk("up", "..", tar.TypeSymlink), reg("up/evil")},
		{lnk("out", "/tmp", tar.TypeSymlink), reg("out/evil")},
		{lnk("h", "../../etc/passwd", tar.TypeLink)},
	} {
		parent := t.TempDir()
		dir := filepath.Join(parent, "dir")
		err := tartree.Untar(context.Background(), tarOf(t, es...), dir)
		if err == nil {
			t.Errorf("%v: unpacked", es)
		}
		if _, serr := os.Lstat(filepath.Join(parent, "evil")); serr == nil {
			t.Errorf("%v: wrote outside the directory", es)
		}
		if _, serr := os.Lstat("/tmp/evil"); serr == nil {
			t.Errorf("%v: wrote /tmp/evil", es)
		}
	}
	// A stream cut short is refused.
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	_ = tw.WriteHeader(&tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1})
	_, _ = tw.Write([]byte("x"))
	_ = tw.Flush()
	if err := tartree.Untar(context.Background(), &b, filepath.Join(t.TempDir(), "d")); err == nil || !strings.Contains(err.Error(), "cut short") {
		t.Errorf("cut-short stream: %v", err)
	}
}

// A part of a volume (pull of a detached workspace): the path alone, as
// the stream's top entry; a missing path or a symbolic link on the way is
// refused naming it.
func TestExportPart(t *testing.T) {
	requireTools(t)
	src := t.TempDir()
	when := time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)
	writeFile(t, src, "sub/deep/data.txt", "some data\n", 0o640, when)
	writeFile(t, src, "top.txt", "top\n", 0o644, when)
	if err := os.Symlink("/", filepath.Join(src, "up")); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	scratch := t.TempDir()
	vol := filepath.Join(t.TempDir(), "vol.img")
	var tb bytes.Buffer
	if err := tartree.TarDir(ctx, src, &tb); err != nil {
		t.Fatal(err)
	}
	if _, err := workspace.Build(ctx, &tb, vol, workspace.Spec{Name: "part", Size: workspace.MinSize, UID: 1000, GID: 1000, ScratchDir: scratch}); err != nil {
		t.Fatal(err)
	}
	names := func(b []byte) []string {
		var out []string
		tr := tar.NewReader(bytes.NewReader(b))
		for {
			h, err := tr.Next()
			if err != nil {
				return out
			}
			out = append(out, h.Name)
		}
	}
	for _, tc := range []struct {
		part, name string
		want       []string // entries, or
		err        string   // a refusal
	}{
		{part: "sub", want: []string{"sub/", "sub/deep/", "sub/deep/data.txt"}},
		{part: "/sub/deep/data.txt", name: "renamed", want: []string{"renamed"}},
		{part: "", want: []string{"part/", "part/sub/", "part/sub/deep/", "part/sub/deep/data.txt", "part/top.txt", "part/up"}},
		{part: "up", want: []string{"up"}},
		{part: "nothing", err: "has no nothing"},
		{part: "up/etc", err: "up: a symbolic link on the way to up/etc"},
	} {
		t.Run(tc.part, func(t *testing.T) {
			part := tc.part
			var b bytes.Buffer
			err := workspace.Export(ctx, vol, &b, workspace.ExportSpec{Name: "part", ScratchDir: scratch, Part: &part, PartName: tc.name})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := names(b.Bytes()); strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Fatalf("entries %v, want %v", got, tc.want)
			}
		})
	}
}
