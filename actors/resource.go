package actors

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/state"
)

// step is one kind of host resource a VM holds (tap, disk, VMM), as a
// small table of what the resource child does with it. H is the handle:
// JSON-serializable, recorded in handles.json and mirrored in vm.json.
type step[H any] interface {
	// Plan names everything Acquire may make, before it runs: recorded as
	// intent, it is what a crash in the middle of Acquire is torn down from.
	Plan(b *bootPlan) H
	// Acquire makes the resource; on error whatever it left half-made is
	// released from the plan.
	Acquire(ctx context.Context, b *bootPlan, plan H) (H, error)
	// Release undoes the resource. Idempotent: "not found" is done.
	Release(ctx context.Context, h H, how releaseHow) error
	// Probe reports whether the resource h names is still there and ours.
	Probe(ctx context.Context, h H) (bool, error)
}

// watcher is a step whose resource can end by itself (a VMM exits): Watch
// blocks until it does, or ctx ends, and returns the message for the VM.
type watcher[H any] interface {
	Watch(ctx context.Context, h H) any
}

// adopter is a step whose live resource must be taken over after a daemon
// restart (a VMM's console copier).
type adopter[H any] interface {
	Adopt(ctx context.Context, h H) error
}

// releaseHow says how to undo a resource.
type releaseHow struct {
	// Grace is how long the resource may take to end by itself (a guest's
	// ACPI power-off) before it is ended by force; 0 forces at once.
	Grace time.Duration
	// Discard removes what would otherwise be kept (the VM's own disk).
	Discard bool
}

// Messages from the VM actor to a resource child. Each is answered with a
// plain message to the parent (never Respond): the VM actor does not wait.
type (
	acquireRes struct {
		gen  uint64
		plan *bootPlan
	}
	// releaseRes releases the recorded handle, else fallback (the vm.json
	// mirror or paddock's naming rule); an acquire in flight is cancelled
	// first and released when it has returned.
	releaseRes struct {
		gen      uint64
		how      releaseHow
		fallback any
	}
	// probeRes checks (and adopts, when live) the recorded handle.
	probeRes struct {
		gen      uint64
		fallback any
	}
	// hurryRes cuts an in-flight acquire or graceful release short.
	hurryRes struct{}
)

// Answers from a resource child to its VM actor.
type (
	acquired struct {
		gen    uint64
		kind   string
		handle any
		err    error
	}
	released struct {
		gen  uint64
		kind string
		err  error
	}
	probed struct {
		gen    uint64
		kind   string
		handle any // nil: nothing recorded
		live   bool
		err    error
	}
)

// resourceActor owns one host resource of a VM and runs its step. Host
// work runs in goroutines, so the mailbox stays free for hurry and release;
// handles.json is written only from the mailbox.
type resourceActor[H any] struct {
	kind    string
	step    step[H]
	book    *handleBook
	log     *slog.Logger
	timeout time.Duration // bound of one release

	busy     bool               // an acquire or release runs
	cancel   context.CancelFunc // of what runs
	queued   []any              // messages that wait for it
	stopWait context.CancelFunc // of the watch goroutine
}

// Internal completions, sent by the goroutines to the child itself.
type (
	acquireDone[H any] struct {
		gen uint64
		h   H
		err error
	}
	releaseDone struct {
		gen uint64
		err error
	}
)

func (r *resourceActor[H]) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		// After a restart (a panic) the resource may be live: follow it
		// again. The book, not memory, says so.
		if rec, ok := r.book.get(r.kind); ok && rec.State == "live" {
			if h, _, ok := r.recorded(nil); ok {
				r.watch(ctx, h)
			}
		}
	case *actor.Stopping, *actor.Restarting:
		r.unwatch()
		if r.cancel != nil {
			r.cancel()
		}
	case *crashRes:
		panic("injected panic in the " + r.kind + " actor")
	case *acquireRes, *releaseRes, *probeRes:
		if r.busy {
			if _, rel := m.(*releaseRes); rel && r.cancel != nil {
				r.cancel() // a release supersedes an acquire in flight
			}
			r.queued = append(r.queued, m)
			return
		}
		r.handle(ctx, m)
	case *hurryRes:
		if r.cancel != nil {
			r.cancel()
		}
	case *acquireDone[H]:
		r.acquireDone(ctx, m)
		r.next(ctx)
	case *releaseDone:
		r.releaseDone(ctx, m)
		r.next(ctx)
	}
}

func (r *resourceActor[H]) next(ctx actor.Context) {
	r.busy, r.cancel = false, nil
	for len(r.queued) > 0 && !r.busy {
		m := r.queued[0]
		r.queued = r.queued[1:]
		r.handle(ctx, m)
	}
}

func (r *resourceActor[H]) handle(ctx actor.Context, m any) {
	switch m := m.(type) {
	case *acquireRes:
		r.acquire(ctx, m)
	case *releaseRes:
		r.release(ctx, m)
	case *probeRes:
		r.probe(ctx, m)
	}
}

func (r *resourceActor[H]) acquire(ctx actor.Context, m *acquireRes) {
	plan := r.step.Plan(m.plan)
	if err := r.book.put(r.kind, "intent", plan); err != nil {
		ctx.Send(ctx.Parent(), &acquired{gen: m.gen, kind: r.kind, err: err})
		return
	}
	failpoint("acquire-" + r.kind + "-intent")
	cctx, cancel := context.WithDeadline(context.Background(), m.plan.deadline)
	r.busy, r.cancel = true, cancel
	self, root := ctx.Self(), ctx.ActorSystem().Root
	go func() {
		defer cancel()
		h, err := r.step.Acquire(cctx, m.plan, plan)
		root.Send(self, &acquireDone[H]{gen: m.gen, h: h, err: err})
	}()
}

