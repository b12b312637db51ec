package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/paddock-vm/paddock/daemon/dbusapi"
	"github.com/paddock-vm/paddock/varlink"
	"github.com/paddock-vm/paddock/version"
)

// whichBus resolves dbus.bus: auto is the session bus for a daemon run by a
// user who has one (not root, a session bus address or
// $XDG_RUNTIME_DIR/bus), else the system bus.
func whichBus(bus string) string {
	if bus != "auto" {
		return bus
	}
	if os.Geteuid() != 0 {
		if os.Getenv("DBUS_SESSION_BUS_ADDRESS") != "" {
			return "session"
		}
		if rt := os.Getenv("XDG_RUNTIME_DIR"); rt != "" {
			if _, err := os.Stat(filepath.Join(rt, "bus")); err == nil {
				return "session"
			}
		}
	}
	return "system"
}

// startDBus serves org.paddock1 on the configured bus over the varlink
// server's handlers. A bus that cannot be reached, or a name that cannot be
// owned, is logged once and leaves the D-Bus API off: never fatal.
func (d *Daemon) startDBus(ctx context.Context) {
	bus := whichBus(d.config().DBus.Bus)
	if bus == "off" {
		d.log.Info("D-Bus API off (dbus.bus = \"off\")")
		return
	}
	srv, err := dbusapi.Connect(ctx, bus, dbusapi.Deps{
		Invoke:      d.server.Invoke,
		Caller:      d.auth.caller,
		Subscribe:   d.actors.Subscribe,
		Unsubscribe: d.actors.Unsubscribe,
		MayCall:     d.mayCall,
		Self:        varlink.Peer{UID: uint32(os.Geteuid())},
		Version:     version.Version,
		Log:         d.log.With("actor", "dbus"),
	})
	if err != nil {
		d.log.Warn("D-Bus API off: the bus cannot be reached or the name cannot be owned; the varlink socket serves as usual", "bus", bus, "name", dbusapi.BusName, "err", err)
		return
	}
	d.bus = srv
	d.log.Info("serving D-Bus", "bus", bus, "name", dbusapi.BusName, "unique_name", srv.UniqueName())
}

// mayCall is the varlink socket's gate applied to a D-Bus caller (the bus
// lets everyone send to org.paddock1): root, the daemon's own uid, and
// members of the socket's group may call; anyone when that group does not
// exist (the socket then has no group gate either).
func (d *Daemon) mayCall(p varlink.Peer) error {
	cfg := d.config()
	gid := lookupGID(cfg.API.SocketGroup)
	if p.UID == 0 || p.UID == uint32(os.Geteuid()) || gid < 0 || slices.Contains(p.Groups, uint32(gid)) {
		return nil
	}
	return fmt.Errorf("uid %d may not use paddock: only root and members of group %s may, as on the socket %s", p.UID, cfg.API.SocketGroup, cfg.API.Socket)
}
