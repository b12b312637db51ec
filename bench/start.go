package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/bootkit"
	"github.com/paddock-vm/paddock/bootkit/qemurun"
	"github.com/paddock-vm/paddock/guestboot"
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

	var runs, runExecs, starts, bares, bareExecs []time.Duration
	var bareVMM []time.Duration       // the bare boots' time to hello less the guest's: QEMU's own
	var bareGuest []time.Duration     // the bare boots' guest's own boot (its clock, to ready)
	var machine string                // the bare boots' size
	var colds, warms []api.BootReport // the cold runs' reports, the starts' after a stop
	var icount agent.HelloInfo        // a boot of the last VM under -icount
	inspect := func(name string) (string, *api.BootReport, error) {
		_, out, err := cli("inspect", name, "--json")
		if err != nil {
			return "", nil, err
		}
		var vm struct {
			ID       string
			LastBoot *api.BootReport `json:"last_boot"`
		}
		if err := json.Unmarshal(out, &vm); err != nil || vm.ID == "" || vm.LastBoot == nil {
			return "", nil, fmt.Errorf("inspect %s: %v %s", name, err, out)
		}
		return vm.ID, vm.LastBoot, nil
	}
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
		_, cold, err := inspect(name)
		if err != nil {
			return err
		}
		cold.Steps = append(cold.Steps, api.BootPhase{Name: "first_exec", MS: ms(ex)})
		colds = append(colds, *cold)
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
		id, warm, err := inspect(name)
		if err != nil {
			return err
		}
		warm.Steps = append(warm.Steps, api.BootPhase{Name: "first_exec", MS: ms(ex)})
		warms = append(warms, *warm)
		if _, _, err := cli("stop", name); err != nil {
			return err
		}
		// The reference boots the same disk, stopped, with the same kit, on
		// a machine of the same size (the guest's boot grows with memory).
		_, out, err := cli("inspect", name, "--json")
		if err != nil {
			return err
		}
		var size struct {
			Spec struct {
				CPUs   int   `json:"cpus"`
				Memory int64 `json:"memory"`
			} `json:"spec"`
		}
		if err := json.Unmarshal(out, &size); err != nil || size.Spec.Memory <= 0 {
			return fmt.Errorf("inspect %s: no size: %v", name, err)
		}
		machine = fmt.Sprintf("%d vCPU, %d MiB, as the VMs", size.Spec.CPUs, size.Spec.Memory>>20)
		bare, bareEx, bareReady, err := bareBoot(kit, filepath.Join(state, "vms", id, "disk.qcow2"), filepath.Join(dir, name), accel, size.Spec.CPUs, int(size.Spec.Memory>>20))
		if err != nil {
			return fmt.Errorf("bare boot: %w", err)
		}
		bares, bareExecs = append(bares, bare), append(bareExecs, bare+bareEx)
		bareVMM = append(bareVMM, bare-bareReady)
		bareGuest = append(bareGuest, bareReady)
		if i == n-1 {
			// Once: the same VM counted in instructions.
			if icount, err = instructionBoot(kit, filepath.Join(state, "vms", id), filepath.Join(dir, name+"-icount"), size.Spec.CPUs, int(size.Spec.Memory>>20)); err != nil {
				return fmt.Errorf("boot under -icount: %w", err)
			}
		}
		if _, _, err := cli("rm", name); err != nil {
			return err
		}
	}
	med := func(d []time.Duration) time.Duration { s := slices.Clone(d); slices.Sort(s); return s[len(s)/2] }
	ref, refEx := med(bares), med(bareExecs)
	fmt.Printf("reference: bare QEMU (%s; %s) of the same kernel, initramfs and disk to agent hello   %v, to a first exec answered %v  (medians of %d)\n", accel, machine, ref.Round(time.Millisecond), refEx.Round(time.Millisecond), n)
	fmt.Printf("paddock run (CLI returns: VM running)            %v  = %.2fx the bare boot\n", med(runs).Round(time.Millisecond), ratio(med(runs), ref))
	fmt.Printf("paddock run -> first paddock exec answered       %v  = %.2fx the bare boot (goal <= 1.10x), %.2fx the bare boot + exec\n",
		med(runExecs).Round(time.Millisecond), ratio(med(runExecs), ref), ratio(med(runExecs), refEx))
	fmt.Printf("paddock start (after stop) -> first exec        %v  = %.2fx the bare boot, %.2fx the bare boot + exec\n", med(starts).Round(time.Millisecond), ratio(med(starts), ref), ratio(med(starts), refEx))
	// The same ratios run by run, each against the bare boot made right
	// after it (as the overhead below): a shared host's load drifts less
	// within a pair than across the runs.
	pairedRatio := func(xs []time.Duration) (float64, []float64) {
		rs := make([]float64, len(xs))
		for i := range xs {
			rs[i] = math.Round(100*ratio(xs[i], bares[i])) / 100
		}
		s := slices.Clone(rs)
		slices.Sort(s)
		return s[len(s)/2], rs
	}
	pc, pcs := pairedRatio(runExecs)
	ps, pss := pairedRatio(starts)
	fmt.Printf("  paired, the median of each run's ratio to the bare boot made after it: run -> first exec %.2fx (all %d: %v), start -> first exec %.2fx (%v)\n", pc, len(pcs), pcs, ps, pss)
	report := func(what string, rs []api.BootReport) {
		// paddock's own time between the API call and the agent's hello:
		// every step before the agent's, and of the agent step (VMM resumed
		// -> hello) what the guest did not spend booting (its boot clock).
		own, before := make([]time.Duration, len(rs)), make([]time.Duration, len(rs))
		for i, r := range rs {
			for _, p := range r.Steps {
				switch p.Name {
				case "agent":
					own[i] += time.Duration((p.MS - r.GuestReadyMS) * float64(time.Millisecond))
				case "first_exec":
				default:
					own[i] += time.Duration(p.MS * float64(time.Millisecond))
					before[i] += time.Duration(p.MS * float64(time.Millisecond))
				}
			}
		}
		o := med(own)
		// the median run's report
		r := rs[slices.Index(own, o)]
		q := med(bareVMM)
		fmt.Printf("%s: API call -> agent hello less the guest's own boot  %v = %.3fx the bare boot (all %d: %v); the bare boot's QEMU exec -> hello less the guest's  %v = %.3fx\n",
			what, o.Round(time.Millisecond), ratio(o, ref), len(own), roundAll(own), q.Round(time.Millisecond), ratio(q, ref))
		// Each run is paired with the bare boot made right after it: the
		// load on a shared host drifts less within a pair than across runs.
		paired := make([]time.Duration, len(own))
		for i := range own {
			paired[i] = own[i] - bareVMM[i]
		}
		p := med(paired)
		fmt.Printf("%s: paddock's own overhead, API call -> agent hello  %v  = %.3fx the bare boot (goal <= 100 ms; median of each run less the bare boot made after it, all %d: %v; medians' difference %v)\n",
			what, p.Round(time.Millisecond), ratio(p, ref), len(paired), roundAll(paired), (o - q).Round(time.Millisecond))
		b := med(before)
		fmt.Printf("%s: paddock's steps before the guest runs (API call -> VMM resumed, QEMU's own start included)  %v  = %.3fx the bare boot\n", what, b.Round(time.Millisecond), ratio(b, ref))
		fmt.Printf("  paddock's steps (daemon's clock, ms, against the bare boot's %.0f ms; agent = VMM resumed -> hello, first_exec = the CLI's exec):", ms(ref))
		for _, p := range r.Steps {
			fmt.Printf(" %s %.0f ms,", p.Name, p.MS)
		}
		var kernelMS float64
		fmt.Printf("\n  the guest's (its boot clock, ms, ready at %.0f ms; phases overlap):", r.GuestReadyMS)
		for _, p := range r.Guest {
			fmt.Printf(" %s %.0f ms,", p.Name, p.MS)
			if p.Name == "kernel" {
				kernelMS = p.MS
			}
		}
		agentMS := r.GuestReadyMS - kernelMS
		readies := make([]time.Duration, len(rs))
		for i, r := range rs {
			readies[i] = time.Duration(r.GuestReadyMS * float64(time.Millisecond))
		}
		g, bg := med(readies), med(bareGuest)
		fmt.Printf("\n  the guest's own boot (its clock, to ready; medians): %v, the bare boot's %v: %+d ms",
			g.Round(time.Millisecond), bg.Round(time.Millisecond), (g - bg).Milliseconds())
		fmt.Printf("\n  the agent's boot (kernel's end -> ready): %.0f ms = %.0f%% of the guest's boot (goal <= 10%%)\n", agentMS, 100*agentMS/max(r.GuestReadyMS, 1))
	}
	report("cold run", colds)
	report("start after stop", warms)
	var kernelNS int64
	for _, p := range icount.Phases {
		if p.Name == "kernel" {
			kernelNS = p.EndNS
		}
	}
	if icount.Idle == nil {
		return errors.New("boot under -icount: the agent's hello carries no idle times (paddock.debug)")
	}
	// Busy time is instructions there; idle time (waits on devices, on
	// timers) is not work, and -icount skips it ahead at its own pace.
	agentBusy := (icount.ReadyNS - kernelNS) - (icount.Idle.ReadyNS - icount.Idle.StartNS)
	busy := icount.ReadyNS - icount.Idle.ReadyNS
	fmt.Printf("the agent's boot counted in guest instructions (QEMU -icount shift=0: the guest clock counts 1 ns an instruction; no translation, as under KVM; idle time left out): %.1f M of the boot's %.1f M = %.1f%% (goal <= 10%%)\n",
		float64(agentBusy)/1e6, float64(busy)/1e6, 100*float64(agentBusy)/float64(max(busy, 1)))
	return templateRuns(cli, inspect, n, med(runExecs))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

