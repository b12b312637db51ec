package actors

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/state"
)

// Resource kinds, one child actor each.
const (
	KindTap   = "tap"
	KindDisk  = "disk"
	KindVMM   = "vmm"
	KindAgent = "agent"
)

// handleBook is a VM's handles.json: the resource children record intent
// before they create and clear the entry after they release. It is shared
// by one VM's children, hence the lock.
type handleBook struct {
	mu    sync.Mutex
	store *state.Store
	id    string
	h     *state.Handles
}

func openBook(store *state.Store, id string) (*handleBook, error) {
	h, err := store.LoadHandles(id)
	if err != nil {
		return &handleBook{store: store, id: id, h: &state.Handles{}}, err
	}
	return &handleBook{store: store, id: id, h: h}, nil
}

func (b *handleBook) get(kind string) (state.Handle, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, it := range b.h.Items {
		if it.Kind == kind {
			return it, true
		}
	}
	return state.Handle{}, false
}

func (b *handleBook) put(kind, st string, payload any) error {
	raw, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("encode %s handle: %w", kind, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	items := b.h.Items[:0:0]
	for _, it := range b.h.Items {
		if it.Kind != kind {
			items = append(items, it)
		}
	}
	b.h.Items = append(items, state.Handle{Kind: kind, ID: b.id, State: st, Payload: raw})
	return b.store.SaveHandles(b.id, b.h)
}

func (b *handleBook) drop(kind string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	items := b.h.Items[:0:0]
	for _, it := range b.h.Items {
		if it.Kind != kind {
			items = append(items, it)
		}
	}
	b.h.Items = items
	return b.store.SaveHandles(b.id, b.h)
}

func (b *handleBook) empty() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.h.Items) == 0
}

// Messages to resource children; answered with *resourceDone.
type (
	// acquireRes records intent with plan, runs create, records what it made.
	acquireRes struct {
		plan   any
		create func(ctx context.Context) (any, error)
	}
	// releaseRes tears down the recorded handle and clears it.
	releaseRes struct {
		teardown func(ctx context.Context, h state.Handle, found bool) error
	}
	resourceDone struct {
		handle any
		err    error
	}
)

// resourceActor owns one host resource of a VM. It holds no truth of its
// own: what it made is in handles.json before and after each step, so a
// restarted actor (or daemon) finds it there.
type resourceActor struct {
	kind    string
	book    *handleBook
	timeout time.Duration
}

func (r *resourceActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *acquireRes:
		ctx.Respond(r.acquire(m))
	case *releaseRes:
		ctx.Respond(r.release(m))
	}
}

func (r *resourceActor) acquire(m *acquireRes) *resourceDone {
	if err := r.book.put(r.kind, "intent", m.plan); err != nil {
		return &resourceDone{err: err}
	}
	failpoint("acquire-" + r.kind + "-intent")
	cctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	h, err := m.create(cctx)
	if err != nil {
		// The plan stays recorded: whatever create left half-made is torn
		// down from it by the rollback that follows.
		return &resourceDone{err: fmt.Errorf("%s: %w", r.kind, err)}
	}
	if err := r.book.put(r.kind, "live", h); err != nil {
		return &resourceDone{handle: h, err: err}
	}
	failpoint("acquire-" + r.kind + "-live")
	return &resourceDone{handle: h}
}

func (r *resourceActor) release(m *releaseRes) *resourceDone {
	h, found := r.book.get(r.kind)
	// Teardown ignores the caller's cancellation and has its own bound:
	// leaking a resource is worse than a slow reply.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(context.Background()), r.timeout)
	defer cancel()
	if err := m.teardown(cctx, h, found); err != nil {
		return &resourceDone{err: fmt.Errorf("release %s: %w", r.kind, err)}
	}
	failpoint("release-" + r.kind)
	if found {
		if err := r.book.drop(r.kind); err != nil {
			return &resourceDone{err: err}
		}
	}
	return &resourceDone{}
}
