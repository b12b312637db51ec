package source_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/imaging/source"
)

// writeLayout writes img into a new layout, tagged ref (none when "").
func writeLayout(t *testing.T, img v1.Image, ref string) (string, v1.Image) {
	t.Helper()
	lay := filepath.Join(t.TempDir(), "layout")
	lp, err := layout.Write(lay, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	var opts []layout.Option
	if ref != "" {
		opts = append(opts, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref}))
	}
	if err := lp.AppendImage(img, opts...); err != nil {
		t.Fatal(err)
	}
	return lay, img
}

func blobPath(lay string, h v1.Hash) string { return filepath.Join(lay, "blobs", h.Algorithm, h.Hex) }

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// readAll imports lay and reads every layer to its end, as the flattener does.
func readAll(lay string, o source.Options) error {
	img, err := source.Import(context.Background(), lay, o)
	if err != nil {
		return err
	}
	defer img.Release()
	if _, err := img.RawConfigFile(); err != nil {
		return err
	}
	ls, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range ls {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// Hostile layouts are refused, naming the entry, without hanging, reading
// a sparse file, following a link or leaking a descriptor.
func TestHostileLayouts(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(outside, []byte("daemon only"), 0o600); err != nil {
		t.Fatal(err)
	}
	outsideDir := t.TempDir()
	cases := []struct {
		name   string
		ref    string
		spoil  func(t *testing.T, lay string, img v1.Image)
		want   []string // all in the error
		target error
	}{
		{"index.json is a FIFO", "1", func(t *testing.T, lay string, _ v1.Image) {
			os.Remove(filepath.Join(lay, "index.json"))
			if err := unix.Mkfifo(filepath.Join(lay, "index.json"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, []string{"index.json", "FIFO"}, source.ErrLayoutEntry},
		{"index.json is sparse and huge", "1", func(t *testing.T, lay string, _ v1.Image) {
			if err := os.Truncate(filepath.Join(lay, "index.json"), 512<<20); err != nil {
				t.Fatal(err)
			}
		}, []string{"index.json", "536870912 bytes"}, source.ErrLayoutEntry},
		{"index.json is a symlink", "1", func(t *testing.T, lay string, _ v1.Image) {
			p := filepath.Join(lay, "index.json")
			b, _ := os.ReadFile(p)
			os.WriteFile(outside+".json", b, 0o644)
			os.Remove(p)
			if err := os.Symlink(outside+".json", p); err != nil {
				t.Fatal(err)
			}
		}, []string{"index.json", "symbolic link"}, source.ErrLayoutEntry},
		{"index.json is a directory", "1", func(t *testing.T, lay string, _ v1.Image) {
			p := filepath.Join(lay, "index.json")
			os.Remove(p)
			os.Mkdir(p, 0o755)
		}, []string{"index.json", "a directory, not a regular file"}, source.ErrLayoutEntry},
		{"blobs is a symlink out of the layout", "1", func(t *testing.T, lay string, _ v1.Image) {
			blobs := filepath.Join(lay, "blobs")
			if err := os.Rename(blobs, filepath.Join(outsideDir, "blobs")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Join(outsideDir, "blobs"), blobs); err != nil {
				t.Fatal(err)
			}
		}, []string{"blobs", "symbolic link"}, source.ErrLayoutEntry},
		{"a layer blob is a symlink to a daemon-only file", "1", func(t *testing.T, lay string, img v1.Image) {
			ls, _ := img.Layers()
			d, _ := ls[0].Digest()
			p := blobPath(lay, d)
			os.Remove(p)
			if err := os.Symlink(outside, p); err != nil {
				t.Fatal(err)
			}
		}, []string{"blobs/sha256/", "symbolic link"}, source.ErrLayoutEntry},
		{"a layer blob is a FIFO", "1", func(t *testing.T, lay string, img v1.Image) {
			ls, _ := img.Layers()
			d, _ := ls[1].Digest()
			p := blobPath(lay, d)
			os.Remove(p)
			if err := unix.Mkfifo(p, 0o644); err != nil {
				t.Fatal(err)
			}
		}, []string{"blobs/sha256/", "FIFO"}, source.ErrLayoutEntry},
		{"the config blob holds other content", "1", func(t *testing.T, lay string, img v1.Image) {
			d, _ := img.ConfigName()
			b, _ := os.ReadFile(blobPath(lay, d))
			b = bytes.Replace(b, []byte("A=1"), []byte("B=2"), 1)
			os.WriteFile(blobPath(lay, d), b, 0o644)
		}, []string{"blobs/sha256/", "not the digest that names it"}, source.ErrLayoutEntry},
		{"a layer blob is longer than its descriptor", "1", func(t *testing.T, lay string, img v1.Image) {
			ls, _ := img.Layers()
			d, _ := ls[0].Digest()
			f, _ := os.OpenFile(blobPath(lay, d), os.O_APPEND|os.O_WRONLY, 0)
			f.Write(make([]byte, 4096))
			f.Close()
		}, []string{"blobs/sha256/", "its descriptor says"}, source.ErrLayoutEntry},
		{"a manifest whose descriptor claims a huge size", "1", func(t *testing.T, lay string, _ v1.Image) {
			p := filepath.Join(lay, "index.json")
			var im v1.IndexManifest
			b, _ := os.ReadFile(p)
			json.Unmarshal(b, &im)
			im.Manifests[0].Size = 1 << 40
			b, _ = json.Marshal(im)
			os.WriteFile(p, b, 0o644)
		}, []string{"blobs/sha256/", "1099511627776 bytes"}, source.ErrLayoutEntry},
		{"ref.name with terminal escapes", "\x1b]0;owned\a\x1b[2J", nil, []string{`\x1b]0;owned\a`}, source.ErrBadName},
		{"ref.name with a bidi override", "app:1\u202egnp", nil, []string{`\u202e`}, source.ErrBadName},
		{"ref.name with a newline", "app:1\nfake", nil, []string{`\n`}, source.ErrBadName},
		{"no oci-layout marker", "1", func(t *testing.T, lay string, _ v1.Image) {
			os.Remove(filepath.Join(lay, "oci-layout"))
		}, []string{"must be an OCI layout"}, source.ErrUnsupported},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lay, img := writeLayout(t, testImage(t), tc.ref)
			if tc.spoil != nil {
				tc.spoil(t, lay, img)
			}
			before := openFDs(t)
			err := readAll(lay, source.Options{Name: "app"})
			if !errors.Is(err, tc.target) {
				t.Fatalf("import: %v, want %v", err, tc.target)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if after := openFDs(t); after != before {
				t.Errorf("descriptors: %d before, %d after", before, after)
			}
		})
	}
}

// A layout's names: a tag joins the name given, a full reference stands
// alone, and anything else is refused.
func TestLayoutNames(t *testing.T) {
	for _, tc := range []struct {
		ref, name string
		want      string // "" none, "!" refused
	}{
		{"1", "app", "app:1"},
		{"1", "app:2", "app:1"},
		{"1", "localhost:5000/app", "localhost:5000/app:1"},
		{"team/app:1", "", "team/app:1"},
		{"team/app:1", "other", "team/app:1"},
		{"", "app", "app"},
		{"1", "", ""},
		{"", "", ""},
		{"a b", "app", "!"},
		{"UPPER/app:1", "", "!"},
		{"1", "bad\x1bname", "!"},
	} {
		lay, _ := writeLayout(t, testImage(t), tc.ref)
		img, err := source.Import(context.Background(), lay, source.Options{Name: tc.name})
		switch {
		case tc.want == "!":
			if !errors.Is(err, source.ErrBadName) {
				t.Errorf("ref %q name %q: %v, want refused", tc.ref, tc.name, err)
			}
			continue
		case err != nil:
			t.Errorf("ref %q name %q: %v", tc.ref, tc.name, err)
			continue
		}
		img.Release()
		if got := strings.Join(img.Names, ","); got != tc.want {
			t.Errorf("ref %q name %q: names %q, want %q", tc.ref, tc.name, got, tc.want)
		}
	}
}

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"app", true},
		{"app:1.0", true},
		{"127.0.0.1:5000/team/app:v1", true},
		{"", false},
		{"App:1", false},
		{"app:", false},
		{"app:1\x1b[2J", false},
		{"ex\u202eample.com/app:1", false},
		{"app 1", false},
		{"app:" + strings.Repeat("x", 129), false},
	} {
		if err := source.ValidName(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidName(%q) = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}

// ReadableBy applies the owner, group and other classes as the kernel does.
func TestReadableBy(t *testing.T) {
	const me, group = 1000, 100
	for _, tc := range []struct {
		name     string
		uid, gid uint32
		mode     uint32
		ok       bool
	}{
		{"own file", me, 1, unix.S_IFREG | 0o600, true},
		{"own file without read", me, group, unix.S_IFREG | 0o044, false},
		{"group file", 2000, group, unix.S_IFREG | 0o640, true},
		{"group file, group may not", 2000, group, unix.S_IFREG | 0o604, false},
		{"other's file readable by all", 2000, 2000, unix.S_IFREG | 0o644, true},
		{"daemon-only file", 2000, 2000, unix.S_IFREG | 0o600, false},
		{"searchable directory", 2000, 2000, unix.S_IFDIR | 0o711, true},
		{"listable but not searchable directory", 2000, 2000, unix.S_IFDIR | 0o744, false},
		{"own directory", me, me, unix.S_IFDIR | 0o700, true},
	} {
		st := &unix.Stat_t{Uid: tc.uid, Gid: tc.gid, Mode: tc.mode}
		if err := source.ReadableBy(me, []uint32{group})(st); (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}

// A layout whose files another uid owns, readable only by that uid, is
// refused for a caller that is not that uid (root makes the files).
func TestLayoutAccess(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to another uid")
	}
	lay, img := writeLayout(t, testImage(t), "1")
	d, _ := img.ConfigName()
	if err := os.Chmod(blobPath(lay, d), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := readAll(lay, source.Options{Access: source.ReadableBy(4242, nil)}); !errors.Is(err, source.ErrLayoutEntry) || !strings.Contains(err.Error(), d.Hex) {
		t.Fatalf("stranger read a 0600 config: %v", err)
	}
	if err := readAll(lay, source.Options{Access: source.ReadableBy(0, nil)}); err != nil {
		t.Fatalf("owner: %v", err)
	}
}

// An image index in the layout picks the host's platform.
func TestLayoutNestedIndex(t *testing.T) {
	lay := filepath.Join(t.TempDir(), "layout")
	lp, err := layout.Write(lay, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	img := imagetest.Image(t, nil, imagetest.LayerTar(t, imagetest.Entry{Name: "f", Type: tar.TypeReg, Body: "x"}))
	idx := mutateIndex(t, img)
	if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "multi"})); err != nil {
		t.Fatal(err)
	}
	if err := readAll(lay, source.Options{}); err != nil {
		t.Fatal(err)
	}
}

func mutateIndex(t *testing.T, img v1.Image) v1.ImageIndex {
	t.Helper()
	return mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img,
		Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}})
}

