package systemd

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"
)

// ErrInUse is wrapped by Listen's error when another process answers on the
// socket path.
var ErrInUse = errors.New("already in use by another daemon")

// preferredNames are the FileDescriptorName= values Listen looks for, in
// order, before falling back to the first listening unix stream socket.
var preferredNames = []string{"varlink", "api"}

// inherited holds the descriptors passed by the manager (LISTEN_FDS): socket
// activation and the file descriptor store. They are read once, the LISTEN_*
// variables are removed from the environment, and every descriptor stays
// owned here until Listen or TakeFiles hands it out.
var inherited struct {
	once  sync.Once
	mu    sync.Mutex
	files []*os.File
}

func inheritedFiles() {
	inherited.once.Do(func() {
		// Files(true) unsets LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES and marks
		// the descriptors close-on-exec. Unlike ListenersWithNames it keeps
		// the order and the non-socket descriptors (fd store entries).
		inherited.files = activation.Files(true)
	})
}

// TakeFiles returns, and removes from the inherited set, every descriptor
// the manager passed under name (LISTEN_FDNAMES; FDNAME= for fd store
// entries, see Notifier.FDStore). The caller owns the returned files.
func TakeFiles(name string) []*os.File {
	inheritedFiles()
	inherited.mu.Lock()
	defer inherited.mu.Unlock()
	var out []*os.File
	inherited.files = slices.DeleteFunc(inherited.files, func(f *os.File) bool {
		if f.Name() == name {
			out = append(out, f)
			return true
		}
		return false
	})
	return out
}

// Listen returns the API listener. When the manager passed listening
// sockets (socket activation), it returns the one named "varlink" or "api",
// else the first listening unix stream socket, as-is (the socket unit owns
// its path, mode and group) with activated=true. Otherwise it binds path
// itself: it creates the parent directory (0755) if missing, refuses to
// replace a socket somebody still answers on (ErrInUse), removes a stale
// socket, binds, sets mode and, unless gid is -1, the group.
//
// The LISTEN_* environment variables are removed either way, so children
// do not inherit them. Closing a self-bound listener removes its path.
func Listen(path string, mode os.FileMode, gid int) (ln net.Listener, activated bool, err error) {
	ln, err = activatedListener()
	if err != nil {
		return nil, false, err
	}
	if ln != nil {
		return ln, true, nil
	}
	ln, err = bindUnix(path, mode, gid)
	return ln, false, err
}

// activatedListener picks and takes the API socket from the inherited set.
func activatedListener() (net.Listener, error) {
	inheritedFiles()
	inherited.mu.Lock()
	defer inherited.mu.Unlock()
	pick, best := -1, len(preferredNames)+1
	for i, f := range inherited.files {
		if !isUnixStreamListener(f) {
			continue
		}
		rank := slices.Index(preferredNames, f.Name())
		if rank < 0 {
			rank = len(preferredNames) // any other name, e.g. "unknown"
		}
		if rank < best {
			pick, best = i, rank
		}
	}
	if pick < 0 {
		return nil, nil
	}
	f := inherited.files[pick]
	ln, err := net.FileListener(f) // dups the descriptor
	if err != nil {
		return nil, fmt.Errorf("socket activation: fd %d (%s): %w", f.Fd(), f.Name(), err)
	}
	_ = f.Close()
	inherited.files = slices.Delete(inherited.files, pick, pick+1)
	return ln, nil
}

// isUnixStreamListener reports whether f is a listening AF_UNIX stream socket.
func isUnixStreamListener(f *os.File) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	_ = rc.Control(func(fd uintptr) {
		typ, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil || typ != unix.SOCK_STREAM {
			return
		}
		acc, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if err != nil || acc != 1 {
			return
		}
		dom, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		ok = err == nil && dom == unix.AF_UNIX
	})
	return ok
}

// bindUnix binds path, serialised against other paddockd instances by an
// flock on path+".lock" so two starting daemons cannot remove each other's
// fresh socket.
func bindUnix(path string, mode os.FileMode, gid int) (net.Listener, error) {
	if path == "" {
		return nil, errors.New("listen: empty socket path")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	lock, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("listen %s: lock: %w", path, err)
	}
	defer lock.Close() // releases the flock
	if err := flock(lock); err != nil {
		return nil, fmt.Errorf("listen %s: lock: %w", path, err)
	}

	if err := removeStale(path); err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	// The socket was created with the process umask (0022 under systemd:
	// connectable by the owner only), so this only ever widens access.
	if err := os.Chmod(path, mode.Perm()); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("listen %s: chmod: %w", path, err)
	}
	if gid != -1 {
		if err := os.Lchown(path, -1, gid); err != nil {
			_ = ln.Close()
			return nil, fmt.Errorf("listen %s: chown to gid %d: %w", path, gid, err)
		}
	}
	return ln, nil
}

func flock(f *os.File) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// removeStale removes path if it is a socket nobody answers on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listen %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("listen %s: exists and is not a socket (%s); refusing to remove it", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		_ = c.Close()
		return fmt.Errorf("listen %s: %w", path, ErrInUse)
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		// Stale: the file outlived its listener.
	case errors.Is(err, syscall.EAGAIN):
		// Backlog full: a live, busy listener.
		return fmt.Errorf("listen %s: %w (backlog full)", path, ErrInUse)
	default:
		return fmt.Errorf("listen %s: cannot tell whether the existing socket is live: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("listen %s: remove stale socket: %w", path, err)
	}
	return nil
}
