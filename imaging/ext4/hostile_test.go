package ext4_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/imaging/ext4"
	"github.com/paddock-vm/paddock/imaging/flatten"
	ft "github.com/paddock-vm/paddock/imaging/flatten/flattentest"
)

// TestHostileImport runs every hostile image through the whole import
// (flatten, then build): it must fail naming the image, layer and entry,
// leave no image and no scratch, and never touch the host canary.
func TestHostileImport(t *testing.T) {
	requireTools(t)
	canary, check := ft.Canary(t)
	defer check()
	for _, h := range ft.HostileCases(canary) {
		t.Run(h.Name, func(t *testing.T) {
			scratch, outDir := testDir(t), testDir(t)
			ref := "example.com/hostile:" + h.Name
			fo := h.Opts
			fo.ScratchDir, fo.ImageRef = scratch, ref
			err := func() error {
				flat, err := flatten.Flatten(context.Background(), ft.HostileLayers(t, h), fo)
				if err != nil {
					return err
				}
				defer flat.Close()
				_, err = ext4.BuildFlattened(context.Background(), flat, filepath.Join(outDir, "rootfs.ext4"),
					ext4.Options{Tools: testTools(), ScratchDir: scratch, ImageRef: ref})
				return err
			}()
			if err == nil {
				t.Fatal("hostile image imported")
			}
			ft.AssertRejected(t, err, h, ref)
			assertEmpty(t, scratch, outDir)
		})
	}
}

// rawEntry is a tar header plus body for streams that bypass flatten.
type rawEntry struct {
	h    tar.Header
	body string
}

func rawStream(t *testing.T, es ...rawEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := e.h
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		h.Size = int64(len(e.body))
		h.ModTime = time.Unix(ft.DefaultMTime, 0)
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	return buf.Bytes()
}

func reg(name string) rawEntry { return rawEntry{h: tar.Header{Name: name}, body: "x"} }
func dir(name string) rawEntry {
	return rawEntry{h: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755}}
}
func sym(name, target string) rawEntry {
	return rawEntry{h: tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target}}
}
func lnk(name, target string) rawEntry {
	return rawEntry{h: tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target}}
}

// TestBuildRevalidates feeds hostile streams straight to Build, bypassing
// flatten: Build's own checks must reject them the same way.
func TestBuildRevalidates(t *testing.T) {
	requireTools(t)
	canary, check := ft.Canary(t)
	defer check()
	long := strings.Repeat("q", 256)
	for _, tc := range []struct {
		name     string
		entries  []rawEntry
		sentinel error
		path     string
	}{
		{"dotdot", []rawEntry{dir("./"), reg("../evil")}, flatten.ErrPathEscape, "../evil"},
		{"newline", []rawEntry{dir("./"), reg("x\n!touch " + canary + "/pwned #")}, flatten.ErrBadName, "x\n!touch " + canary + "/pwned #"},
		{"component-256", []rawEntry{reg(long)}, flatten.ErrBadName, long},
		{"write-through-host-symlink", []rawEntry{dir("./"), sym("s", canary), reg("s/pwned")}, flatten.ErrBadEntry, "s/pwned"},
		{"write-through-dotdot-symlink", []rawEntry{sym("up", "../../.."), reg("up/pwned")}, flatten.ErrBadEntry, "up/pwned"},
		{"child-before-parent", []rawEntry{reg("a/b"), dir("a")}, flatten.ErrBadEntry, "a/b"},
		{"duplicate", []rawEntry{reg("a"), reg("a")}, flatten.ErrBadEntry, "a"},
		{"hardlink-missing", []rawEntry{lnk("l", "nope")}, flatten.ErrBadLink, "l"},
		{"hardlink-escape", []rawEntry{lnk("l", "../../etc/passwd")}, flatten.ErrPathEscape, "l"},
		{"hardlink-to-dir", []rawEntry{dir("d"), lnk("l", "d")}, flatten.ErrBadLink, "l"},
		{"hardlink-abs-host", []rawEntry{lnk("l", canary+"/file")}, flatten.ErrBadLink, "l"},
		{"device-range", []rawEntry{{h: tar.Header{Name: "d", Typeflag: tar.TypeChar, Devmajor: 5000}}}, flatten.ErrBadEntry, "d"},
		{"xattr-name", []rawEntry{{h: tar.Header{Name: "x", PAXRecords: map[string]string{"SCHILY.xattr.evil": "v"}}, body: "x"}}, flatten.ErrBadName, "x"},
		{"symlink-target-newline", []rawEntry{sym("s", "a\nb")}, flatten.ErrBadName, "s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			scratch, outDir := testDir(t), testDir(t)
			_, err := ext4.Build(context.Background(), bytes.NewReader(rawStream(t, tc.entries...)), flatten.Summary{Inodes: 10},
				filepath.Join(outDir, "img"), ext4.Options{Tools: testTools(), ScratchDir: scratch, ImageRef: "raw/" + tc.name})
			var ee *flatten.EntryError
			if !errors.As(err, &ee) || !errors.Is(err, tc.sentinel) {
				t.Fatalf("err = %v, want *EntryError %v", err, tc.sentinel)
			}
			if ee.Path != tc.path || !strings.Contains(err.Error(), strconv.Quote(tc.path)) || !strings.Contains(err.Error(), "raw/"+tc.name) {
				t.Errorf("error %q does not name entry %q and the image", err, tc.path)
			}
			assertEmpty(t, scratch, outDir)
		})
	}
}

