package varlink

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// MaxFDs bounds the file descriptors accepted with one read; more (or a
// truncated control message) closes the connection.
const MaxFDs = 8

// fdReader reads a UNIX connection and collects descriptors passed with
// SCM_RIGHTS, so a call can carry open files (the caller's own access
// rights travel with them; the daemon never opens a caller's path itself).
type fdReader struct {
	uc  *net.UnixConn
	oob []byte
	mu  sync.Mutex
	fds []*os.File
}

func newFDReader(uc *net.UnixConn) *fdReader {
	return &fdReader{uc: uc, oob: make([]byte, unix.CmsgSpace(MaxFDs*4))}
}

var errTooManyFDs = errors.New("too many file descriptors in one message")

func (r *fdReader) Read(p []byte) (int, error) {
	n, oobn, flags, _, err := r.uc.ReadMsgUnix(p, r.oob)
	if n < 0 {
		n = 0
	}
	if oobn > 0 {
		if perr := r.collect(r.oob[:oobn]); perr != nil {
			return 0, fmt.Errorf("%w: %v", ErrProtocol, perr)
		}
	}
	if flags&unix.MSG_CTRUNC != 0 {
		return 0, fmt.Errorf("%w: %v (more than %d)", ErrProtocol, errTooManyFDs, MaxFDs)
	}
	return n, err
}

func (r *fdReader) collect(oob []byte) error {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if len(r.fds) >= MaxFDs {
				_ = unix.Close(fd)
				continue
			}
			r.fds = append(r.fds, adopt(fd))
		}
	}
	return nil
}

// take hands over the descriptors received so far.
func (r *fdReader) take() []*os.File {
	r.mu.Lock()
	defer r.mu.Unlock()
	fds := r.fds
	r.fds = nil
	return fds
}

// adopt wraps a received descriptor. A socket joins Go's poller, so that
// Socket can read and write it without blocking a thread: os.NewFile
// registers a descriptor that is in non-blocking mode, and the
// registration outlives the mode, so the socket is switched for the
// wrapping only and given its mode back at once (the client shares the
// file description and must not find it changed). Other kinds are wrapped
// as they are.
func adopt(fd int) *os.File {
	name := fmt.Sprintf("fd%d", fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return os.NewFile(uintptr(fd), name)
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_NONBLOCK != 0 || unix.SetNonblock(fd, true) != nil {
		return os.NewFile(uintptr(fd), name)
	}
	f := os.NewFile(uintptr(fd), name)
	_, _ = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl)
	return f
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		if f != nil {
			_ = f.Close()
		}
	}
}

// expire makes every wait on the files end now; used when a call's context
// ends, so that no handler stays blocked on a client's descriptor.
func expire(fs []*os.File) {
	past := time.Unix(1, 0)
	for _, f := range fs {
		_ = f.SetDeadline(past)
	}
}
