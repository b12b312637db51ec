package actors

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/errdefs"
)

// requestFallback bounds a request whose context has no deadline: every
// wait has one.
const requestFallback = 30 * time.Second

// failed is an answer that can carry a refusal (*Result, *ImageResult…).
type failed interface{ failure() error }

func (r *Result) failure() error      { return r.Err }
func (r *ImageResult) failure() error { return r.Err }
func (r *AgentResult) failure() error { return r.Err }
func (r *StatsResult) failure() error { return r.Err }

// request sends msg to pid and waits for an answer of type T, for as long as
// ctx allows (requestFallback when it has no deadline); a cancelled ctx ends
// the wait at once. An answer that carries a refusal, or a *Result with one
// (what an actor that cannot serve msg answers), returns the refusal. A
// timeout, a cancellation and an actor that is gone come back classed
// (errdefs) with text that says what did not happen, for which VM, and what
// to do.
func request[T any](ctx context.Context, root *actor.RootContext, pid *actor.PID, msg any) (T, error) {
	var zero T
	timeout := requestFallback
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if err := ctx.Err(); err != nil || timeout <= 0 {
		return zero, requestError(msg, timeout, err)
	}
	f := root.RequestFuture(pid, msg, timeout)
	var res any
	var err error
	done := make(chan struct{})
	go func() {
		res, err = f.Result()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		// Stopping the future resolves it, so the goroutine above ends now;
		// a late answer goes to dead letters.
		root.Stop(f.PID())
		return zero, requestError(msg, timeout, ctx.Err())
	}
	if err != nil {
		return zero, requestError(msg, timeout, err)
	}
	if r, ok := res.(T); ok {
		if fr, ok := res.(failed); ok && fr.failure() != nil {
			return r, fr.failure()
		}
		return r, nil
	}
	if r, ok := res.(*Result); ok && r.Err != nil {
		return zero, r.Err
	}
	what, _ := describe(msg)
	return zero, errdefs.Newf(errdefs.ErrInternal, "%s: unexpected answer %T from %s", what, res, pid.Id)
}

// requestError classifies why a request got no answer.
func requestError(msg any, waited time.Duration, err error) error {
	what, vm := describe(msg)
	switch {
	case errors.Is(err, actor.ErrTimeout), err == nil, errors.Is(err, context.DeadlineExceeded):
		// err == nil: the deadline had passed before the request was sent.
		if vm != "" {
			return &Error{Kind: errdefs.ErrDeadlineExceeded, VM: vm, Msg: fmt.Sprintf(
				"%s: no answer within %s; it may still be in progress: see `paddock inspect %s`, and the daemon log (journalctl -u paddock) for what it waits on",
				what, roundWait(waited), vm)}
		}
		return errdefs.Newf(errdefs.ErrDeadlineExceeded,
			"%s: no answer within %s; the daemon is overloaded or stuck: see its log (journalctl -u paddock)", what, roundWait(waited))
	case errors.Is(err, context.Canceled):
		return errdefs.Newf(errdefs.ErrCanceled, "%s: canceled by the caller", what)
	case errors.Is(err, actor.ErrDeadLetter):
		if vm != "" {
			// The VM actor went away between routing and delivery: deleted.
			return &Error{Kind: ErrNotFound, VM: vm, Msg: fmt.Sprintf("VM %s was deleted meanwhile", vm)}
		}
		return errdefs.Newf(errdefs.ErrUnavailable, "%s: the actor that serves it is gone (is the daemon shutting down?)", what)
	}
	return errdefs.Newf(errdefs.ErrInternal, "%s: %w", what, err)
}

func roundWait(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(time.Second)
	}
	return d.Round(time.Millisecond)
}

// describe names a request for error text, and the VM it concerns.
func describe(msg any) (what, vm string) {
	if r, ok := msg.(vmRequest); ok {
		vm = r.ref()
	}
	if d, ok := msg.(interface{ describe() string }); ok {
		return d.describe(), vm
	}
	what = strings.TrimPrefix(fmt.Sprintf("%T", msg), "*actors.")
	if vm != "" {
		return what + " of VM " + vm, vm
	}
	return what + " request", vm
}

// Names of the requests served outside messages.go.
func (m *ExecVM) describe() string      { return "agent connection of VM " + m.ref() }
func (m *GetStats) describe() string    { return "stats" }
func (m *ListImages) describe() string  { return "image list" }
func (m *GetImage) describe() string    { return "lookup of image " + m.Ref }
func (m *RemoveImage) describe() string { return "removal of image " + m.Ref }
func (m *PruneImages) describe() string { return "image prune" }
