package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/guestboot"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/internal/testenv"
	"github.com/paddock-vm/paddock/internal/unixtest"
)

func testSpec(t *testing.T) vmm.Spec {
	t.Helper()
	s, err := vmm.Spec{
		VMID: "vm1", Kernel: "/k/vmlinux", Initrd: "/k/initrd.gz", Cmdline: "paddock.root=/dev/vda paddock.ip=10.0.0.2/24",
		CPUs: 2, MemoryMiB: 512, RunDir: "/run/paddock/vm,1",
		Disks: []vmm.Disk{{Path: "/v/root.qcow2", Format: vmm.FormatQCOW2}, {Path: "/v/data,1.ext4", ReadOnly: true}},
		Tap:   &vmm.Tap{Name: "pdk-vm1", MAC: "02:11:22:33:44:55"},
	}.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// argAfter returns every value following flag in argv.
func argAfter(argv []string, flag string) []string {
	var out []string
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag {
			out = append(out, argv[i+1])
		}
	}
	return out
}

func TestArgv(t *testing.T) {
	d := &Driver{TSCkHz: 2000000}
	for _, tc := range []struct {
		accel, accelArg, cpu string
	}{
		{vmm.AccelTCG, "tcg,tb-size=128", "max"},
		{vmm.AccelKVM, "kvm", "host"},
	} {
		t.Run(tc.accel, func(t *testing.T) {
			argv, err := d.Argv(testSpec(t), tc.accel)
			if err != nil {
				t.Fatal(err)
			}
			if argv[0] != DefaultBinary {
				t.Errorf("binary %q", argv[0])
			}
			if id, drv, ok := vmm.TagOf(argv); !ok || id != "vm1" || drv != "qemu" {
				t.Errorf("tag: %q %q %v", id, drv, ok)
			}
			for _, c := range []struct {
				flag string
				want []string
			}{
				{"-M", []string{"microvm,pit=off,pic=off,rtc=on"}},
				{"-accel", []string{tc.accelArg}},
				{"-cpu", []string{tc.cpu}},
				{"-m", []string{"512"}},
				{"-smp", []string{"2"}},
				{"-serial", []string{"chardev:con"}},
				{"-qmp", []string{"unix:/run/paddock/vm,,1/qmp.sock,server=on,wait=off"}},
				{"-chardev", []string{
					"socket,id=con,path=/run/paddock/vm,,1/console.sock,server=on,wait=off",
					"socket,id=ctl,path=/run/paddock/vm,,1/control.sock,server=on,wait=off"}},
				{"-drive", []string{
					"id=disk0,file=/v/root.qcow2,format=qcow2,if=none",
					"id=disk1,file=/v/data,,1.ext4,format=raw,if=none,readonly=on"}},
				{"-netdev", []string{"tap,id=n0,ifname=pdk-vm1,script=no,downscript=no"}},
				{"-sandbox", []string{"on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"}},
				{"-kernel", []string{"/k/vmlinux"}},
				{"-initrd", []string{"/k/initrd.gz"}},
			} {
				if got := argAfter(argv, c.flag); !slices.Equal(got, c.want) {
					t.Errorf("%s: got %q, want %q", c.flag, got, c.want)
				}
			}
			devs := strings.Join(argAfter(argv, "-device"), " ")
			for _, want := range []string{"virtio-blk-device,drive=disk0", "virtio-blk-device,drive=disk1",
				"virtio-net-device,netdev=n0,mac=02:11:22:33:44:55", "virtio-serial-device,max_ports=2", "virtserialport,chardev=ctl,name=paddock.agent"} {
				if !strings.Contains(devs, want) {
					t.Errorf("no -device %s in %s", want, devs)
				}
			}
			for _, flag := range []string{"-S", "-nodefaults", "-no-user-config", "-no-reboot"} {
				if !slices.Contains(argv, flag) {
					t.Errorf("no %s", flag)
				}
			}
			app := argAfter(argv, "-append")
			if len(app) != 1 || !strings.HasPrefix(app[0], "console=ttyS0 panic=-1 quiet pci=off tsc_early_khz=2000000 tsc=reliable ") {
				t.Fatalf("-append %q", app)
			}
			boot, err := guestboot.Parse(app[0])
			if err != nil || boot.Root != "/dev/vda" || len(boot.IPs) != 1 || boot.IPs[0].String() != "10.0.0.2/24" {
				t.Errorf("-append %q: %+v %v", app[0], boot, err)
			}
		})
	}
	s := testSpec(t)
	s.Initrd = ""
	if _, err := d.Argv(s, vmm.AccelTCG); !errors.Is(err, vmm.ErrInvalidSpec) {
		t.Errorf("no initrd: %v", err)
	}
	s = testSpec(t)
	s.Tap, s.Disks = nil, nil
	argv, _ := d.Argv(s, vmm.AccelTCG)
	if len(argAfter(argv, "-netdev")) != 0 || len(argAfter(argv, "-drive")) != 0 {
		t.Errorf("no tap/disks: %q", argv)
	}
	// user-mode networking: the same virtio-net device on passt's socket
	for _, tc := range []struct {
		name        string
		stream      *vmm.Stream
		netdev, mac string
	}{
		{"default MAC", &vmm.Stream{Socket: "/run/paddock/vm,1/passt.sock"},
			"stream,id=n0,server=off,addr.type=unix,addr.path=/run/paddock/vm,,1/passt.sock", "02:00:00:00:00:02"},
		{"own MAC", &vmm.Stream{Socket: "/r/p.sock", MAC: "02:aa:bb:cc:dd:ee"},
			"stream,id=n0,server=off,addr.type=unix,addr.path=/r/p.sock", "02:aa:bb:cc:dd:ee"},
	} {
		s = testSpec(t)
		s.Tap, s.Stream = nil, tc.stream
		argv, err := d.Argv(s, vmm.AccelTCG)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := argAfter(argv, "-netdev"); !slices.Equal(got, []string{tc.netdev}) {
			t.Errorf("%s: -netdev %q, want %q", tc.name, got, tc.netdev)
		}
		if devs := argAfter(argv, "-device"); !slices.Contains(devs, "virtio-net-device,netdev=n0,mac="+tc.mac) {
			t.Errorf("%s: no virtio-net device with MAC %s in %q", tc.name, tc.mac, devs)
		}
	}
	s = testSpec(t)
	s.Stream = &vmm.Stream{Socket: "/r/p.sock"}
	if _, err := s.Normalize(); !errors.Is(err, vmm.ErrInvalidSpec) || !strings.Contains(err.Error(), "at most one") {
		t.Errorf("tap and stream: %v", err)
	}
	if _, err := (&Machine{Kernel: "/k", Initrd: "/i", TSCkHz: 1, Tap: s.Tap, Stream: s.Stream}).Args(); err == nil || !strings.Contains(err.Error(), "at most one") {
		t.Errorf("Machine with tap and stream: %v", err)
	}
	s.Tap, s.Stream = nil, &vmm.Stream{Socket: "passt.sock"}
	if _, err := s.Normalize(); !errors.Is(err, vmm.ErrInvalidSpec) || !strings.Contains(err.Error(), "passt.sock") {
		t.Errorf("relative stream socket: %v", err)
	}
	for _, tc := range []struct{ cmdline, want string }{
		{"paddock.root=/dev/vda paddock.bogus=1", "unknown key paddock.bogus"},
		{"paddock.hostname=" + strings.Repeat("a.", 1100) + "a", "paddock.hostname"},
		{strings.Repeat("x", 2100), "kernel command line is"},
	} {
		s = testSpec(t)
		s.Cmdline = tc.cmdline
		if _, err := d.Argv(s, vmm.AccelTCG); !errors.Is(err, vmm.ErrInvalidSpec) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Argv with %.30q: %v, want %q", tc.cmdline, err, tc.want)
		}
	}
}

