package varlink

import (
	"errors"
	"testing"
)

func TestLimits(t *testing.T) {
	type step struct {
		uid   uint32
		admin bool
		open  bool  // false: release one of this uid's connections
		want  error // for open
	}
	const alice, bob, carol, root = 1001, 1002, 1003, 0
	cases := []struct {
		name                 string
		max, perUID, reserve int
		steps                []step
	}{
		{"a user stops at the per-uid cap, others still get in", 10, 2, 0, []step{
			{alice, false, true, nil}, {alice, false, true, nil}, {alice, false, true, ErrPerUIDLimit},
			{bob, false, true, nil},
		}},
		{"a release gives the slot back", 10, 1, 0, []step{
			{alice, false, true, nil}, {alice, false, true, ErrPerUIDLimit},
			{alice, false, false, nil}, {alice, false, true, nil},
		}},
		{"users together stop before the admins' reserve", 4, 2, 2, []step{
			{alice, false, true, nil}, {bob, false, true, nil}, {carol, false, true, ErrUserConnLimit},
			{root, true, true, nil}, {root, true, true, nil}, {root, true, true, ErrConnLimit},
		}},
		{"admins have no per-uid cap, only the total", 3, 1, 1, []step{
			{root, true, true, nil}, {root, true, true, nil}, {alice, false, true, nil}, {root, true, true, ErrConnLimit},
		}},
		{"admins may use the users' slots too", 3, 1, 1, []step{
			{root, true, true, nil}, {root, true, true, nil}, {root, true, true, nil}, {alice, false, true, ErrConnLimit},
		}},
		{"no per-uid cap means the total", 2, 0, 0, []step{
			{alice, false, true, nil}, {alice, false, true, nil}, {alice, false, true, ErrConnLimit},
		}},
		{"a reserve larger than the total leaves users nothing", 2, 5, 9, []step{
			{alice, false, true, ErrUserConnLimit}, {root, true, true, nil},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := newLimits(tc.max, tc.perUID, tc.reserve)
			var open []step // admitted and not released
			for i, s := range tc.steps {
				if !s.open {
					l.release(s.uid, s.admin)
					for j, o := range open {
						if o.uid == s.uid {
							open = append(open[:j], open[j+1:]...)
							break
						}
					}
					continue
				}
				err := l.admit(s.uid, s.admin)
				if (err == nil) != (s.want == nil) || s.want != nil && !errors.Is(err, s.want) {
					t.Fatalf("step %d (uid %d admin %v): err = %v, want %v", i, s.uid, s.admin, err, s.want)
				}
				if err == nil {
					open = append(open, s)
				}
			}
			// Releasing every open connection leaves nothing counted.
			for _, o := range open {
				l.release(o.uid, o.admin)
			}
			if l.total != 0 || l.users != 0 || len(l.byUID) != 0 {
				t.Fatalf("after releasing all: total %d users %d by uid %v", l.total, l.users, l.byUID)
			}
		})
	}
}
