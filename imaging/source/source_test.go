package source_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/klauspost/compress/zstd"

	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/imaging/source"
)

func testImage(t *testing.T) v1.Image {
	return imagetest.Image(t, &v1.Config{Entrypoint: []string{"/bin/app"}, Env: []string{"A=1"}},
		imagetest.LayerTar(t, imagetest.Entry{Name: "bin/", Type: tar.TypeDir}, imagetest.Entry{Name: "bin/app", Body: "#!/bin/sh\n", Mode: 0o755}),
		imagetest.LayerTar(t, imagetest.Entry{Name: "etc/", Type: tar.TypeDir}, imagetest.Entry{Name: "etc/motd", Body: "hi\n"}))
}

func configDigest(t *testing.T, img v1.Image) string {
	d, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// Every source kind yields the same image content (the same config digest).
func TestEverySourceKind(t *testing.T) {
	ctx := context.Background()
	img := testImage(t)
	want := configDigest(t, img)
	dir := t.TempDir()

	reg := imagetest.Registry(t)
	imagetest.Push(t, reg+"/app:1", img)

	lay := filepath.Join(dir, "layout")
	lp, err := layout.Write(lay, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "1"})); err != nil {
		t.Fatal(err)
	}

	arch := filepath.Join(dir, "docker.tar")
	tag, _ := name.NewTag("app:1")
	if err := tarball.WriteToFile(arch, tag, img); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name  string
		open  func() (*source.Image, error)
		kind  source.Kind
		names []string
	}{
		{"registry", func() (*source.Image, error) { return source.Pull(ctx, reg+"/app:1", source.Options{}) }, source.Registry, []string{reg + "/app:1"}},
		{"oci layout", func() (*source.Image, error) { return source.Import(ctx, lay, source.Options{Name: "app"}) }, source.OCILayout, []string{"app:1"}},
		{"oci layout by tag", func() (*source.Image, error) { return source.Import(ctx, lay+":1", source.Options{Name: "app"}) }, source.OCILayout, []string{"app:1"}},
		{"docker archive", func() (*source.Image, error) { return source.Import(ctx, arch, source.Options{}) }, source.DockerArchive, []string{"app:1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.open()
			if err != nil {
				t.Fatal(err)
			}
			if got.Kind != tc.kind || configDigest(t, got) != want {
				t.Fatalf("kind %s digest %s, want %s %s", got.Kind, configDigest(t, got), tc.kind, want)
			}
			if len(got.Names) != len(tc.names) || (len(tc.names) > 0 && got.Names[0] != tc.names[0]) {
				t.Fatalf("names %v, want %v", got.Names, tc.names)
			}
			blobs, err := got.Blobs()
			if err != nil || len(blobs) != 2 {
				t.Fatalf("layers %d %v", len(blobs), err)
			}
			// Blobs read back whole, as the layers' tars (compressed or not).
			ls, _ := img.Layers()
			for i, b := range blobs {
				rc, err := b.Open(ctx)
				if err != nil {
					t.Fatal(err)
				}
				dec, err := source.Decompress(rc)
				if err != nil {
					t.Fatal(err)
				}
				h, _, err := v1.SHA256(dec)
				dec.Close()
				if want, _ := ls[i].DiffID(); err != nil || h != want {
					t.Fatalf("layer %d hashes to %v (%v), want %v", i+1, h, err, want)
				}
			}
		})
	}
}

