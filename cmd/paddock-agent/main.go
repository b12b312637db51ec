// Command paddock-agent is the init (PID 1) of a paddock guest. It is packed
// as /init into the boot kit's initramfs. It mounts the API filesystems,
// loads the kit's kernel modules, mounts the root disk named on the kernel
// command line and switches into it while staying PID 1, configures the
// hostname and network, runs the image's entrypoint, reaps zombies, and
// serves the agent protocol (package agent) over a virtio-serial port or
// vsock until it is asked to shut down, when it stops every process, syncs,
// unmounts and powers the VM off.
//
// The kernel command line keys and the seed disk are described in package
// guestboot; the image config in imageconfig.go.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/guestboot"
	"golang.org/x/sys/unix"
)

// Version is set with -ldflags "-X main.Version=...".
var Version = "dev"

type initState struct {
	cfg    *guestboot.BootArgs
	start  int64
	mu     sync.Mutex
	phases []agent.Phase
	errs   []string
	kit    string
	kernel string
	ready  int64
	// idle: the guest's idle time at the start and at ready (paddock.debug)
	idle *agent.Idle

	reaper  *agent.Reaper
	spawner *agent.LocalSpawner
	image   *imageConfig
	mounted []string // the workspaces' mount points, set before serving
	freezer agent.Freezer
	main    *mainProc
	// sys is what the identity step changes; identified: it was taken.
	sys        identitySys
	identified bool
	stopOnce   sync.Once
	stopping   bool
}

// controlPortWait bounds the wait for the control port: longer than any
// start timeout a host would set.
const controlPortWait = 10 * time.Minute

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stdout, "paddock-agent: "+format+"\n", args...)
}

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "paddock-agent: this is the init of a paddock VM; it only runs as PID 1 inside the guest")
		os.Exit(2)
	}
	s := &initState{start: agent.BootTimeNS(), sys: kernelIdentity{}}
	s.run()
}

// phase runs fn as a named boot phase and records its timing and error.
func (s *initState) phase(name string, fn func() error) error {
	p := agent.Phase{Name: name, StartNS: agent.BootTimeNS()}
	err := fn()
	p.EndNS = agent.BootTimeNS()
	if err != nil {
		p.Error = err.Error()
		logf("%s: %v", name, err)
	} else if s.cfg != nil && s.cfg.Debug {
		logf("%s: %.1f ms", name, float64(p.Duration())/1e6)
	}
	s.mu.Lock()
	s.phases = append(s.phases, p)
	if err != nil {
		s.errs = append(s.errs, name+": "+err.Error())
	}
	s.mu.Unlock()
	return err
}

func (s *initState) bootError() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.errs, "; ")
}

