package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/config"
	"github.com/paddock-vm/paddock/host/cgroup"
	"github.com/paddock-vm/paddock/host/launcher"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/systemd"
)

// RunLauncher is `paddockd launcher`, paddock-guests.service's main: it
// takes its delegated cgroup as paddockd would (moves into its leaf,
// enables the limits' controllers), listens on <runtime dir>/launcher.sock
// (mode 0600) and starts VMMs for paddockd until SIGTERM (host/launcher).
// Its children outlive it: a restart of the launcher leaves the VMs
// running.
func RunLauncher(ctx context.Context, configPath string) error {
	unix.Umask(0o077)
	cfg, err := config.Load(configPath)
	if err != nil {
		return err
	}
	log := systemd.NewLogger(systemd.LogOptions{Format: logFormat(cfg.Log.Format), Level: levelVar(cfg.Log.Level), Identifier: "paddockd"}).With("actor", "launcher")
	dir, info := vmmCgroup(log, cgroup.Delegated)
	if err := mkdirReachable(cfg.RuntimeDir); err != nil {
		return err
	}
	path := filepath.Join(cfg.RuntimeDir, launcher.SocketName)
	ln, _, err := systemd.Listen(path, 0o600, -1)
	if err != nil {
		if errors.Is(err, systemd.ErrInUse) {
			return fmt.Errorf("%w (is another launcher running?)", err)
		}
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	srv := &launcher.Server{Cgroup: dir, CgroupInfo: info, Unit: launcher.UnitOf(dir), Log: log}
	n := systemd.NewNotifier()
	status := fmt.Sprintf("starting VMMs for paddockd on %s", path)
	_ = n.Ready(status)
	log.Info("VMM launcher ready", "socket", path, "cgroup", dir)
	err = srv.Serve(ctx, ln.(*net.UnixListener))
	_ = n.Stopping()
	log.Info("VMM launcher stopping; its VMMs keep running")
	return err
}

func levelVar(level string) *slog.LevelVar {
	v := new(slog.LevelVar)
	v.Set(levels[level])
	return v
}

// useLauncher starts VMMs through the launcher at <runtime dir>/launcher.sock
// when one answers the hello (paddock-guests.service), else in-process
// (tests, a per-user daemon, a daemon run by hand). It returns the client,
// nil for in-process.
func (d *Daemon) useLauncher(ctx context.Context, log *slog.Logger, runtimeDir string) *launcher.Client {
	vmm.UseLauncher(nil)
	path := filepath.Join(runtimeDir, launcher.SocketName)
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		log.Info("VMMs start in-process: no VMM launcher", "socket", path)
		return nil
	}
	hctx, cancel := context.WithTimeout(ctx, launcher.HelloTimeout)
	defer cancel()
	cl, err := launcher.Hello(hctx, path)
	if err != nil {
		log.Warn("VMMs start in-process: the VMM launcher does not answer as it should", "socket", path, "err", err)
		return nil
	}
	vmm.UseLauncher(cl.Launch)
	log.Info("VMMs start through the VMM launcher", "launcher", cl.Describe(ctx), "cgroup", cl.Cgroup())
	return cl
}

// launcherInfo is Info's launcher field: the launcher that answers now, or
// "in-process".
func (d *Daemon) launcherInfo(ctx context.Context) string {
	if d.launcher == nil {
		return "in-process"
	}
	ctx, cancel := context.WithTimeout(ctx, launcher.HelloTimeout)
	defer cancel()
	return d.launcher.Describe(ctx)
}
