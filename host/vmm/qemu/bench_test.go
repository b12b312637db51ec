package qemu

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/bootkit/qemurun"
	"github.com/paddock-vm/paddock/host/vmm"
)

func median(xs []float64) float64 {
	s := append([]float64{}, xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// BenchmarkStartToHello measures, per iteration, Driver.Start → agent hello
// answered (the driver's whole path: tagged launch in its own session, -S,
// QMP, console copier attached, cont, DialAgent) and, in the same run, the
// reference: a bare QEMU of the same kernel, initramfs, disk and command
// line started directly (qemurun.Start: no QMP, no -S, console to a file) to
// the same point. The two alternate, so drift on the host hits both. The
// ratio is the driver's overhead (goal ≤ 1.10):
//
//	PADDOCK_KERNEL_DIR=... go test ./host/vmm/qemu -run '^$' -bench StartToHello -benchtime 5x
func BenchmarkStartToHello(b *testing.B) {
	f := getFixture(b)
	tmp := b.TempDir()
	root := rootDisk(b, tmp)
	ctx := context.Background()
	d := New()
	defer d.Close()
	accel, err := d.resolveAccel(ctx, vmm.Spec{Kernel: f.kit.VmlinuxPath(), Accel: vmm.AccelAuto})
	if err != nil {
		b.Fatal(err)
	}
	const cmdline = "paddock.root=/dev/vda"
	var starts []float64 // Driver.Start alone: exec → QMP up → console attached → cont
	hello := func(ctx context.Context, conn interface {
		Read([]byte) (int, error)
		Write([]byte) (int, error)
		Close() error
	}) (*agent.Client, error) {
		return agent.NewClient(ctx, conn, nil)
	}
	viaDriver := func(i int) (float64, error) {
		spec := vmm.Spec{VMID: testID(), Kernel: f.kit.VmlinuxPath(), Initrd: f.kit.InitramfsPath(), Cmdline: cmdline,
			Disks: []vmm.Disk{{Path: root}}, RunDir: filepath.Join(tmp, fmt.Sprintf("d%d", i)), Accel: accel}
		cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		start := time.Now()
		p, err := d.Start(cctx, spec)
		if err != nil {
			return 0, err
		}
		starts = append(starts, time.Since(start).Seconds()*1000)
		defer func() { _ = d.Kill(ctx, p) }()
		conn, err := vmm.DialAgent(cctx, p)
		if err != nil {
			return 0, err
		}
		c, err := hello(cctx, conn)
		if err != nil {
			return 0, err
		}
		took := time.Since(start).Seconds()
		defer c.Close()
		if err := c.Shutdown(cctx, false); err != nil {
			return 0, err
		}
		_, err = d.Wait(cctx, p)
		return took, err
	}
	bare := func(i int) (float64, error) {
		dir := filepath.Join(tmp, fmt.Sprintf("r%d", i))
		cfg := qemurun.Config{Kernel: f.kit.VmlinuxPath(), Initrd: f.kit.InitramfsPath(), RootDisk: root, Accel: accel,
			ControlSocket: dir + "-ctl.sock", ConsoleLog: dir + "-console.log", Cmdline: []string{cmdline}}
		cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		vm, err := qemurun.Start(cfg)
		if err != nil {
			return 0, err
		}
		defer vm.Kill()
		conn, err := vm.DialControl(cctx)
		if err != nil {
			return 0, err
		}
		c, err := hello(cctx, conn)
		if err != nil {
			return 0, err
		}
		took := time.Since(vm.Started).Seconds()
		defer c.Close()
		if err := c.Shutdown(cctx, false); err != nil {
			return 0, err
		}
		_, err = vm.Wait(cctx)
		return took, err
	}
	var drv, ref []float64
	type kind struct {
		run func(int) (float64, error)
		out *[]float64
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		order := []kind{{viaDriver, &drv}, {bare, &ref}}
		if i%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, k := range order {
			took, err := k.run(i)
			if err != nil {
				b.Fatal(err)
			}
			*k.out = append(*k.out, took)
		}
	}
	b.StopTimer()
	b.ReportMetric(median(drv), "driver-hello-s")
	b.ReportMetric(median(ref), "bare-hello-s")
	b.ReportMetric(median(drv)/median(ref), "ratio")
	b.ReportMetric(median(starts), "driver-start-ms")
	b.ReportMetric(0, "ns/op")
	fmt.Printf("start → agent hello (median of %d, accel %s): driver %.2f s, bare QEMU %.2f s, ratio %.3f; Driver.Start itself %.0f ms\n",
		b.N, accel, median(drv), median(ref), median(drv)/median(ref), median(starts))
	if b.N > 1 {
		fmt.Printf("  driver samples %.2f\n  bare samples   %.2f\n", drv, ref)
	}
}
