// Package daemon wires paddockd together: configuration, the actor tree, the
// varlink API and systemd integration (activation, sd_notify, watchdog,
// reload, graceful shutdown).
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/bootkit"
	"github.com/paddock-vm/paddock/config"
	"github.com/paddock-vm/paddock/daemon/dbusapi"
	"github.com/paddock-vm/paddock/host/launcher"
	"github.com/paddock-vm/paddock/host/probe"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/host/vmm/qemu"
	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/imaging/blobcache"
	"github.com/paddock-vm/paddock/imaging/ext4"
	"github.com/paddock-vm/paddock/imaging/flatten"
	"github.com/paddock-vm/paddock/state"
	"github.com/paddock-vm/paddock/systemd"
	"github.com/paddock-vm/paddock/varlink"
	"github.com/paddock-vm/paddock/version"
	"github.com/paddock-vm/paddock/workspace"
)

// Daemon is one running paddockd.
type Daemon struct {
	configPath string
	// warmKVM probes KVM for these kernels in the background (vm.run on).
	warmKVM    func(kernels ...string)
	cfg        atomic.Pointer[config.Config]
	level      *slog.LevelVar
	log        *slog.Logger
	notify     *systemd.Notifier
	auth       *authorizer
	actors     *actors.System
	server     *varlink.Server
	bus        *dbusapi.Server // nil: D-Bus API off
	images     *imaging.Store
	ln         net.Listener
	socketPath string
	started    time.Time
	statusMu   sync.Mutex
	// vmmCheck reports whether the VMM binary is usable (nil with vm.run off).
	vmmCheck func() error
	// cgroupInfo says where VMMs' cgroups go, or "none: <why>" (Info).
	cgroupInfo string
	// launcher starts the VMMs (paddock-guests.service); nil: in-process.
	launcher *launcher.Client
	// owner proves VMMs and passt processes this daemon's (vmm.Owner).
	owner vmm.Owner
	// dns are the guests' nameservers (guestDNS), read at start-up.
	dns []netip.Addr
}

func (d *Daemon) config() *config.Config { return d.cfg.Load() }

func (d *Daemon) requestTimeout() time.Duration { return d.config().API.RequestTimeout.Duration }

func logFormat(f string) string {
	if f == "auto" {
		return ""
	}
	return f
}

var levels = map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}

