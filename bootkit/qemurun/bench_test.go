package qemurun

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/host/vmm/qemu"
	"github.com/paddock-vm/paddock/internal/guesttest"
)

// BenchmarkBoot measures, per iteration, QEMU start → agent hello answered
// (the agent boot with modules, root disk, switch_root and a network on a
// tap in a private netns) and, in the same run, the bare reference: the
// same kernel with an initramfs whose /init powers off at once (QEMU start →
// QEMU exit). Run with -benchtime 5x (or more) for medians of ≥ 5 boots:
//
//	PADDOCK_KERNEL_DIR=... go test ./bootkit/qemurun -run '^$' -bench Boot -benchtime 5x
//
// PADDOCK_BENCH_CPUS sets the guests' vCPU count (1).
func BenchmarkBoot(b *testing.B) {
	f := getFixture(b)
	cpus, _ := strconv.Atoi(os.Getenv("PADDOCK_BENCH_CPUS"))
	tmp := b.TempDir()
	rootImg := guesttest.RootDisk(b, tmp, nil)
	ctx := context.Background()
	ns := newTestNetns(b)
	ns.setupTap(b)
	var ready, bare, shut []float64
	phases := map[string][]float64{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cfg := Config{Machine: qemu.Machine{
			Kernel: f.Kit.VmlinuxPath(), Initrd: f.Kit.InitramfsPath(), Disks: []vmm.Disk{{Path: rootImg}}, CPUs: cpus,
			ControlSocket: filepath.Join(tmp, "ctl.sock"), Tap: &vmm.Tap{Name: tapName},
			Cmdline: "paddock.root=/dev/vda paddock.ip=" + guestIP + "/24 paddock.gw=" + hostIP,
		}, ConsoleLog: filepath.Join(tmp, "console.log"), NoHugePages: true} // TCG, as paddock starts it
		var vm *VM
		var err error
		ns.Do(func() { vm, err = Start(cfg) })
		if err != nil {
			b.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		conn, err := vm.DialControl(cctx)
		if err != nil {
			vm.Kill()
			b.Fatal(err)
		}
		c, err := agent.NewClient(cctx, conn, nil)
		if err != nil {
			vm.Kill()
			b.Fatal(err)
		}
		ready = append(ready, time.Since(vm.Started).Seconds())
		for _, p := range c.Hello().Phases {
			phases[p.Name] = append(phases[p.Name], float64(p.Duration())/1e6)
		}
		s := time.Now()
		if err := c.Shutdown(cctx, false); err != nil {
			vm.Kill()
			b.Fatal(err)
		}
		if _, err := vm.Wait(cctx); err != nil {
			vm.Kill()
			b.Fatal(err)
		}
		shut = append(shut, time.Since(s).Seconds())
		c.Close()
		vm.Kill()
		cancel()

		d, err := bareBoot(ctx, f, tmp, cpus)
		if err != nil {
			b.Fatal(err)
		}
		bare = append(bare, d.Seconds())
	}
	b.StopTimer()
	agentMS := guesttest.Median(phases["modules"]) + guesttest.Median(phases["root"]) + guesttest.Median(phases["switch_root"]) + guesttest.Median(phases["network"])
	b.ReportMetric(guesttest.Median(ready), "agent-ready-s")
	b.ReportMetric(guesttest.Median(bare), "bare-s")
	b.ReportMetric(guesttest.Median(ready)/guesttest.Median(bare), "ratio")
	b.ReportMetric(agentMS/10/guesttest.Median(ready), "agent-phases-%")
	b.ReportMetric(0, "ns/op")
	fmt.Printf("boot (median of %d, %d vCPU): QEMU start → agent hello %.2f s; bare kernel → /init power-off %.2f s (ratio %.2f); shutdown → QEMU exit %.2f s\n",
		b.N, max(cpus, 1), guesttest.Median(ready), guesttest.Median(bare), guesttest.Median(ready)/guesttest.Median(bare), guesttest.Median(shut))
	fmt.Printf("agent phases (median ms): kernel→init %.0f, modules %.0f, root mount %.0f, switch_root %.0f, network %.0f, control %.0f; agent phases = %.1f%% of boot\n",
		guesttest.Median(phases["kernel"]), guesttest.Median(phases["modules"]), guesttest.Median(phases["root"]), guesttest.Median(phases["switch_root"]),
		guesttest.Median(phases["network"]), guesttest.Median(phases["control"]), agentMS/10/guesttest.Median(ready))
}