// TestApplyOwnershipRejects: names that would break or inject into the
// debugfs command language never reach debugfs.
func TestApplyOwnershipRejects(t *testing.T) {
	requireTools(t)
	canary, check := ft.Canary(t)
	defer check()
	img := emptyImage(t)
	pwned := filepath.Join(canary, "pwned")
	// A path whose quoted form exceeds debugfs' 8 KiB line buffer: the
	// tail would run as its own command, and "!…" runs /bin/sh.
	quotes := strings.Repeat(strings.Repeat(`"`, 250)+"/", 16) + "!touch " + pwned + " #"
	for _, tc := range []struct {
		name     string
		hdr      tar.Header
		sentinel error
	}{
		{"newline-injection", tar.Header{Name: "x\n!touch " + pwned + " #", Typeflag: tar.TypeReg}, flatten.ErrBadName},
		{"cr", tar.Header{Name: "x\rsif / mode 0", Typeflag: tar.TypeReg}, flatten.ErrBadName},
		{"nul", tar.Header{Name: "x\x00y", Typeflag: tar.TypeReg}, flatten.ErrBadName},
		{"long-line", tar.Header{Name: quotes, Typeflag: tar.TypeReg}, flatten.ErrBadName},
		{"dotdot", tar.Header{Name: "../x", Typeflag: tar.TypeReg}, flatten.ErrPathEscape},
		{"component-256", tar.Header{Name: strings.Repeat("z", 256), Typeflag: tar.TypeReg}, flatten.ErrBadName},
		{"xattr-newline", tar.Header{Name: "x", Typeflag: tar.TypeReg, PAXRecords: map[string]string{"SCHILY.xattr.user.a\n!sh": "v"}}, flatten.ErrBadName},
		{"xattr-dash", tar.Header{Name: "x", Typeflag: tar.TypeReg, PAXRecords: map[string]string{"SCHILY.xattr.-f": "v"}}, flatten.ErrBadName},
		{"link-newline", tar.Header{Name: "l", Typeflag: tar.TypeLink, Linkname: "a\nb"}, flatten.ErrBadName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			create := tc.hdr.Typeflag == tar.TypeLink
			err := ext4.ApplyOwnership(context.Background(), img, []ext4.Fixup{{Hdr: &tc.hdr, Create: create}},
				ext4.OwnershipOptions{ScratchDir: testDir(t), ImageRef: "dbg"})
			var ee *flatten.EntryError
			if !errors.As(err, &ee) || !errors.Is(err, tc.sentinel) {
				t.Fatalf("err = %v, want *EntryError %v", err, tc.sentinel)
			}
			if ee.Path != tc.hdr.Name {
				t.Errorf("EntryError.Path = %.50q, want %.50q", ee.Path, tc.hdr.Name)
			}
		})
	}
	if _, err := os.Stat(pwned); err == nil {
		t.Fatal("a name ran a shell command through debugfs")
	}
	fsckClean(t, img)
}

