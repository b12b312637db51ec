package imaging_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/imaging/blobcache"
	"github.com/paddock-vm/paddock/imaging/flatten"
	ft "github.com/paddock-vm/paddock/imaging/flatten/flattentest"
	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/imaging/source"
)

func osRelease(name string) []byte {
	return ft.MustTar(ft.Dir("etc", 0), ft.File("etc/os-release", "NAME="+name+"\n", 0))
}

// An entry stored before content was verified (an older paddock kept a
// squatter's layer under the real config's digest) does not serve a later
// import of that digest: the import builds it again from verified layers,
// keeping the entry's names and owners.
func TestUnverifiedEntryIsRebuilt(t *testing.T) {
	realLayer := osRelease("real")
	parts := imagetest.Parts{Config: imagetest.ConfigFor("WHO=real", realLayer), Layers: [][]byte{gz(t, realLayer, "")}}
	digest := imagetest.Digest(parts.Config)
	store := mustStore(t)
	// The squatted entry, as an older paddock stored it.
	dir := store.Dir(digest)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rootfs.ext4"), ft.MustTar(ft.Dir("etc", 0), ft.File("etc/os-release", "NAME=squatter\n", 0)), 0o440); err != nil {
		t.Fatal(err)
	}
	old := &imaging.Image{Digest: digest, RootFS: "rootfs.ext4"}
	if err := store.Add(old); err != nil {
		t.Fatal(err)
	}
	owner := imaging.UserNamespace(1001)
	if err := store.Hold(owner, digest, []string{"debian:12"}); err != nil {
		t.Fatal(err)
	}
	builds := 0
	im := &imaging.Importer{Store: store, ScratchDir: t.TempDir(), Build: func(ctx context.Context, res *flatten.Result, out string) error {
		builds++
		return tarBuild(ctx, res, out)
	}}
	host := parts.Serve(t, "debian", "12")
	for i, wantBuilds := range []int{1, 1} { // then it is verified: served as is
		src, err := source.Pull(context.Background(), host+"/debian:12", source.Options{})
		if err != nil {
			t.Fatal(err)
		}
		img, err := im.Import(context.Background(), src, nil)
		if err != nil {
			t.Fatal(err)
		}
		if builds != wantBuilds || !img.Verified || img.Digest != digest {
			t.Fatalf("import %d: %d builds, %+v", i+1, builds, img)
		}
		if got := fileIn(t, filepath.Join(store.Dir(digest), img.RootFS), "etc/os-release"); got != "NAME=real\n" {
			t.Fatalf("import %d: the base holds %q", i+1, got)
		}
		stored, _ := store.View(imaging.Viewer{Namespace: owner}, digest)
		if stored == nil || !stored.Verified || !strings.Contains(strings.Join(stored.Names, ","), "debian:12") || len(stored.Owners) != 1 || stored.Owners[0] != 1001 {
			t.Fatalf("stored %+v: want verified, names and owners kept", stored)
		}
	}
	if ents, _ := filepath.Glob(filepath.Join(store.Root, "sha256-*")); len(ents) != 1 {
		t.Fatalf("store holds %v, want the one image", ents)
	}
}

// A rootfs tar is read once: hashed while flattened, its digest known
// after. The same tar gives the same digest however it is compressed, and a
// second import of it is served from the store without a build.
func TestRootfsTarOnePass(t *testing.T) {
	dir := t.TempDir()
	raw := osRelease("box")
	var zs bytes.Buffer
	zw, _ := zstd.NewWriter(&zs)
	zw.Write(raw)
	zw.Close()
	builds := 0
	store := mustStore(t)
	im := &imaging.Importer{Store: store, ScratchDir: filepath.Join(dir, "scratch"), Build: func(ctx context.Context, res *flatten.Result, out string) error {
		builds++
		return tarBuild(ctx, res, out)
	}}
	var digests []string
	for _, tc := range []struct {
		name string
		body []byte
	}{{"plain.tar", raw}, {"zstd.tar.zst", zs.Bytes()}} {
		p := filepath.Join(dir, tc.name)
		if err := os.WriteFile(p, tc.body, 0o644); err != nil {
			t.Fatal(err)
		}
		src, err := source.Import(context.Background(), p, source.Options{Name: "box:1", Config: []byte(`{"Cmd":["/bin/sh"]}`)})
		if err != nil {
			t.Fatal(err)
		}
		if d, err := imaging.Key(src); err != nil || d != "" {
			t.Fatalf("a rootfs tar's digest before reading: %q %v", d, err)
		}
		var last imaging.Progress
		img, err := im.Import(context.Background(), src, func(p imaging.Progress) {
			if p.Phase == "layers" {
				last = p
			}
		})
		src.Release()
		if err != nil {
			t.Fatal(err)
		}
		if last.LayerBytes != int64(len(tc.body)) {
			t.Errorf("%s: read %d bytes of its %d", tc.name, last.LayerBytes, len(tc.body))
		}
		cfg, _ := os.ReadFile(filepath.Join(store.Dir(img.Digest), "config.json"))
		var cf struct {
			Config struct{ Cmd []string }
			RootFS struct {
				DiffIDs []string `json:"diff_ids"`
			} `json:"rootfs"`
		}
		if err := json.Unmarshal(cfg, &cf); err != nil || cf.Config.Cmd[0] != "/bin/sh" || cf.RootFS.DiffIDs[0] != imagetest.Digest(raw) {
			t.Fatalf("%s: config %s", tc.name, cfg)
		}
		digests = append(digests, img.Digest)
	}
	if digests[0] != digests[1] || builds != 1 {
		t.Fatalf("digests %v after %d builds; want one digest, one build", digests, builds)
	}
}

