package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/host/launcher"
	"github.com/paddock-vm/paddock/host/vmm"
)

// useLauncher: no socket or a dead one → in-process; a launcher that
// answers → every launch goes through it, and Info names it.
func TestUseLauncher(t *testing.T) {
	t.Cleanup(func() { vmm.UseLauncher(nil) })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := context.Background()
	dir := t.TempDir()
	d := &Daemon{}

	if d.launcher = d.useLauncher(ctx, log, dir); d.launcher != nil || d.launcherInfo(ctx) != "in-process" {
		t.Fatalf("without a socket: %v %q", d.launcher, d.launcherInfo(ctx))
	}

	// A socket nobody listens on (a launcher that died).
	path := filepath.Join(dir, launcher.SocketName)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if d.launcher = d.useLauncher(ctx, log, dir); d.launcher != nil {
		t.Fatal("a dead launcher's socket was used")
	}
	os.Remove(path)

	var mu sync.Mutex
	var launched []vmm.Command
	srv := &launcher.Server{Log: log, Launch: func(c vmm.Command) (int, uint64, error) {
		mu.Lock()
		defer mu.Unlock()
		launched = append(launched, c)
		return os.Getpid(), 1, nil
	}}
	ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = srv.Serve(sctx, ln); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("the launcher did not stop")
		}
	})
	if d.launcher = d.useLauncher(ctx, log, dir); d.launcher == nil {
		t.Fatal("a launcher that answers was not used")
	}
	if got, want := d.launcherInfo(ctx), "launcher (pid "+strconv.Itoa(os.Getpid())+")"; got != want {
		t.Fatalf("Info's launcher: %q, want %q", got, want)
	}
	if _, err := vmm.Spawn(vmm.Command{Path: "/bin/true", Args: []string{"true"}, Log: filepath.Join(dir, "log")}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(launched) != 1 || launched[0].Path != "/bin/true" {
		t.Fatalf("Spawn did not go through the launcher: %+v", launched)
	}
}