// The guest's RAM in a file: shared with it at a boot (the template's
// builder), mapped privately at a resume; the backend's id is the same
// both times (migration matches RAM blocks by it).
func TestArgvMemoryFile(t *testing.T) {
	d := &Driver{TSCkHz: 2000000}
	for _, tc := range []struct {
		name, mem, incoming string
		machine             string
		object              []string
	}{
		{"QEMU's own memory", "", "", "microvm,pit=off,pic=off,rtc=on", nil},
		{"boot to be saved", "/s/vm,1/memory", "", "microvm,pit=off,pic=off,rtc=on,memory-backend=pdk-ram",
			[]string{"memory-backend-file,id=pdk-ram,size=512M,mem-path=/s/vm,,1/memory,share=on"}},
		{"resume", "/t/state.mem", "/t/state", "microvm,pit=off,pic=off,rtc=on,memory-backend=pdk-ram",
			[]string{"memory-backend-file,id=pdk-ram,size=512M,mem-path=/t/state.mem,share=off"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testSpec(t)
			s.MemoryFile, s.Incoming = tc.mem, tc.incoming
			argv, err := d.Argv(s, vmm.AccelTCG)
			if err != nil {
				t.Fatal(err)
			}
			if got := argAfter(argv, "-M"); !slices.Equal(got, []string{tc.machine}) {
				t.Errorf("-M %q, want %q", got, tc.machine)
			}
			if got := argAfter(argv, "-object"); !slices.Equal(got, tc.object) {
				t.Errorf("-object %q, want %q", got, tc.object)
			}
		})
	}
}

