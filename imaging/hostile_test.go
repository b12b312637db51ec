package imaging_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/imaging/blobcache"
	"github.com/paddock-vm/paddock/imaging/flatten"
	ft "github.com/paddock-vm/paddock/imaging/flatten/flattentest"
	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/imaging/source"
)

func gz(t testing.TB, b []byte, name string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Name = name // two encodings of one tar differ by it
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// compressStream compresses n bytes of the endless stream made by
// repeating chunk after head, returning the blob and the stream's diff id.
func compressStream(t testing.TB, zstdOrGzip string, head, chunk []byte, n int64) ([]byte, string) {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	switch zstdOrGzip {
	case "zstd":
		zw, err := zstd.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		w = zw
	case "gzip-fast":
		w, _ = gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	default:
		w, _ = gzip.NewWriterLevel(&buf, gzip.BestCompression)
	}
	h := sha256.New()
	mw := io.MultiWriter(w, h)
	mw.Write(head)
	for left := n - int64(len(head)); left > 0; left -= int64(len(chunk)) {
		mw.Write(chunk[:min(int64(len(chunk)), left)])
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), "sha256:" + string(hexOf(h.Sum(nil)))
}

func hexOf(b []byte) []byte {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return out
}

// tarBuild stands in for mkfs: the "disk image" is the flattened tree as a tar.
func tarBuild(ctx context.Context, res *flatten.Result, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	return res.Emit(ctx, f)
}

// fileIn reads one file of a tar written by tarBuild.
func fileIn(t testing.TB, tarPath, name string) string {
	t.Helper()
	f, err := os.Open(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s not in %s: %v", name, tarPath, err)
		}
		if strings.TrimPrefix(h.Name, "./") == name {
			b, _ := io.ReadAll(tr)
			return string(b)
		}
	}
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// listing is every name under dir, for "nothing was written" checks.
func listing(t testing.TB, dir string) string {
	t.Helper()
	var names []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && p != dir {
			names = append(names, strings.TrimPrefix(p, dir))
		}
		return nil
	})
	return strings.Join(names, "\n")
}

