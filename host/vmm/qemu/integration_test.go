package qemu

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/host/cgroup"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/internal/guesttest"
	"github.com/paddock-vm/paddock/internal/testenv"
	"github.com/paddock-vm/paddock/internal/testwait"
)

// testCgroupParent makes a stand-in for paddockd's delegated cgroup and
// removes it at cleanup.
func testCgroupParent(t *testing.T) string {
	t.Helper()
	mnt, _, err := cgroup.Mountpoint()
	testenv.Require(t, err == nil, fmt.Sprintf("no cgroup2 hierarchy: %v", err))
	dir := filepath.Join(mnt, fmt.Sprintf("pdktest-qemu-%d.service", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// VMM cgroups below are removed by the driver; anything left is a
		// failure, but kill and remove it anyway
		if subs, _ := cgroup.Find(dir); len(subs) > 0 {
			t.Errorf("cgroups left behind: %v", subs)
			for _, s := range subs {
				_ = cgroup.Remove(context.Background(), s, true)
			}
		}
		if err := os.Remove(dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return dir
}

// agentClient dials p's agent and runs hello.
func agentClient(t *testing.T, ctx context.Context, p *vmm.Process) *agent.Client {
	t.Helper()
	conn, err := vmm.DialAgent(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	hctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	c, err := agent.NewClient(hctx, conn, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func run(t *testing.T, ctx context.Context, c *agent.Client, script string) string {
	t.Helper()
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	r, err := c.Run(rctx, agent.ExecRequest{Argv: []string{"/bin/sh", "-c", script}}, nil, 0)
	if err != nil {
		t.Fatalf("exec %q: %v", script, err)
	}
	if r.Status.Code != 0 {
		t.Fatalf("exec %q: %v %s", script, r.Status, r.Stderr)
	}
	return string(r.Stdout)
}

// TestIntegration boots a real guest through the driver from a stand-in
// daemon, kills that daemon, re-adopts the VMM from its JSON handle, talks
// to the agent, checks a pid that is not ours is left alone, and stops it.
// A second VM, the test's own child, is stopped without the agent's help
// (system_powerdown, then quit).
func TestIntegration(t *testing.T) {
	f := getFixture(t)
	tmp := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root := rootDisk(t, tmp)
	data := smallDisk(t, tmp, "data", "data disk\n")
	cgParent := testCgroupParent(t)

	d := New()
	kvmOK, why := d.KVMUsable(ctx, f.Kit.VmlinuxPath())
	t.Logf("KVM usable: %v (%s)", kvmOK, why)

	spec := vmm.Spec{
		VMID: testID(), Kernel: f.Kit.VmlinuxPath(), Initrd: f.Kit.InitramfsPath(),
		Cmdline: "paddock.root=/dev/vda paddock.hostname=vma",
		Disks:   []vmm.Disk{{Path: root}, {Path: data, ReadOnly: true}},
		Tap:     &vmm.Tap{Name: "pdktest0", MAC: "02:00:00:0a:0b:0c"},
		RunDir:  filepath.Join(tmp, "run-a"), Cgroup: cgParent, ConsoleLogMax: 64 << 10,
	}
	js, _ := json.Marshal(spec)

	// --- daemon #1 starts the VM
	daemon := exec.Command(os.Args[0], "-test.run=^$")
	daemon.Env = append(os.Environ(), helperEnv+"=1", "VMM_SPEC="+string(js))
	stdin, _ := daemon.StdinPipe()
	defer stdin.Close()
	out, _ := daemon.StdoutPipe()
	daemon.Stderr = os.Stderr
	startAt := time.Now()
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "{") {
		_ = daemon.Process.Kill()
		_ = daemon.Wait()
		t.Fatalf("stand-in daemon: %q %v", line, err)
	}
	startTook := time.Since(startAt)
	var p vmm.Process
	if err := json.Unmarshal([]byte(line), &p); err != nil {
		t.Fatal(err)
	}
	// whatever happens, the VMM does not outlive the test
	t.Cleanup(func() {
		kctx, kcancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer kcancel()
		if err := New().Kill(kctx, &p); err != nil {
			t.Errorf("cleanup kill: %v", err)
		}
		if t.Failed() {
			b, _ := os.ReadFile(p.ConsoleLog)
			l, _ := os.ReadFile(filepath.Join(p.RunDir, "vmm.log"))
			t.Logf("console:\n%s\nvmm.log:\n%s", b, l)
		}
	})
	t.Logf("handle: %s", line)
	if p.Driver != Name || p.VMID != spec.VMID || p.PID <= 0 || p.StartTime == 0 || p.Accel == "" {
		t.Fatalf("handle %+v", p)
	}
	if want := map[bool]string{true: vmm.AccelKVM, false: vmm.AccelTCG}[kvmOK]; p.Accel != want {
		t.Fatalf("accel %s, want %s", p.Accel, want)
	}
	if ppid, _ := strconv.Atoi(procField(p.PID, 4)); ppid != daemon.Process.Pid {
		t.Fatalf("QEMU's parent is %d, daemon %d", ppid, daemon.Process.Pid)
	}
	if sid := procField(p.PID, 6); sid != strconv.Itoa(p.PID) {
		t.Fatalf("QEMU session %s, want its own (%d)", sid, p.PID)
	}
	if got, err := cgroup.Of(p.PID); err != nil || got != p.Cgroup || filepath.Dir(got) != cgParent {
		t.Fatalf("QEMU in cgroup %q (%v), handle %q", got, err, p.Cgroup)
	}

	c := agentClient(t, ctx, &p)
	helloTook := time.Since(startAt)
	if _, err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	got := run(t, ctx, c, "hostname; cat /sys/class/net/eth0/address /sys/block/vda/ro /sys/block/vdb/ro /data/hello.txt")
	if want := "vma\n02:00:00:0a:0b:0c\n0\n1\nhello from the image\n"; got != want {
		t.Fatalf("guest view %q, want %q", got, want)
	}
	c.Close()

	// --- kill -9 the daemon: the VMM stays, and is re-adopted from JSON
	_ = daemon.Process.Signal(syscall.SIGKILL)
	_ = daemon.Wait()
	var h vmm.Process
	if err := json.Unmarshal([]byte(line), &h); err != nil {
		t.Fatal(err)
	}
	d2 := New()
	defer d2.Close()
	if s, err := d2.Probe(&h); err != nil || s != vmm.StateRunning {
		t.Fatalf("Probe after the daemon died: %v %v", s, err)
	}
	if ppid, _ := strconv.Atoi(procField(h.PID, 4)); ppid == daemon.Process.Pid {
		t.Fatal("QEMU not re-parented")
	}
	if err := d2.Adopt(ctx, &h); err != nil {
		t.Fatal(err)
	}
	if st, err := d2.Status(ctx, &h); err != nil || st != "running" {
		t.Fatalf("query-status: %q %v", st, err)
	}
	c = agentClient(t, ctx, &h)
	defer c.Close()
	if got := run(t, ctx, c, "echo re-adopted >/dev/console; cat /data/hello.txt"); got != "hello from the image\n" {
		t.Fatalf("after re-adoption: %q", got)
	}
	testwait.For(t, "console output through the re-attached copier", 10*time.Second, func() bool {
		b, _ := os.ReadFile(h.ConsoleLog)
		return strings.Contains(string(b), "re-adopted")
	})

	// --- a live pid that is not ours is never touched
	sleep := exec.Command("sleep", "300")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	sleepDone := make(chan struct{})
	go func() { _ = sleep.Wait(); close(sleepDone) }()
	defer func() { _ = sleep.Process.Kill(); <-sleepDone }()
	fake := h
	fake.PID = sleep.Process.Pid
	fake.Sockets, fake.Cgroup = nil, ""
	if s, err := d2.Probe(&fake); err != nil || s != vmm.StateNotOurs {
		t.Fatalf("Probe of a foreign pid: %v %v", s, err)
	}
	if err := d2.Kill(ctx, &fake); err != nil {
		t.Fatalf("Kill of a foreign pid: %v", err)
	}
	if err := d2.Stop(ctx, &fake, time.Second); err != nil {
		t.Fatalf("Stop of a foreign pid: %v", err)
	}
	select {
	case <-sleepDone:
		t.Fatal("the foreign process was killed")
	case <-time.After(50 * time.Millisecond):
	}
	if s, _ := d2.Probe(&h); s != vmm.StateRunning {
		t.Fatalf("the real VMM is %v", s)
	}

	// --- stop: the caller asks the agent first, the driver finishes
	waited := make(chan vmm.Exit, 1)
	go func() { ex, _ := d2.Wait(ctx, &h); waited <- ex }()
	stopAt := time.Now()
	if err := c.Shutdown(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := d2.Stop(ctx, &h, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	stopTook := time.Since(stopAt)
	if ex := testwait.Recv(t, "Wait to return after the VMM exited", 2*time.Second, waited); ex.Known {
		t.Fatalf("exit of a re-adopted VMM reported as known: %v", ex)
	}
	if s, err := d2.Probe(&h); err != nil || s != vmm.StateExited {
		t.Fatalf("Probe after Stop: %v %v", s, err)
	}
	for i := 0; i < 2; i++ {
		if err := d2.Kill(ctx, &h); err != nil {
			t.Fatalf("Kill #%d after exit: %v", i+1, err)
		}
	}
	for _, s := range h.Sockets {
		if _, err := os.Lstat(s); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket %s left: %v", s, err)
		}
	}
	if _, err := os.Stat(h.Cgroup); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup %s left: %v", h.Cgroup, err)
	}
	if fi, err := os.Stat(h.ConsoleLog); err != nil || fi.Size() == 0 || fi.Size() > h.ConsoleLogMax {
		t.Errorf("console log: %v %v", fi, err)
	}
	if out, err := exec.Command("e2fsck", "-fn", root).CombinedOutput(); err != nil {
		t.Errorf("root disk not clean after agent shutdown + Stop: %v\n%s", err, out)
	}

	// --- VM B: our child, on a qcow2 overlay of the root disk, stopped
	// without the agent's help
	overlay := filepath.Join(tmp, "overlay.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", root, overlay).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v %s", err, out)
	}
	fresh, _ := os.Stat(overlay)
	specB := vmm.Spec{VMID: testID(), Kernel: f.Kit.VmlinuxPath(), Initrd: f.Kit.InitramfsPath(),
		Cmdline: "paddock.root=/dev/vda", Disks: []vmm.Disk{{Path: overlay, Format: vmm.FormatQCOW2}}, RunDir: filepath.Join(tmp, "run-b")}
	pb, err := d2.Start(ctx, specB)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = New().Kill(context.Background(), pb) })
	cb := agentClient(t, ctx, pb)
	if got := run(t, ctx, cb, "echo written-on-the-overlay >/data/new.txt; sync; cat /data/hello.txt"); got != "hello from the image\n" {
		t.Fatalf("VM B: %q", got)
	}
	cb.Close()
	stopBAt := time.Now()
	if err := d2.Stop(ctx, pb, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	stopBTook := time.Since(stopBAt)
	t.Logf("stop B took %v", stopBTook)
	ex, err := d2.Wait(ctx, pb)
	if err != nil || !ex.Known || ex.Signal != 0 || ex.Code != 0 {
		t.Fatalf("VM B exit: %v %v (want a clean QEMU exit: powerdown or quit, not SIGKILL)", ex, err)
	}
	if out, err := exec.Command("qemu-img", "check", "-q", overlay).CombinedOutput(); err != nil {
		t.Errorf("qcow2 overlay after quit: %v %s", err, out)
	}
	if fi, err := os.Stat(overlay); err != nil || fi.Size() <= fresh.Size() {
		t.Errorf("the guest's writes did not land in the overlay: %d → %v %v", fresh.Size(), fi, err)
	}
	how := "system_powerdown"
	if stopBTook >= 3*time.Second {
		how = "quit (the guest ignored the ACPI power button)"
	}
	t.Logf("FIGURES: accel %s | daemon Start → handle %.2f s | Start → agent hello %.2f s | agent shutdown + Stop → exit %.2f s | Stop without agent → exit %.2f s via %s",
		p.Accel, startTook.Seconds(), helloTook.Seconds(), stopTook.Seconds(), stopBTook.Seconds(), how)
}

// TestStartFailureLeavesNothing: a QEMU that cannot start (missing kernel
// file) returns an error with QEMU's message and leaves no process, socket or
// cgroup behind.
func TestStartFailureLeavesNothing(t *testing.T) {
	testenv.RequireRoot(t, "cgroup")
	testenv.RequireTool(t, DefaultBinary, "qemu-system-x86")
	cg := testCgroupParent(t)
	tmp := t.TempDir()
	initrd := filepath.Join(tmp, "initrd")
	_ = os.WriteFile(initrd, []byte("x"), 0o644)
	spec := vmm.Spec{VMID: testID(), Kernel: filepath.Join(tmp, "missing-vmlinux"), Initrd: initrd, Accel: vmm.AccelTCG,
		RunDir: filepath.Join(tmp, "run"), Cgroup: cg}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := New().Start(ctx, spec)
	if err == nil {
		_ = New().Kill(ctx, p)
		t.Fatal("Start succeeded")
	}
	if !strings.Contains(err.Error(), "missing-vmlinux") {
		t.Errorf("error does not carry QEMU's message: %v", err)
	}
	if found, _ := vmm.Find(spec.VMID); len(found) != 0 {
		t.Errorf("process left: %+v", found[0])
	}
	ents, _ := os.ReadDir(spec.RunDir)
	for _, e := range ents {
		if e.Type()&os.ModeSocket != 0 {
			t.Errorf("socket left: %s", e.Name())
		}
	}
	if subs, _ := cgroup.Find(cg); len(subs) != 0 {
		t.Errorf("cgroup left: %v", subs)
	}
}

// stopTimeout is the daemon's default vm.stop_timeout: how long Stop gives
// the guest after the power button before it quits QEMU.
const stopTimeout = 30 * time.Second

// TestPowerButton: a guest whose agent is never spoken to still powers off
// on the ACPI power button (QMP system_powerdown): paddock-agent, PID 1,
// hears KEY_POWER, stops its processes, unmounts and powers off, and QEMU
// exits on its own within the stop timeout, with no quit and no kill.
func TestPowerButton(t *testing.T) {
	f := getFixture(t)
	tmp := t.TempDir()
	root := rootDisk(t, tmp)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	d := New()
	defer d.Close()
	p, console := debugGuest(t, ctx, d, f, root, tmp)
	// the agent says (paddock.debug) when it listens; the control socket is
	// never dialled
	testwait.For(t, "the agent watching the power button", 3*time.Minute, func() bool {
		return strings.Contains(console(), "power button: watching")
	})
	waited := make(chan vmm.Exit, 1)
	go func() { ex, _ := d.Wait(ctx, p); waited <- ex }()
	if err := d.Powerdown(ctx, p); err != nil {
		t.Fatal(err)
	}
	if ex := testwait.Recv(t, "QEMU to exit after system_powerdown", stopTimeout, waited); !ex.Known || ex.Code != 0 || ex.Signal != 0 {
		t.Fatalf("QEMU exit %v, want a clean exit through the guest's power-off", ex)
	}
	for _, want := range []string{"power button pressed", "paddock-agent: shutting down"} {
		if !strings.Contains(console(), want) {
			t.Errorf("console lacks %q", want)
		}
	}
	if out, err := exec.Command("e2fsck", "-fn", root).CombinedOutput(); err != nil {
		t.Errorf("root disk not clean after the power button: %v\n%s", err, out)
	}
}

// TestSaveRestore saves a running guest's state to a file and resumes two
// VMs from it, each on its own overlay of the disk frozen at the save: both
// continue the same boot (same boot id, the file written before the save),
// neither sees the other's writes, the frozen layer is unchanged, and a
// truncated state file fails the start with QEMU's reason and leaves
// nothing behind. Both ways: the guest's RAM in the migration stream, and
// its RAM in a file from boot (Spec.MemoryFile), where the stream holds
// the devices only, the file is moved beside it and no resume writes it.
func TestSaveRestore(t *testing.T) {
	for _, tc := range []struct {
		name  string
		inRAM bool // the RAM in a file from boot
	}{
		{"whole stream", false},
		{"memory in a file", true},
	} {
		t.Run(tc.name, func(t *testing.T) { testSaveRestore(t, tc.inRAM) })
	}
}

func testSaveRestore(t *testing.T, memoryFile bool) {
	f := getFixture(t)
	tmp := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root := rootDisk(t, tmp)
	d := New()
	defer d.Close()
	overlay := func(name, backing, format string) string {
		t.Helper()
		p := filepath.Join(tmp, name)
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", format, "-b", backing, p).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img: %v %s", err, out)
		}
		return p
	}
	spec := func(disk, run, state string) vmm.Spec {
		// TCG: a state saved under one accelerator loads under that one only.
		return vmm.Spec{VMID: testID(), Kernel: f.Kit.VmlinuxPath(), Initrd: f.Kit.InitramfsPath(), Accel: vmm.AccelTCG,
			Cmdline: "paddock.root=/dev/vda", Disks: []vmm.Disk{{Path: disk, Format: vmm.FormatQCOW2}},
			RunDir: filepath.Join(tmp, run), Incoming: state}
	}
	start := func(s vmm.Spec) *vmm.Process {
		t.Helper()
		p, err := d.Start(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = New().Kill(context.Background(), p) })
		return p
	}

	// --- the template: boot, leave a mark in RAM and on disk, save
	layer := overlay("template.qcow2", root, "raw")
	ts := spec(layer, "run-t", "")
	if memoryFile {
		ts.MemoryFile = filepath.Join(tmp, "ram")
		if err := os.WriteFile(ts.MemoryFile, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	bootAt := time.Now()
	tp := start(ts)
	if tp.MemoryFile != ts.MemoryFile {
		t.Fatalf("Process.MemoryFile %q, want %q", tp.MemoryFile, ts.MemoryFile)
	}
	c := agentClient(t, ctx, tp)
	bootTook := time.Since(bootAt)
	bootID := run(t, ctx, c, "echo saved-in-ram >/run/mark; echo saved-on-disk >/data/mark; sync; cat /proc/sys/kernel/random/boot_id")
	c.Close()
	state := filepath.Join(tmp, "state")
	saved, err := d.Save(ctx, tp, state)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{state}
	if memoryFile {
		want = append(want, vmm.MemPath(state))
	}
	if !slices.Equal(saved.Files, want) {
		t.Fatalf("Saved.Files %q, want %q", saved.Files, want)
	}
	if st, err := d.Status(ctx, tp); err != nil || st != "postmigrate" {
		t.Fatalf("after Save the guest is %q (%v), want it paused (postmigrate)", st, err)
	}
	if err := d.Kill(ctx, tp); err != nil {
		t.Fatal(err)
	}
	stateSize := fileSize(t, state)
	var ramSum [32]byte
	if memoryFile {
		// The stream holds the devices only; the RAM moved, whole.
		if stateSize > 1<<20 {
			t.Errorf("state %d bytes with the memory apart, want the device state only (< 1 MiB)", stateSize)
		}
		if _, err := os.Stat(ts.MemoryFile); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the guest memory file is still at %s after the save (%v)", ts.MemoryFile, err)
		}
		if n := fileSize(t, vmm.MemPath(state)); n != 256<<20 {
			t.Errorf("memory file %d bytes, want the guest's 256 MiB", n)
		}
		ramSum = sha256.Sum256(mustRead(t, vmm.MemPath(state)))
	} else if stateSize < 16<<20 {
		t.Errorf("whole state %d bytes: the guest's RAM is missing from it", stateSize)
	}
	frozen, err := os.ReadFile(layer)
	if err != nil {
		t.Fatal(err)
	}

	// --- two VMs resume from it, each on its own overlay
	var restoreTook []time.Duration
	for i, name := range []string{"a", "b"} {
		at := time.Now()
		p := start(spec(overlay("clone-"+name+".qcow2", layer, "qcow2"), "run-"+name, state))
		if p.MemoryFile != "" {
			t.Errorf("a resume shares its RAM with %s: it must map it privately", p.MemoryFile)
		}
		c := agentClient(t, ctx, p)
		restoreTook = append(restoreTook, time.Since(at))
		got := run(t, ctx, c, "cat /proc/sys/kernel/random/boot_id /run/mark /data/mark; cat /data/only-a 2>/dev/null; echo "+name+" >/data/only-"+name+"; echo "+name+" >/run/mark; sync")
		want := bootID + "saved-in-ram\nsaved-on-disk\n"
		if i == 1 && got != want {
			t.Fatalf("clone b sees %q, want %q (not a's write)", got, want)
		}
		if got != want {
			t.Fatalf("clone %s sees %q, want the template's boot and marks %q", name, got, want)
		}
		c.Close()
		if err := d.Kill(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	if now, err := os.ReadFile(layer); err != nil || !bytes.Equal(now, frozen) {
		t.Fatalf("the frozen layer changed under its clones (%v)", err)
	}
	if memoryFile && sha256.Sum256(mustRead(t, vmm.MemPath(state))) != ramSum {
		t.Fatal("the saved memory file changed under its clones")
	}

	// --- a truncated state: refused by QEMU, nothing left
	bad := filepath.Join(tmp, "bad-state")
	if err := os.WriteFile(bad, mustRead(t, state)[:stateSize/2], 0o600); err != nil {
		t.Fatal(err)
	}
	bs := spec(overlay("clone-bad.qcow2", layer, "qcow2"), "run-bad", bad)
	if memoryFile {
		if err := os.Link(vmm.MemPath(state), vmm.MemPath(bad)); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := d.Start(ctx, bs); err == nil {
		_ = d.Kill(ctx, p)
		t.Fatal("a truncated state file started a VM")
	} else if !strings.Contains(err.Error(), "restore state") {
		t.Fatalf("truncated state: %v (want an error saying the restore failed)", err)
	} else {
		t.Logf("truncated state refused: %v", err)
	}
	if found, err := vmm.Find(bs.VMID); err != nil || len(found) > 0 {
		t.Fatalf("VMMs of the refused start left: %v %v", found, err)
	}
	if _, err := os.Stat(filepath.Join(bs.RunDir, "qmp.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused start left its QMP socket: %v", err)
	}
	t.Logf("FIGURES: cold Start → agent hello %.2f s | Save %d MiB in %.3f s (state %d KiB) | restore Start → agent hello %.2f s, %.2f s",
		bootTook.Seconds(), saved.Bytes>>20, saved.Took.Seconds(), stateSize>>10, restoreTook[0].Seconds(), restoreTook[1].Seconds())
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestReadAheadAtBoot: the agent reads ahead, during the boot, the files a
// first exec and the entrypoint load. The root holds the host's dynamic
// sleep as the entrypoint with its loader, libc and ld.so.cache (Debian's
// amd64 layout, as CI's); the agent's debug line names each and says every
// one was read ahead, and the entrypoint runs.
func TestReadAheadAtBoot(t *testing.T) {
	f := getFixture(t)
	tmp := t.TempDir()
	tree := filepath.Join(tmp, "tree")
	guesttest.ImageTree(t, tree, map[string]any{"config": map[string]any{
		"Entrypoint": []string{"sleep"}, "Cmd": []string{"3600"}, "Env": []string{"PATH=/usr/bin:/bin"}}})
	const (
		sleep = "/usr/bin/sleep"
		ldso  = "/lib64/ld-linux-x86-64.so.2"
		libc  = "/lib/x86_64-linux-gnu/libc.so.6"
		cache = "/etc/ld.so.cache"
	)
	for _, p := range []string{sleep, ldso, libc, cache} {
		real, err := filepath.EvalSymlinks(p)
		testenv.Require(t, err == nil, p+" on the host (Debian amd64's layout)")
		b, err := os.ReadFile(real)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(tree, p)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	root := filepath.Join(tmp, "root.ext4")
	guesttest.BuildExt4(t, tree, root, 64, "paddockroot")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	d := New()
	defer d.Close()
	p, console := debugGuest(t, ctx, d, f, root, tmp)
	var line string // the whole line: the console may hold only part of it yet
	testwait.For(t, "the agent's read-ahead line", 3*time.Minute, func() bool {
		c := console()
		i := strings.Index(c, "read ahead ")
		if i < 0 {
			return false
		}
		n := strings.IndexByte(c[i:], '\n')
		if n < 0 {
			return false
		}
		line = strings.TrimRight(c[i:i+n], "\r")
		return true
	})
	if want := "read ahead 5 of " + strings.Join([]string{sleep, ldso, cache, libc, "/bin/sh"}, " "); line != want {
		t.Fatalf("the agent's read-ahead line:\n%q, want\n%q", line, want)
	}
	c := agentClient(t, ctx, p)
	defer c.Close()
	testwait.For(t, "the dynamic entrypoint running", time.Minute, func() bool {
		h, err := c.Health(ctx)
		return err == nil && h.Main.State == "running"
	})
}

// debugGuest boots root with paddock.debug (the agent's log on the
// console), killed at cleanup (its console shown if the test failed); it
// returns the process and a reader of its console.
func debugGuest(t *testing.T, ctx context.Context, d *Driver, f *guesttest.Fixture, root, tmp string) (*vmm.Process, func() string) {
	t.Helper()
	spec := vmm.Spec{VMID: testID(), Kernel: f.Kit.VmlinuxPath(), Initrd: f.Kit.InitramfsPath(),
		Cmdline: "paddock.root=/dev/vda paddock.debug", Disks: []vmm.Disk{{Path: root}}, RunDir: filepath.Join(tmp, "run")}
	p, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		kctx, kcancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer kcancel()
		if err := New().Kill(kctx, p); err != nil {
			t.Errorf("cleanup kill: %v", err)
		}
		if t.Failed() {
			b, _ := os.ReadFile(p.ConsoleLog)
			t.Logf("console:\n%s", b)
		}
	})
	return p, func() string { b, _ := os.ReadFile(p.ConsoleLog); return string(b) }
}