// New loads state and builds the actor tree and the API server, ready to
// serve. It does not bind the socket yet.
func New(ctx context.Context, configPath string, cfg *config.Config) (*Daemon, error) {
	d := &Daemon{configPath: configPath, level: new(slog.LevelVar), notify: systemd.NewNotifier(), started: time.Now()}
	d.cfg.Store(cfg)
	d.level.Set(levels[cfg.Log.Level])
	d.log = systemd.NewLogger(systemd.LogOptions{Format: logFormat(cfg.Log.Format), Level: d.level, Identifier: "paddockd"})
	// State and cache are the daemon's alone (vm.json holds --env values);
	// the runtime directory holds the API socket, which its users must reach.
	for _, dir := range []string{cfg.StateDir, cfg.CacheDir} {
		if err := state.MkdirPrivate(dir); err != nil {
			return nil, err
		}
	}
	if err := mkdirReachable(cfg.RuntimeDir); err != nil {
		return nil, err
	}
	store, err := state.NewStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	images, err := imaging.OpenStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	d.images = images
	// Images stored before names were per user: those with recorded owners
	// become theirs, those without are published. A failure is logged,
	// never fatal: those records just stay unnamed until the next start.
	if n, err := images.Migrate(); err != nil {
		d.log.Error("moving image names into per-user namespaces", "err", err)
	} else if n > 0 {
		d.log.Info("image names moved into per-user namespaces (images without a recorded owner are public)", "images", n)
	}
	d.auth = newAuthorizer(cfg.API.AdminGroup)
	// The blob cache holds only what was verified; the files an older
	// paddock cached there under digests it never checked are dropped.
	var blobs *blobcache.Cache
	if cfg.Images.BlobCacheSize > 0 {
		if blobs, err = blobcache.Open(filepath.Join(cfg.CacheDir, "blobs"), int64(cfg.Images.BlobCacheSize)); err != nil {
			return nil, err
		}
	} else if err := os.RemoveAll(filepath.Join(cfg.CacheDir, "blobs")); err != nil {
		return nil, fmt.Errorf("drop the blob cache (images.blob_cache_size = 0): %w", err)
	}
	importer := &imaging.Importer{
		Cache:      blobs,
		Store:      images,
		ScratchDir: cfg.Images.ScratchDir,
		Limits:     flatten.Options{MaxEntries: cfg.Images.MaxEntries, MaxUnpackedSize: int64(cfg.Images.MaxUnpackedSize)},
		Build: func(ctx context.Context, res *flatten.Result, out string) error {
			_, err := ext4.BuildFlattened(ctx, res, out, ext4.Options{ScratchDir: cfg.Images.ScratchDir, FreeBytes: int64(cfg.Images.FreeSpace), Logger: d.log.With("actor", actors.NameImport)})
			return err
		},
	}
	d.dns = guestDNS(d.log, cfg)
	var host *actors.Host
	d.cgroupInfo = "none: vm.run is off"
	if cfg.VM.Run == "on" {
		driver := &qemu.Driver{Binary: cfg.VM.VMMBinary}
		d.vmmCheck = driver.Check
		if err := d.vmmCheck(); err != nil {
			// Said once, here; Info and every start say it again while it lasts.
			d.log.Warn("VMM binary not usable: every VM start will fail until it is installed or the config names it",
				"binary", cfg.VM.VMMBinary, "key", "vm.vmm_binary", "err", err)
		}
		if host, err = d.newHost(ctx, cfg, images, driver); err != nil {
			return nil, fmt.Errorf("%w (set [vm] run = \"off\" to keep VMs as records only)", err)
		}
		d.warmKVM = func(kernels ...string) {
			go warmKVMProbe(ctx, d.log, driver, d.config().VM.Accel, kernels)
		}
		var kernels []string
		if kits, err := bootkit.List(cfg.StateDir); err == nil {
			for _, k := range kits {
				kernels = append(kernels, k.VmlinuxPath())
			}
		}
		d.warmKVM(kernels...)
	}
	// No build runs yet: what one a crash cut short left is swept.
	if swept, err := sweepScratch(cfg.Images.ScratchDir); err != nil {
		d.log.Warn("sweeping the scratch directory", "dir", cfg.Images.ScratchDir, "err", err)
	} else if len(swept) > 0 {
		d.log.Info("swept what interrupted builds left in the scratch directory", "dir", cfg.Images.ScratchDir, "swept", swept)
	}
	wsStore, err := state.NewWorkspaceStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	tmplStore, err := state.NewTemplateStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	d.actors, err = actors.Start(ctx, actors.Deps{
		Log: d.log, Store: store, Images: images,
		Templates:  d.templateDeps(tmplStore, host),
		Workspaces: actors.WorkspaceDeps{Store: wsStore, Build: d.buildWorkspace, Export: d.exportWorkspaceTree, Merge: d.mergeWorkspace, Layers: d.workspaceLayers(), Used: workspace.Allocated},
		Defaults:   func() config.Defaults { return d.config().Defaults },
		OnCounts:   d.publishCounts,
		Importer:   importer,
		Host:       host,
		NetFacts:   netFacts(cfg),
		Stats: actors.StatsDeps{
			Interval:        func() time.Duration { return d.config().Stats.Interval.Duration },
			AutoStopDefault: func() time.Duration { return d.config().Stats.AutoStopStaleAfter.Duration },
			IdleCPU:         cfg.Stats.IdleCPU,
			Parallel:        cfg.Stats.Parallel,
			Classify: func(ctx context.Context, addr netip.AddrPort) (string, string) {
				r, err := probe.Classify(ctx, addr, probe.Options{})
				if err != nil {
					return "tcp", fmt.Sprintf("tcp://%s", addr)
				}
				return r.Scheme, r.URL
			},
		},
	})
	if err != nil {
		return nil, err
	}
	d.server, err = varlink.NewServer(varlink.Config{
		Vendor: "paddock", Product: "paddockd", Version: version.Version, URL: "https://github.com/paddock-vm/paddock",
		Interfaces:     map[string]string{api.Interface: api.Description},
		Methods:        d.dispatch(),
		Inline:         inline(),
		MaxMessage:     int(cfg.API.MaxMessageSize),
		MaxConns:       cfg.API.MaxConnections,
		MaxConnsPerUID: cfg.API.MaxConnectionsPerUser,
		AdminReserve:   cfg.API.AdminReservedConnections,
		IdleTimeout:    cfg.API.IdleTimeout.Duration,
		IsAdmin:        d.auth.admin,
		Refused:        refused(cfg.API),
		MapError:       mapError,
		Logger:         d.log.With("actor", "api"),
	})
	if err != nil {
		d.actors.Shutdown()
		return nil, err
	}
	return d, nil
}