func (r *resourceActor[H]) acquireDone(ctx actor.Context, m *acquireDone[H]) {
	if m.err != nil {
		// The plan stays recorded: what Acquire left half-made is torn down
		// from it by the rollback that follows.
		ctx.Send(ctx.Parent(), &acquired{gen: m.gen, kind: r.kind, err: m.err})
		return
	}
	if err := r.book.put(r.kind, "live", m.h); err != nil {
		ctx.Send(ctx.Parent(), &acquired{gen: m.gen, kind: r.kind, handle: m.h, err: err})
		return
	}
	failpoint("acquire-" + r.kind + "-live")
	// The answer first: the VM then knows the handle before it can hear
	// of its end.
	ctx.Send(ctx.Parent(), &acquired{gen: m.gen, kind: r.kind, handle: m.h})
	r.watch(ctx, m.h)
}

// recorded is the handle in handles.json, else fallback.
func (r *resourceActor[H]) recorded(fallback any) (H, bool, bool) {
	var h H
	if rec, ok := r.book.get(r.kind); ok {
		if err := json.Unmarshal(rec.Payload, &h); err == nil {
			return h, true, true
		}
		r.log.Warn("unreadable handle record; using the runtime mirror", "kind", r.kind)
	}
	if f, ok := fallback.(H); ok {
		return f, false, true
	}
	return h, false, false
}

func (r *resourceActor[H]) release(ctx actor.Context, m *releaseRes) {
	r.unwatch()
	h, _, ok := r.recorded(m.fallback)
	if !ok {
		ctx.Send(ctx.Parent(), &released{gen: m.gen, kind: r.kind})
		return
	}
	// Release ignores the caller's cancellation and has its own bound:
	// leaking a resource is worse than a slow reply. Hurry cuts a grace
	// period short; the release is then redone by force.
	bound := r.timeout + m.how.Grace
	gctx, hurry := context.WithCancel(context.Background())
	r.busy, r.cancel = true, hurry
	self, root := ctx.Self(), ctx.ActorSystem().Root
	go func() {
		defer hurry()
		rctx, cancel := context.WithTimeout(gctx, bound)
		err := r.step.Release(rctx, h, m.how)
		cancel()
		if gctx.Err() != nil && m.how.Grace > 0 {
			fctx, cancel := context.WithTimeout(context.Background(), r.timeout)
			err = r.step.Release(fctx, h, releaseHow{Discard: m.how.Discard})
			cancel()
		}
		root.Send(self, &releaseDone{gen: m.gen, err: err})
	}()
}

func (r *resourceActor[H]) releaseDone(ctx actor.Context, m *releaseDone) {
	if m.err != nil {
		ctx.Send(ctx.Parent(), &released{gen: m.gen, kind: r.kind, err: fmt.Errorf("release %s: %w", r.kind, m.err)})
		return
	}
	failpoint("release-" + r.kind)
	if err := r.book.drop(r.kind); err != nil {
		ctx.Send(ctx.Parent(), &released{gen: m.gen, kind: r.kind, err: err})
		return
	}
	ctx.Send(ctx.Parent(), &released{gen: m.gen, kind: r.kind})
}

// probe checks the recorded handle; a live one is adopted and watched.
// Probing reads /proc and the like: it is quick and runs in the mailbox.
func (r *resourceActor[H]) probe(ctx actor.Context, m *probeRes) {
	h, _, ok := r.recorded(m.fallback)
	if !ok {
		ctx.Send(ctx.Parent(), &probed{gen: m.gen, kind: r.kind})
		return
	}
	pctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	live, err := r.step.Probe(pctx, h)
	if err == nil && live {
		if ad, ok := r.step.(adopter[H]); ok {
			if err = ad.Adopt(pctx, h); err != nil {
				live = false
			}
		}
	}
	ctx.Send(ctx.Parent(), &probed{gen: m.gen, kind: r.kind, handle: h, live: live, err: err})
	if live {
		r.watch(ctx, h)
	}
}

// watch follows a live resource that can end by itself, until released.
func (r *resourceActor[H]) watch(ctx actor.Context, h H) {
	w, ok := r.step.(watcher[H])
	if !ok {
		return
	}
	r.unwatch()
	wctx, cancel := context.WithCancel(context.Background())
	r.stopWait = cancel
	parent, root := ctx.Parent(), ctx.ActorSystem().Root
	go func() {
		if msg := w.Watch(wctx, h); msg != nil && wctx.Err() == nil {
			root.Send(parent, msg)
		}
	}()
}

func (r *resourceActor[H]) unwatch() {
	if r.stopWait != nil {
		r.stopWait()
		r.stopWait = nil
	}
}

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

// put records kind's handle in state st ("intent" or "live").
func (b *handleBook) put(kind, st string, payload any) error {
	raw, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("encode %s handle: %w", kind, err)
	}
	return b.update(kind, &state.Handle{Kind: kind, ID: b.id, State: st, Payload: raw})
}

func (b *handleBook) drop(kind string) error { return b.update(kind, nil) }

func (b *handleBook) update(kind string, h *state.Handle) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	items := b.h.Items[:0:0]
	for _, it := range b.h.Items {
		if it.Kind != kind {
			items = append(items, it)
		}
	}
	if h != nil {
		items = append(items, *h)
	}
	if len(items) == len(b.h.Items) && h == nil {
		return nil // nothing recorded: nothing to write
	}
	b.h.Items = items
	if err := b.store.SaveHandles(b.id, b.h); err != nil {
		return fmt.Errorf("record %s handle: %w", kind, err)
	}
	return nil
}

func (b *handleBook) empty() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.h.Items) == 0
}
