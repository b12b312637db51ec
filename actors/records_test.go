package actors

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/state"
)

// Get and List read the Manager's published records, not its mailbox: a
// caller must still never read older state than it was told about, see
// only its own VMs, and get a copy it may change.
func TestGetReadsPublishedRecords(t *testing.T) {
	dir := t.TempDir()
	imagetest.Seed(t, dir, "alpine")
	h := start(t, dir)
	if h.sys.recs.load() == nil {
		t.Fatal("Start returned before the Manager published its records: Get would take the mailbox path")
	}
	alice, bob := Caller{UID: 1000}, Caller{UID: 1001}
	vm := h.mustCreate(t, alice, "web")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// view is Get through ViewVM: a copy of the record it was made from.
	view := func(c Caller, ref string, key any) (*state.VM, error) {
		v, err := h.sys.ViewVM(ctx, c, ref, key, func(vm *state.VM) (any, error) { cp := *vm; return &cp, nil })
		if err != nil {
			return nil, err
		}
		return v.(*state.VM), nil
	}

	// Readers hammer the records while the VM changes (for -race).
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if got, err := h.sys.GetVM(ctx, alice, vm.ID); err == nil && got.ID != vm.ID {
					t.Errorf("Get by id answered VM %s", got.ID)
				}
				if _, err := h.sys.ListVMs(ctx, alice); err != nil {
					t.Errorf("List: %v", err)
				}
				if got, err := view(alice, vm.ID, "k"); err == nil && got.ID != vm.ID {
					t.Errorf("a view by id answered VM %s", got.ID)
				}
			}
		}()
	}
	var once sync.Once
	stopReaders := func() { once.Do(func() { close(stop); wg.Wait() }) }
	defer stopReaders()

	steps := []struct {
		name string
		msg  any
		want func(*state.VM) bool
	}{
		{"start", &StartVM{Caller: alice, Ref: "web"}, func(v *state.VM) bool { return v.Status == state.StatusRunning }},
		{"set", &SetVM{Caller: alice, Ref: "web", AutoStop: ptr("45m")}, func(v *state.VM) bool { return v.Spec.AutoStop == "45m0s" }},
		{"stop", &StopVM{Caller: alice, Ref: "web"}, func(v *state.VM) bool { return v.Status == state.StatusStopped }},
	}
	for _, s := range steps {
		if _, err := h.sys.Request(ctx, s.msg); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		// Straight after the answer, by name, id and id prefix.
		for _, ref := range []string{"web", vm.ID, vm.ID[:6]} {
			got, err := h.sys.GetVM(ctx, alice, ref)
			if err != nil || !s.want(got) {
				t.Fatalf("Get %q right after %s: %+v %v", ref, s.name, got, err)
			}
			// A view made of an earlier record is never answered.
			if got, err = view(alice, ref, "k"); err != nil || !s.want(got) {
				t.Fatalf("view of %q right after %s: %+v %v", ref, s.name, got, err)
			}
		}
		list, err := h.sys.ListVMs(ctx, alice)
		if err != nil || len(list) != 1 || !s.want(&list[0]) {
			t.Fatalf("List right after %s: %+v %v", s.name, list, err)
		}
	}

	// Another user's VM is not found, with the very error a missing one gets.
	_, errBob := h.sys.GetVM(ctx, bob, "web")
	_, errNone := h.sys.GetVM(ctx, bob, "nope")
	if !errors.Is(errBob, ErrNotFound) || !errors.Is(errNone, ErrNotFound) {
		t.Fatalf("bob's Get of alice's VM: %v; of a missing one: %v", errBob, errNone)
	}
	if list, err := h.sys.ListVMs(ctx, bob); err != nil || len(list) != 0 {
		t.Fatalf("bob lists %+v %v", list, err)
	}
	_, errBob = h.sys.ViewVM(ctx, bob, "web", "k", func(*state.VM) (any, error) { t.Fatal("bob was given a view of alice's VM"); return nil, nil })
	if !errors.Is(errBob, ErrNotFound) || errBob.Error() != `no VM named "web"` {
		t.Fatalf("bob's view of alice's VM: %v, want as for a missing one", errBob)
	}
	// A view is made once per record and key. The readers stop first: their
	// views by key "k" would take the one cached place between two calls.
	stopReaders()
	made := 0
	for _, key := range []string{"a", "a", "b", "b"} {
		if _, err := h.sys.ViewVM(ctx, alice, "web", key, func(*state.VM) (any, error) { made++; return nil, nil }); err != nil {
			t.Fatal(err)
		}
	}
	if made != 2 {
		t.Fatalf("views made for keys a, a, b, b of one record: %d, want 2", made)
	}

	// A caller's copy is its own.
	got, _ := h.sys.GetVM(ctx, alice, "web")
	got.Status, got.Spec.CPUs = state.StatusError, 99
	if again, _ := h.sys.GetVM(ctx, alice, "web"); again.Status != state.StatusStopped || again.Spec.CPUs == 99 {
		t.Fatalf("changing an answer changed the record: %+v", again)
	}

	// Deleted: gone for Get and List as soon as the delete is answered,
	// and the name is free again.
	if _, err := h.sys.Request(ctx, &DeleteVM{Caller: alice, Ref: "web"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.sys.GetVM(ctx, alice, vm.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get right after delete: %v", err)
	}
	if _, err := view(alice, vm.ID, "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("view right after delete: %v", err)
	}
	if list, _ := h.sys.ListVMs(ctx, alice); len(list) != 0 {
		t.Fatalf("List right after delete: %+v", list)
	}
	again := h.mustCreate(t, alice, "web")
	if got, err := h.sys.GetVM(ctx, alice, "web"); err != nil || got.ID != again.ID {
		t.Fatalf("Get of the new VM under the old name: %+v %v", got, err)
	}
	if got, err := view(alice, "web", "k"); err != nil || got.ID != again.ID {
		t.Fatalf("view of the new VM under the old name: %+v %v", got, err)
	}
}
