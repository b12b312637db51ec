// Command bench measures paddockd's API against references taken in the same
// run, and prints each figure as a ratio: `make bench`.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/imaging/imagetest"
)

func main() {
	daemonBin := flag.String("paddockd", "bin/paddockd", "daemon binary to measure")
	vms := flag.Int("vms", 1000, "VM records to create")
	gets := flag.Int("gets", 3000, "Get calls to time")
	lists := flag.Int("lists", 100, "List calls to time")
	minbase := flag.String("minbase", os.Getenv("PADDOCK_BENCH_MINBASE"), "Debian minbase rootfs tar for the image benchmark (.ci/minbase.sh)")
	netOnly := flag.Bool("net", false, "only the VM network figures (root; see net.go)")
	startOnly := flag.Bool("start", false, "only the VM start figures (root; see start.go)")
	startRuns := flag.Int("start-runs", 5, "VMs to time for -start")
	wsOnly := flag.Bool("workspace", false, "only the workspace figures: seed, export, clone (see workspace.go)")
	cloneRuns := flag.Int("clone-runs", 20, "clones to time (and references)")
	cliBin := flag.String("paddock", "bin/paddock", "CLI binary: what a user runs")
	netBytes := flag.Int64("net-bytes", 64<<20, "bytes per network transfer")
	apiOnly := flag.Bool("api-only", false, "only the API, records and RSS figures: no D-Bus, workspace or image parts")
	echo := flag.String("echo", "", "internal: serve the raw echo reference on this socket (the bench re-runs itself)")
	flag.Parse()
	if *echo != "" {
		if err := echoServe(*echo); err != nil {
			fmt.Fprintln(os.Stderr, "bench echo:", err)
			os.Exit(1)
		}
		return
	}
	var err error
	switch {
	case *netOnly:
		err = runNet(*daemonBin, *cliBin, *netBytes)
	case *startOnly:
		err = runStart(*daemonBin, *cliBin, *minbase, *startRuns)
	case *wsOnly:
		err = runWorkspace(*daemonBin, *cliBin, *cloneRuns)
	default:
		err = run(*daemonBin, *cliBin, *vms, *gets, *lists, *minbase, *cloneRuns, *apiOnly)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// benchDaemon is a paddockd of the benchmark's own: state, runtime and
// cache in a temporary directory, scratch in /dev/shm where it exists, no
// VMs run, on a private session bus when dbus-daemon is there.
type benchDaemon struct {
	dir, state, sock, shm, bus string
	cmd                        *exec.Cmd
	c                          *api.Client
	stops                      []func()
}

func startBenchDaemon(daemonBin string) (_ *benchDaemon, err error) {
	b := &benchDaemon{}
	defer func() {
		if err != nil {
			b.Close()
		}
	}()
	if b.dir, err = os.MkdirTemp("", "pdk-bench-"); err != nil {
		return nil, err
	}
	b.stops = append(b.stops, func() { _ = os.RemoveAll(b.dir) })
	b.state = filepath.Join(b.dir, "state")
	if _, err := imagetest.SeedImage(b.state, "alpine"); err != nil {
		return nil, fmt.Errorf("seed image: %w", err)
	}
	cfg := filepath.Join(b.dir, "paddock.toml")
	b.sock = filepath.Join(b.dir, "run", "io.paddock.v1")
	if b.shm, err = os.MkdirTemp("/dev/shm", "pdk-bench-"); err != nil {
		b.shm, _ = os.MkdirTemp("", "pdk-bench-scratch-")
	}
	b.stops = append(b.stops, func() { _ = os.RemoveAll(b.shm) })
	bus, stopBus, err := sessionBus(b.dir)
	if err != nil {
		return nil, fmt.Errorf("session bus: %w", err)
	}
	b.bus = bus
	b.stops = append(b.stops, stopBus)
	dbusMode := "off"
	if bus != "" {
		dbusMode = "session"
	}
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("state_dir = %q\nruntime_dir = %q\ncache_dir = %q\n[log]\nlevel = \"warn\"\n[images]\nscratch_dir = %q\n[vm]\nrun = \"off\"\n[dbus]\nbus = %q\n", b.state, filepath.Join(b.dir, "run"), filepath.Join(b.dir, "cache"), filepath.Join(b.shm, "scratch"), dbusMode)), 0o644); err != nil {
		return nil, err
	}
	b.cmd = exec.Command(daemonBin, "--config", cfg)
	withBus(b.cmd, bus)
	b.cmd.Stderr = os.Stderr
	if err := b.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", daemonBin, err)
	}
	b.stops = append(b.stops, func() { _ = b.cmd.Process.Kill(); _ = b.cmd.Wait() })
	if b.c, err = dialWait(b.sock); err != nil {
		return nil, err
	}
	b.stops = append(b.stops, func() { b.c.Close() })
	return b, nil
}

// Close stops the daemon and removes what it made, last made first.
func (b *benchDaemon) Close() {
	for i := len(b.stops) - 1; i >= 0; i-- {
		b.stops[i]()
	}
}

