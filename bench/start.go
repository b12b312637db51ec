package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/bootkit"
	"github.com/paddock-vm/paddock/bootkit/qemurun"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/host/vmm/qemu"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// startTimeout bounds each measured step (a TCG boot on a loaded host).
const startTimeout = 3 * time.Minute

// runStart measures what a user waits on, from the CLI: `paddock run` of
// the minbase image until it returns (the VM running: agent hello), then
// until a first `paddock exec` has answered; `paddock start` of the
// stopped VM to its first exec; and, in the same run and alternating with
// them, the reference: a bare QEMU boot of the same kit's kernel and
// initramfs on the same disk to the agent's hello. paddock's own cost is
// the difference.
func runStart(daemonBin, cliBin, minbase string, n int) error {
	if minbase == "" {
		fmt.Println("start: skipped (no minbase tar; make bench builds one with .ci/minbase.sh)")
		return nil
	}
	vmlinuz, modules, err := testenv.FindKernel()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "pdk-bench-start-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	state, sock := filepath.Join(dir, "state"), filepath.Join(dir, "run", "io.paddock.v1")
	cfg := filepath.Join(dir, "paddock.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("state_dir = %q\nruntime_dir = %q\ncache_dir = %q\n[log]\nlevel = \"warn\"\n[vm]\nrun = \"on\"\nnetwork = \"none\"\nstart_timeout = \"3m\"\nstop_timeout = \"30s\"\n[dbus]\nbus = \"off\"\n",
		state, filepath.Join(dir, "run"), filepath.Join(dir, "cache"))), 0o644); err != nil {
		return err
	}
	d := exec.Command(daemonBin, "--config", cfg)
	d.Stderr = os.Stderr
	if err := d.Start(); err != nil {
		return err
	}
	defer func() { _ = d.Process.Kill(); _ = d.Wait() }()
	c, err := dialWait(sock)
	if err != nil {
		return err
	}
	c.Close()
	cli := func(args ...string) (time.Duration, []byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		t0 := time.Now()
		out, err := exec.CommandContext(ctx, cliBin, append([]string{"--socket", sock}, args...)...).CombinedOutput()
		if err != nil {
			return 0, out, fmt.Errorf("paddock %v: %v\n%s", args, err, out)
		}
		return time.Since(t0), out, nil
	}
	if _, _, err := cli("kernel", "import", vmlinuz, "--modules", modules); err != nil {
		return err
	}
	if _, _, err := cli("image", "import", minbase, "--name", "minbase:start"); err != nil {
		return err
	}
	kit, err := bootkit.Get(state, "default")
	if err != nil {
		return err
	}
	accel := vmm.AccelTCG
	drv := qemu.New()
	defer drv.Close()
	if ok, _ := drv.KVMUsable(context.Background(), kit.VmlinuxPath()); ok {
		accel = vmm.AccelKVM
	}

	var runs, runExecs, starts, bares []time.Duration
	var reports []api.BootReport // of the starts after a stop
	for i := range n {
		name := fmt.Sprintf("s%d", i)
		run, _, err := cli("run", "--image", "minbase:start", "--name", name) // vm.network = "none"
		if err != nil {
			return err
		}
		ex, _, err := cli("exec", name, "--", "true")
		if err != nil {
			return err
		}
		runs, runExecs = append(runs, run), append(runExecs, run+ex)
		if _, _, err := cli("stop", name); err != nil {
			return err
		}
		st, _, err := cli("start", name)
		if err != nil {
			return err
		}
		ex, _, err = cli("exec", name, "--", "true")
		if err != nil {
			return err
		}
		starts = append(starts, st+ex)
		_, out, err := cli("inspect", name, "--json")
		if err != nil {
			return err
		}
		var vm struct {
			ID       string
			LastBoot *api.BootReport `json:"last_boot"`
		}
		if err := json.Unmarshal(out, &vm); err != nil || vm.ID == "" {
			return fmt.Errorf("inspect %s: %v %s", name, err, out)
		}
		if vm.LastBoot != nil {
			reports = append(reports, *vm.LastBoot)
		}
		if _, _, err := cli("stop", name); err != nil {
			return err
		}
		// The reference boots the same disk, stopped, with the same kit.
		bare, err := bareBoot(kit, filepath.Join(state, "vms", vm.ID, "disk.qcow2"), filepath.Join(dir, name), accel)
		if err != nil {
			return fmt.Errorf("bare boot: %w", err)
		}
		bares = append(bares, bare)
		if _, _, err := cli("rm", name); err != nil {
			return err
		}
	}
	med := func(d []time.Duration) time.Duration { s := slices.Clone(d); slices.Sort(s); return s[len(s)/2] }
	ref := med(bares)
	fmt.Printf("reference: bare QEMU (%s) of the same kernel, initramfs and disk to agent hello   %v  (median of %d)\n", accel, ref.Round(time.Millisecond), n)
	fmt.Printf("paddock run (CLI returns: VM running)            %v  = %.2fx the bare boot\n", med(runs).Round(time.Millisecond), ratio(med(runs), ref))
	fmt.Printf("paddock run -> first paddock exec answered       %v  = %.2fx the bare boot (goal <= 1.10x); paddock's own cost %v (goal <= 100 ms)\n",
		med(runExecs).Round(time.Millisecond), ratio(med(runExecs), ref), (med(runExecs) - ref).Round(time.Millisecond))
	fmt.Printf("paddock start (after stop) -> first exec        %v  = %.2fx the bare boot\n", med(starts).Round(time.Millisecond), ratio(med(starts), ref))
	if len(reports) > 0 {
		r := reports[len(reports)/2]
		fmt.Printf("  where a start went (one start after a stop, daemon's clock):")
		for _, p := range r.Steps {
			fmt.Printf(" %s %.0f ms,", p.Name, p.MS)
		}
		fmt.Printf("\n  the guest's (its boot clock):")
		for _, p := range r.Guest {
			fmt.Printf(" %s %.0f ms,", p.Name, p.MS)
		}
		fmt.Println()
	}
	return templateRuns(cli, n, med(runExecs))
}

// bareBoot starts QEMU directly on disk (qcow2) with kit and returns the
// time to the agent's hello, then powers the guest off.
func bareBoot(kit *bootkit.Kit, disk, base string, accel string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	vm, err := qemurun.Start(qemurun.Config{Machine: qemu.Machine{Kernel: kit.VmlinuxPath(), Initrd: kit.InitramfsPath(),
		Disks: []vmm.Disk{{Path: disk, Format: vmm.FormatQCOW2}}, Accel: accel, ControlSocket: base + "-ctl.sock",
		Cmdline: "paddock.root=/dev/vda"}, ConsoleLog: base + "-console.log"})
	if err != nil {
		return 0, err
	}
	defer vm.Kill()
	conn, err := vm.DialControl(ctx)
	if err != nil {
		return 0, err
	}
	c, err := agent.NewClient(ctx, conn, nil)
	if err != nil {
		return 0, err
	}
	took := time.Since(vm.Started)
	defer c.Close()
	_ = c.Shutdown(ctx, false)
	_, _ = vm.Wait(ctx)
	return took, nil
}
