package ext4_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/imaging/ext4"
	"github.com/paddock-vm/paddock/imaging/flatten"
)

// BenchmarkBuild measures the rootless import (flatten + stage + mkfs -d +
// debugfs + e2fsck + fsync + removing the staging tree; freeing the
// flattened tree's spill is reported apart) of one image and, in the same run, the
// reference "tar -x of the flattened stream, then mkfs.ext4 -d" (what root
// would do; with root privileges tar sets owners and device nodes itself).
// It reports ratio = ours / reference.
//
// The image is PADDOCK_BENCH_ROOTFS_TAR (e.g. a debootstrap --variant=
// minbase tree tarred with --numeric-owner --xattrs) plus a small upper
// layer, or else a synthetic 3-layer image of ~6k entries / ~120 MB.
// Scratch and images go to PADDOCK_TEST_SCRATCH or /dev/shm.
//
//	go test -run XXX -bench Build -benchtime 3x ./imaging/ext4
func BenchmarkBuild(b *testing.B) {
	requireTools(b)
	work := testDir(b)
	layers := benchLayers(b, work)
	ctx := context.Background()

	// The flattened stream and its summary, for the reference.
	flat, err := flatten.Flatten(ctx, openLayers(b, layers), flatten.Options{ScratchDir: work})
	if err != nil {
		b.Fatal(err)
	}
	sum := flat.Summary
	flatTar := filepath.Join(work, "flat.tar")
	f, err := os.Create(flatTar)
	if err != nil {
		b.Fatal(err)
	}
	if err := flat.Emit(ctx, f); err != nil {
		b.Fatal(err)
	}
	f.Close()
	flat.Close()
	size, inodes := ext4.SizeFor(sum, 0)
	b.Logf("image: %d entries, %d inodes, %d MB content, %d layers; fs %d MiB, -N %d",
		sum.Entries, sum.Inodes, sum.ContentBytes>>20, len(layers), size>>20, inodes)

	var ours, ref, flatTime, cleanup time.Duration
	var last *ext4.Result
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StartTimer()
		t0 := time.Now()
		out := filepath.Join(work, "ours-"+strconv.Itoa(i)+".ext4")
		fl, err := flatten.Flatten(ctx, openLayers(b, layers), flatten.Options{ScratchDir: work})
		if err != nil {
			b.Fatal(err)
		}
		tf := time.Now()
		res, err := ext4.BuildFlattened(ctx, fl, out, ext4.Options{ScratchDir: work, Tools: testTools()})
		if err != nil {
			b.Fatal(err)
		}
		flatTime += tf.Sub(t0)
		ours += time.Since(t0)
		last = res
		b.StopTimer()
		// Freeing the spilled contents is left out, as the reference's
		// rm -rf of its tree is.
		tc := time.Now()
		fl.Close()
		cleanup += time.Since(tc)
		os.Remove(out)

		ref += reference(b, work, flatTar, size, inodes)
	}
	n := float64(b.N)
	b.ReportMetric(float64(ours.Milliseconds())/n, "ours-ms/op")
	b.ReportMetric(float64(ref.Milliseconds())/n, "ref-ms/op")
	b.ReportMetric(float64(ours)/float64(ref), "ratio")
	b.ReportMetric(float64(flatTime.Milliseconds())/n, "flatten-ms/op")
	b.ReportMetric(float64(cleanup.Milliseconds())/n, "close-ms/op")
	b.Logf("last build: %+v, fixup lines %d, allocated %d MiB, tar-stdin %v", last.Timings, last.FixupLines, last.Allocated>>20, last.TarStdin)
}