func statusLine(c api.Counts, problems []string) string {
	s := fmt.Sprintf("%d VMs: %d running, %d stopped, %d created, %d error", c.Total, c.Running, c.Stopped, c.Created, c.Error)
	if len(problems) > 0 {
		s += "; degraded: " + strings.Join(problems, "; ")
	}
	return s
}

func (d *Daemon) publishCounts(c api.Counts) {
	// Called from the Manager's goroutine; sd_notify is one datagram.
	d.statusMu.Lock()
	defer d.statusMu.Unlock()
	if err := d.notify.Status(statusLine(c, d.problems())); err != nil {
		d.log.Debug("sd_notify STATUS failed", "err", err)
	}
}

// Listen takes the socket from systemd or binds it.
func (d *Daemon) Listen() error {
	cfg := d.config()
	mode, _ := cfg.API.Mode()
	gid := int(lookupGID(cfg.API.SocketGroup))
	if gid < 0 && cfg.API.SocketGroup != "" {
		d.log.Warn("socket group does not exist; leaving the socket's group as is", "group", cfg.API.SocketGroup)
	}
	if err := mkdirReachable(filepath.Dir(cfg.API.Socket)); err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.API.Socket, err)
	}
	ln, activated, err := systemd.Listen(cfg.API.Socket, mode, gid)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.API.Socket, err)
	}
	d.ln = ln
	d.socketPath = cfg.API.Socket
	if addr, ok := ln.Addr().(*net.UnixAddr); ok && addr.Name != "" {
		d.socketPath = addr.Name
	}
	d.log.Info("listening", "socket", d.socketPath, "activated", activated)
	return nil
}

// Serve runs until SIGTERM/SIGINT (or ctx ends), then shuts down gracefully.
// It reports READY=1 once serving starts.
func (d *Daemon) Serve(ctx context.Context) error {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)

	errc := make(chan error, 1)
	go func() { errc <- d.server.Serve(d.ln) }()
	d.startDBus(ctx)

	counts, _ := d.actors.Counts(ctx)
	if err := d.notify.Ready(statusLine(counts, d.problems())); err != nil {
		d.log.Warn("sd_notify READY failed", "err", err)
	}
	d.log.Info("paddockd ready", "version", version.Version, "vms", counts.Total, "state_dir", d.config().StateDir)

	wdCtx, stopWD := context.WithCancel(ctx)
	defer stopWD()
	if iv, ok := d.notify.WatchdogInterval(); ok {
		go d.watchdog(wdCtx, iv/2)
	}

	for {
		select {
		case <-ctx.Done():
			return d.shutdown(nil)
		case err := <-errc:
			if err != nil {
				d.log.Error("API server failed", "err", err)
			}
			return d.shutdown(err)
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				d.reload()
				continue
			}
			d.log.Info("shutting down", "signal", sig.String())
			go func() {
				// A second signal means: now.
				s := <-sigs
				for s == syscall.SIGHUP {
					s = <-sigs
				}
				d.log.Warn("second signal: exiting at once", "signal", s.String())
				os.Exit(130)
			}()
			return d.shutdown(nil)
		}
	}
}

