package daemon

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/config"
	"github.com/paddock-vm/paddock/varlink"
)

// Admin membership is the connecting process's own groups, not what the
// group database says about its uid: the same uid is judged anew by each
// connection's groups, in any order.
func TestAdminFromPeerGroups(t *testing.T) {
	const adminGID = 4242
	a := &authorizer{self: uint32(os.Geteuid()) + 1, lookup: func(string) int64 { return adminGID }}
	a.setGroup("paddock-admin")
	cases := []struct {
		name  string
		peer  varlink.Peer
		admin bool
	}{
		{"root", varlink.Peer{UID: 0, GID: 1}, true},
		{"the daemon's own uid", varlink.Peer{UID: a.self, GID: 1}, true},
		{"admin group as primary group", varlink.Peer{UID: 1001, GID: adminGID}, true},
		{"admin group as a supplementary group", varlink.Peer{UID: 1001, GID: 100, Groups: []uint32{27, adminGID}}, true},
		{"same uid without it, right after", varlink.Peer{UID: 1001, GID: 100, Groups: []uint32{27}}, false},
		{"same uid with it again", varlink.Peer{UID: 1001, GID: adminGID}, true},
		{"no groups at all", varlink.Peer{UID: 1002, GID: 1002}, false},
		{"a gid one off", varlink.Peer{UID: 1002, GID: adminGID + 1, Groups: []uint32{adminGID - 1}}, false},
	}
	for _, tc := range cases {
		if got := a.admin(tc.peer); got != tc.admin {
			t.Errorf("%s: admin = %v, want %v", tc.name, got, tc.admin)
		}
		if c := a.caller(tc.peer); c.Admin != tc.admin || c.UID != tc.peer.UID {
			t.Errorf("%s: caller %+v", tc.name, c)
		}
	}
}

// A missing admin group makes nobody an admin but root and the daemon, and
// is looked up again (not on every call) so a group made later counts.
func TestMissingAdminGroupIsLookedUpAgain(t *testing.T) {
	lookups, gid := 0, int64(-1)
	a := &authorizer{self: 999, lookup: func(string) int64 { lookups++; return gid }}
	a.setGroup("later")
	member := varlink.Peer{UID: 1001, GID: 100, Groups: []uint32{777}}
	for range 3 {
		if a.admin(member) {
			t.Fatal("admin by a group that does not exist")
		}
	}
	if lookups != 1 {
		t.Fatalf("%d lookups within %s", lookups, retryLookup)
	}
	gid = 777
	a.looked = time.Now().Add(-retryLookup)
	if !a.admin(member) || lookups != 2 {
		t.Fatalf("group made later not seen (%d lookups)", lookups)
	}
	if !a.admin(varlink.Peer{UID: 0}) {
		t.Fatal("root is always an admin")
	}
}

// A refused connection is told which limit, and the key that sets it.
func TestRefusedNamesTheLimit(t *testing.T) {
	c := config.Default().API
	for _, tc := range []struct {
		cause error
		want  string
	}{
		{fmt.Errorf("%w: uid 7 has 32 open", varlink.ErrPerUIDLimit), "api.max_connections_per_user = 32"},
		{varlink.ErrUserConnLimit, "api.admin_reserved_connections = 16"},
		{varlink.ErrConnLimit, "api.max_connections = 256"},
	} {
		e := refused(c)(varlink.Peer{UID: 7}, tc.cause)
		if e.Name != api.ErrUnavailable || !strings.Contains(e.Error(), tc.want) || !strings.Contains(e.Error(), tc.cause.Error()) {
			t.Errorf("%v: %s %s", tc.cause, e.Name, e.Error())
		}
	}
}