// instructionBoot boots the stopped VM in vmDir (its disk and seed, its
// command line but the network's, with paddock.debug for its idle times)
// under QEMU's -icount shift=0, where the
// guest clock advances 1 ns a guest instruction, and returns the agent's
// hello: its phases in instructions. Under TCG the wall clock is mostly
// translation of code run once (a boot's modules); instructions are the
// work itself, what a hardware-virtualized guest spends its time on.
func instructionBoot(kit *bootkit.Kit, vmDir, base string, cpus, memoryMiB int) (agent.HelloInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	// The seed disk is made at each start and gone at the stop: made again.
	cfg, err := os.ReadFile(filepath.Join(vmDir, "config.json"))
	if err != nil {
		return agent.HelloInfo{}, err
	}
	if err := guestboot.WriteSeed(base+"-seed.img", cfg); err != nil {
		return agent.HelloInfo{}, err
	}
	vm, c, err := toHello(ctx, qemurun.Config{Machine: qemu.Machine{Kernel: kit.VmlinuxPath(), Initrd: kit.InitramfsPath(),
		Disks: []vmm.Disk{{Path: filepath.Join(vmDir, "disk.qcow2"), Format: vmm.FormatQCOW2}, {Path: base + "-seed.img", Format: vmm.FormatRaw, ReadOnly: true}},
		Accel: vmm.AccelTCG, ControlSocket: base + "-ctl.sock", CPUs: cpus, MemoryMiB: memoryMiB,
		Cmdline: "paddock.root=/dev/vda paddock.hostname=icount paddock.config=/dev/vdb paddock.debug"}, ConsoleLog: base + "-console.log",
		ExtraArgs: []string{"-icount", "shift=0,align=off,sleep=off"}, NoHugePages: true})
	if err != nil {
		return agent.HelloInfo{}, err
	}
	defer vm.Kill()
	defer c.Close()
	h := c.Hello()
	_ = c.Shutdown(ctx, false)
	_, _ = vm.Wait(ctx)
	return h, nil
}