// The hostile-input corpus: squatted configs, blobs that are not what the
// manifest says, wrong diff ids, and bombs of every kind, through every
// source kind. Each is refused with a message naming the layer (or entry),
// nothing is written outside scratch (the store and the cache stay as they
// were), and scratch is empty again.
func TestHostileImages(t *testing.T) {
	const limit = 16 << 20
	real := imagetest.LayerTar(t, imagetest.Entry{Name: "etc/", Type: tar.TypeDir}, imagetest.Entry{Name: "etc/os-release", Body: "NAME=real\n"})
	evil := imagetest.LayerTar(t, imagetest.Entry{Name: "etc/", Type: tar.TypeDir}, imagetest.Entry{Name: "etc/os-release", Body: "NAME=squatter\n"})
	realCfg := imagetest.ConfigFor("WHO=real", real)
	realGz := gz(t, real, "")
	realParts := imagetest.Parts{Config: realCfg, Layers: [][]byte{realGz}}
	squat := imagetest.Parts{Config: realCfg, Layers: [][]byte{gz(t, evil, "")}}

	// Bombs: small blobs that read as far more than the limit.
	tarHead := ft.Tar(t, ft.File("a", "a", 0))
	zeros := make([]byte, 1<<20)
	zeroBomb, zeroDiff := compressStream(t, "zstd", tarHead, zeros, 128<<20)
	wh := ft.Tar(t, ft.Whiteout("x"))
	wh = wh[:len(wh)-1024] // one whiteout entry, repeated: tar without an end
	entryBomb, _ := compressStream(t, "gzip", nil, wh, 64<<20)
	var bigTar bytes.Buffer
	tar.NewWriter(&bigTar).WriteHeader(&tar.Header{Name: "big", Mode: 0o644, Size: 128 << 20, Typeflag: tar.TypeReg})
	bigHdr := bigTar.Bytes()[:512] // a file's header; its zeros follow
	fileBomb, _ := compressStream(t, "zstd", bigHdr, zeros, 128<<20+512)

	dir := t.TempDir()
	writeFile := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	layout := func(name string, p imagetest.Parts) func() (*source.Image, error) {
		lay := filepath.Join(dir, name)
		p.WriteLayout(t, lay, "1")
		return func() (*source.Image, error) {
			return source.Import(context.Background(), lay, source.Options{Name: "evil"})
		}
	}
	registry := func(p imagetest.Parts) func() (*source.Image, error) {
		host := p.Serve(t, "evil", "1")
		return func() (*source.Image, error) {
			return source.Pull(context.Background(), host+"/evil:1", source.Options{})
		}
	}
	file := func(name string, b []byte, o source.Options) func() (*source.Image, error) {
		p := writeFile(name, b)
		return func() (*source.Image, error) { return source.Import(context.Background(), p, o) }
	}
	rootfs := source.Options{Name: "bomb:1", MaxUnpackedSize: limit}
	sparseOnDisk := writeFile("sparse-on-disk.tar", ft.Tar(t, ft.File("a", "a", 0)))
	if err := os.Truncate(sparseOnDisk, 1<<40); err != nil {
		t.Fatal(err)
	}
	regBomb := imagetest.Parts{Config: []byte(strings.Replace(string(imagetest.ConfigFor("X=1", nil)), `"diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]`, `"diff_ids":["`+zeroDiff+`"]`, 1)),
		Layers: [][]byte{zeroBomb}}

	cases := []struct {
		name string
		open func() (*source.Image, error)
		want []string // the error names these
	}{
		{"squatted config, oci layout", layout("squat-layout", squat), []string{"layer 1 of 1", "diff id " + imagetest.Digest(real)}},
		{"squatted config, registry", registry(squat), []string{"layer 1 of 1", "diff id " + imagetest.Digest(real)}},
		{"squatted config, docker archive", file("squat.tar", imagetest.Parts{Config: realCfg, Layers: [][]byte{evil}}.DockerArchive(t, "evil:1", nil), source.Options{}),
			[]string{"layer 1 of 1", "diff id " + imagetest.Digest(real)}},
		{"config under another config's digest", layout("swapped-config", imagetest.Parts{Config: imagetest.ConfigFor("WHO=real", evil),
			ConfigDigest: imagetest.Digest(realCfg), Layers: [][]byte{gz(t, evil, "")}}), []string{"config", strings.TrimPrefix(imagetest.Digest(realCfg), "sha256:")}}, // the layout reader or the importer refuses it
		{"blob not what the manifest says, oci layout", layout("blob-layout", imagetest.Parts{Config: realCfg, Layers: [][]byte{gz(t, real, "other")},
			LayerDigests: []string{imagetest.Digest(realGz)}}), []string{"layer 1 of 1", "blob " + imagetest.Digest(realGz)}},
		// (a layer the cache does not hold: a cached one is not fetched)
		{"blob not what the manifest says, registry", registry(imagetest.Parts{Config: imagetest.ConfigFor("X=1", evil), Layers: [][]byte{gz(t, evil, "other")},
			LayerDigests: []string{imagetest.Digest(gz(t, evil, ""))}}), []string{"layer 1 of 1", "blob " + imagetest.Digest(gz(t, evil, ""))}},
		{"wrong diff id of the second layer", layout("diff2", imagetest.Parts{Config: imagetest.ConfigFor("X=1", real, real), Layers: [][]byte{realGz, gz(t, evil, "")}}),
			[]string{"layer 2 of 2", "diff id " + imagetest.Digest(real)}},
		{"more layers than diff ids", layout("count", imagetest.Parts{Config: realCfg, Layers: [][]byte{realGz, realGz}}), []string{"lists 2 layers", "names 1"}},
		{"zstd bomb: zeros after the end of the tar", file("zeros.tar.zst", zeroBomb, rootfs), []string{"layer 1 of 1", "follow the end of the tar archive"}},
		{"gzip bomb: endless entries", file("entries.tar.gz", entryBomb, rootfs), []string{"layer 1 of 1", "max_unpacked_size"}},
		{"zstd bomb: one huge file", file("file.tar.zst", fileBomb, rootfs), []string{`"big"`, "max_unpacked_size"}},
		{"zstd bomb from a registry", registry(regBomb), []string{"layer 1 of 1", "follow the end of the tar archive"}},
		{"sparse entry of 16 TiB", file("sparse.tar", ft.SparseTar("hole", 16<<40), rootfs), []string{`entry "hole"`, "max_unpacked_size"}},
		{"sparse file of 1 TiB on disk", func() (*source.Image, error) { return source.Import(context.Background(), sparseOnDisk, rootfs) },
			[]string{`entry "a"`, "follow the end of the tar archive"}},
		{"sparse layer entry in a docker archive", file("sparse-docker.tar",
			realParts.DockerArchive(t, "evil:1", ft.SparseTar(realParts.LayerFile(0), 1<<40)), source.Options{}),
			[]string{realParts.LayerFile(0), "sparse file"}},
		{"garbage after the end of the tar", file("junk.tar", append(ft.Tar(t, ft.File("a", "a", 0)), bytes.Repeat([]byte("junk"), 1<<19)...), rootfs),
			[]string{`entry "a"`, "follow the end of the tar archive"}},
		{"garbage after the compressed stream", layout("junk-gz", imagetest.Parts{Config: realCfg, Layers: [][]byte{append(gz(t, real, ""), bytes.Repeat([]byte("junk"), 1<<19)...)}}),
			[]string{"layer 1 of 1"}},
	}

	root := t.TempDir()
	store, err := imaging.OpenStore(filepath.Join(root, "state"))
	if err != nil {
		t.Fatal(err)
	}
	cache, err := blobcache.Open(filepath.Join(root, "blobs"), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	scratch := filepath.Join(root, "scratch")
	im := &imaging.Importer{Store: store, ScratchDir: scratch, Build: tarBuild, Cache: cache,
		Limits: flatten.Options{MaxUnpackedSize: limit}}
	// The honest image goes in first: its blob is cached, its base stored.
	realSrc, err := registry(realParts)()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.Import(context.Background(), realSrc, nil); err != nil {
		t.Fatalf("the honest image: %v", err)
	}
	storeBefore := listing(t, store.Root)
	cacheBefore, _ := cache.Size()
	if cacheBefore == 0 {
		t.Fatal("the honest image's blob was not cached")
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cpu0, t0 := cpuSeconds(), time.Now()
			var last imaging.Progress
			src, err := tc.open()
			if err == nil {
				defer func() {
					if src.Release != nil {
						src.Release()
					}
				}()
				// A fresh store must not serve it either: the squatted
				// digest is the honest image's, stored above.
				_, err = (&imaging.Importer{Store: mustStore(t), ScratchDir: scratch, Build: tarBuild, Cache: cache,
					Limits: flatten.Options{MaxUnpackedSize: limit}}).Import(context.Background(), src, func(p imaging.Progress) { last = p })
			}
			if err == nil {
				t.Fatal("imported")
			}
			msg := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not name %q", msg, w)
				}
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("error %v is not InvalidArgument", err)
			}
			t.Logf("refused after %d blob bytes, %.3f s CPU, %v: %v", last.Bytes, cpuSeconds()-cpu0, time.Since(t0).Round(time.Millisecond), err)
			if got := listing(t, store.Root); got != storeBefore {
				t.Errorf("image store changed:\n%s\nwas:\n%s", got, storeBefore)
			}
			if n, _ := cache.Size(); n != cacheBefore {
				t.Errorf("blob cache holds %d bytes, was %d", n, cacheBefore)
			}
			if ents, _ := os.ReadDir(scratch); len(ents) != 0 {
				t.Errorf("scratch left: %v", ents)
			}
		})
	}
}

func mustStore(t testing.TB) *imaging.Store {
	t.Helper()
	s, err := imaging.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}