// watchdog feeds systemd only after a round trip through the actor tree.
func (d *Daemon) watchdog(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			pctx, cancel := context.WithTimeout(ctx, every)
			err := d.actors.Ping(pctx)
			cancel()
			if err != nil {
				d.log.Error("actor system did not answer the watchdog ping", "err", err)
				continue
			}
			if err := d.notify.Watchdog(); err != nil {
				d.log.Debug("sd_notify WATCHDOG failed", "err", err)
			}
		}
	}
}

func (d *Daemon) shutdown(cause error) error {
	if err := d.notify.Stopping(); err != nil {
		d.log.Debug("sd_notify STOPPING failed", "err", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.config().API.ShutdownTimeout.Duration)
	defer cancel()
	if d.bus != nil {
		d.bus.Close()
	}
	if err := d.server.Shutdown(ctx); err != nil {
		d.log.Warn("in-flight calls did not finish", "err", err)
	}
	// Every state change is persisted before it is acknowledged, so there is
	// nothing left to flush; VMs keep running.
	d.actors.Shutdown()
	d.log.Info("paddockd stopped")
	return cause
}

// reload re-reads the config file and applies what can change live.
func (d *Daemon) reload() {
	_ = d.notify.Reloading()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, _ := d.actors.Counts(ctx)
		_ = d.notify.Ready(statusLine(c, d.problems()))
	}()
	old := d.config()
	next, err := config.Load(d.configPath)
	if err != nil {
		d.log.Error("reload failed; keeping the running configuration", "err", err)
		return
	}
	changes := next.Diff(old)
	if len(changes) == 0 {
		d.log.Info("reload: configuration unchanged")
		return
	}
	// Keys that need a restart keep their running value.
	applied := *old
	applied.Log.Level = next.Log.Level
	applied.API.AdminGroup = next.API.AdminGroup
	applied.API.RequestTimeout = next.API.RequestTimeout
	applied.API.ShutdownTimeout = next.API.ShutdownTimeout
	applied.Defaults = next.Defaults
	applied.Images.InsecureRegistries = next.Images.InsecureRegistries
	applied.VM.Kernel = next.VM.Kernel
	applied.Stats.Interval = next.Stats.Interval
	applied.Stats.AutoStopStaleAfter = next.Stats.AutoStopStaleAfter
	for _, c := range changes {
		if c.Live {
			d.log.Info("reload: applied", "key", c.Key, "old", c.Old, "new", c.New)
		} else {
			d.log.Warn("reload: change needs a restart; keeping the running value", "key", c.Key, "running", c.Old, "file", c.New)
		}
	}
	d.cfg.Store(&applied)
	d.level.Set(levels[applied.Log.Level])
	if old.API.AdminGroup != applied.API.AdminGroup {
		d.auth.setGroup(applied.API.AdminGroup)
	}
}

// mkdirReachable creates dir, if missing, as 0755 whatever the umask: the
// directory of the API socket, which every user of it must be able to reach.
func mkdirReachable(dir string) error {
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	return nil
}

// Run is paddockd's main: load, listen, serve, shut down.
func Run(ctx context.Context, configPath string) error {
	// What the daemon and its VMMs create is theirs alone unless made
	// otherwise on purpose (the socket, its directory): a umask of 000
	// under which paddockd was started must not make state readable.
	unix.Umask(0o077)
	cfg, err := config.Load(configPath)
	if err != nil {
		return err
	}
	d, err := New(ctx, configPath, cfg)
	if err != nil {
		return err
	}
	if err := d.Listen(); err != nil {
		d.actors.Shutdown()
		if errors.Is(err, systemd.ErrInUse) {
			return fmt.Errorf("%w (is another paddockd running?)", err)
		}
		return err
	}
	return d.Serve(ctx)
}
