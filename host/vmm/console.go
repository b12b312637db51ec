package vmm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// ConsoleLog is an append-only log file whose size never exceeds Max bytes:
// a write that would cross Max first compacts the file to its newest Max/2
// bytes (cut after a newline when there is one in the first quarter of the
// kept part), written to a temporary file and renamed over the log, so a
// reader always sees a whole file. Safe for concurrent use.
type ConsoleLog struct {
	mu   sync.Mutex
	path string
	max  int64
	f    *os.File
	size int64
}

// OpenConsoleLog opens (creating, mode 0600) path for appending with a cap
// of max bytes (minimum 1 KiB). An existing file over the cap is compacted.
func OpenConsoleLog(path string, max int64) (*ConsoleLog, error) {
	if max < 1024 {
		max = 1024
	}
	l := &ConsoleLog{path: path, max: max}
	if err := l.open(); err != nil {
		return nil, err
	}
	if l.size > max {
		if err := l.compact(nil); err != nil {
			l.f.Close()
			return nil, err
		}
	}
	return l, nil
}

func (l *ConsoleLog) open() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("vmm: console log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("vmm: console log: %w", err)
	}
	l.f, l.size = f, fi.Size()
	return nil
}

// Path is the log file.
func (l *ConsoleLog) Path() string { return l.path }

// Write appends p, compacting first when the file would exceed the cap.
// It never fails on a short disk in a way that stops the copier: errors are
// returned but the log stays usable.
func (l *ConsoleLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return 0, os.ErrClosed
	}
	n := len(p)
	if l.size+int64(len(p)) > l.max {
		return n, l.compact(p)
	}
	w, err := l.f.Write(p)
	l.size += int64(w)
	if err != nil {
		return w, fmt.Errorf("vmm: console log: %w", err)
	}
	return n, nil
}

// compact rewrites the log as the newest max/2 bytes of (file + p).
func (l *ConsoleLog) compact(p []byte) error {
	keep := l.max / 2
	var tail []byte
	if int64(len(p)) >= keep {
		tail = append([]byte(nil), p[int64(len(p))-keep:]...)
	} else {
		fromFile := keep - int64(len(p))
		rf, err := os.Open(l.path)
		if err != nil {
			return fmt.Errorf("vmm: console log: %w", err)
		}
		off := max(l.size-fromFile, 0)
		buf := make([]byte, l.size-off)
		k, err := rf.ReadAt(buf, off)
		rf.Close()
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("vmm: console log: %w", err)
		}
		tail = append(buf[:k], p...)
	}
	// start at a line boundary when one is near the cut
	if i := bytes.IndexByte(tail[:len(tail)/4], '\n'); i >= 0 {
		tail = tail[i+1:]
	}
	tmp, err := os.CreateTemp(filepath.Dir(l.path), "."+filepath.Base(l.path)+".*")
	if err != nil {
		return fmt.Errorf("vmm: console log: %w", err)
	}
	_, werr := tmp.Write(tail)
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Chmod(tmp.Name(), 0o600)
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), l.path)
	}
	if werr != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("vmm: console log: %w", werr)
	}
	l.f.Close()
	return l.open()
}

// Close closes the log.
func (l *ConsoleLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// openConsole connects to a VMM's console endpoint: a UNIX socket (QEMU's
// chardev server) is dialled, a FIFO (Firecracker's serial output) is
// opened read-write so that it never reports EOF while the writer is away.
func openConsole(ctx context.Context, path string) (io.ReadCloser, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	switch fi.Mode().Type() {
	case os.ModeSocket:
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	case os.ModeNamedPipe:
		return os.OpenFile(path, os.O_RDWR|syscall.O_CLOEXEC, 0)
	}
	return nil, fmt.Errorf("vmm: console %s is neither a socket nor a FIFO", path)
}

// bestEffort drops what cannot be logged (disk full...) rather than stop
// draining the console.
type bestEffort struct{ w io.Writer }

func (b bestEffort) Write(p []byte) (int, error) {
	_, _ = b.w.Write(p)
	return len(p), nil
}

// follower copies one VMM's console into its ConsoleLog, and to any
// attached clients, and carries their input to the console.
type follower struct {
	cancel context.CancelFunc
	done   chan struct{}
	pid    int
	start  uint64

	mu   sync.Mutex
	conn io.ReadCloser // the current console connection
	subs map[int]chan []byte
	next int
}

// fanout writes console output to the log and to every attached client;
// a client that does not keep up loses output rather than slowing the guest.
type fanout struct {
	f   *follower
	log io.Writer
}

func (o fanout) Write(p []byte) (int, error) {
	o.f.mu.Lock()
	for _, ch := range o.f.subs {
		select {
		case ch <- append([]byte(nil), p...):
		default:
		}
	}
	o.f.mu.Unlock()
	return o.log.Write(p)
}

// attach subscribes to the console's output and returns a writer to its input.
func (f *follower) attach() (<-chan []byte, io.Writer, func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.subs == nil {
		f.subs = map[int]chan []byte{}
	}
	f.next++
	id, ch := f.next, make(chan []byte, 256)
	f.subs[id] = ch
	detach := func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.subs, id)
	}
	return ch, consoleInput{f}, detach
}

type consoleInput struct{ f *follower }

func (c consoleInput) Write(p []byte) (int, error) {
	c.f.mu.Lock()
	conn := c.f.conn
	c.f.mu.Unlock()
	w, ok := conn.(io.Writer)
	if !ok {
		return 0, fmt.Errorf("vmm: console takes no input")
	}
	return w.Write(p)
}

func (f *follower) stop() {
	f.cancel()
	<-f.done
}

// follow connects to p's console (retrying until ctx ends or the VMM is
// gone), then copies it into the capped log in a goroutine that reconnects
// after a disconnect for as long as the VMM runs. It returns once the first
// connection is up.
func follow(ctx context.Context, p *Process) (*follower, error) {
	log, err := OpenConsoleLog(p.ConsoleLog, p.ConsoleLogMax)
	if err != nil {
		return nil, err
	}
	connect := func(ctx context.Context) (io.ReadCloser, error) {
		return retryWhileRunning(ctx, p, "console "+p.ConsoleSocket, 20*time.Millisecond, func(ctx context.Context) (io.ReadCloser, error) {
			return openConsole(ctx, p.ConsoleSocket)
		})
	}
	rc, err := connect(ctx)
	if err != nil {
		log.Close()
		return nil, err
	}
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &follower{cancel: cancel, done: make(chan struct{}), pid: p.PID, start: p.StartTime}
	go func() {
		defer close(f.done)
		defer log.Close()
		for {
			f.mu.Lock()
			f.conn = rc
			f.mu.Unlock()
			stop := context.AfterFunc(fctx, func() { rc.Close() })
			_, _ = io.Copy(fanout{f: f, log: bestEffort{log}}, rc)
			stop()
			rc.Close()
			if fctx.Err() != nil {
				return
			}
			if s, _ := identify(p); s != StateRunning {
				return
			}
			var err error
			if rc, err = connect(fctx); err != nil {
				return
			}
		}
	}()
	return f, nil
}
