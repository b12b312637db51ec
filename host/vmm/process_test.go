package vmm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/host/cgroup"
	"github.com/paddock-vm/paddock/internal/testenv"
	"github.com/paddock-vm/paddock/internal/testwait"
)

// The test binary doubles as a fake VMM (PADDOCK_FAKE_VMM=1: tagged argv,
// reports its process attributes on stdout, serves a console socket or FIFO)
// and as a fake daemon (PADDOCK_FAKE_DAEMON=1: launches a fake VMM through
// Base, prints the handle as JSON and waits to be killed).
const (
	fakeVMMEnv    = "PADDOCK_FAKE_VMM"
	fakeDaemonEnv = "PADDOCK_FAKE_DAEMON"
)

func TestMain(m *testing.M) {
	switch {
	case os.Getenv(fakeVMMEnv) == "1":
		fakeVMM()
	case os.Getenv(fakeDaemonEnv) == "1":
		fakeDaemon()
	}
	os.Exit(m.Run())
}

func fakeVMM() {
	pds, _ := unix.PrctlRetInt(unix.PR_GET_PDEATHSIG, 0, 0, 0, 0)
	sid, _ := unix.Getsid(0)
	stdin, _ := os.Readlink("/proc/self/fd/0")
	fmt.Printf("pdeathsig=%d sid=%d pgid=%d pid=%d stdin=%s env=%d\n", pds, sid, unix.Getpgrp(), os.Getpid(), stdin, len(os.Environ()))
	signal.Ignore(syscall.SIGUSR1)
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	line := strings.Repeat("=", 150)
	var tick atomic.Int64
	if sock := os.Getenv("FAKE_CONSOLE"); sock != "" {
		l, err := net.Listen("unix", sock)
		if err != nil {
			fmt.Println("listen:", err)
			os.Exit(3)
		}
		go func() {
			for { // one client at a time, like QEMU's chardev server
				c, err := l.Accept()
				if err != nil {
					return
				}
				for {
					if _, err := fmt.Fprintf(c, "tick %d %s\n", tick.Add(1), line); err != nil {
						break
					}
					time.Sleep(5 * time.Millisecond)
				}
				c.Close()
			}
		}()
	}
	if fifo := os.Getenv("FAKE_FIFO"); fifo != "" {
		f, err := os.OpenFile(fifo, os.O_RDWR, 0)
		if err != nil {
			fmt.Println("fifo:", err)
			os.Exit(3)
		}
		go func() {
			for {
				fmt.Fprintf(f, "fifo tick %d\n", tick.Add(1))
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	<-term
	os.Exit(0)
}

func fakeDaemon() {
	var p Process
	if err := json.Unmarshal([]byte(os.Getenv("FAKE_PROCESS")), &p); err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	var b Base
	cmd := fakeCommand(p.VMID, filepath.Join(p.RunDir, "vmm.log"), "FAKE_CONSOLE="+p.ConsoleSocket)
	if err := b.Launch(&p, cmd); err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.AttachConsole(ctx, &p); err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	out, _ := json.Marshal(&p)
	fmt.Println(string(out))
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // killed while waiting here
	os.Exit(0)
}

func fakeCommand(id, log string, env ...string) Command {
	return Command{
		Path: os.Args[0], Args: []string{os.Args[0], "-name", Tag(id), "-qmp", "unix:" + filepath.Join(filepath.Dir(log), "qmp.sock") + ",server=on"}, Log: log,
		Env: append([]string{fakeVMMEnv + "=1"}, env...),
	}
}

var idSeq atomic.Int64

// testID is unique among concurrently running test binaries (Find scans
// every process on the host).
func testID() string { return fmt.Sprintf("t%d-%d", os.Getpid(), idSeq.Add(1)) }

// launchFake starts a fake VMM through b and kills it at cleanup (by pid,
// after an identity check).
func launchFake(t *testing.T, b *Base, env ...string) *Process {
	t.Helper()
	return launchFakeWith(t, b, func(*Command) {}, env...)
}

// launchFakeWith is launchFake with the command changed by edit.
func launchFakeWith(t *testing.T, b *Base, edit func(*Command), env ...string) *Process {
	t.Helper()
	dir := t.TempDir()
	id := testID()
	p := &Process{Driver: "qemu", VMID: id, RunDir: dir,
		ConsoleSocket: filepath.Join(dir, "console.sock"), ConsoleLog: filepath.Join(dir, "console.log"), ConsoleLogMax: 4096}
	p.Sockets = []string{p.ConsoleSocket}
	c := fakeCommand(id, filepath.Join(dir, "vmm.log"), append(env, "FAKE_CONSOLE="+p.ConsoleSocket)...)
	edit(&c)
	if err := b.Launch(p, c); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killTestProcess(t, p) })
	return p
}

// killTestProcess kills a process the test started, if it is still that one.
func killTestProcess(t *testing.T, p *Process) {
	var b Base
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.kill(ctx, p); err != nil {
		t.Errorf("cleanup: %v", err)
	}
}

func readVMMLog(t *testing.T, p *Process) string {
	t.Helper()
	var s string
	testwait.For(t, "the fake VMM's report", 10*time.Second, func() bool {
		b, _ := os.ReadFile(filepath.Join(p.RunDir, "vmm.log"))
		s = string(b)
		return strings.Contains(s, "\n")
	})
	return s
}

func TestLaunchAttributes(t *testing.T) {
	var b Base
	p := launchFake(t, &b)
	rep := readVMMLog(t, p)
	want := fmt.Sprintf("pdeathsig=0 sid=%d pgid=%d pid=%d stdin=/dev/null env=2\n", p.PID, p.PID, p.PID)
	if rep != want {
		t.Fatalf("VMM attributes %q, want %q (own session, no parent-death signal, stdin /dev/null, clean env)", rep, want)
	}
	if p.StartTime == 0 || len(p.Cmdline) != 5 || p.Cmdline[2] != Tag(p.VMID) {
		t.Fatalf("handle %+v", p)
	}
	if s, err := b.Probe(p); err != nil || s != StateRunning {
		t.Fatalf("Probe: %v %v", s, err)
	}
	// a second VMM for the same VM is refused
	q := &Process{VMID: p.VMID, RunDir: p.RunDir}
	if err := b.Launch(q, fakeCommand(p.VMID, filepath.Join(p.RunDir, "vmm2.log"))); !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("second Launch: %v", err)
	}
	// argv without the tag is refused
	if err := b.Launch(&Process{VMID: testID()}, Command{Path: "sleep", Args: []string{"sleep", "1"}}); !errors.Is(err, ErrInvalidSpec) {
		t.Fatalf("untagged Launch: %v", err)
	}
}

