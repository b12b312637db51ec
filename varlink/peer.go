package varlink

import (
	"encoding/binary"
	"fmt"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Peer is the identity of the process at the other end, as the kernel
// recorded it when that process connected (SO_PEERCRED, SO_PEERGROUPS): a
// later change of the user's groups in the group database does not change
// what an open connection may do, and a process that dropped a group has
// dropped it here too.
type Peer struct {
	UID, GID uint32
	PID      int32
	// Groups are the peer's supplementary groups at connect time.
	Groups []uint32
}

// InGroup reports whether gid is the peer's primary or a supplementary group.
func (p Peer) InGroup(gid uint32) bool {
	if p.GID == gid {
		return true
	}
	for _, g := range p.Groups {
		if g == gid {
			return true
		}
	}
	return false
}

// PeerOf reads the credentials and groups of a UNIX connection's peer.
func PeerOf(nc net.Conn) (Peer, error) {
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		return Peer{}, fmt.Errorf("peer credentials: %T is not a UNIX socket", nc)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{}, fmt.Errorf("peer credentials: %w", err)
	}
	var p Peer
	var serr error
	if err := raw.Control(func(fd uintptr) {
		var cred *unix.Ucred
		if cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); serr != nil {
			serr = fmt.Errorf("peer credentials: %w", serr)
			return
		}
		p = Peer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}
		if p.Groups, serr = peerGroups(int(fd)); serr != nil {
			serr = fmt.Errorf("peer groups: %w", serr)
		}
	}); err != nil {
		return Peer{}, fmt.Errorf("peer credentials: %w", err)
	}
	if serr != nil {
		return Peer{}, serr
	}
	return p, nil
}

// peerGroups reads SO_PEERGROUPS: an array of gid_t, sized by the kernel
// (ERANGE with the size needed when the buffer is short).
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]byte, 64*4)
	for range 3 {
		n := uint32(len(buf))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		if errno == unix.ERANGE && int(n) > len(buf) {
			buf = make([]byte, n)
			continue
		}
		if errno != 0 {
			return nil, errno
		}
		groups := make([]uint32, 0, n/4)
		for i := 0; i+4 <= int(n); i += 4 {
			groups = append(groups, binary.NativeEndian.Uint32(buf[i:]))
		}
		return groups, nil
	}
	return nil, unix.ERANGE
}
