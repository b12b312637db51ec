package daemon

import (
	"os"
	"os/user"
	"strconv"
	"sync"
	"time"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/varlink"
)

// authorizer turns a peer's credentials into a Caller. Root, the daemon's own
// uid and members of the admin group are admins. Membership is the peer's
// own: its primary and supplementary groups as the kernel recorded them
// when it connected (SO_PEERCRED, SO_PEERGROUPS). The group database is
// read only to turn the admin group's name into a gid, never to ask who is
// in it: a user added to the group counts from the first process that
// carries it (a new login, newgrp, sg), and one removed stops counting as
// soon as its processes do not.
type authorizer struct {
	mu         sync.Mutex
	adminGroup string
	adminGID   int64     // -1: no such group (yet)
	looked     time.Time // when a missing group was last looked up
	self       uint32
	lookup     func(string) int64
}

// retryLookup is how often a missing admin group is looked up again, so a
// group created after the daemon started takes effect without a reload.
const retryLookup = 5 * time.Second

func newAuthorizer(adminGroup string) *authorizer {
	a := &authorizer{self: uint32(os.Geteuid()), lookup: lookupGID}
	a.setGroup(adminGroup)
	return a
}

// setGroup changes the admin group (SIGHUP).
func (a *authorizer) setGroup(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.adminGroup, a.adminGID, a.looked = name, a.lookup(name), time.Now()
}

// lookupGID resolves a group name or number; -1 when it does not exist.
func lookupGID(name string) int64 {
	if name == "" {
		return -1
	}
	if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		return int64(n)
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return -1
	}
	n, err := strconv.ParseInt(g.Gid, 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// gid is the admin group's gid, or -1.
func (a *authorizer) gid() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.adminGID < 0 && a.adminGroup != "" && time.Since(a.looked) >= retryLookup {
		a.adminGID, a.looked = a.lookup(a.adminGroup), time.Now()
	}
	return a.adminGID
}

// admin reports whether the peer is an admin.
func (a *authorizer) admin(p varlink.Peer) bool {
	if p.UID == 0 || p.UID == a.self {
		return true
	}
	gid := a.gid()
	return gid >= 0 && p.InGroup(uint32(gid))
}

func (a *authorizer) caller(p varlink.Peer) actors.Caller {
	return actors.Caller{UID: p.UID, Admin: a.admin(p)}
}
