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
// uid and members of the admin group are admins; group membership is cached
// briefly because reading the group database on every call is slow.
type authorizer struct {
	mu         sync.Mutex
	adminGroup string
	adminGID   int64 // -1: no such group
	cache      map[uint32]authEntry
	self       uint32
}

type authEntry struct {
	admin   bool
	expires time.Time
}

const authTTL = 5 * time.Second

func newAuthorizer(adminGroup string) *authorizer {
	a := &authorizer{self: uint32(os.Geteuid())}
	a.setGroup(adminGroup)
	return a
}

// setGroup changes the admin group (SIGHUP) and forgets cached answers.
func (a *authorizer) setGroup(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.adminGroup, a.adminGID = name, lookupGID(name)
	a.cache = map[uint32]authEntry{}
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

func (a *authorizer) caller(p varlink.Peer) actors.Caller {
	if p.UID == 0 || p.UID == a.self {
		return actors.Caller{UID: p.UID, Admin: true}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.cache[p.UID]; ok && time.Now().Before(e.expires) {
		return actors.Caller{UID: p.UID, Admin: e.admin}
	}
	admin := a.adminGID >= 0 && (int64(p.GID) == a.adminGID || a.memberOf(p.UID))
	a.cache[p.UID] = authEntry{admin: admin, expires: time.Now().Add(authTTL)}
	return actors.Caller{UID: p.UID, Admin: admin}
}

func (a *authorizer) memberOf(uid uint32) bool {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return false
	}
	gids, err := u.GroupIds()
	if err != nil {
		return false
	}
	want := strconv.FormatInt(a.adminGID, 10)
	for _, g := range gids {
		if g == want {
			return true
		}
	}
	return false
}