// A resume takes the saved memory beside the state when there is one (a
// state saved with its RAM apart), else none (a whole migration stream).
func TestResumeFindsSavedMemory(t *testing.T) {
	dir := t.TempDir()
	apart, whole := filepath.Join(dir, "apart"), filepath.Join(dir, "whole")
	for _, p := range []string{apart, vmm.MemPath(apart), whole} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		spec vmm.Spec
		want string
	}{
		{"boot", vmm.Spec{MemoryFile: "/m"}, "/m"},
		{"resume, memory apart", vmm.Spec{Incoming: apart, MemoryFile: "/ignored"}, vmm.MemPath(apart)},
		{"resume, whole stream", vmm.Spec{Incoming: whole}, ""},
	} {
		if got, err := memoryFile(tc.spec); err != nil || got != tc.want {
			t.Errorf("%s: %q %v, want %q", tc.name, got, err, tc.want)
		}
	}
}

// TestArgvControlChannel is the boot contract of the agent's channel: the
// guest reads exactly one paddock.ctl from the -append line (parsed the way
// the agent parses it), naming the virtio-serial port QEMU serves on the
// spec's control socket, whatever the caller's command line said.
func TestArgvControlChannel(t *testing.T) {
	d := &Driver{TSCkHz: 2000000}
	for _, tc := range []struct {
		name, cmdline, port, wantPort string
	}{
		{"caller names none", "paddock.root=/dev/vda", "", guestboot.DefaultSerialPort},
		// what the VM actor passes today
		{"caller names the default", "console=ttyS0 panic=-1 quiet paddock.root=/dev/vda paddock.ctl=paddock.agent", "", guestboot.DefaultSerialPort},
		{"caller names another port and vsock", "paddock.ctl=elsewhere paddock.vsock=77", "", guestboot.DefaultSerialPort},
		{"spec names the port", "paddock.ctl=paddock.agent", "ctl2", "ctl2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testSpec(t)
			s.Cmdline, s.ControlPort = tc.cmdline, tc.port
			argv, err := d.Argv(s, vmm.AccelTCG)
			if err != nil {
				t.Fatal(err)
			}
			app := argAfter(argv, "-append")
			if len(app) != 1 || strings.Count(app[0], "paddock.ctl") != 1 {
				t.Fatalf("-append %q: want exactly one paddock.ctl", app)
			}
			boot, err := guestboot.Parse(app[0])
			if err != nil {
				t.Fatalf("the agent would report: %v", err)
			}
			if boot.Serial != tc.wantPort || boot.Vsock != 0 {
				t.Errorf("guest serves on port %q, vsock %d; want %q, no vsock", boot.Serial, boot.Vsock, tc.wantPort)
			}
			devs := argAfter(argv, "-device")
			if !slices.Contains(devs, "virtserialport,chardev=ctl,name="+tc.wantPort) {
				t.Errorf("QEMU's port is not %q: %q", tc.wantPort, devs)
			}
			if !slices.Contains(argAfter(argv, "-chardev"), "socket,id=ctl,path="+qemuEscape(s.ControlSocket)+",server=on,wait=off") {
				t.Errorf("the port is not on the control socket %s", s.ControlSocket)
			}
		})
	}
}

// fakeQMP serves one QMP session per connection with scripted replies.
func fakeQMP(t *testing.T, handle func(cmd string) string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	unixtest.Listen(t, sock, func(c net.Conn) {
		fmt.Fprint(c, `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}`+"\r\n")
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			var req struct {
				Execute string `json:"execute"`
			}
			if json.Unmarshal(sc.Bytes(), &req) != nil {
				return
			}
			reply := handle(req.Execute)
			if reply == "" {
				return
			}
			fmt.Fprint(c, reply+"\r\n")
		}
	})
	return sock
}

