package ext4_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/imaging/ext4"
	"github.com/paddock-vm/paddock/imaging/flatten"
	ft "github.com/paddock-vm/paddock/imaging/flatten/flattentest"
	"github.com/paddock-vm/paddock/internal/testenv"
)

func requireTools(t testing.TB) {
	t.Helper()
	for _, n := range []string{"mke2fs", "debugfs", "e2fsck"} {
		testenv.RequireTool(t, n, "e2fsprogs")
	}
}

// testDir is a private directory for scratch trees and images, on tmpfs
// when /dev/shm is usable (file creation in this VM's /tmp is ~30× slower
// than elsewhere on the same disk), else under t.TempDir(). Set
// PADDOCK_TEST_SCRATCH to choose.
func testDir(t testing.TB) string {
	t.Helper()
	base := os.Getenv("PADDOCK_TEST_SCRATCH")
	if base == "" {
		if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() && unix.Access("/dev/shm", unix.W_OK) == nil {
			base = "/dev/shm"
		}
	}
	if base == "" {
		return t.TempDir()
	}
	d, err := os.MkdirTemp(base, "paddock-ext4-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// testTools returns the e2fsprogs under test: PADDOCK_TEST_E2FSPROGS names a
// directory with mke2fs, debugfs and e2fsck (for example e2fsprogs 1.47.2
// unpacked from bookworm-backports, to exercise mke2fs -d -); default PATH.
func testTools() ext4.Tools {
	d := os.Getenv("PADDOCK_TEST_E2FSPROGS")
	if d == "" {
		return ext4.Tools{}
	}
	return ext4.Tools{Mke2fs: filepath.Join(d, "mke2fs"), Debugfs: filepath.Join(d, "debugfs"), E2fsck: filepath.Join(d, "e2fsck")}
}

// buildMode is one way of building: how the tree reaches ext4.Build and
// with which options.
type buildMode struct {
	opts ext4.Options
	// stream: Build reads the emitted tar instead of the flattened tree.
	stream bool
	// otherFS: ext4's scratch is on another filesystem than flatten's, so
	// spilled contents are copied instead of hardlinked.
	otherFS bool
}

// buildModes are the build paths available here: the scratch tree fed by a
// flattened tree (hardlinking or copying spilled contents) or by a tar
// stream, and mke2fs -d - when the mke2fs under test reads tars.
func buildModes(t testing.TB) map[string]buildMode {
	staged := ext4.Options{Tools: testTools(), NoTarStdin: true}
	modes := map[string]buildMode{
		"staged-link":   {opts: staged},
		"staged-stream": {opts: staged, stream: true},
	}
	if d := testDir(t); !strings.HasPrefix(d, os.TempDir()) {
		modes["staged-copy"] = buildMode{opts: staged, otherFS: true}
	}
	mk := testTools().Mke2fs
	if mk == "" {
		mk = tool("mke2fs")
	}
	if c, err := ext4.Probe(context.Background(), mk); err == nil && c.TarStdin {
		modes["tar-stdin"] = buildMode{opts: ext4.Options{Tools: testTools()}, stream: true}
	}
	return modes
}

func tool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return "/usr/sbin/" + name
}

// q quotes a debugfs argument the way the production code must.
func q(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// debugfsBatch runs read-only commands in one debugfs process and returns
// each command's stdout. A command whose path does not exist prints
// nothing on stdout (its error goes to stderr).
func debugfsBatch(t testing.TB, img string, cmds []string) []string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "cmds")
	if err := os.WriteFile(f, []byte(strings.Join(cmds, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tool("debugfs"), "-f", f, img)
	cmd.Env = append(os.Environ(), "DEBUGFS_PAGER=__none__", "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("debugfs: %v: %s", err, stderr.String())
	}
	out := stdout.String()
	res := make([]string, len(cmds))
	for i, c := range cmds {
		echo := "debugfs: " + c + "\n"
		k := strings.Index(out, echo)
		if k < 0 {
			t.Fatalf("debugfs output lost command %.80q", c)
		}
		out = out[k+len(echo):]
		end := len(out)
		if i+1 < len(cmds) {
			if n := strings.Index(out, "debugfs: "+cmds[i+1]+"\n"); n >= 0 {
				end = n
			}
		}
		res[i] = out[:end]
	}
	return res
}

// inode is what debugfs stat shows about one path.
type inode struct {
	ino          string
	typ          byte
	mode         int64
	uid, gid     int
	size         int64
	links        int
	mtime        int64
	major, minor int64
	target       string
	body         string
	xattrs       map[string]string
	children     []string // directories: names except . and ..
}

var (
	reInode = regexp.MustCompile(`Inode: (\d+)\s+Type: ([a-zA-Z ]+?)\s+Mode:\s+(\d+)`)
	reUser  = regexp.MustCompile(`User:\s+(-?\d+)\s+Group:\s+(-?\d+).*Size: (\d+)`)
	reLinks = regexp.MustCompile(`Links: (\d+)`)
	reMtime = regexp.MustCompile(`(?m)^ mtime: 0x([0-9a-f]{8}):([0-9a-f]{8})`)
	reDev   = regexp.MustCompile(`Device major/minor number: (\d+):(\d+)`)
	reFast  = regexp.MustCompile(`(?s)Fast link dest: "(.*)"\n`)
	reEA    = regexp.MustCompile(`(?m)^  (.+?) \(\d+\)`)
)

var typeNames = map[string]byte{
	"regular": tar.TypeReg, "directory": tar.TypeDir, "symlink": tar.TypeSymlink,
	"character special": tar.TypeChar, "block special": tar.TypeBlock, "FIFO": tar.TypeFifo,
}

// readImage inspects every path in one debugfs batch (plus one for xattr
// values). Paths that do not exist map to nil.
func readImage(t testing.TB, img string, paths []string) map[string]*inode {
	t.Helper()
	dump := t.TempDir()
	var cmds []string
	for i, p := range paths {
		cmds = append(cmds, "stat "+q(p), "ea_list "+q(p), "ls -p "+q(p), fmt.Sprintf("dump %s %s", q(p), q(filepath.Join(dump, strconv.Itoa(i)))))
	}
	out := debugfsBatch(t, img, cmds)
	res := map[string]*inode{}
	var eaCmds []string
	type eaRef struct {
		path, name, file string
	}
	var eaRefs []eaRef
	for i, p := range paths {
		st, eal, ls := out[4*i], out[4*i+1], out[4*i+2]
		m := reInode.FindStringSubmatch(st)
		if m == nil {
			res[p] = nil
			continue
		}
		n := &inode{ino: m[1], typ: typeNames[m[2]], xattrs: map[string]string{}}
		if n.typ == 0 {
			t.Fatalf("%q: unknown type %q", p, m[2])
		}
		n.mode, _ = strconv.ParseInt(m[3], 8, 64)
		if u := reUser.FindStringSubmatch(st); u != nil {
			// debugfs prints ids as signed 32-bit numbers
			uid, _ := strconv.ParseInt(u[1], 10, 64)
			gid, _ := strconv.ParseInt(u[2], 10, 64)
			n.uid, n.gid = int(uint32(uid)), int(uint32(gid))
			n.size, _ = strconv.ParseInt(u[3], 10, 64)
		}
		if l := reLinks.FindStringSubmatch(st); l != nil {
			n.links, _ = strconv.Atoi(l[1])
		}
		if mt := reMtime.FindStringSubmatch(st); mt != nil {
			lo, _ := strconv.ParseUint(mt[1], 16, 32)
			extra, _ := strconv.ParseUint(mt[2], 16, 32)
			n.mtime = int64(int32(uint32(lo))) + int64(extra&3)<<32
		}
		if d := reDev.FindStringSubmatch(st); d != nil {
			n.major, _ = strconv.ParseInt(d[1], 10, 64)
			n.minor, _ = strconv.ParseInt(d[2], 10, 64)
		}
		body, _ := os.ReadFile(filepath.Join(dump, strconv.Itoa(i)))
		switch n.typ {
		case tar.TypeReg:
			n.body = string(body)
		case tar.TypeSymlink:
			if f := reFast.FindStringSubmatch(st); f != nil {
				n.target = f[1]
			} else {
				n.target = string(body)
			}
		case tar.TypeDir:
			for _, l := range strings.Split(ls, "\n") {
				f := strings.Split(l, "/")
				if len(f) >= 6 && f[5] != "." && f[5] != ".." {
					n.children = append(n.children, f[5])
				}
			}
			sort.Strings(n.children)
		}
		for _, e := range reEA.FindAllStringSubmatch(eal, -1) {
			f := filepath.Join(dump, fmt.Sprintf("ea-%d", len(eaRefs)))
			eaRefs = append(eaRefs, eaRef{p, e[1], f})
			eaCmds = append(eaCmds, fmt.Sprintf("ea_get -f %s %s %s", q(f), q(p), q(e[1])))
		}
		res[p] = n
	}
	if len(eaCmds) > 0 {
		debugfsBatch(t, img, eaCmds)
		for _, r := range eaRefs {
			v, err := os.ReadFile(r.file)
			if err != nil {
				t.Fatalf("ea_get %q %q: %v", r.path, r.name, err)
			}
			res[r.path].xattrs[r.name] = string(v)
		}
	}
	return res
}

// fsckClean asserts e2fsck -fn finds nothing.
func fsckClean(t testing.TB, img string) {
	t.Helper()
	out, err := exec.Command(tool("e2fsck"), "-fn", img).CombinedOutput()
	if err != nil {
		t.Errorf("e2fsck -fn: %v\n%s", err, out)
	}
}

// build flattens layers and builds an image, checking that the scratch
// dir is empty afterwards. It returns the image, the flattened stream and
// the build result.
func build(t *testing.T, layers []flatten.Layer, m buildMode) (string, []byte, *ext4.Result) {
	t.Helper()
	scratch := testDir(t)
	ctx := context.Background()
	flat, err := flatten.Flatten(ctx, layers, flatten.Options{ScratchDir: scratch})
	if err != nil {
		t.Fatalf("Flatten: %v", err)
	}
	defer flat.Close()
	var stream bytes.Buffer
	if err := flat.Emit(ctx, &stream); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(testDir(t), "rootfs.ext4")
	opts := m.opts
	opts.ScratchDir = scratch
	if m.otherFS {
		opts.ScratchDir = t.TempDir()
	}
	var res *ext4.Result
	if m.stream {
		res, err = ext4.Build(ctx, bytes.NewReader(stream.Bytes()), flat.Summary, img, opts)
	} else {
		res, err = ext4.BuildFlattened(ctx, flat, img, opts)
	}
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	if err := flat.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{scratch, opts.ScratchDir} {
		if ents, _ := os.ReadDir(d); len(ents) != 0 {
			t.Errorf("scratch %s not empty after build and Close: %v", d, ents)
		}
	}
	if len(res.FsckFixes) > 0 {
		t.Errorf("e2fsck had to repair the image: %q", res.FsckFixes)
	}
	return img, stream.Bytes(), res
}

// compareWithStream checks the image against the flattened stream entry
// by entry: type, mode, owner, mtime, content, symlink target, device,
// exact xattr set, hardlink identity and link count, directory listings.
// It returns a Lookup over the image for the case's own expectations.
func compareWithStream(t *testing.T, img string, stream []byte) ft.Lookup {
	t.Helper()
	nodes, order := ft.Parse(t, stream)
	im := readImage(t, img, order)
	names := map[string]int{} // inode -> names in the stream
	for _, p := range order {
		if n := im[p]; n != nil && n.typ != tar.TypeDir {
			names[n.ino]++
		}
	}
	for _, p := range order {
		want := nodes[p]
		h := want.Hdr
		got := im[p]
		if got == nil {
			t.Errorf("%q: in the stream, missing from the image", p)
			continue
		}
		if h.Typeflag == tar.TypeLink {
			tgt := im[ft.Abs(h.Linkname)]
			if tgt == nil || tgt.ino != got.ino {
				t.Errorf("%q: hardlink to %q is not the same inode", p, h.Linkname)
			}
			want = nodes[ft.Abs(h.Linkname)]
			h = want.Hdr
		}
		errf := func(what string, g, w any) { t.Errorf("%q: %s = %v, stream says %v", p, what, g, w) }
		if got.typ != h.Typeflag {
			errf("type", string(got.typ), string(h.Typeflag))
			continue
		}
		wantMode := h.Mode & 0o7777
		if got.mode != wantMode {
			errf("mode", fmt.Sprintf("%#o", got.mode), fmt.Sprintf("%#o", wantMode))
		}
		if got.uid != h.Uid || got.gid != h.Gid {
			errf("owner", fmt.Sprintf("%d:%d", got.uid, got.gid), fmt.Sprintf("%d:%d", h.Uid, h.Gid))
		}
		if got.mtime != h.ModTime.Unix() {
			errf("mtime", got.mtime, h.ModTime.Unix())
		}
		switch h.Typeflag {
		case tar.TypeReg:
			if got.body != want.Body {
				errf("content", fmt.Sprintf("%.40q (%d bytes)", got.body, len(got.body)), fmt.Sprintf("%.40q (%d bytes)", want.Body, len(want.Body)))
			}
		case tar.TypeSymlink:
			if got.target != h.Linkname {
				errf("symlink target", fmt.Sprintf("%q", got.target), fmt.Sprintf("%q", h.Linkname))
			}
		case tar.TypeChar, tar.TypeBlock:
			if got.major != h.Devmajor || got.minor != h.Devminor {
				errf("device", fmt.Sprintf("%d:%d", got.major, got.minor), fmt.Sprintf("%d:%d", h.Devmajor, h.Devminor))
			}
		case tar.TypeDir:
			wantKids := ft.Children(nodes, p)
			gotKids := got.children
			if p == "/" && !contains(wantKids, "lost+found") {
				gotKids = without(gotKids, "lost+found")
			}
			if strings.Join(gotKids, "\x00") != strings.Join(wantKids, "\x00") {
				errf("children", fmt.Sprintf("%q", gotKids), fmt.Sprintf("%q", wantKids))
			}
		}
		if h.Typeflag != tar.TypeDir && got.links != names[got.ino] {
			errf("link count", got.links, names[got.ino])
		}
		wantX := map[string]string{}
		for k, v := range h.PAXRecords {
			if n, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				wantX[n] = v
			}
		}
		if fmt.Sprint(got.xattrs) != fmt.Sprint(wantX) {
			errf("xattrs", fmt.Sprintf("%q", got.xattrs), fmt.Sprintf("%q", wantX))
		}
	}
	return func(p string) (*ft.Got, error) {
		n, ok := im[p]
		if !ok {
			n = readImage(t, img, []string{p})[p]
		}
		if n == nil {
			return nil, nil
		}
		return &ft.Got{Type: n.typ, Mode: n.mode, UID: n.uid, GID: n.gid, Body: n.body, Target: n.target,
			Major: n.major, Minor: n.minor, ID: n.ino, Xattrs: n.xattrs, MTime: n.mtime}, nil
	}
}

func contains(s []string, x string) bool {
	for _, e := range s {
		if e == x {
			return true
		}
	}
	return false
}

func without(s []string, x string) []string {
	var out []string
	for _, e := range s {
		if e != x {
			out = append(out, e)
		}
	}
	return out
}

func execCommand(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}