func TestRootfsTar(t *testing.T) {
	dir := t.TempDir()
	raw := imagetest.LayerTar(t, imagetest.Entry{Name: "./", Type: tar.TypeDir}, imagetest.Entry{Name: "./etc/", Type: tar.TypeDir}, imagetest.Entry{Name: "./etc/hostname", Body: "box\n"})
	var zs bytes.Buffer
	zw, _ := zstd.NewWriter(&zs)
	zw.Write(raw)
	zw.Close()
	for _, tc := range []struct {
		name string
		body []byte
	}{{"plain", raw}, {"zstd", zs.Bytes()}} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name+".tar")
			if err := os.WriteFile(p, tc.body, 0o644); err != nil {
				t.Fatal(err)
			}
			img, err := source.Import(context.Background(), p, source.Options{Name: "box:7", Config: []byte(`{"Cmd":["/bin/sh"],"Env":["X=1"]}`)})
			if err != nil {
				t.Fatal(err)
			}
			if img.Kind != source.RootfsTar || img.Names[0] != "box:7" || !img.Pending() {
				t.Fatalf("%+v", img)
			}
			// The digest is known once the layer's diff id is.
			if err := img.Complete(v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("a", 64)}, int64(len(raw))); err != nil {
				t.Fatal(err)
			}
			cf, err := img.ConfigFile()
			if err != nil || cf.Config.Cmd[0] != "/bin/sh" || cf.OS != "linux" || len(cf.RootFS.DiffIDs) != 1 || img.Pending() {
				t.Fatalf("%+v %v", cf, err)
			}
			if _, err := source.Import(context.Background(), p, source.Options{}); !errors.Is(err, source.ErrUnsupported) {
				t.Fatalf("rootfs tar without a name: %v", err)
			}
		})
	}
}

func TestSourceErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	lay := filepath.Join(dir, "layout")
	lp, _ := layout.Write(lay, empty.Index)
	a, b := testImage(t), imagetest.Image(t, nil, imagetest.LayerTar(t, imagetest.Entry{Name: "x", Body: "x"}))
	lp.AppendImage(a, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "a"}))
	lp.AppendImage(b, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "b"}))
	arm := mutate.ConfigMediaType(b, "application/vnd.oci.image.config.v1+json")
	cf, _ := arm.ConfigFile()
	cf = cf.DeepCopy()
	cf.Architecture = "arm64"
	arm, _ = mutate.ConfigFile(arm, cf)
	reg := imagetest.Registry(t)
	imagetest.Push(t, reg+"/arm:1", arm)
	for _, tc := range []struct {
		name string
		err  error
		open func() error
	}{
		{"layout with two images", source.ErrAmbiguous, func() error { _, err := source.Import(ctx, lay, source.Options{}); return err }},
		{"layout without that tag", source.ErrNotFound, func() error { _, err := source.Import(ctx, lay+":zzz", source.Options{}); return err }},
		{"plain directory", source.ErrUnsupported, func() error { _, err := source.Import(ctx, dir, source.Options{}); return err }},
		{"wrong platform", source.ErrPlatform, func() error { _, err := source.Pull(ctx, reg+"/arm:1", source.Options{}); return err }},
	} {
		if err := tc.open(); !errors.Is(err, tc.err) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.err)
		}
	}
	if _, err := source.Import(ctx, lay+":b", source.Options{}); err != nil {
		t.Fatalf("layout by tag: %v", err)
	}
	// Refusals name what the layout holds, in the form that selects each.
	for _, ref := range []string{lay, lay + ":zzz"} {
		_, err := source.Import(ctx, ref, source.Options{})
		if err == nil || !strings.Contains(err.Error(), lay+":a, "+lay+":b") {
			t.Errorf("import %s: %v, want the choices %s:a and %s:b named", ref, err, lay, lay)
		}
	}
	if _, err := source.Pull(ctx, reg+"/missing:1", source.Options{}); err == nil {
		t.Fatal("pulled a missing image")
	}
}