func TestQMP(t *testing.T) {
	var seen []string
	sock := fakeQMP(t, func(cmd string) string {
		seen = append(seen, cmd)
		switch cmd {
		case "qmp_capabilities", "cont", "system_powerdown":
			return `{"return": {}}`
		case "query-status":
			return `{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}` + "\r\n" + `{"return": {"status": "running", "singlestep": false, "running": true}}`
		case "huge":
			return `{"return": "` + strings.Repeat("x", maxQMPLine+10) + `"}`
		case "quit":
			return ""
		}
		return `{"error": {"class": "CommandNotFound", "desc": "The command ` + cmd + ` has not been found"}}`
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var st struct{ Status string }
	if err := qmpDo(ctx, sock, "query-status", nil, &st); err != nil || st.Status != "running" {
		t.Fatalf("query-status: %+v %v", st, err)
	}
	if !slices.Equal(seen, []string{"qmp_capabilities", "query-status"}) {
		t.Fatalf("commands %v", seen)
	}
	var qe *QMPError
	if err := qmpDo(ctx, sock, "bogus", nil, nil); !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("bogus: %v", err)
	}
	if err := qmpDo(ctx, sock, "huge", nil, nil); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("huge: %v", err)
	}
	if err := qmpDo(ctx, sock, "quit", nil, nil); err == nil || !isClosed(err) {
		t.Fatalf("quit with the connection closed: %v", err)
	}
	// no greeting within the deadline
	silent := filepath.Join(t.TempDir(), "silent.sock")
	l, _ := net.Listen("unix", silent)
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			time.Sleep(time.Second)
			c.Close()
		}
	}()
	sctx, scancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer scancel()
	if err := qmpDo(sctx, silent, "cont", nil, nil); err == nil {
		t.Fatal("silent server: no error")
	}
}

