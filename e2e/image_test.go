package e2e

import (
	"archive/tar"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// appImage has what flattening must get right: a whiteout, an opaque
// directory, a hardlink, a setuid file, a symlink and a unicode name.
func appImage(t *testing.T) v1.Image {
	E := imagetest.Entry{}
	_ = E
	return imagetest.Image(t, &v1.Config{Entrypoint: []string{"/bin/app"}, Env: []string{"MODE=demo"}, WorkingDir: "/srv"},
		imagetest.LayerTar(t,
			imagetest.Entry{Name: "bin/", Type: tar.TypeDir},
			imagetest.Entry{Name: "bin/app", Body: "#!/bin/sh\necho app\n", Mode: 0o4755},
			imagetest.Entry{Name: "bin/app-link", Type: tar.TypeLink, Linkname: "bin/app"},
			imagetest.Entry{Name: "etc/", Type: tar.TypeDir},
			imagetest.Entry{Name: "etc/old.conf", Body: "old"},
			imagetest.Entry{Name: "cache/", Type: tar.TypeDir},
			imagetest.Entry{Name: "cache/stale", Body: "stale"},
			imagetest.Entry{Name: "srv/", Type: tar.TypeDir, UID: 1000, GID: 1000},
		),
		imagetest.LayerTar(t,
			imagetest.Entry{Name: "etc/.wh.old.conf"},
			imagetest.Entry{Name: "cache/", Type: tar.TypeDir},
			imagetest.Entry{Name: "cache/.wh..wh..opq"},
			imagetest.Entry{Name: "cache/fresh", Body: "fresh"},
			imagetest.Entry{Name: "srv/grüße.txt", Body: "hallo", UID: 1000, GID: 1000},
			imagetest.Entry{Name: "srv/current", Type: tar.TypeSymlink, Linkname: "grüße.txt"},
		))
}

func debugfs(t *testing.T, img, req string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", req, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs %s: %v\n%s", req, err, out)
	}
	return string(out)
}

// Acceptance (issue 3): images built in the test, served by a registry on
// 127.0.0.1, imported by every source kind through the CLI; the ext4 base
// is clean and holds what the layers say; images in use cannot be removed.
func TestImageImportEverySource(t *testing.T) {
	testenv.RequireTool(t, "debugfs", "e2fsprogs")
	e := newEnv(t, "")
	e.daemon(t, nil)
	img := appImage(t)
	reg := imagetest.Registry(t)
	imagetest.Push(t, reg+"/app:1", img)

	// registry
	var first api.ImportOut
	if err := json.Unmarshal([]byte(e.cli(t, nil, "image", "pull", reg+"/app:1", "--json").ok(t, "pull")), &first); err != nil {
		t.Fatal(err)
	}
	if first.Cached || first.Image == nil || first.Image.Names[0] != reg+"/app:1" {
		t.Fatalf("pull: %+v", first)
	}
	digest := first.Image.Digest
	rootfs := filepath.Join(e.state, "images", strings.Replace(digest, ":", "-", 1), "rootfs.ext4")
	if out, err := exec.Command("e2fsck", "-fn", rootfs).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
	checks := []struct{ req, want string }{
		{`stat "/bin/app"`, "Mode:  04755"},
		{`stat "/bin/app"`, "Links: 2"},
		{`stat "/srv/grüße.txt"`, "User:  1000"},
		{`cat "/cache/fresh"`, "fresh"},
		{`stat "/srv/current"`, `Fast link dest: "grüße.txt"`},
	}
	for _, c := range checks {
		if out := debugfs(t, rootfs, c.req); !strings.Contains(out, c.want) {
			t.Errorf("debugfs %s: want %q in\n%s", c.req, c.want, out)
		}
	}
	for _, gone := range []string{"/etc/old.conf", "/cache/stale"} {
		if out := debugfs(t, rootfs, `stat "`+gone+`"`); !strings.Contains(out, "File not found") {
			t.Errorf("%s should be gone (whiteout/opaque):\n%s", gone, out)
		}
	}

	dir := t.TempDir()
	lay := filepath.Join(dir, "layout")
	lp, err := layout.Write(lay, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "1"})); err != nil {
		t.Fatal(err)
	}
	arch := filepath.Join(dir, "docker.tar")
	tag, _ := name.NewTag("dockerapp:2")
	if err := tarball.WriteToFile(arch, tag, img); err != nil {
		t.Fatal(err)
	}
	// The same content by other routes is stored once, under new names.
	for _, args := range [][]string{{"image", "import", lay + ":1", "--name", "layoutapp"}, {"image", "import", arch}} {
		var out api.ImportOut
		if err := json.Unmarshal([]byte(e.cli(t, nil, append(args, "--json")...).ok(t, strings.Join(args, " "))), &out); err != nil {
			t.Fatal(err)
		}
		if !out.Cached || out.Image.Digest != digest {
			t.Fatalf("%v: %+v, want cached %s", args, out, digest)
		}
	}
	// A plain rootfs tar with a config.
	rootTar := filepath.Join(dir, "root.tar")
	if err := os.WriteFile(rootTar, imagetest.LayerTar(t, imagetest.Entry{Name: "./", Type: tar.TypeDir}, imagetest.Entry{Name: "./hello", Body: "hi"}), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "cfg.json")
	os.WriteFile(cfg, []byte(`{"Cmd":["/hello"]}`), 0o644)
	plain := e.cli(t, nil, "image", "import", rootTar, "--name", "plain:1", "--config", cfg).ok(t, "import rootfs tar")
	if !strings.Contains(plain, "imported") || !strings.Contains(plain, "plain:1") {
		t.Fatalf("rootfs tar import: %s", plain)
	}

	var imgs []api.Image
	if err := json.Unmarshal([]byte(e.cli(t, nil, "image", "ls", "--json").ok(t, "image ls")), &imgs); err != nil || len(imgs) != 3 {
		t.Fatalf("image ls: %v %+v", err, imgs) // app (3 names), plain, seeded alpine
	}
	var insp api.InspectImageOut
	if err := json.Unmarshal([]byte(e.cli(t, nil, "image", "inspect", "dockerapp:2").ok(t, "inspect")), &insp); err != nil {
		t.Fatal(err)
	}
	if insp.Image.Digest != digest || !strings.Contains(string(insp.Config), `"/bin/app"`) || len(insp.Image.Names) != 3 {
		t.Fatalf("inspect: %+v %s", insp.Image, insp.Config)
	}

	// In use: refused; after the VM goes, removed.
	e.cli(t, nil, "create", "uses-app", "--image", "layoutapp:1").ok(t, "create from imported image")
	if r := e.cli(t, nil, "image", "rm", "layoutapp:1"); r.code != 1 || !strings.Contains(r.stderr, "ImageInUse") || !strings.Contains(r.stderr, "uses-app") {
		t.Fatalf("rm in use: %+v", r)
	}
	e.cli(t, nil, "rm", "uses-app").ok(t, "rm vm")
	e.cli(t, nil, "image", "rm", "layoutapp:1").ok(t, "image rm")
	if _, err := os.Stat(filepath.Dir(rootfs)); !os.IsNotExist(err) {
		t.Fatalf("image directory left: %v", err)
	}
	if r := e.cli(t, nil, "image", "inspect", digest); r.code != 1 || !strings.Contains(r.stderr, "ImageNotFound") {
		t.Fatalf("inspect removed: %+v", r)
	}
}