func (s *initState) run() {
	// Signals to PID 1 are ignored unless handled: take SIGTERM/SIGINT/SIGPWR
	// as a request to shut down.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGPWR)

	s.phases = append(s.phases, agent.Phase{Name: "kernel", StartNS: 0, EndNS: s.start})
	_ = s.phase("mounts", mountEarly)
	cmdline, _ := os.ReadFile("/proc/cmdline")
	args, err := guestboot.Parse(string(cmdline))
	if err != nil {
		logf("kernel command line: %v", err)
		s.errs = append(s.errs, "cmdline: "+err.Error())
	}
	withDefaults := args.WithDefaults()
	cfg := &withDefaults
	s.cfg = cfg
	if cfg.Debug {
		// what the boot's busy time is made of: counted only when asked
		if n, err := agent.IdleNS(); err == nil {
			s.idle = &agent.Idle{StartNS: n}
		} else {
			logf("idle time: %v", err)
		}
	}
	if cfg.PowerOff {
		powerOff(false)
	}
	var u unix.Utsname
	_ = unix.Uname(&u)
	s.kernel = unix.ByteSliceToString(u.Release[:])
	if b, err := os.ReadFile("/etc/paddock/kit.json"); err == nil {
		var k struct{ Name string }
		_ = json.Unmarshal(b, &k)
		s.kit = k.Name
	}
	s.reaper = agent.NewReaper(true)

	mods, err := readModuleList()
	if err != nil {
		logf("module list: %v", err)
	}
	modsNow, modsLater := splitModules(mods, cfg)
	// The modules load while the boot goes on: those the root disk needs
	// (block, file system chains, concurrently), which its mount waits
	// for; beside them, once the transport has listed the VM's devices,
	// the drivers of those present (the agent's channel, the network's),
	// which the control channel and the network wait for. Those loaded
	// after the agent is ready are opened now, from the initramfs.
	lateErr := openModules(modsLater)
	otherMods, rootMods := splitByName(modsNow, notForRoot)
	netMods, _ := splitByName(modsNow, netModules)
	loads := startBootModules(mods, rootMods, otherMods, modsLater, "/sys/bus/virtio/devices", cfg.Debug)
	modsDone := make(chan struct{})
	go func() {
		defer close(modsDone)
		_ = s.phase("modules", func() error {
			<-loads.done
			return errors.Join(loads.err, lateErr)
		})
	}()
	// The devices are listed before the root's mount moves /sys.
	<-loads.listed
	modsLater = loads.later
	netDone := make(chan struct{})
	go func() {
		defer close(netDone)
		_ = waitModules(netMods) // their errors are the modules phase's
		_ = s.phase("network", func() error { return setupNetwork(cfg) })
	}()

	// Look for the control port, once its driver is in, while the root
	// disk is being mounted.
	type portResult struct {
		path string
		err  error
	}
	portCh := make(chan portResult, 1)
	if cfg.Serial != "" {
		go func() {
			console, _ := splitByName(loads.devices, []string{"virtio_console"})
			_ = waitModules(console) // its errors are the modules phase's
			// The port appears once the host has answered the driver's
			// ready message; on a starved host that can take long, and
			// without it the guest is unreachable for good: wait as long
			// as any start may (the host's start timeout ends the VM),
			// saying so on the console when it is slow.
			ctx, cancel := context.WithTimeout(context.Background(), controlPortWait)
			defer cancel()
			slow := time.AfterFunc(10*time.Second, func() {
				logf("control port %s not there 10 s after its driver loaded; still looking", cfg.Serial)
			})
			p, err := agent.FindVirtioPort(ctx, cfg.Serial)
			slow.Stop()
			portCh <- portResult{p, err}
		}()
	}

	rootOK := false
	var oldRoot *os.File
	<-loads.rootDone
	seed := seedAhead(cfg.Config, cfg.RootWait) // its block driver is in
	if cfg.Root != "" {
		if s.phase("root", func() error { return mountRoot(cfg) }) == nil {
			rootOK = s.phase("switch_root", func() (err error) { oldRoot, err = switchRoot(); return err }) == nil
		}
	}
	if rootOK {
		_ = s.phase("mounts2", mountLate)
	}
	if cfg.Hostname != "" {
		_ = s.phase("hostname", func() error { return unix.Sethostname([]byte(cfg.Hostname)) })
	}
	// /etc is written while the seed disk is read (both wait on I/O).
	etcDone := make(chan struct{})
	go func() {
		defer close(etcDone)
		if rootOK && !cfg.NoEtc {
			_ = s.phase("etc", func() error { return writeEtc(cfg) })
		}
	}()
	if rootOK {
		_ = s.phase("config", func() error {
			b, err := seed()
			s.image, err = imageConfigOf(cfg.Config, b, err)
			return err
		})
	}
	if rootOK {
		go prefetch(s.prefetchTargets(), cfg.Debug)
	}
	if s.image != nil && len(s.image.Mounts) > 0 {
		_ = s.phase("workspaces", func() (err error) {
			s.mounted, err = mountAll(s.image.Mounts, cfg.RootWait)
			return err
		})
	}
	<-etcDone
	<-netDone
	<-modsDone
	// lateWork loads the drivers this boot did not ask for (network
	// without paddock.ip, vsock without paddock.vsock) and the power
	// button's, and empties the initramfs.
	lateWork := func() {
		if oldRoot != nil {
			freeInitramfs(oldRoot)
		}
		if len(modsLater) > 0 {
			_ = s.phase("modules_late", func() error { return loadModulesHere(modsLater, cfg.Debug) })
		}
	}
	// A template's builder does it before its hello: the save follows the
	// hello at once, so the saved guest holds it done and no VM resumed
	// from the template does it again.
	template := s.image != nil && s.image.Template
	if template {
		lateWork()
	}
	s.freezer.Allowed = func(p string) bool { return slices.Contains(s.mounted, p) }
	s.freezer.Logf = logf
	s.spawner = &agent.LocalSpawner{Reaper: s.reaper, Root: "/", DefaultEnv: s.defaultEnv}
	if s.image != nil {
		s.spawner.DefaultUser = s.image.user()
	}

	srv := agent.NewServer(agent.ServerConfig{
		AgentVersion: Version,
		Hello:        s.hello,
		Health:       s.health,
		Stats:        s.stats,
		Freeze:       s.freezer.Set,
		Identity:     s.identity,
		Ports:        agent.ListPorts,
		Shutdown:     func(reboot bool) { s.shutdown(reboot) },
		Spawner:      s.spawner,
		Owner:        s.copyOwner,
		Uptime:       agent.BootTimeNS,
		Logf:         logf,
	})
	served := false
	// serve runs the agent protocol on l for the rest of the boot.
	serve := func(what string, l agent.Listener) {
		go func() {
			err := srv.Serve(context.Background(), l)
			logf("%s server stopped: %v", what, err)
		}()
		served = true
	}
	if cfg.Serial != "" {
		_ = s.phase("control", func() error {
			r := <-portCh
			if r.err != nil {
				return r.err
			}
			l, err := agent.OpenSerialListener(r.path)
			if err != nil {
				return err
			}
			serve("serial", l)
			return nil
		})
	}
	if cfg.Vsock != 0 {
		_ = s.phase("vsock", func() error {
			l, err := agent.ListenVsock(cfg.Vsock)
			if err != nil {
				return err
			}
			serve("vsock", l)
			return nil
		})
	}
	s.mu.Lock()
	s.ready = agent.BootTimeNS()
	if s.idle != nil {
		if n, err := agent.IdleNS(); err == nil {
			s.idle.ReadyNS = n
		} else {
			s.idle = nil
		}
	}
	s.mu.Unlock()
	lateDone := make(chan struct{})
	go func() {
		defer close(lateDone)
		if template {
			return
		}
		// Any other boot does it a moment after the hello, on a thread of
		// the lowest priority, so that the first exec and the entrypoint's
		// start (the guest has one vCPU, maybe) go first. Even at that
		// priority the work slowed a first exec under TCG (65 against
		// 76 ms, medians of 8), as it runs in the kernel. The thread is
		// never unlocked: it ends with this goroutine, priority and all.
		time.Sleep(lateWorkAfter)
		runtime.LockOSThread()
		_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19)
		lateWork()
	}()
	go func() {
		<-lateDone
		if err := watchPowerButton(func() { s.shutdown(false) }, cfg.Debug); err != nil && cfg.Debug {
			logf("power button: %v", err)
		}
	}()
	if s.image != nil && len(s.image.argv()) > 0 && !s.image.Template {
		s.main = newMainProc(s)
		s.main.start()
	}
	if cfg.Debug {
		logf("ready at %.3f s", float64(s.ready)/1e9)
	}
	if !served {
		logf("no control channel; powering off in 30 s (boot errors: %s)", s.bootError())
		go func() {
			time.Sleep(30 * time.Second)
			s.shutdown(false)
		}()
	}
	for range sigs {
		go s.shutdown(false)
	}
}

