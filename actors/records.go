package actors

import (
	"maps"
	"sync/atomic"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/state"
)

// entry is one VM as the Manager knows it. Its record is an immutable value
// swapped atomically by the VM's own actor before that actor answers
// anyone (publish), so a reader outside both mailboxes never sees a VM older
// than what its caller was told.
type entry struct {
	pid  *actor.PID
	rec  atomic.Pointer[state.VM]
	gone atomic.Bool // deleted; the Manager drops the entry when told
	key  nameKey     // under which byName holds it: the Manager's alone
	// view is what a reader last made of rec (ViewVM), kept with the
	// entry so that it goes when the entry does.
	view atomic.Pointer[view]
}

// view is a value made from one record: good only while that record is
// the published one, and for the same key.
type view struct {
	rec *state.VM
	key any
	val any
}

func newEntry(pid *actor.PID, vm state.VM) *entry {
	e := &entry{pid: pid}
	e.rec.Store(&vm)
	return e
}

// vm is the entry's current record; callers must not modify what it points
// to (copy first).
func (e *entry) vm() *state.VM { return e.rec.Load() }

// viewOf returns derive(rec) for the entry's current record, made once per
// record and key: a record is immutable, so a view of the record being
// published is never older than what its callers were told.
func (e *entry) viewOf(key any, derive func(*state.VM) (any, error)) (any, error) {
	rec := e.vm()
	if v := e.view.Load(); v != nil && v.rec == rec && v.key == key {
		return v.val, nil
	}
	val, err := derive(rec)
	if err != nil {
		return nil, err
	}
	e.view.Store(&view{rec: rec, key: key, val: val})
	return val, nil
}

// publish makes vm the entry's record: what Get and List answer from now on.
func (e *entry) publish(vm state.VM) { e.rec.Store(&vm) }

// recordSet is the index of every VM: by id, and by name in its owner's
// namespace. The Manager owns the live maps; readers get a copy that is
// never modified (swapped on create and delete only: status and spec
// changes swap an entry's record, not the index).
type recordSet struct {
	byID   map[string]*entry
	byName map[nameKey]string
}

// records is where the Manager publishes its index for Get and List
// callers, who then need no actor round trip. Nil until the Manager has
// loaded every record (Start waits for that).
type records struct{ cur atomic.Pointer[recordSet] }

func (r *records) load() *recordSet {
	if r == nil {
		return nil
	}
	return r.cur.Load()
}

// swap publishes a copy of the Manager's live index.
func (r *records) swap(byID map[string]*entry, byName map[nameKey]string) {
	if r != nil {
		r.cur.Store(&recordSet{byID: maps.Clone(byID), byName: maps.Clone(byName)})
	}
}
