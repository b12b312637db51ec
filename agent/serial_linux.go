package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// VirtioPortsDir is where the kernel lists virtio-serial ports.
const VirtioPortsDir = "/sys/class/virtio-ports"

// FindVirtioPort waits until a virtio-serial port named name exists and
// returns its device path (e.g. /dev/vport1p1; never assume the number).
func FindVirtioPort(ctx context.Context, name string) (string, error) {
	return findPort(ctx, VirtioPortsDir, "/dev", name)
}

// findPort looks for the port in sysDir and its node in devDir, often for
// the first second (it usually appears within milliseconds of its driver,
// and the boot waits on it) and less often after: a guest on a starved host
// may wait minutes, and its one vCPU is better spent than on listing a
// directory.
func findPort(ctx context.Context, sysDir, devDir, name string) (string, error) {
	const often, seldom, oftenFor = 2 * time.Millisecond, 50 * time.Millisecond, time.Second
	began := time.Now()
	for {
		poll := often
		if time.Since(began) > oftenFor {
			poll = seldom
		}
		ents, _ := os.ReadDir(sysDir)
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(sysDir, e.Name(), "name"))
			if err == nil && strings.TrimSpace(string(b)) == name {
				dev := filepath.Join(devDir, e.Name())
				if _, err := os.Stat(dev); err == nil {
					return dev, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("agent: virtio-serial port %q not found: %w", name, ctx.Err())
		case <-time.After(poll):
		}
	}
}

// SerialListener serves a virtio-serial port, one host connection at a
// time. virtio_console (at least up to Linux 6.1) loses wakeups when the
// port is polled while another thread blocks in read(), so the fd is never
// handed to Go's netpoller nor polled: it is non-blocking with O_ASYNC, and
// waiters sleep until SIGIO (host connect/disconnect, data) or a short
// fallback timer.
//
// read() returns 0 while virtio_console believes no host is connected, but
// that belief is unreliable when the host connected before the guest opened
// the port (measured: 0 is returned between frames of a live connection). A
// read of 0 is therefore treated as "no data yet", never as a disconnect:
// Accept waits for the first bytes and returns one long-lived connection
// that spans host reconnections. A new host announces itself with hello,
// which resets the server's session state (see Server).
type SerialListener struct {
	fd     int
	path   string
	waker  *waker
	mu     sync.Mutex
	closed bool
	cur    *serialConn
}

// OpenSerialListener opens the port device at path.
func OpenSerialListener(path string) (*SerialListener, error) {
	w := newWaker()
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		w.stop()
		return nil, fmt.Errorf("agent: open %s: %w", path, err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETOWN, os.Getpid()); err != nil {
		unix.Close(fd)
		w.stop()
		return nil, fmt.Errorf("agent: F_SETOWN %s: %w", path, err)
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err == nil {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_NONBLOCK|unix.O_ASYNC)
	}
	if err != nil {
		unix.Close(fd)
		w.stop()
		return nil, fmt.Errorf("agent: F_SETFL %s: %w", path, err)
	}
	return &SerialListener{fd: fd, path: path, waker: w}, nil
}

const (
	serialReadFallback  = 50 * time.Millisecond
	serialWriteFallback = 2 * time.Millisecond
)

// Accept waits for a host connection (its first bytes).
func (l *SerialListener) Accept() (io.ReadWriteCloser, error) {
	// One connection at a time: wait until the current one is closed.
	l.mu.Lock()
	cur := l.cur
	l.mu.Unlock()
	if cur != nil {
		<-cur.gone
	}
	buf := make([]byte, 64<<10)
	for {
		l.mu.Lock()
		closed := l.closed
		l.mu.Unlock()
		if closed {
			return nil, errors.New("agent: serial listener closed")
		}
		wake := l.waker.current()
		n, err := unix.Read(l.fd, buf)
		switch {
		case n > 0:
			c := &serialConn{l: l, pending: buf[:n], gone: make(chan struct{})}
			l.mu.Lock()
			l.cur = c
			l.mu.Unlock()
			return c, nil
		case err == nil || err == unix.EAGAIN || err == unix.EINTR:
			// n == 0: no host connected; EAGAIN: connected, no data yet.
			l.waker.wait(wake, serialReadFallback)
		default:
			return nil, fmt.Errorf("agent: read %s: %w", l.path, err)
		}
	}
}

// Close stops the listener and closes the port.
func (l *SerialListener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	c := l.cur
	l.mu.Unlock()
	if c != nil {
		c.Close()
	}
	l.waker.stop()
	return unix.Close(l.fd)
}

type serialConn struct {
	l       *SerialListener
	rmu     sync.Mutex
	wmu     sync.Mutex
	pending []byte
	mu      sync.Mutex
	dead    bool
	gone    chan struct{} // closed by Close
}

func (c *serialConn) isDead() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dead
}

func (c *serialConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	for {
		if c.isDead() {
			return 0, io.EOF
		}
		wake := c.l.waker.current()
		n, err := unix.Read(c.l.fd, p)
		switch {
		case n > 0:
			return n, nil
		case err == nil || err == unix.EAGAIN || err == unix.EINTR:
			// 0: no host connected (or so the driver thinks); EAGAIN: no data.
			c.l.waker.wait(wake, serialReadFallback)
		default:
			c.Close()
			return 0, fmt.Errorf("agent: read %s: %w", c.l.path, err)
		}
	}
}

func (c *serialConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	written := 0
	for written < len(p) {
		if c.isDead() {
			return written, io.ErrClosedPipe
		}
		wake := c.l.waker.current()
		n, err := unix.Write(c.l.fd, p[written:])
		if n > 0 {
			written += n
			continue
		}
		switch err {
		case unix.EAGAIN, unix.EINTR, nil:
			c.l.waker.wait(wake, serialWriteFallback)
		default:
			c.Close()
			return written, fmt.Errorf("agent: write %s: %w", c.l.path, err)
		}
	}
	return written, nil
}

// Close ends this connection (the port stays open for the next one).
func (c *serialConn) Close() error {
	c.mu.Lock()
	if !c.dead {
		c.dead = true
		close(c.gone)
	}
	c.mu.Unlock()
	c.l.waker.broadcast()
	return nil
}

// waker turns SIGIO into a broadcast: waiters take the current channel
// before their syscall and sleep until it is closed or a timer fires.
type waker struct {
	mu   sync.Mutex
	ch   chan struct{}
	sig  chan os.Signal
	quit chan struct{}
}

func newWaker() *waker {
	w := &waker{ch: make(chan struct{}), sig: make(chan os.Signal, 8), quit: make(chan struct{})}
	signal.Notify(w.sig, unix.SIGIO) // before O_ASYNC: SIGIO's default action kills
	go func() {
		for {
			select {
			case <-w.sig:
				w.broadcast()
			case <-w.quit:
				return
			}
		}
	}()
	return w
}

func (w *waker) current() chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ch
}

func (w *waker) broadcast() {
	w.mu.Lock()
	close(w.ch)
	w.ch = make(chan struct{})
	w.mu.Unlock()
}

func (w *waker) wait(ch chan struct{}, fallback time.Duration) {
	t := time.NewTimer(fallback)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	}
}

func (w *waker) stop() {
	signal.Stop(w.sig)
	close(w.quit)
}
