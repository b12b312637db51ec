package disk

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/internal/looptest"
	"golang.org/x/sys/unix"
)

// BenchmarkCreate times Create for every backend usable here, as a ratio to
// a reference measured in the same run on the same file system: a plain
// hole-preserving copy of the base, `cp --sparse=always --reflink=never`
// followed by an fsync (what Create must beat). The base is a 1 GiB ext4 image
// with 200 MiB of content, like a small distro image; each backend is timed
// at the base's size (the clone alone) and grown to 2 GiB (the default disk
// size: clone + resize2fs, or qemu-img's virtual size).
//
// Metrics: x-ref (Create time / reference time, lower is better), ref-ms,
// extra-MiB (space the layer adds: blocks of its own files; for reflink the
// free-space drop of the private xfs, as shared extents count in st_blocks).
//
//	go test ./host/disk -run '^$' -bench Create -benchtime 5x
func BenchmarkCreate(b *testing.B) {
	const baseSize, content = 1 << 30, 200 << 20
	bases := map[string]string{} // images dir -> base
	for _, name := range Order {
		opts, images, skip := envFor(b, name)
		if skip != "" {
			b.Run(name, func(b *testing.B) { b.Skip(skip) })
			continue
		}
		base, ok := bases[images]
		if !ok {
			base = makeBase(b, images, baseSize, content)
			bases[images] = base
		}
		bk, err := Get(name, opts)
		if err != nil {
			b.Fatal(err)
		}
		for _, size := range []int64{baseSize, 2 << 30} {
			b.Run(fmt.Sprintf("%s/%dMiB", name, size>>20), func(b *testing.B) {
				benchCreate(b, bk, opts, base, size)
			})
		}
	}
}

func benchCreate(b *testing.B, bk Backend, opts Options, base string, size int64) {
	ctx := context.Background()
	vmDir := filepath.Join(opts.Dir, "bench")
	if err := os.MkdirAll(vmDir, 0o755); err != nil {
		b.Fatal(err)
	}
	defer looptest.NoLoopsOn(b, vmDir, base)
	var create, ref time.Duration
	var extra int64
	b.ResetTimer()
	b.StopTimer() // only Create runs with the timer on
	for i := 0; i < b.N; i++ {
		free0 := freeBytes(b, opts.Dir)
		b.StartTimer()
		t0 := time.Now()
		d, err := bk.Create(ctx, vmDir, base, size)
		create += time.Since(t0)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		extra += layerExtra(b, d, free0)
		if err := bk.Release(ctx, d); err != nil {
			b.Fatal(err)
		}
		ref += refCopy(b, base, filepath.Join(vmDir, "ref.raw"))
	}
	b.ReportMetric(float64(create)/float64(ref), "x-ref")
	b.ReportMetric(float64(ref.Milliseconds())/float64(b.N), "ref-ms")
	b.ReportMetric(float64(extra)/float64(b.N)/(1<<20), "extra-MiB")
}

// refCopy is the reference: cp --sparse=always --reflink=never, then fsync.
func refCopy(b *testing.B, src, dst string) time.Duration {
	t0 := time.Now()
	if out, err := exec.Command("cp", "--sparse=always", "--reflink=never", src, dst).CombinedOutput(); err != nil {
		b.Fatalf("cp: %v: %s", err, out)
	}
	if err := syncFile(dst); err != nil {
		b.Fatal(err)
	}
	d := time.Since(t0)
	os.Remove(dst)
	return d
}

// layerExtra is the space a layer adds.
func layerExtra(b *testing.B, d *Disk, free0 int64) int64 {
	if d.Backend == Reflink {
		return free0 - freeBytes(b, d.Dir)
	}
	var n int64
	for _, f := range d.Files {
		if filepath.Base(f) == baseLink {
			continue // the base itself, hard-linked
		}
		n += allocated(b, f)
	}
	return n
}

// freeBytes is the file system's free space once deferred frees are done
// (xfs frees an unlinked file's blocks in the background, even past
// syncfs): statfs until two reads 50 ms apart agree.
func freeBytes(b testing.TB, dir string) int64 {
	read := func() int64 {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			b.Fatal(err)
		}
		return int64(st.Bfree) * st.Bsize
	}
	last := read()
	for i := 0; i < 40; i++ {
		time.Sleep(50 * time.Millisecond)
		cur := read()
		if cur == last {
			break
		}
		last = cur
	}
	return last
}