// reference: tar -x into a fresh dir, then mkfs.ext4 -d with the same
// options and size, without the debugfs pass, e2fsck or fsync.
func reference(b *testing.B, work, flatTar string, size, inodes int64) time.Duration {
	b.Helper()
	dir := filepath.Join(work, "ref-tree")
	img := filepath.Join(work, "ref.ext4")
	os.RemoveAll(dir)
	os.Remove(img)
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	defer os.Remove(img)
	t0 := time.Now()
	tarCmd := exec.Command("tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", flatTar, "-C", dir)
	if out, err := tarCmd.CombinedOutput(); err != nil && os.Geteuid() == 0 {
		b.Fatalf("reference tar -x: %v: %.500s", err, out) // as non-root, mknod/chown failures are expected
	}
	f, err := os.Create(img)
	if err != nil {
		b.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	mk := testTools().Mke2fs
	if mk == "" {
		mk = tool("mke2fs")
	}
	mkfs := exec.Command(mk, "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0", "-N", strconv.FormatInt(inodes, 10),
		"-E", "root_owner=0:0,assume_storage_prezeroed=1", "-d", dir, img)
	if out, err := mkfs.CombinedOutput(); err != nil {
		b.Fatalf("reference mkfs: %v: %s", err, out)
	}
	return time.Since(t0)
}

// benchLayers writes the benchmark's layer tars to files and returns their paths.
func benchLayers(b *testing.B, work string) []string {
	b.Helper()
	var paths []string
	if p := os.Getenv("PADDOCK_BENCH_ROOTFS_TAR"); p != "" {
		paths = append(paths, p)
	} else {
		paths = append(paths, writeTar(b, work, "base.tar", syntheticBase))
		paths = append(paths, writeTar(b, work, "mid.tar", syntheticMid))
	}
	return append(paths, writeTar(b, work, "top.tar", syntheticTop))
}

func writeTar(b *testing.B, dir, name string, gen func(*tar.Writer)) string {
	b.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	tw := tar.NewWriter(f)
	gen(tw)
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	f.Close()
	return p
}

func openLayers(b *testing.B, paths []string) []flatten.Layer {
	var ls []flatten.Layer
	for _, p := range paths {
		p := p
		ls = append(ls, flatten.Layer{Digest: filepath.Base(p), Open: func() (io.ReadCloser, error) { return os.Open(p) }})
	}
	return ls
}

var benchTime = time.Unix(1700000000, 0)

func put(tw *tar.Writer, h *tar.Header, body []byte) {
	h.ModTime = benchTime
	if h.Typeflag == tar.TypeReg {
		h.Size = int64(len(body))
	}
	if h.Mode == 0 {
		h.Mode = 0o644
	}
	tw.WriteHeader(h)
	tw.Write(body)
}

// syntheticBase looks like a distribution rootfs: 300 directories, 5,000
// files with a long-tailed size distribution (~110 MB), 600 symlinks,
// hardlinks, devices, setuid binaries.
func syntheticBase(tw *tar.Writer) {
	rnd := rand.New(rand.NewSource(1))
	data := make([]byte, 8<<20)
	rnd.Read(data)
	put(tw, &tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	for d := 0; d < 300; d++ {
		put(tw, &tar.Header{Name: fmt.Sprintf("usr/share/pkg%03d/", d), Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	}
	for i := 0; i < 5000; i++ {
		size := 1 << (6 + rnd.Intn(12)) // 64 B … 128 KiB
		if i%500 == 0 {
			size = 4 << 20
		}
		size += rnd.Intn(size)
		off := rnd.Intn(len(data) - size)
		mode := int64(0o644)
		if i%700 == 0 {
			mode = 0o4755
		}
		put(tw, &tar.Header{Name: fmt.Sprintf("usr/share/pkg%03d/file-%05d", i%300, i), Typeflag: tar.TypeReg, Mode: mode}, data[off:off+size])
	}
	for i := 0; i < 600; i++ {
		put(tw, &tar.Header{Name: fmt.Sprintf("usr/share/pkg%03d/link-%04d", i%300, i), Typeflag: tar.TypeSymlink,
			Linkname: fmt.Sprintf("file-%05d", i), Mode: 0o777}, nil)
	}
	for i := 0; i < 50; i++ {
		put(tw, &tar.Header{Name: fmt.Sprintf("usr/share/pkg%03d/hard-%04d", i%300, i), Typeflag: tar.TypeLink,
			Linkname: fmt.Sprintf("usr/share/pkg%03d/file-%05d", i%300, i)}, nil)
	}
	put(tw, &tar.Header{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	for i := 0; i < 8; i++ {
		put(tw, &tar.Header{Name: fmt.Sprintf("dev/tty%d", i), Typeflag: tar.TypeChar, Devmajor: 4, Devminor: int64(i), Mode: 0o620, Gid: 5}, nil)
	}
}

// syntheticMid rewrites and deletes part of the base.
func syntheticMid(tw *tar.Writer) {
	for i := 0; i < 200; i++ {
		put(tw, &tar.Header{Name: fmt.Sprintf("usr/share/pkg%03d/file-%05d", i%300, i*7), Typeflag: tar.TypeReg}, bytes.Repeat([]byte{byte(i)}, 3000))
		put(tw, &tar.Header{Name: fmt.Sprintf("usr/share/pkg%03d/.wh.file-%05d", (i+1)%300, i*7+1), Typeflag: tar.TypeReg}, nil)
	}
	put(tw, &tar.Header{Name: "usr/share/pkg010/.wh..wh..opq", Typeflag: tar.TypeReg}, nil)
}

// syntheticTop is a small application layer with owners and xattrs.
func syntheticTop(tw *tar.Writer) {
	put(tw, &tar.Header{Name: "app/", Typeflag: tar.TypeDir, Mode: 0o750, Uid: 1000, Gid: 1000}, nil)
	for i := 0; i < 50; i++ {
		put(tw, &tar.Header{Name: fmt.Sprintf("app/f%02d", i), Typeflag: tar.TypeReg, Uid: 1000, Gid: 1000}, bytes.Repeat([]byte("app"), 1000))
	}
	put(tw, &tar.Header{Name: "app/ping", Typeflag: tar.TypeReg, Mode: 0o755,
		PAXRecords: map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"}}, []byte("ping"))
}