// TestKillWaitProbe: Kill of a child reports the signal through Wait, is
// idempotent, and leaves nothing behind.
func TestKillWaitProbe(t *testing.T) {
	var b Base
	p := launchFake(t, &b)
	testwait.For(t, "console socket", 10*time.Second, func() bool { _, err := os.Stat(p.ConsoleSocket); return err == nil })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	exited := make(chan Exit, 1)
	go func() {
		ex, err := b.Wait(ctx, p)
		if err != nil {
			t.Errorf("Wait: %v", err)
		}
		exited <- ex
	}()
	time.Sleep(50 * time.Millisecond)
	select {
	case ex := <-exited:
		t.Fatalf("Wait returned while the VMM runs: %v", ex)
	default:
	}
	if err := b.Kill(ctx, p); err != nil {
		t.Fatal(err)
	}
	if ex := <-exited; !ex.Known || ex.Signal != int(syscall.SIGKILL) {
		t.Fatalf("exit %+v", ex)
	}
	if s, err := b.Probe(p); err != nil || s != StateExited {
		t.Fatalf("Probe after Kill: %v %v", s, err)
	}
	if _, err := os.Stat(p.ConsoleSocket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := b.Kill(ctx, p); err != nil {
			t.Fatalf("Kill #%d of a gone VMM: %v", i+2, err)
		}
	}
	if err := b.StopWith(ctx, p); err != nil {
		t.Fatalf("Stop of a gone VMM: %v", err)
	}
	if ex, err := b.Wait(ctx, p); err != nil || ex.Signal != int(syscall.SIGKILL) {
		t.Fatalf("Wait after the exit: %+v %v", ex, err)
	}
	if err := b.Adopt(ctx, p); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Adopt of a gone VMM: %v", err)
	}
}

