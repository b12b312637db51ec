// Package systemd holds paddockd's integration with systemd: the sd_notify
// protocol (readiness, status, reload, watchdog, file descriptor store),
// native journal logging through log/slog, and socket activation of the API
// socket with a safe fallback to binding it ourselves.
//
// Nothing here needs systemd to be PID 1: every feature degrades to a no-op
// (notify), to stderr (logging) or to a self-bound socket (Listen).
package systemd

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// Notifier sends sd_notify(3) messages to the service manager. The zero
// value and a nil *Notifier are valid no-ops. A Notifier is immutable after
// NewNotifier and safe for concurrent use: each message is sent on its own
// short-lived, unconnected datagram socket.
type Notifier struct {
	addr     string        // NOTIFY_SOCKET; "" disables sending
	watchdog time.Duration // 0 when the watchdog is off (or meant for another PID)
	wdErr    error         // malformed WATCHDOG_USEC/WATCHDOG_PID
}

// NewNotifier reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID and removes
// them from the process environment, so that child processes (the VMMs) do
// not inherit them and spam the manager with messages it rejects
// (NotifyAccess=main). Call it once at start-up and share the result.
//
// NOTIFY_SOCKET may be a filesystem path or an abstract socket ("@name").
// When it is unset, every method is a no-op returning nil.
func NewNotifier() *Notifier {
	n := &Notifier{addr: os.Getenv("NOTIFY_SOCKET")}
	n.watchdog, n.wdErr = daemon.SdWatchdogEnabled(true)
	_ = os.Unsetenv("NOTIFY_SOCKET")
	return n
}

// Enabled reports whether messages are actually sent somewhere.
func (n *Notifier) Enabled() bool { return n != nil && n.addr != "" }

// Ready tells the manager that start-up is complete (READY=1) and sets the
// status line. After a reload, call Ready again to finish the reload.
func (n *Notifier) Ready(status string) error {
	msg := "READY=1"
	if status != "" {
		msg += "\nSTATUS=" + oneLine(status)
	}
	return n.send(msg)
}

// Status sets the free-form status line shown by `systemctl status`.
func (n *Notifier) Status(status string) error {
	return n.send("STATUS=" + oneLine(status))
}

// Reloading tells the manager that a configuration reload started. systemd
// >= 253 (Type=notify-reload) wants MONOTONIC_USEC= with it; older managers
// ignore the extra field. Finish the reload with Ready.
func (n *Notifier) Reloading() error {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return fmt.Errorf("sd_notify: clock_gettime(CLOCK_MONOTONIC): %w", err)
	}
	usec := ts.Sec*1_000_000 + ts.Nsec/1_000
	return n.send("RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(usec, 10))
}

// Stopping tells the manager that the service is shutting down.
func (n *Notifier) Stopping() error { return n.send("STOPPING=1") }

// Watchdog pings the service watchdog (WATCHDOG=1). Send it from a real
// liveness check, at least every WatchdogInterval()/2.
func (n *Notifier) Watchdog() error { return n.send("WATCHDOG=1") }

// ExtendTimeout asks the manager for d more time for the current start-up,
// reload or shutdown phase (EXTEND_TIMEOUT_USEC=), e.g. while reconciling
// many VMs. Repeat it before d runs out.
func (n *Notifier) ExtendTimeout(d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("sd_notify: EXTEND_TIMEOUT_USEC must be positive, got %s", d)
	}
	return n.send("EXTEND_TIMEOUT_USEC=" + strconv.FormatInt(d.Microseconds(), 10))
}

// WatchdogInterval returns the watchdog timeout the manager expects
// (WatchdogSec=) and true when the watchdog is enabled for this process.
// Ping at half this interval or more often.
func (n *Notifier) WatchdogInterval() (time.Duration, bool) {
	if n == nil || n.watchdog <= 0 {
		return 0, false
	}
	return n.watchdog, true
}

// WatchdogError reports a malformed WATCHDOG_USEC or WATCHDOG_PID seen by
// NewNotifier (the watchdog is then treated as disabled).
func (n *Notifier) WatchdogError() error {
	if n == nil {
		return nil
	}
	return n.wdErr
}

// FDStore hands a duplicate of f's descriptor to the manager's file
// descriptor store under name (FDSTORE=1, FDNAME=name). The manager passes it
// back on the next start of the service (LISTEN_FDS/LISTEN_FDNAMES; see
// TakeFiles). The unit needs FileDescriptorStoreMax= > 0. The caller keeps
// ownership of f. go-systemd cannot send descriptors, hence the own sendmsg.
func (n *Notifier) FDStore(name string, f *os.File) error {
	if err := validFDName(name); err != nil {
		return err
	}
	if f == nil {
		return errors.New("sd_notify: FDSTORE: nil file")
	}
	if !n.Enabled() {
		return nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("sd_notify: FDSTORE %q: %w", name, err)
	}
	var sendErr error
	err = rc.Control(func(fd uintptr) {
		sendErr = n.send("FDSTORE=1\nFDNAME="+name, int(fd))
	})
	runtime.KeepAlive(f)
	if err != nil {
		return fmt.Errorf("sd_notify: FDSTORE %q: %w", name, err)
	}
	return sendErr
}

// FDStoreRemove asks the manager to close and forget every stored descriptor
// named name (FDSTOREREMOVE=1).
func (n *Notifier) FDStoreRemove(name string) error {
	if err := validFDName(name); err != nil {
		return err
	}
	return n.send("FDSTOREREMOVE=1\nFDNAME=" + name)
}

// send writes one datagram, with fds as SCM_RIGHTS, to NOTIFY_SOCKET.
func (n *Notifier) send(state string, fds ...int) error {
	if !n.Enabled() {
		return nil
	}
	if strings.HasPrefix(n.addr, "vsock:") {
		return fmt.Errorf("sd_notify: NOTIFY_SOCKET=%s: vsock transport not supported", n.addr)
	}
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sd_notify: socket: %w", err)
	}
	defer unix.Close(s)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	// unix.SockaddrUnix maps a leading '@' to the abstract namespace.
	if err := unix.Sendmsg(s, []byte(state), oob, &unix.SockaddrUnix{Name: n.addr}, unix.MSG_NOSIGNAL); err != nil {
		return fmt.Errorf("sd_notify to %s: %w", n.addr, err)
	}
	return nil
}

// oneLine keeps a status text from injecting further assignments.
func oneLine(s string) string {
	return strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s)
}

// validFDName applies systemd's rules for FDNAME= (fdname_is_valid).
func validFDName(name string) error {
	if name == "" || len(name) > 255 {
		return fmt.Errorf("sd_notify: invalid FDNAME %q: must be 1..255 bytes", name)
	}
	for _, c := range []byte(name) {
		if c == ':' || c < 0x20 || c >= 0x7f {
			return fmt.Errorf("sd_notify: invalid FDNAME %q: only printable ASCII without ':'", name)
		}
	}
	return nil
}