// stats are the guest's figures with those of the volumes it mounted.
func (s *initState) stats() (agent.Stats, error) {
	st, err := agent.ReadStats()
	st.Mounts = agent.MountStatsOf(s.mounted)
	return st, err
}

func (s *initState) hello() agent.HelloInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := agent.HelloInfo{
		Kit: s.kit, Kernel: s.kernel, Phases: append([]agent.Phase{}, s.phases...),
		ReadyNS: s.ready, BootError: strings.Join(s.errs, "; "),
	}
	if s.idle != nil {
		idle := *s.idle
		h.Idle = &idle
	}
	if s.cfg != nil {
		h.Hostname = s.cfg.Hostname
	}
	return h
}

func (s *initState) health() agent.Health {
	h := agent.Health{Status: "ok", BootError: s.bootError(), Main: agent.MainState{State: "none"}}
	s.mu.Lock()
	m := s.main
	s.mu.Unlock()
	if m != nil {
		h.Main = m.state()
	}
	s.mu.Lock()
	stopping := s.stopping
	s.mu.Unlock()
	switch {
	case stopping:
		h.Status = "stopping"
	case h.BootError != "":
		h.Status = "degraded"
	case h.Main.State == "exited" && h.Main.LastExit != nil && (h.Main.LastExit.Code != 0 || h.Main.LastExit.Signal != 0):
		h.Status = "degraded"
	}
	return h
}

func (s *initState) defaultEnv() []string {
	s.mu.Lock()
	img := s.image
	s.mu.Unlock()
	if img != nil && len(img.Env) > 0 {
		return img.Env
	}
	return []string{"PATH=" + agent.DefaultPath, "TERM=xterm"}
}

// lateWorkAfter is how long after the hello the agent waits to load the
// drivers this boot did not need and to empty the initramfs.
const lateWorkAfter = time.Second

// prefetch reads ahead, while the boot goes on, what a first exec and the
// entrypoint load (the programs, ld.so, their libraries): the host serves
// those pages beside the guest's work, not one fault at a time during the
// exec (under TCG, a first exec of /bin/true answered ~25 ms sooner).
func prefetch(bins []string, debug bool) {
	files := agent.PrefetchFiles("/", bins)
	n := agent.Prefetch(files)
	if debug {
		logf("read ahead %d of %s", n, strings.Join(files, " "))
	}
}

// prefetchTargets are the entrypoint's program and /bin/sh (what "paddock
// exec" of a shell command, and most programs' libraries, start with).
func (s *initState) prefetchTargets() []string {
	bins := []string{"/bin/sh"}
	if s.image != nil {
		if argv := s.image.argv(); len(argv) > 0 {
			if p, err := agent.LookPath(argv[0], s.defaultEnv()); err == nil {
				bins = append([]string{p}, bins...)
			}
		}
	}
	return bins
}

// copyOwner owns what paddock cp unpacks into dir: the workspace mounted
// there, else root (guestboot.MountOwner).
func (s *initState) copyOwner(dir string) (int, int) {
	if s.image == nil {
		return 0, 0
	}
	return guestboot.MountOwner(s.image.Mounts, dir)
}