// A layout's images are named by tag where a tag picks one alone, else by
// digest, and a long list is cut short.
func TestLayoutChoices(t *testing.T) {
	ctx := context.Background()
	img := func(body string) v1.Image {
		return imagetest.Image(t, nil, imagetest.LayerTar(t, imagetest.Entry{Name: "f", Body: body}))
	}
	cases := []struct {
		name string
		tags []string
		want []string // %s is the layout's path; @ stands for "@sha256:"
	}{
		{"plain tags", []string{"demo", "busybox"}, []string{"%s:demo", "%s:busybox"}},
		{"full references", []string{"team/app:1", "busybox:latest"}, []string{"%s:1", "%s:latest"}},
		{"a tag two images share", []string{"a:latest", "b:latest", "c"}, []string{"%s@", "%s@", "%s:c"}},
		{"untagged", []string{"", "x"}, []string{"%s@", "%s:x"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lay := filepath.Join(t.TempDir(), "layout")
			lp, err := layout.Write(lay, empty.Index)
			if err != nil {
				t.Fatal(err)
			}
			for i, tag := range tc.tags {
				var opts []layout.Option
				if tag != "" {
					opts = append(opts, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag}))
				}
				if err := lp.AppendImage(img(fmt.Sprint(i)), opts...); err != nil {
					t.Fatal(err)
				}
			}
			_, err = source.Import(ctx, lay, source.Options{})
			if !errors.Is(err, source.ErrAmbiguous) {
				t.Fatalf("import: %v, want ErrAmbiguous", err)
			}
			msg := err.Error()
			for _, w := range tc.want {
				w = strings.ReplaceAll(fmt.Sprintf(w, lay), "@", "@sha256:")
				if !strings.Contains(msg, w) {
					t.Errorf("%q lacks %q", msg, w)
				}
				msg = strings.Replace(msg, w, "", 1)
			}
		})
	}
	t.Run("long list", func(t *testing.T) {
		lay := filepath.Join(t.TempDir(), "layout")
		lp, _ := layout.Write(lay, empty.Index)
		for i := 0; i < 25; i++ {
			if err := lp.AppendImage(img(fmt.Sprint(i)), layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": fmt.Sprint("t", i)})); err != nil {
				t.Fatal(err)
			}
		}
		_, err := source.Import(ctx, lay, source.Options{})
		if err == nil || !strings.Contains(err.Error(), lay+":t19, and 5 more") || strings.Contains(err.Error(), ":t20") {
			t.Fatalf("import: %v", err)
		}
	})
}

// A docker save archive in the layout newer docker writes (blobs/sha256/...
// directories first, manifest.json after) is a docker archive, and its
// layers are read by the paths its manifest.json gives.
func TestDockerArchiveBlobsLayout(t *testing.T) {
	layer := imagetest.LayerTar(t, imagetest.Entry{Name: "etc/", Type: tar.TypeDir}, imagetest.Entry{Name: "etc/motd", Body: "hi\n"})
	cfg := imagetest.ConfigFor("X=1", layer)
	hexOf := func(b []byte) string { return strings.TrimPrefix(imagetest.Digest(b), "sha256:") }
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, typ byte, body []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: typ, Mode: 0o644, Size: int64(len(body))}); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	add("blobs/", tar.TypeDir, nil)
	add("blobs/sha256/", tar.TypeDir, nil)
	add("blobs/sha256/"+hexOf(layer), tar.TypeReg, layer)
	add("blobs/sha256/"+hexOf(cfg), tar.TypeReg, cfg)
	add("manifest.json", tar.TypeReg, []byte(fmt.Sprintf(`[{"Config":"blobs/sha256/%s","RepoTags":["app:2"],"Layers":["blobs/sha256/%s"]}]`, hexOf(cfg), hexOf(layer))))
	tw.Close()
	p := filepath.Join(t.TempDir(), "save.tar")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := source.Import(context.Background(), p, source.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Release()
	if img.Kind != source.DockerArchive || configDigest(t, img) != imagetest.Digest(cfg) || img.Names[0] != "app:2" {
		t.Fatalf("kind %s digest %s names %v", img.Kind, configDigest(t, img), img.Names)
	}
	blobs, err := img.Blobs()
	if err != nil || len(blobs) != 1 {
		t.Fatalf("blobs %v %v", blobs, err)
	}
	rc, err := blobs[0].Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if h, _, err := v1.SHA256(rc); err != nil || h.String() != imagetest.Digest(layer) {
		t.Fatalf("layer hashes to %v %v", h, err)
	}
}
