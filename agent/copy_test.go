package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// archiveOf reads the guest's tar stream of path through the protocol.
func archiveOf(t *testing.T, c *Client, path string) ([]byte, ExitStatus, error) {
	t.Helper()
	p, err := c.Archive(ctx5(t), ArchiveRequest{Path: path})
	if err != nil {
		return nil, ExitStatus{}, err
	}
	b, _ := io.ReadAll(p.Stdout())
	st, err := p.Wait(ctx5(t))
	return b, st, err
}

// extractInto sends tarball to the guest for path.
func extractInto(t *testing.T, c *Client, path, name string, tarball []byte) (ExitStatus, error) {
	t.Helper()
	p, err := c.Extract(ctx5(t), ExtractRequest{Path: path, Name: name})
	if err != nil {
		return ExitStatus{}, err
	}
	go func() {
		_, _ = p.Write(tarball)
		_ = p.CloseStdin()
	}()
	return p.Wait(ctx5(t))
}

func TestCopyRoundTrip(t *testing.T) {
	c, g := newPair(t)
	src := filepath.Join(t.TempDir(), "proj")
	big := make([]byte, 3*StreamWindow+17) // more than a window each way
	_, _ = rand.Read(big)
	files := map[string][]byte{"a/b/c.txt": []byte("deep"), "big.bin": big, "héllo wörld.txt": []byte("ü")}
	for name, data := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(src, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, name), data, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "run.sh"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", filepath.Join(src, "abs")); err != nil {
		t.Fatal(err)
	}
	tarball, st, err := archiveOf(t, c, src+"/")
	if err != nil || st.Code != 0 || st.Error != "" {
		t.Fatalf("archive: %v %+v", err, st)
	}
	dst := t.TempDir()
	if st, err := extractInto(t, c, dst, "proj", tarball); err != nil || st.Code != 0 {
		t.Fatalf("extract: %v %+v", err, st)
	}
	for name, data := range files {
		got, err := os.ReadFile(filepath.Join(dst, "proj", name))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: %d bytes, %v; want %d bytes", name, len(got), err, len(data))
		}
	}
	if fi, err := os.Stat(filepath.Join(dst, "proj/run.sh")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("run.sh: %v %v", fi, err)
	}
	if l, err := os.Readlink(filepath.Join(dst, "proj/abs")); err != nil || l != "/etc" {
		t.Fatalf("abs: %q %v", l, err)
	}
	g.ownedMu.Lock()
	owned := g.owned
	g.ownedMu.Unlock()
	if len(owned) != 1 || owned[0] != dst {
		t.Fatalf("owner asked for %v, want [%s]", owned, dst)
	}
	// To a new name: the copy becomes it.
	if st, err := extractInto(t, c, filepath.Join(dst, "renamed"), "proj", tarball); err != nil || st.Code != 0 {
		t.Fatalf("extract to a new name: %v %+v", err, st)
	}
	if got, err := os.ReadFile(filepath.Join(dst, "renamed/a/b/c.txt")); err != nil || string(got) != "deep" {
		t.Fatalf("renamed copy: %q %v", got, err)
	}
}

func TestArchiveDoesNotFollowLinks(t *testing.T) {
	c, _ := newPair(t)
	dir := t.TempDir()
	if err := os.Symlink("/etc", filepath.Join(dir, "etc-link")); err != nil {
		t.Fatal(err)
	}
	tarball, st, err := archiveOf(t, c, filepath.Join(dir, "etc-link"))
	if err != nil || st.Error != "" {
		t.Fatalf("archive: %v %+v", err, st)
	}
	tr := tar.NewReader(bytes.NewReader(tarball))
	var names []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name+" -> "+h.Linkname)
	}
	if len(names) != 1 || names[0] != "etc-link -> /etc" {
		t.Fatalf("archive of a link: %v, want the link alone", names)
	}
}

func TestCopyRefusals(t *testing.T) {
	c, _ := newPair(t)
	dir := t.TempDir()
	hostile := func(hs ...tar.Header) []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, h := range hs {
			_ = tw.WriteHeader(&h)
		}
		_ = tw.Close()
		return b.Bytes()
	}
	for _, tc := range []struct {
		name    string
		archive string // a path to archive, or
		tarball []byte // a stream to extract into dir as "p"
		want    string
	}{
		{name: "relative path", archive: "etc/passwd", want: "not an absolute path"},
		{name: "root", archive: "/", want: "root directory"},
		{name: "missing", archive: filepath.Join(dir, "nothing"), want: "no such file"},
		{name: "dot-dot", tarball: hostile(tar.Header{Name: "p/../../x", Typeflag: tar.TypeReg}), want: "p/../../x: entry escapes"},
		{name: "not the copy", tarball: hostile(tar.Header{Name: "q", Typeflag: tar.TypeReg}), want: "q: entry escapes"},
		{name: "through a link", tarball: hostile(tar.Header{Name: "p", Typeflag: tar.TypeDir, Mode: 0o755}, tar.Header{Name: "p/l", Linkname: "/", Typeflag: tar.TypeSymlink}, tar.Header{Name: "p/l/x", Typeflag: tar.TypeReg}), want: "p/l/x"},
		{name: "device", tarball: hostile(tar.Header{Name: "p", Typeflag: tar.TypeChar}), want: "p: unsupported entry type"},
		{name: "cut short", tarball: hostile(tar.Header{Name: "p", Typeflag: tar.TypeReg, Mode: 0o644})[:512], want: "cut short"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var st ExitStatus
			var err error
			if tc.tarball == nil {
				_, st, err = archiveOf(t, c, tc.archive)
			} else {
				st, err = extractInto(t, c, t.TempDir(), "p", tc.tarball)
			}
			msg := st.Error
			if err != nil {
				msg = err.Error()
			}
			if !strings.Contains(msg, tc.want) {
				t.Fatalf("got %v / %+v, want an error with %q", err, st, tc.want)
			}
		})
	}
	if _, err := os.Lstat("/x"); err == nil {
		t.Fatal("an entry escaped to /x")
	}
}

func TestExtractCancelled(t *testing.T) {
	c, _ := newPair(t)
	p, err := c.Extract(ctx5(t), ExtractRequest{Path: t.TempDir(), Name: "p"})
	if err != nil {
		t.Fatal(err)
	}
	_, _ = p.Write(make([]byte, 512)) // a stream that never ends
	ctx, cancel := context.WithCancel(ctx5(t))
	cancel()
	if _, err := p.Wait(ctx); err == nil {
		t.Fatal("wait on a cancelled context")
	}
	if err := p.Signal(ctx5(t), 9); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Wait(ctx5(t)); err != nil || st.Error == "" {
		t.Fatalf("after the kill: %+v %v, want a failed status", st, err)
	}
}