// toHello starts QEMU with cfg and returns it with the agent's client once
// it said hello (ctx bounds the wait); what QEMU and the console said when
// it does not. The caller kills the VM.
func toHello(ctx context.Context, cfg qemurun.Config) (*qemurun.VM, *agent.Client, error) {
	vm, err := qemurun.Start(cfg)
	if err != nil {
		return nil, nil, err
	}
	conn, err := vm.DialControl(ctx)
	if err == nil {
		var c *agent.Client
		if c, err = agent.NewClient(ctx, conn, nil); err == nil {
			return vm, c, nil
		}
	}
	vm.Kill()
	console, _ := os.ReadFile(cfg.ConsoleLog)
	return nil, nil, fmt.Errorf("%w (QEMU: %s; console: %s)", err, vm.Stderr(), console[max(0, len(console)-2000):])
}

// bareBoot starts QEMU directly on disk (qcow2) with kit, cpus and
// memoryMiB, and returns the
// time to the agent's hello and that of a first exec of true, then powers
// the guest off.
func bareBoot(kit *bootkit.Kit, disk, base string, accel string, cpus, memoryMiB int) (hello, exec, guestReady time.Duration, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	vm, c, err := toHello(ctx, qemurun.Config{Machine: qemu.Machine{Kernel: kit.VmlinuxPath(), Initrd: kit.InitramfsPath(),
		Disks: []vmm.Disk{{Path: disk, Format: vmm.FormatQCOW2}}, Accel: accel, ControlSocket: base + "-ctl.sock", CPUs: cpus, MemoryMiB: memoryMiB,
		Cmdline: "paddock.root=/dev/vda"}, ConsoleLog: base + "-console.log", NoHugePages: accel == vmm.AccelTCG})
	if err != nil {
		return 0, 0, 0, err
	}
	defer vm.Kill()
	hello = time.Since(vm.Started)
	defer c.Close()
	t0 := time.Now()
	res, err := c.Run(ctx, agent.ExecRequest{Argv: []string{"true"}}, nil, 0)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("exec: %w", err)
	}
	if res.Status.Code != 0 {
		return 0, 0, 0, fmt.Errorf("exec true: %+v", res.Status)
	}
	exec = time.Since(t0)
	_ = c.Shutdown(ctx, false)
	_, _ = vm.Wait(ctx)
	return hello, exec, time.Duration(c.Hello().ReadyNS), nil
}
