package varlink

import (
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Socket is a stream socket a client passed with a call, read and written
// without ever blocking an OS thread of the service: every recv and send
// carries MSG_DONTWAIT, which the client cannot undo (it shares the file
// description, and with it O_NONBLOCK, which it may clear at any time), and
// every wait happens in Go's poller, where a deadline or the end of the
// call ends it. A client that keeps its end open and silent costs a parked
// goroutine until the call ends, never a thread.
type Socket struct {
	f  *os.File
	rc syscall.RawConn
}

// Socket returns the call's i-th descriptor as a Socket, or an error that
// names it (what) when it is not a stream socket.
func (c *Call) Socket(i int, what string) (*Socket, error) {
	if i < 0 || i >= len(c.FDs) {
		return nil, fmt.Errorf("%s: no descriptor %d passed (got %d)", what, i, len(c.FDs))
	}
	f := c.FDs[i]
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	typ, serr := 0, error(nil)
	if err := rc.Control(func(fd uintptr) {
		var st unix.Stat_t
		if serr = unix.Fstat(int(fd), &st); serr == nil && st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			serr = fmt.Errorf("a %s, not a socket", fileKind(st.Mode))
			return
		}
		if serr == nil {
			typ, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		}
	}); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if serr == nil && typ != unix.SOCK_STREAM {
		serr = fmt.Errorf("a socket of type %d, not a stream socket", typ)
	}
	if serr != nil {
		return nil, fmt.Errorf("%s must be passed as a stream socket (a socketpair end): it is %w", what, serr)
	}
	return &Socket{f: f, rc: rc}, nil
}

func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "pipe"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFBLK:
		return "block device"
	}
	return "file of another kind"
}

// Read reads what is there, waiting in the poller when nothing is.
func (s *Socket) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var serr error
	err := s.rc.Read(func(fd uintptr) bool {
		for {
			n, serr = sockIO(unix.SYS_RECVFROM, fd, p, unix.MSG_DONTWAIT)
			if serr != unix.EINTR {
				return serr != unix.EAGAIN
			}
		}
	})
	switch {
	case err != nil:
		return 0, err
	case serr != nil:
		return 0, os.NewSyscallError("recv", serr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p, waiting in the poller while the client's buffer
// is full.
func (s *Socket) Write(p []byte) (int, error) {
	written := 0
	var serr error
	err := s.rc.Write(func(fd uintptr) bool {
		for written < len(p) {
			n, e := sockIO(unix.SYS_SENDTO, fd, p[written:], unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
			switch e {
			case nil:
				written += n
			case unix.EINTR:
			case unix.EAGAIN:
				return false
			default:
				serr = e
				return true
			}
		}
		return true
	})
	if err != nil {
		return written, err
	}
	if serr != nil {
		return written, os.NewSyscallError("send", serr)
	}
	return written, nil
}

// SetDeadline, SetReadDeadline and SetWriteDeadline bound the waits; a
// time in the past ends the current one at once.
func (s *Socket) SetDeadline(t time.Time) error      { return s.f.SetDeadline(t) }
func (s *Socket) SetReadDeadline(t time.Time) error  { return s.f.SetReadDeadline(t) }
func (s *Socket) SetWriteDeadline(t time.Time) error { return s.f.SetWriteDeadline(t) }

// sockIO is recvfrom or sendto on a connected socket, with no address.
func sockIO(trap, fd uintptr, p []byte, flags int) (int, error) {
	r, _, e := unix.Syscall6(trap, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), uintptr(flags), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