// The blob cache serves a verified blob without asking the registry again;
// an entry damaged on disk is refused, dropped, and fetched again next time.
func TestBlobCache(t *testing.T) {
	layer := osRelease("cached")
	blob := gz(t, layer, "")
	parts := imagetest.Parts{Config: imagetest.ConfigFor("X=1", layer), Layers: [][]byte{blob}}
	host := parts.Serve(t, "app", "1")
	// A registry that serves garbage under the same digest: only the cache
	// can make an import from it succeed.
	liar := parts
	liar.Layers = [][]byte{bytes.Repeat([]byte{'x'}, len(blob))}
	liar.LayerDigests = []string{imagetest.Digest(blob)}
	liarHost := liar.Serve(t, "app", "1")
	cacheDir := filepath.Join(t.TempDir(), "blobs")
	cache, err := blobcache.Open(cacheDir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	importFrom := func(h string) error {
		t.Helper()
		src, err := source.Pull(context.Background(), h+"/app:1", source.Options{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = (&imaging.Importer{Store: mustStore(t), ScratchDir: t.TempDir(), Build: tarBuild, Cache: cache}).Import(context.Background(), src, nil)
		return err
	}
	if err := importFrom(liarHost); err == nil || !errors.Is(err, imaging.ErrMismatch) {
		t.Fatalf("import of a lying registry with an empty cache: %v", err)
	}
	if n, _ := cache.Size(); n != 0 {
		t.Fatalf("cache holds %d bytes after a refused blob", n)
	}
	if err := importFrom(host); err != nil {
		t.Fatal(err)
	}
	if err := importFrom(liarHost); err != nil {
		t.Fatalf("the cached blob was not served: %v", err)
	}
	entry := filepath.Join(cacheDir, strings.Replace(imagetest.Digest(blob), ":", "-", 1))
	if err := os.WriteFile(entry, bytes.Repeat([]byte{'y'}, len(blob)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := importFrom(liarHost); !errors.Is(err, imaging.ErrMismatch) || !strings.Contains(err.Error(), "layer 1 of 1") {
		t.Fatalf("a damaged cache entry: %v", err)
	}
	if _, err := os.Stat(entry); !os.IsNotExist(err) {
		t.Fatalf("the damaged entry stayed: %v", err)
	}
	if err := importFrom(host); err != nil {
		t.Fatal(err)
	}
}

// An import stops reading as soon as the caller goes (the client hung up):
// a bomb within the limit is not read to its end, and nothing is left.
func TestImportStopsWhenCallerGoes(t *testing.T) {
	wh := ft.Tar(t, ft.Whiteout("x"))
	wh = wh[:len(wh)-1024]
	const streamSize = 256 << 20
	// gzip: its decoder reads the blob as it goes, so the count of blob
	// bytes read tells how far reading got.
	bomb, _ := compressStream(t, "gzip-fast", nil, wh, streamSize)
	dir := t.TempDir()
	p := filepath.Join(dir, "bomb.tar.gz")
	if err := os.WriteFile(p, bomb, 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := source.Import(context.Background(), p, source.Options{Name: "bomb:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Release()
	scratch := filepath.Join(dir, "scratch")
	store := mustStore(t)
	// Limits that let it run: the default 16 GiB, and entries enough.
	im := &imaging.Importer{Store: store, ScratchDir: scratch, Build: tarBuild, Limits: flatten.Options{MaxEntries: 1 << 40}}
	ctx, cancel := context.WithCancel(context.Background())
	var read atomic.Int64
	cpu0 := cpuSeconds()
	_, err = im.Import(ctx, src, func(p imaging.Progress) {
		read.Store(p.LayerBytes)
		if p.LayerBytes > 0 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	t.Logf("stopped after %d of %d blob bytes (%d bytes decompressed in all), %.3f s CPU", read.Load(), len(bomb), int64(streamSize), cpuSeconds()-cpu0)
	if read.Load() >= int64(len(bomb)) {
		t.Fatalf("read the whole bomb (%d bytes) after the caller went", read.Load())
	}
	if ents, _ := os.ReadDir(scratch); len(ents) != 0 {
		t.Errorf("scratch left: %v", ents)
	}
	if ents, _ := os.ReadDir(store.Root); len(ents) != 0 {
		t.Errorf("store left: %v", ents)
	}
}