// emptyImage makes a small ext4 with mkfs alone.
func emptyImage(t *testing.T) string {
	t.Helper()
	img := filepath.Join(testDir(t), "empty.ext4")
	out, err := execCommand(tool("mke2fs"), "-q", "-F", "-t", "ext4", "-b", "4096", img, "16M")
	if err != nil {
		t.Fatalf("mke2fs: %v: %s", err, out)
	}
	return img
}

// TestApplyOwnershipErrors: debugfs exits 0 on failed commands and on an
// unreadable image; ApplyOwnership must still fail.
func TestApplyOwnershipErrors(t *testing.T) {
	requireTools(t)
	img := emptyImage(t)
	missing := []ext4.Fixup{{Hdr: &tar.Header{Name: "no/such/file", Typeflag: tar.TypeReg, Uid: 5}}}
	err := ext4.ApplyOwnership(context.Background(), img, missing, ext4.OwnershipOptions{ScratchDir: testDir(t)})
	if !errors.Is(err, ext4.ErrDebugfs) || !strings.Contains(err.Error(), "File not found") {
		t.Errorf("missing path: err = %v, want ErrDebugfs naming the failure", err)
	}
	err = ext4.ApplyOwnership(context.Background(), filepath.Join(testDir(t), "nope.img"),
		[]ext4.Fixup{{Hdr: &tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}}}, ext4.OwnershipOptions{})
	if !errors.Is(err, ext4.ErrDebugfs) {
		t.Errorf("missing image: err = %v, want ErrDebugfs", err)
	}
}

// TestApplyOwnershipDirect applies fix-ups to a plain mkfs image: owners
// past 16 bits, a device with the new dev_t encoding, a fifo with an odd
// name, a hardlink to it, xattrs set from files.
func TestApplyOwnershipDirect(t *testing.T) {
	requireTools(t)
	img := emptyImage(t)
	mt := time.Unix(1600000000, 0)
	fixes := []ext4.Fixup{
		{Hdr: &tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o1751, Uid: 70000, Gid: 70001, ModTime: mt,
			PAXRecords: map[string]string{"SCHILY.xattr.user.q": `a"b\c`}}},
		{Hdr: &tar.Header{Name: "lost+found/-odd \"fifo\" #1", Typeflag: tar.TypeFifo, Mode: 0o640, Uid: 3, ModTime: mt}, Create: true},
		{Hdr: &tar.Header{Name: "lost+found/nvme", Typeflag: tar.TypeBlock, Devmajor: 259, Devminor: 300000, Mode: 0o660, ModTime: mt}, Create: true},
		{Hdr: &tar.Header{Name: "fifo-link", Typeflag: tar.TypeLink, Linkname: "lost+found/-odd \"fifo\" #1"}, Create: true},
	}
	if err := ext4.ApplyOwnership(context.Background(), img, fixes, ext4.OwnershipOptions{ScratchDir: testDir(t)}); err != nil {
		t.Fatal(err)
	}
	im := readImage(t, img, []string{"/", "/lost+found/-odd \"fifo\" #1", "/lost+found/nvme", "/fifo-link"})
	root, fifo, nvme, link := im["/"], im["/lost+found/-odd \"fifo\" #1"], im["/lost+found/nvme"], im["/fifo-link"]
	switch {
	case root == nil || root.mode != 0o1751 || root.uid != 70000 || root.gid != 70001 || root.mtime != mt.Unix() || root.xattrs["user.q"] != `a"b\c`:
		t.Errorf("root = %+v", root)
	case fifo == nil || fifo.typ != tar.TypeFifo || fifo.mode != 0o640 || fifo.uid != 3 || fifo.links != 2:
		t.Errorf("fifo = %+v", fifo)
	case nvme == nil || nvme.typ != tar.TypeBlock || nvme.major != 259 || nvme.minor != 300000:
		t.Errorf("nvme = %+v", nvme)
	case link == nil || link.ino != fifo.ino:
		t.Errorf("fifo-link = %+v, want inode %s", link, fifo.ino)
	}
	fsckClean(t, img)
}