// A hostile image is refused naming the entry, writes nothing outside the
// scratch space, and leaves no cache entry or scratch behind.
func TestHostileImageLeavesNothing(t *testing.T) {
	e := newEnv(t, "")
	e.daemon(t, nil)
	canary := t.TempDir()
	reg := imagetest.Registry(t)
	cases := map[string][]byte{
		"dotdot":  imagetest.LayerTar(t, imagetest.Entry{Name: "../../../../" + strings.TrimPrefix(canary, "/") + "/pwned", Body: "x"}),
		"symlink": imagetest.LayerTar(t, imagetest.Entry{Name: "esc", Type: tar.TypeSymlink, Linkname: canary}, imagetest.Entry{Name: "esc/pwned", Body: "x"}),
	}
	for n, layer := range cases {
		imagetest.Push(t, reg+"/evil:"+n, imagetest.Image(t, nil, layer))
		r := e.cli(t, nil, "image", "pull", reg+"/evil:"+n)
		if r.code != 1 || !strings.Contains(r.stderr, "entry") || !strings.Contains(r.stderr, "sha256:") {
			t.Fatalf("%s: %+v", n, r)
		}
	}
	if ents, _ := os.ReadDir(canary); len(ents) != 0 {
		t.Fatalf("canary touched: %v", ents)
	}
	ents, _ := os.ReadDir(filepath.Join(e.state, "images"))
	for _, en := range ents {
		if strings.HasPrefix(en.Name(), ".") {
			t.Fatalf("left in the image store: %s", en.Name())
		}
	}
	scratch, _ := os.ReadDir(filepath.Join(e.dir, "cache", "scratch"))
	if len(scratch) != 0 {
		t.Fatalf("scratch left: %v", scratch)
	}
	// The refused layers' blobs were read only in part: none is cached,
	// under its digest or as a temporary file.
	blobs, err := os.ReadDir(filepath.Join(e.dir, "cache", "blobs"))
	if err != nil || len(blobs) != 0 {
		t.Fatalf("blob cache after refused images: %v %v", blobs, err)
	}
}

// Defect (issue 9, #4): importing an OCI layout that holds several images
// names each in the form that imports it; one of those forms then works.
func TestImportLayoutNamesItsImages(t *testing.T) {
	e := newEnv(t, "")
	e.daemon(t, nil)
	lay := filepath.Join(t.TempDir(), "layout")
	lp, err := layout.Write(lay, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for _, tag := range []string{"demo", "busybox"} {
		img := imagetest.Image(t, nil, imagetest.LayerTar(t, imagetest.Entry{Name: tag, Body: tag}))
		if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
			t.Fatal(err)
		}
	}
	r := e.cli(t, nil, "image", "import", lay)
	if r.code != 1 || !strings.Contains(r.stderr, lay+":demo") || !strings.Contains(r.stderr, lay+":busybox") {
		t.Fatalf("import of a layout with two images: %+v", r)
	}
	if out := e.cli(t, nil, "image", "import", lay+":busybox", "--name", "bb").ok(t, "import by tag"); !strings.Contains(out, "bb:busybox") {
		t.Fatalf("import by tag: %s", out)
	}
}