// A docker archive's RepoTags name the image only when they are references.
func TestDockerArchiveNames(t *testing.T) {
	for _, tc := range []struct {
		tag string
		ok  bool
	}{
		{"app:1", true},
		{"app:1\x1b]0;owned\a", false},
		{"team/App:1", false},
	} {
		var src bytes.Buffer
		tag, _ := name.NewTag("app:1")
		if err := tarball.Write(tag, testImage(t), &src); err != nil {
			t.Fatal(err)
		}
		// Rewrite manifest.json's RepoTags as a hostile archive would.
		var dst bytes.Buffer
		tr, tw := tar.NewReader(&src), tar.NewWriter(&dst)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(tr)
			if h.Name == "manifest.json" {
				var m []map[string]any
				json.Unmarshal(body, &m)
				m[0]["RepoTags"] = []string{tc.tag}
				body, _ = json.Marshal(m)
				h.Size = int64(len(body))
			}
			tw.WriteHeader(h)
			tw.Write(body)
		}
		tw.Close()
		p := filepath.Join(t.TempDir(), "archive.tar")
		if err := os.WriteFile(p, dst.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		img, err := source.Import(context.Background(), p, source.Options{})
		if tc.ok != (err == nil) || !tc.ok && !errors.Is(err, source.ErrBadName) {
			t.Errorf("RepoTags %q: %v, want ok %v", tc.tag, err, tc.ok)
			continue
		}
		if err == nil {
			img.Release()
			if img.Names[0] != tc.tag {
				t.Errorf("names %v", img.Names)
			}
		}
	}
}
