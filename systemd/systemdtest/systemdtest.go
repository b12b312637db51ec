// Package systemdtest provides systemd stand-ins for integration tests that
// do not have systemd as PID 1: a private NOTIFY_SOCKET that records
// sd_notify messages, and a standalone systemd-journald in a private mount
// namespace that test programs can log to (natively and via their stderr
// stream) and that tests can query with journalctl.
package systemdtest

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Message is one datagram received on a NotifySocket.
type Message struct {
	PID, UID, GID int        // sender credentials (SCM_CREDENTIALS)
	Text          string     // raw payload, e.g. "READY=1\nSTATUS=up"
	Files         []*os.File // descriptors sent with it (SCM_RIGHTS); the receiver owns them
	Truncated     bool       // control data was truncated (MSG_CTRUNC)
}

// NotifySocket binds a unixgram socket with SO_PASSCRED in a temporary
// directory and returns its path (for NOTIFY_SOCKET) and the messages it
// receives, in order. The socket is closed, its directory removed and the
// channel closed when the test ends; descriptors of messages nobody read
// are closed then too.
func NotifySocket(t testing.TB) (path string, msgs <-chan Message) {
	t.Helper()
	dir := t.TempDir()
	path = filepath.Join(dir, "notify.sock")
	if len(path) >= len(unix.RawSockaddrUnix{}.Path) { // long test name
		d, err := os.MkdirTemp("", "sdnotify")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(d) })
		path = filepath.Join(d, "notify.sock")
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("notify socket: %v", err)
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}); err != nil || serr != nil {
		t.Fatalf("SO_PASSCRED: %v %v", err, serr)
	}

	ch := make(chan Message, 64)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(ch)
		buf := make([]byte, 64<<10)
		oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(4*253))
		for {
			m, err := recvMessage(rc, buf, oob)
			if err != nil {
				return // closed at cleanup
			}
			select {
			case ch <- m:
			case <-done:
				closeFiles(m.Files)
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(done)
		_ = conn.Close()
		wg.Wait()
		for m := range ch {
			closeFiles(m.Files)
		}
	})
	return path, ch
}

func recvMessage(rc syscall.RawConn, buf, oob []byte) (Message, error) {
	var (
		n, oobn, flags int
		rerr           error
	)
	err := rc.Read(func(fd uintptr) bool {
		n, oobn, flags, _, rerr = unix.Recvmsg(int(fd), buf, oob, unix.MSG_CMSG_CLOEXEC)
		return !errors.Is(rerr, unix.EAGAIN)
	})
	if err != nil {
		return Message{}, err
	}
	if rerr != nil {
		return Message{}, rerr
	}
	m := Message{Text: string(buf[:n]), Truncated: flags&unix.MSG_CTRUNC != 0}
	cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return m, nil
	}
	for i := range cmsgs {
		if c, err := unix.ParseUnixCredentials(&cmsgs[i]); err == nil {
			m.PID, m.UID, m.GID = int(c.Pid), int(c.Uid), int(c.Gid)
			continue
		}
		if fds, err := unix.ParseUnixRights(&cmsgs[i]); err == nil {
			for _, fd := range fds {
				m.Files = append(m.Files, os.NewFile(uintptr(fd), "notify-fd"))
			}
		}
	}
	return m, nil
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		_ = f.Close()
	}
}