// TestNotOurs: a handle whose pid is alive but is not the VMM it names is
// never signalled, by Kill, Stop or anything else.
func TestNotOurs(t *testing.T) {
	var b Base
	real := launchFake(t, &b)
	sleep := exec.Command("sleep", "300")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	sleepDone := make(chan struct{})
	go func() { _ = sleep.Wait(); close(sleepDone) }()
	t.Cleanup(func() { _ = sleep.Process.Kill(); <-sleepDone })
	sleepStart, err := StartTimeOf(sleep.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		mut    func(p *Process)
		victim func() int
	}{
		{"reused pid: unrelated sleep, other cmdline and start time", func(p *Process) {
			p.PID = sleep.Process.Pid
		}, func() int { return sleep.Process.Pid }},
		{"reused pid: unrelated sleep, same start time, other cmdline", func(p *Process) {
			p.PID, p.StartTime = sleep.Process.Pid, sleepStart
		}, func() int { return sleep.Process.Pid }},
		{"start time differs", func(p *Process) { p.StartTime++ }, func() int { return real.PID }},
		{"boot id differs", func(p *Process) { p.BootID = "00000000-0000-0000-0000-000000000000" }, func() int { return real.PID }},
		{"argv differs", func(p *Process) { p.Cmdline = append(p.Cmdline, "-S") }, func() int { return real.PID }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "boot id differs" && BootID() == "" {
				t.Skip("boot id unreadable here")
			}
			p := *real
			p.Cmdline = append([]string(nil), real.Cmdline...)
			p.Sockets, p.Cgroup = nil, ""
			tc.mut(&p)
			// a decoded handle, as after a restart
			var h Process
			b2, _ := json.Marshal(&p)
			if err := json.Unmarshal(b2, &h); err != nil {
				t.Fatal(err)
			}
			var fresh Base
			if s, err := fresh.Probe(&h); err != nil || s != StateNotOurs {
				t.Fatalf("Probe: %v %v", s, err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := fresh.Kill(ctx, &h); err != nil {
				t.Fatalf("Kill: %v", err)
			}
			if err := fresh.StopWith(ctx, &h, StopStep{Name: "never", Wait: time.Second, Do: func(context.Context) error {
				t.Error("Stop ran a graceful step against a process that is not ours")
				return nil
			}}); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			if ex, err := fresh.Wait(ctx, &h); err != nil || ex.Known {
				t.Fatalf("Wait: %+v %v", ex, err)
			}
			if err := fresh.Adopt(ctx, &h); !errors.Is(err, ErrNotRunning) {
				t.Fatalf("Adopt: %v", err)
			}
			time.Sleep(20 * time.Millisecond)
			if st, err := readStat(tc.victim()); err != nil || st.State == 'Z' {
				t.Fatalf("pid %d was killed: %+v %v", tc.victim(), st, err)
			}
		})
	}
	if s, _ := b.Probe(real); s != StateRunning {
		t.Fatalf("the real VMM is %v", s)
	}
}

func TestInvalidHandle(t *testing.T) {
	var b Base
	for name, p := range map[string]*Process{
		"nil":          nil,
		"no pid":       {VMID: "vm1", StartTime: 1, Cmdline: []string{"q", "-name", "paddock-vm1"}},
		"no start":     {VMID: "vm1", PID: 1, Cmdline: []string{"q", "-name", "paddock-vm1"}},
		"no tag":       {VMID: "vm1", PID: 1, StartTime: 1, Cmdline: []string{"q"}},
		"tag mismatch": {VMID: "vm2", PID: 1, StartTime: 1, Cmdline: []string{"q", "-name", "paddock-vm1"}},
	} {
		if _, err := b.Probe(p); !errors.Is(err, ErrInvalidHandle) {
			t.Errorf("%s: Probe %v", name, err)
		}
	}
	// pid 1 with a stolen tag is never signalled
	p := &Process{VMID: "vm1", PID: 1, StartTime: 1, Cmdline: []string{"q", "-name", "paddock-vm1"}}
	if s, err := b.Probe(p); err != nil || s != StateNotOurs {
		t.Fatalf("pid 1: %v %v", s, err)
	}
}

// TestZombie: an exited but unreaped VMM is exited, not running.
func TestZombie(t *testing.T) {
	id := testID()
	cmd := exec.Command(os.Args[0], "-name", Tag(id))
	cmd.Env = []string{fakeVMMEnv + "=1"}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	start, err := StartTimeOf(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	p := &Process{VMID: id, PID: cmd.Process.Pid, StartTime: start, Cmdline: cmd.Args}
	testwait.For(t, "running", 5*time.Second, func() bool { s, _ := identify(p); return s == StateRunning })
	_ = cmd.Process.Signal(syscall.SIGKILL)
	testwait.For(t, "zombie", 5*time.Second, func() bool { st, _ := readStat(p.PID); return st.State == 'Z' })
	if s, err := identify(p); err != nil || s != StateExited {
		t.Fatalf("zombie: %v %v", s, err)
	}
	if found, _ := Find(id); len(found) != 0 {
		t.Fatalf("Find lists a zombie: %+v", found[0])
	}
}

// TestFindAndIntentKill: a VMM whose handle was never persisted (crash after
// launch) is found by its tag and killed from an intent-only handle.
func TestFindAndIntentKill(t *testing.T) {
	var b Base
	p := launchFake(t, &b)
	// Past its confining step: while it execs, /proc shows no argv.
	readVMMLog(t, p)
	found, err := Find(p.VMID)
	if err != nil || len(found) != 1 {
		t.Fatalf("Find: %v %v", found, err)
	}
	f := found[0]
	if f.PID != p.PID || f.StartTime != p.StartTime || f.Driver != "qemu" || f.VMID != p.VMID || strings.Join(f.Cmdline, " ") != strings.Join(p.Cmdline, " ") ||
		f.RunDir != p.RunDir || f.APISocket != filepath.Join(p.RunDir, "qmp.sock") {
		t.Fatalf("found %+v, want %+v", f, p)
	}
	all, err := Find("")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(all, func(q *Process) bool { return q.PID == p.PID }) {
		t.Fatal("Find(\"\") does not list the VMM")
	}
	// judged for one daemon: its uid, its runtime directory
	for root, want := range map[string]bool{p.RunDir: true, filepath.Dir(p.RunDir): true, p.RunDir + "x": false, "/nonexistent": false} {
		found, err := Owner{UID: os.Geteuid(), RunRoot: root}.Find()
		if err != nil {
			t.Fatal(err)
		}
		got := false
		for _, q := range found {
			got = got || q.PID == p.PID
		}
		if got != want {
			t.Errorf("Owner{RunRoot: %q}.Find lists it: %v, want %v", root, got, want)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	intent := &Process{Driver: "qemu", VMID: p.VMID, RunDir: p.RunDir, Sockets: p.Sockets}
	if err := b.Kill(ctx, intent); err != nil {
		t.Fatal(err)
	}
	if s, _ := b.Probe(p); s != StateExited {
		t.Fatalf("after intent Kill: %v", s)
	}
	if _, err := os.Stat(p.ConsoleSocket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left: %v", err)
	}
}

func TestStopWith(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t.Run("graceful", func(t *testing.T) {
		var b Base
		p := launchFake(t, &b)
		readVMMLog(t, p) // signal handlers installed
		var called []string
		err := b.StopWith(ctx, p,
			StopStep{Name: "broken", Wait: time.Minute, Do: func(context.Context) error { called = append(called, "broken"); return errors.New("no QMP") }},
			StopStep{Name: "term", Wait: 10 * time.Second, Do: func(context.Context) error {
				called = append(called, "term")
				return unix.Kill(p.PID, unix.SIGTERM)
			}},
			StopStep{Name: "unneeded", Wait: time.Second, Do: func(context.Context) error { called = append(called, "unneeded"); return nil }},
		)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(called, ",") != "broken,term" {
			t.Fatalf("steps %v", called)
		}
		if ex, _ := b.Wait(ctx, p); !ex.Known || ex.Code != 0 || ex.Signal != 0 {
			t.Fatalf("exit %+v", ex)
		}
	})
	t.Run("ignored, then killed", func(t *testing.T) {
		var b Base
		p := launchFake(t, &b)
		readVMMLog(t, p)
		start := time.Now()
		err := b.StopWith(ctx, p, StopStep{Name: "usr1", Wait: 300 * time.Millisecond, Do: func(context.Context) error {
			return unix.Kill(p.PID, unix.SIGUSR1)
		}})
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d < 300*time.Millisecond {
			t.Fatalf("did not wait for the step: %v", d)
		}
		if ex, _ := b.Wait(ctx, p); ex.Signal != int(syscall.SIGKILL) {
			t.Fatalf("exit %+v", ex)
		}
	})
	t.Run("all steps failed", func(t *testing.T) {
		var b Base
		p := launchFake(t, &b)
		err := b.StopWith(ctx, p, StopStep{Name: "broken", Wait: time.Minute, Do: func(context.Context) error { return errors.New("no QMP") }})
		if err == nil || !strings.Contains(err.Error(), "no QMP") {
			t.Fatalf("err %v", err)
		}
		if s, _ := b.Probe(p); s != StateExited {
			t.Fatalf("state %v", s)
		}
	})
}

// TestSurvivesDaemon: a VMM launched by a daemon that is then SIGKILLed
// keeps running, is re-adopted from the JSON handle by a new Base (console
// copier re-attached), and is killed without being our child.
func TestSurvivesDaemon(t *testing.T) {
	dir := t.TempDir()
	id := testID()
	p0 := Process{Driver: "qemu", VMID: id, RunDir: dir, ConsoleSocket: filepath.Join(dir, "console.sock"),
		ConsoleLog: filepath.Join(dir, "console.log"), ConsoleLogMax: 8192}
	p0.Sockets = []string{p0.ConsoleSocket}
	in, _ := json.Marshal(&p0)
	daemon := exec.Command(os.Args[0], "-test.run=^$")
	daemon.Env = append(os.Environ(), fakeDaemonEnv+"=1", "FAKE_PROCESS="+string(in))
	stdin, _ := daemon.StdinPipe()
	defer stdin.Close()
	out, _ := daemon.StdoutPipe()
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.HasPrefix(line, "ERR") {
		_ = daemon.Process.Kill()
		_ = daemon.Wait()
		t.Fatalf("fake daemon: %q %v", line, err)
	}
	var p Process
	if err := json.Unmarshal([]byte(line), &p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killTestProcess(t, &p) })
	if st, _ := readStat(p.PID); st.PPID != daemon.Process.Pid {
		t.Fatalf("VMM's parent is %d, daemon %d", st.PPID, daemon.Process.Pid)
	}
	testwait.For(t, "console output", 10*time.Second, func() bool {
		b, _ := os.ReadFile(p.ConsoleLog)
		return strings.Contains(string(b), "tick")
	})

	// kill -9 the daemon
	_ = daemon.Process.Signal(syscall.SIGKILL)
	_ = daemon.Wait()
	var b Base
	if s, err := b.Probe(&p); err != nil || s != StateRunning {
		t.Fatalf("after the daemon died: %v %v", s, err)
	}
	if st, _ := readStat(p.PID); st.PPID == daemon.Process.Pid {
		t.Fatal("not re-parented")
	}
	lastTick := func() int {
		b, _ := os.ReadFile(p.ConsoleLog)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		f := strings.Fields(lines[len(lines)-1])
		if len(f) < 2 {
			return -1
		}
		n, _ := strconv.Atoi(f[1])
		return n
	}
	before := lastTick()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := b.Adopt(ctx, &p); err != nil {
		t.Fatal(err)
	}
	if err := b.Adopt(ctx, &p); err != nil {
		t.Fatalf("second Adopt: %v", err)
	}
	testwait.For(t, "console output after re-adoption", 10*time.Second, func() bool { return lastTick() > before+20 })
	if fi, _ := os.Stat(p.ConsoleLog); fi.Size() > p.ConsoleLogMax {
		t.Fatalf("console log %d bytes over cap %d", fi.Size(), p.ConsoleLogMax)
	}
	waited := make(chan Exit, 1)
	go func() { ex, _ := b.Wait(ctx, &p); waited <- ex }()
	if err := b.Kill(ctx, &p); err != nil {
		t.Fatal(err)
	}
	if ex := testwait.Recv(t, "Wait to notice the exit of an adopted VMM", 2*time.Second, waited); ex.Known {
		t.Fatalf("status of a non-child reported as known: %+v", ex)
	}
	if s, _ := b.Probe(&p); s != StateExited {
		t.Fatalf("after Kill: %v", s)
	}
}

func TestConsoleFIFO(t *testing.T) {
	var b Base
	dir := t.TempDir()
	fifo := filepath.Join(dir, "console.fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	id := testID()
	p := &Process{Driver: "firecracker", VMID: id, RunDir: dir, ConsoleSocket: fifo, ConsoleLog: filepath.Join(dir, "console.log"), ConsoleLogMax: 4096, Sockets: []string{fifo}}
	cmd := fakeCommand(id, filepath.Join(dir, "vmm.log"), "FAKE_FIFO="+fifo)
	cmd.Args[1] = "--id"
	if err := b.Launch(p, cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killTestProcess(t, p) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.AttachConsole(ctx, p); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "fifo output", 10*time.Second, func() bool {
		b, _ := os.ReadFile(p.ConsoleLog)
		return strings.Count(string(b), "fifo tick") > 5
	})
	if err := b.Kill(ctx, p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(fifo); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("fifo left: %v", err)
	}
}

func TestDialAgent(t *testing.T) {
	var b Base
	p := launchFake(t, &b)
	p.ControlSocket = filepath.Join(p.RunDir, "control.sock")
	p.ControlKind = ControlVirtioSerial
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		time.Sleep(50 * time.Millisecond) // the socket appears late
		l, err := net.Listen("unix", p.ControlSocket)
		if err != nil {
			return
		}
		defer l.Close()
		c, err := l.Accept()
		if err == nil {
			_, _ = c.Write([]byte("hi"))
			c.Close()
		}
	}()
	c, err := DialAgent(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := c.Read(buf); err != nil || string(buf) != "hi" {
		t.Fatalf("%q %v", buf, err)
	}
	c.Close()
	_ = b.Kill(ctx, p)
	if _, err := DialAgent(ctx, p); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("dial after exit: %v", err)
	}
}

// TestLaunchCgroup: with a parent cgroup the VMM is born in its own cgroup,
// limited as far as the parent's controllers allow (on a hybrid host, whose
// cgroup v2 hierarchy carries no controllers, every limit is skipped),
// accounted in cpu.stat, and removed by Kill.
func TestLaunchCgroup(t *testing.T) {
	testenv.RequireRoot(t, "cgroupfs writes")
	mnt, _, err := cgroup.Mountpoint()
	if err != nil {
		testenv.SkipBecause(t, fmt.Sprintf("no cgroup2: %v", err))
	}
	parent := filepath.Join(mnt, fmt.Sprintf("pdktest-vmm-%d.service", os.Getpid()))
	if err := os.Mkdir(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(parent); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	enabled, _, err := cgroup.EnableControllers(parent)
	if err != nil {
		t.Fatal(err)
	}
	var b Base
	dir := t.TempDir()
	id := testID()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	limits := cgroup.Limits{MemoryMax: 512 << 20, CPUs: 2, PIDsMax: 258}
	cg, err := CreateCgroup(ctx, parent, id, limits)
	if err != nil {
		t.Fatal(err)
	}
	if cg != filepath.Join(parent, Tag(id)) {
		t.Fatalf("cgroup %s, want %s", cg, filepath.Join(parent, Tag(id)))
	}
	p := &Process{Driver: "qemu", VMID: id, RunDir: dir, Cgroup: cg}
	if err := b.Launch(p, fakeCommand(id, filepath.Join(dir, "vmm.log"))); err != nil {
		_ = os.Remove(cg)
		t.Fatal(err)
	}
	t.Cleanup(func() { killTestProcess(t, p) })
	if got, err := cgroup.Of(p.PID); err != nil || got != cg {
		t.Fatalf("VMM in %q %v, want %q", got, err, cg)
	}
	for _, c := range []struct{ controller, file, want string }{
		{"memory", "memory.max", "536870912"}, {"cpu", "cpu.max", "200000 100000"}, {"pids", "pids.max", "258"},
	} {
		got, err := os.ReadFile(filepath.Join(cg, c.file))
		switch {
		case slices.Contains(enabled, c.controller):
			if err != nil || strings.TrimSpace(string(got)) != c.want {
				t.Errorf("%s = %q (%v), want %q", c.file, got, err, c.want)
			}
		case !errors.Is(err, os.ErrNotExist):
			t.Errorf("%s exists (%v) though the parent offers no %s controller", c.file, err, c.controller)
		default:
			t.Logf("%s skipped: the parent offers no %s controller", c.file, c.controller)
		}
	}
	testwait.For(t, "the VMM's CPU time in cpu.stat", 10*time.Second, func() bool {
		u := cgroup.ReadUsage(cg)
		return u.HaveCPU && u.CPUUsec > 0
	})
	if err := b.Kill(ctx, p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cg); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("cgroup left: %v", err)
	}
	// a handle naming another VM's cgroup is refused at cleanup
	other, err := CreateCgroup(ctx, parent, "other-"+id, cgroup.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(other)
	bad := *p
	bad.Cgroup = other
	if err := b.Kill(ctx, &bad); !errors.Is(err, ErrInvalidHandle) {
		t.Fatalf("Kill with a foreign cgroup: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatal("foreign cgroup removed")
	}
}

// statusOf reads /proc/PID/status into a map.
func statusOf(t *testing.T, pid int) map[string]string {
	t.Helper()
	st, err := Status(pid)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestLaunchWithoutHugePages: a VMM launched with NoHugePages runs with
// transparent huge pages off (a TCG guest's), one without with them as
// this process has them.
func TestLaunchWithoutHugePages(t *testing.T) {
	self := statusOf(t, os.Getpid())["THP_enabled"]
	if self == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("this kernel's /proc/PID/status has no THP_enabled: the flag cannot be seen")
		}
		t.Skip("this kernel's /proc/PID/status has no THP_enabled")
	}
	for _, tc := range []struct {
		noHugePages bool
		want        string
	}{{false, self}, {true, "0"}} {
		var b Base
		p := launchFakeWith(t, &b, func(c *Command) { c.NoHugePages = tc.noHugePages })
		readVMMLog(t, p) // the fake VMM reported: the exec is done
		if got := statusOf(t, p.PID)["THP_enabled"]; got != tc.want {
			t.Errorf("NoHugePages %v: the VMM's THP_enabled = %q, want %q", tc.noHugePages, got, tc.want)
		}
		if argv, _ := readCmdline(p.PID); !slices.Equal(argv, p.Cmdline) {
			t.Errorf("NoHugePages %v: VMM argv %q, want the launched one %q", tc.noHugePages, argv, p.Cmdline)
		}
	}
}

// TestLaunchConfined: a launched VMM holds no capability in any set, has
// no_new_privs, and a bounding set emptied as far as this process may
// (all of it with CAP_SETPCAP, as root).
func TestLaunchConfined(t *testing.T) {
	self := statusOf(t, os.Getpid())
	eff, err := strconv.ParseUint(self["CapEff"], 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	wantBnd := self["CapBnd"]
	if eff&(1<<unix.CAP_SETPCAP) != 0 {
		wantBnd = "0000000000000000"
	}
	var b Base
	p := launchFake(t, &b)
	readVMMLog(t, p) // the fake VMM reported: the exec is done
	st := statusOf(t, p.PID)
	for _, c := range []struct{ key, want string }{
		{"CapInh", "0000000000000000"},
		{"CapPrm", "0000000000000000"},
		{"CapEff", "0000000000000000"},
		{"CapAmb", "0000000000000000"},
		{"CapBnd", wantBnd},
		{"NoNewPrivs", "1"},
	} {
		if got := st[c.key]; got != c.want {
			t.Errorf("VMM %s = %s, want %s", c.key, got, c.want)
		}
	}
	if argv, _ := readCmdline(p.PID); !slices.Equal(argv, p.Cmdline) {
		t.Errorf("VMM argv %q, want the launched one %q", argv, p.Cmdline)
	}
	t.Logf("paddock (test) CapEff %s CapBnd %s → VMM CapEff %s CapPrm %s CapAmb %s CapInh %s CapBnd %s NoNewPrivs %s",
		self["CapEff"], self["CapBnd"], st["CapEff"], st["CapPrm"], st["CapAmb"], st["CapInh"], st["CapBnd"], st["NoNewPrivs"])
}