// runWorkspace is -workspace: the workspace figures alone.
func runWorkspace(daemonBin, cliBin string, cloneRuns int) error {
	b, err := startBenchDaemon(daemonBin)
	if err != nil {
		return err
	}
	defer b.Close()
	return workspaceBench(cliBin, b.sock, b.shm, b.state, cloneRuns)
}

func run(daemonBin, cliBin string, nVMs, nGets, nLists int, minbase string, cloneRuns int, apiOnly bool) error {
	b, err := startBenchDaemon(daemonBin)
	if err != nil {
		return err
	}
	defer b.Close()
	dir, state, sock, shm, bus, c, d := b.dir, b.state, b.sock, b.shm, b.bus, b.c, b.cmd
	ctx := context.Background()
	time.Sleep(200 * time.Millisecond)
	rss0, err := rssKiB(d.Process.Pid)
	if err != nil {
		return err
	}

	// References: a raw NUL-terminated round trip over a UNIX socket, the
	// transport floor every API call pays. The first echo runs in this
	// process (the figure's history); the second in a process of its own,
	// as the daemon is, so it pays the same wake-up of another process.
	// Their round trips alternate with the Gets, so all three see the same
	// load on a shared machine.
	rawC, err := rawEcho(filepath.Join(dir, "raw.sock"))
	if err != nil {
		return err
	}
	defer rawC.Close()
	rawXC, err := rawEchoApart(filepath.Join(dir, "raw-apart.sock"))
	if err != nil {
		return err
	}
	defer rawXC.Close()

	t0 := time.Now()
	for i := 0; i < nVMs; i++ {
		if _, err := c.Create(ctx, api.CreateIn{Name: fmt.Sprintf("vm-%04d", i), Image: "alpine"}); err != nil {
			return fmt.Errorf("create: %w", err)
		}
	}
	createEach := time.Since(t0) / time.Duration(nVMs)

	get, raw, rawX := make([]time.Duration, nGets), make([]time.Duration, nGets), make([]time.Duration, nGets)
	for i := range get {
		name := fmt.Sprintf("vm-%04d", i%nVMs)
		s := time.Now()
		if _, err := c.Get(ctx, name); err != nil {
			return fmt.Errorf("get: %w", err)
		}
		get[i] = time.Since(s)
		if raw[i], err = rawC.roundTrip(); err != nil {
			return fmt.Errorf("raw round trip: %w", err)
		}
		if rawX[i], err = rawXC.roundTrip(); err != nil {
			return fmt.Errorf("raw round trip to another process: %w", err)
		}
	}
	list := make([]time.Duration, nLists)
	for i := range list {
		s := time.Now()
		vms, err := c.List(ctx)
		if err != nil || len(vms) != nVMs {
			return fmt.Errorf("list: %d VMs, %v", len(vms), err)
		}
		list[i] = time.Since(s)
	}
	time.Sleep(200 * time.Millisecond)
	rss1, err := rssKiB(d.Process.Pid)
	if err != nil {
		return err
	}

	rp50, rp99 := pct(raw, 50), pct(raw, 99)
	xp50, xp99 := pct(rawX, 50), pct(rawX, 99)
	gp50, gp99 := pct(get, 50), pct(get, 99)
	fmt.Printf("reference: raw UNIX-socket round trip   p50 %v  p99 %v  (n=%d; echo in this process)\n", rp50, rp99, len(raw))
	fmt.Printf("reference: raw round trip, other process p50 %v  p99 %v  (n=%d; echo in a process of its own, as the daemon)\n", xp50, xp99, len(rawX))
	fmt.Printf("api Get                                  p50 %v  p99 %v  = %.1fx / %.1fx raw  = %.1fx / %.1fx raw other process  (n=%d)\n",
		gp50, gp99, ratio(gp50, rp50), ratio(gp99, rp99), ratio(gp50, xp50), ratio(gp99, xp99), len(get))
	fmt.Printf("api Get p99 as a ratio to a raw socket round trip to another process, as the daemon is: %.1fx (goal <= 3x); to an echo inside this process: %.1fx\n",
		ratio(gp99, xp99), ratio(gp99, rp99))
	fmt.Printf("api List of %d VMs                     p50 %v  p99 %v  = %.1fx / %.1fx raw  (n=%d)\n",
		nVMs, pct(list, 50), pct(list, 99), ratio(pct(list, 50), rp50), ratio(pct(list, 99), rp99), len(list))
	fmt.Printf("api Create (durable: fsync'd)            mean %v  = %.1fx raw p50\n", createEach, ratio(createEach, rp50))
	fmt.Printf("daemon RSS with %d VM records          %d KiB  = %.2fx the idle daemon (%d KiB), %.1f KiB per VM\n",
		nVMs, rss1, float64(rss1)/float64(rss0), rss0, float64(rss1-rss0)/float64(nVMs))
	if apiOnly {
		return nil
	}
	if bus == "" {
		fmt.Println("D-Bus signals: skipped (no dbus-daemon)")
	} else if err := dbusBench(c, sock, bus, "vm-0000", 50); err != nil {
		return fmt.Errorf("D-Bus: %w", err)
	}
	if err := workspaceBench(cliBin, sock, shm, state, cloneRuns); err != nil {
		return fmt.Errorf("workspaces: %w", err)
	}
	if minbase == "" {
		fmt.Println("image import: skipped (no minbase tar; make bench builds one with .ci/minbase.sh)")
		return nil
	}
	return imageBench(c, minbase, shm, state)
}

