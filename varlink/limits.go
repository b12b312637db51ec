package varlink

import (
	"errors"
	"fmt"
)

// Why a connection is refused at accept. The server replies with the
// Config.Refused error naming one of these before it closes the connection.
var (
	// ErrConnLimit: every connection (MaxConns) is in use.
	ErrConnLimit = errors.New("every connection the service accepts is in use")
	// ErrUserConnLimit: the connections open to callers who are not admins
	// (MaxConns - AdminReserve) are all in use.
	ErrUserConnLimit = errors.New("every connection open to users is in use; the rest are kept for admins")
	// ErrPerUIDLimit: this caller's uid holds MaxConnsPerUID connections.
	ErrPerUIDLimit = errors.New("this user holds the most connections one user may")
)

// limits decides which connections are admitted: at most max in all, at
// most max-reserve held by callers who are not admins, and at most perUID
// held by any one such caller. Admins are counted against max only, so a
// user (or many) holding every slot they may still leaves room for them.
type limits struct {
	max, perUID, reserve int
	total, users         int
	byUID                map[uint32]int
}

func newLimits(total, perUID, reserve int) *limits {
	if perUID <= 0 || perUID > total {
		perUID = total
	}
	reserve = min(max(reserve, 0), total)
	return &limits{max: total, perUID: perUID, reserve: reserve, byUID: map[uint32]int{}}
}

// admit counts a new connection, or says why it may not be opened.
func (l *limits) admit(uid uint32, admin bool) error {
	if l.total >= l.max {
		return fmt.Errorf("%w (%d)", ErrConnLimit, l.max)
	}
	if !admin {
		if l.users >= l.max-l.reserve {
			return fmt.Errorf("%w (%d for users, %d kept for admins)", ErrUserConnLimit, l.max-l.reserve, l.reserve)
		}
		if l.byUID[uid] >= l.perUID {
			return fmt.Errorf("%w: uid %d has %d open", ErrPerUIDLimit, uid, l.byUID[uid])
		}
		l.users++
		l.byUID[uid]++
	}
	l.total++
	return nil
}

// release uncounts a connection admit counted.
func (l *limits) release(uid uint32, admin bool) {
	l.total--
	if admin {
		return
	}
	l.users--
	if l.byUID[uid]--; l.byUID[uid] <= 0 {
		delete(l.byUID, uid)
	}
}