// fakeQEMU writes a shell script standing in for qemu-system-x86_64 in the
// KVM probe: it writes console to the -serial file: path and exits. Run
// without the sandbox option or unconfined (no_new_privs unset, a
// capability held), it fails as QEMU would not.
func fakeQEMU(t *testing.T, console string, exit int, sleep string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fake-qemu")
	script := fmt.Sprintf(`#!/bin/sh
case " $* " in *" -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny "*) ;; *) echo "no sandbox" >&2; exit 98;; esac
grep -q '^NoNewPrivs:[[:space:]]*1$' /proc/$$/status || { echo "no_new_privs unset" >&2; exit 97; }
grep -q '^CapEff:[[:space:]]*0*$' /proc/$$/status || { echo "capabilities held" >&2; exit 96; }
for a in "$@"; do case "$a" in file:*) f="${a#file:}";; esac; done
[ -n "%s" ] && sleep %s
printf '%%s\n' %q > "$f"
exit %d
`, sleep, sleep, console, exit)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestKVMProbeDecision(t *testing.T) {
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(kernel, []byte("ELF"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, console string
		exit          int
		sleep         string
		ok            bool
		reason        string
	}{
		{"boots to the end of kernel init", "[ 0.5] Kernel panic - not syncing: VFS: Unable to mount root fs", 0, "", true, ""},
		{"QEMU aborts (MSR)", "", 134, "", false, "QEMU with KVM failed"},
		{"reset before the end of init", "[ 0.1] Linux version 6.1", 0, "", false, "without reaching the end"},
		{"hangs", "", 0, "5", false, "did not finish booting"},
		{"no /dev/kvm", "", 0, "", false, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// a stand-in /dev/kvm: any file that opens read-write
			d := &Driver{Binary: fakeQEMU(t, tc.console, tc.exit, tc.sleep), KVMProbeTimeout: time.Second, kvmDev: os.DevNull}
			if tc.name == "no /dev/kvm" {
				d.kvmDev = filepath.Join(t.TempDir(), "kvm")
			}
			start := time.Now()
			ok, reason := d.KVMUsable(context.Background(), kernel)
			if ok != tc.ok || !strings.Contains(reason, tc.reason) {
				t.Fatalf("got %v %q, want %v %q", ok, reason, tc.ok, tc.reason)
			}
			if tc.sleep != "" && time.Since(start) > 4*time.Second {
				t.Fatalf("timeout not honoured: %v", time.Since(start))
			}
			// cached: a broken binary now would change nothing
			d.Binary = "/nonexistent"
			if ok2, reason2 := d.KVMUsable(context.Background(), kernel); ok2 != ok || reason2 != reason {
				t.Fatalf("not cached: %v %q", ok2, reason2)
			}
			// resolveAccel follows it under auto, and obeys explicit choices
			for accel, want := range map[string]string{vmm.AccelAuto: map[bool]string{true: vmm.AccelKVM, false: vmm.AccelTCG}[ok], vmm.AccelTCG: vmm.AccelTCG, vmm.AccelKVM: vmm.AccelKVM} {
				if got, _ := d.resolveAccel(context.Background(), vmm.Spec{Kernel: kernel, Accel: accel}); got != want {
					t.Errorf("accel %s → %s, want %s", accel, got, want)
				}
			}
		})
	}
}

// TestAdoptResumesPrelaunch: a QEMU left paused by -S (its daemon died
// before "cont") is resumed by Adopt. Needs QEMU only (TCG, no kernel).
func TestAdoptResumesPrelaunch(t *testing.T) {
	bin := testenv.RequireTool(t, DefaultBinary, "qemu-system-x86")
	dir, err := os.MkdirTemp("", "pq")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	id := testID()
	p := &vmm.Process{Driver: Name, VMID: id, RunDir: dir, APISocket: qmpPath(dir), ConsoleSocket: consolePath(dir),
		ConsoleLog: filepath.Join(dir, "console.log"), ConsoleLogMax: 4096}
	p.Sockets = []string{p.APISocket, p.ConsoleSocket}
	argv := []string{bin, "-name", vmm.Tag(id), "-S",
		"-qmp", "unix:" + p.APISocket + ",server=on,wait=off",
		"-chardev", "socket,id=con,path=" + p.ConsoleSocket + ",server=on,wait=off",
		"-M", "microvm", "-accel", "tcg", "-nodefaults", "-no-user-config", "-display", "none", "-serial", "chardev:con"}
	d := New()
	if err := d.Launch(p, vmm.Command{Path: bin, Args: argv, Log: filepath.Join(dir, "vmm.log")}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t.Cleanup(func() { _ = New().Kill(context.Background(), p) })
	q, err := d.waitQMP(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	q.Close()
	if st, err := d.Status(ctx, p); err != nil || st != "prelaunch" {
		t.Fatalf("before Adopt: %q %v", st, err)
	}
	d2 := New()
	defer d2.Close()
	if err := d2.Adopt(ctx, p); err != nil {
		t.Fatal(err)
	}
	if st, err := d2.Status(ctx, p); err != nil || st != "running" {
		t.Fatalf("after Adopt: %q %v", st, err)
	}
	// no guest to press the power button for: quit ends it cleanly
	if err := d2.Stop(ctx, p, 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if ex, err := d2.Wait(ctx, p); err != nil || !ex.Known || ex.Code != 0 || ex.Signal != 0 {
		t.Fatalf("exit %v %v", ex, err)
	}
}

// A missing QEMU binary is reported by Check and by Start, before anything
// is made, as Unavailable naming the binary.
func TestCheckMissingBinary(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "qemu-ok")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	notExec := filepath.Join(dir, "qemu-noexec")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, binary string
		wantErr      bool
	}{
		{"absolute path that exists", script, false},
		{"absolute path missing", filepath.Join(dir, "no-such-qemu"), true},
		{"not executable", notExec, true},
		{"name not in PATH", "paddock-no-such-qemu", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &Driver{Binary: tc.binary}
			err := d.Check()
			if (err != nil) != tc.wantErr {
				t.Fatalf("Check() = %v, want error %v", err, tc.wantErr)
			}
			if !tc.wantErr {
				return
			}
			if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), tc.binary) {
				t.Fatalf("Check() = %v: want Unavailable naming %s", err, tc.binary)
			}
			spec := testSpec(t)
			spec.RunDir = filepath.Join(dir, "run-"+strings.ReplaceAll(tc.name, " ", "-"))
			spec.VMID = "check-" + strings.ReplaceAll(tc.name, " ", "-")
			p, err := d.Start(context.Background(), spec)
			if p != nil || !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), tc.binary) {
				t.Fatalf("Start = %v, %v: want Unavailable naming %s", p, err, tc.binary)
			}
			if _, err := os.Stat(spec.RunDir); !os.IsNotExist(err) {
				t.Errorf("Start made %s before failing (%v)", spec.RunDir, err)
			}
		})
	}
}
