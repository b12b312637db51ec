package qemu_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/bootkit/qemurun"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/host/vmm/qemu"
	"github.com/paddock-vm/paddock/internal/guesttest"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// BenchmarkStartToHello measures, per iteration, Driver.Start → agent hello
// answered (the driver's whole path: tagged launch in its own session, -S,
// QMP, console copier attached, cont, DialAgent) and, in the same run, the
// reference: a bare QEMU of the same kernel, initramfs, disk and command
// line started directly (qemurun.Start: the same Machine, no QMP, no -S,
// console to a file) to
// the same point. The two alternate, so drift on the host hits both. The
// ratio is the driver's overhead (goal ≤ 1.10):
//
//	PADDOCK_KERNEL_DIR=... go test ./host/vmm/qemu -run '^$' -bench StartToHello -benchtime 5x
func BenchmarkStartToHello(b *testing.B) {
	testenv.RequireRoot(b, "network namespace, tap")
	f := guesttest.Kit(b)
	tmp := b.TempDir()
	root := guesttest.RootDisk(b, tmp, guesttest.SleepConfig)
	ctx := context.Background()
	d := qemu.New()
	defer d.Close()
	accel := vmm.AccelTCG
	if ok, _ := d.KVMUsable(ctx, f.Kit.VmlinuxPath()); ok {
		accel = vmm.AccelKVM
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
		spec := vmm.Spec{VMID: fmt.Sprintf("bench%d-%d", os.Getpid(), i), Kernel: f.Kit.VmlinuxPath(), Initrd: f.Kit.InitramfsPath(), Cmdline: cmdline,
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
		cfg := qemurun.Config{Machine: qemu.Machine{Kernel: f.Kit.VmlinuxPath(), Initrd: f.Kit.InitramfsPath(),
			Disks: []vmm.Disk{{Path: root}}, Accel: accel, ControlSocket: dir + "-ctl.sock", Cmdline: cmdline},
			ConsoleLog: dir + "-console.log", NoHugePages: accel == vmm.AccelTCG} // as the driver starts it
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
	b.ReportMetric(guesttest.Median(drv), "driver-hello-s")
	b.ReportMetric(guesttest.Median(ref), "bare-hello-s")
	b.ReportMetric(guesttest.Median(drv)/guesttest.Median(ref), "ratio")
	b.ReportMetric(guesttest.Median(starts), "driver-start-ms")
	b.ReportMetric(0, "ns/op")
	fmt.Printf("start → agent hello (median of %d, accel %s): driver %.2f s, bare QEMU %.2f s, ratio %.3f; Driver.Start itself %.0f ms\n",
		b.N, accel, guesttest.Median(drv), guesttest.Median(ref), guesttest.Median(drv)/guesttest.Median(ref), guesttest.Median(starts))
	if b.N > 1 {
		fmt.Printf("  driver samples %.2f\n  bare samples   %.2f\n", drv, ref)
	}
}