// imageBench times a full import of a Debian minbase rootfs tar through the
// daemon against the root reference: tar -x as root plus mkfs.ext4 -d.
func imageBench(c *api.Client, tarPath, shm, state string) error {
	ctx := context.Background()
	ref := filepath.Join(shm, "ref")
	if err := os.MkdirAll(ref, 0o755); err != nil {
		return err
	}
	t0 := time.Now()
	if out, err := exec.Command("tar", "-C", ref, "--numeric-owner", "-xpf", tarPath).CombinedOutput(); err != nil {
		return fmt.Errorf("reference tar -x: %v %s", err, out)
	}
	du, _ := exec.Command("du", "-sm", ref).Output()
	mb, _ := strconv.Atoi(strings.Fields(string(du) + " 0")[0])
	img := filepath.Join(state, "ref.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", "-d", ref, img, fmt.Sprintf("%dM", mb*11/10+128)).CombinedOutput(); err != nil {
		return fmt.Errorf("reference mkfs.ext4 -d: %v %s", err, out)
	}
	refTime := time.Since(t0)
	os.RemoveAll(ref)
	os.Remove(img)

	f, err := os.Open(tarPath)
	if err != nil {
		return err
	}
	defer f.Close()
	t1 := time.Now()
	out, err := c.ImportImage(ctx, api.ImportIn{Source: tarPath, Name: "minbase:bench"}, f, nil)
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	ours := time.Since(t1)
	t2 := time.Now()
	again, err := c.ImportImage(ctx, api.ImportIn{Source: tarPath, Name: "minbase:bench"}, f, nil)
	if err != nil || !again.Cached {
		return fmt.Errorf("cached re-import: cached=%v %v", again != nil && again.Cached, err)
	}
	cached := time.Since(t2)
	fmt.Printf("image import of Debian minbase (%s)   %v  = %.2fx root reference (tar -x + mkfs.ext4 -d: %v)\n", humanMB(out.Image.Size), ours.Round(time.Millisecond), ratio(ours, refTime), refTime.Round(time.Millisecond))
	fmt.Printf("cached re-import of the same image       %v\n", cached.Round(time.Millisecond))
	return nil
}

func humanMB(n int64) string { return fmt.Sprintf("%d MiB base", n>>20) }

func dialWait(sock string) (*api.Client, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := api.Dial(context.Background(), sock)
		if err == nil {
			if _, err = c.Version(context.Background()); err == nil {
				return c, nil
			}
			c.Close()
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("daemon not answering on %s: %w", sock, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// echo answers each NUL-terminated message on c with itself.
func echo(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		msg, err := br.ReadBytes(0)
		if err != nil {
			return
		}
		if _, err := c.Write(msg); err != nil {
			return
		}
	}
}

// echoServe is -echo: the other-process reference's server, one
// connection, then exit.
func echoServe(path string) error {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	defer ln.Close()
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	echo(c)
	return nil
}

// rawEcho is a connection to an echo in this process: the transport floor
// without the wake-up of another process.
func rawEcho(path string) (*echoConn, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	go func() {
		defer ln.Close()
		if c, err := ln.Accept(); err == nil {
			echo(c)
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		return nil, err
	}
	return newEchoConn(c, nil), nil
}

// rawEchoApart is rawEcho with the echo in another process, as the daemon
// is: this program re-run with -echo.
func rawEchoApart(path string) (*echoConn, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-echo", path)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		c, err := net.Dial("unix", path)
		if err == nil {
			return newEchoConn(c, stop), nil
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("echo process not answering on %s: %w", path, err)
		}
	}
}

// echoConn times round trips of a Get-sized message.
type echoConn struct {
	c    net.Conn
	br   *bufio.Reader
	stop func()
}

var echoMsg = []byte(`{"method":"io.paddock.v1.Get","parameters":{"vm":"vm-0001"}}` + "\x00")

func newEchoConn(c net.Conn, stop func()) *echoConn {
	return &echoConn{c: c, br: bufio.NewReader(c), stop: stop}
}

func (e *echoConn) roundTrip() (time.Duration, error) {
	s := time.Now()
	if _, err := e.c.Write(echoMsg); err != nil {
		return 0, err
	}
	if _, err := e.br.ReadBytes(0); err != nil {
		return 0, err
	}
	return time.Since(s), nil
}

func (e *echoConn) Close() {
	e.c.Close()
	if e.stop != nil {
		e.stop()
	}
}

func pct(d []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	if i > 0 {
		i--
	}
	return s[i].Round(100 * time.Nanosecond)
}

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }

func rssKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}
