package actors

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/state"
)

// answerer answers every user message with what answer returns; nil means
// never answer. Each message it gets is reported on got.
type answerer struct {
	answer func(msg any) any
	got    chan any
}

func (a *answerer) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case actor.SystemMessage, actor.AutoReceiveMessage:
	default:
		if a.got != nil {
			a.got <- m
		}
		if r := a.answer(m); r != nil {
			ctx.Respond(r)
		}
	}
}

type oddMessage struct{}

func isPing(m any) bool { _, ok := m.(*Ping); return ok }

func TestRequest(t *testing.T) {
	sys := actor.NewActorSystem()
	t.Cleanup(sys.Shutdown)
	refusal := &Error{Kind: ErrInvalidState, VM: "web1", Status: state.StatusRunning, Msg: "VM web1 is running"}
	spawn := func(answer func(any) any) (*actor.PID, chan any) {
		got := make(chan any, 4)
		return sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return &answerer{answer: answer, got: got} })), got
	}
	dead, _ := spawn(func(any) any { return nil })
	if err := sys.Root.StopFuture(dead).Wait(); err != nil {
		t.Fatal(err)
	}

	type outcome struct {
		class error // nil: success
		err   error // when set, errors.Is must hold
		text  []string
	}
	for _, tc := range []struct {
		name   string
		answer func(any) any // nil: the target is a stopped actor
		msg    any
		ctx    func(t *testing.T, got chan any) context.Context
		call   func(ctx context.Context, pid *actor.PID, msg any) (any, error) // nil: request[*Result]
		want   outcome
		unsent bool // the request must not reach the actor
	}{
		{
			name:   "answer of the asked type",
			answer: func(any) any { return &Result{VM: &state.VM{Name: "web1"}} },
			msg:    &GetVM{Ref: "web1"},
			call: func(ctx context.Context, pid *actor.PID, msg any) (any, error) {
				r, err := request[*Result](ctx, sys.Root, pid, msg)
				if err == nil && r.VM.Name != "web1" {
					return nil, errors.New("wrong answer: " + r.VM.Name)
				}
				return r, err
			},
		},
		{
			name:   "value answer",
			answer: func(any) any { return []string{"web1"} },
			msg:    &imageUsers{Digest: "sha256:1"},
			call: func(ctx context.Context, pid *actor.PID, msg any) (any, error) {
				return request[[]string](ctx, sys.Root, pid, msg)
			},
		},
		{
			name:   "refusal inside the answer",
			answer: func(any) any { return &Result{Err: refusal} },
			msg:    &StartVM{Ref: "web1"},
			want:   outcome{class: errdefs.ErrFailedPrecondition, err: refusal, text: []string{"VM web1 is running"}},
		},
		{
			name:   "refusal as a *Result to another request type",
			answer: func(any) any { return &Result{Err: &Error{Kind: ErrNotYet, Msg: "import: not implemented yet"}} },
			msg:    &ListImages{},
			call: func(ctx context.Context, pid *actor.PID, msg any) (any, error) {
				return request[*ImageResult](ctx, sys.Root, pid, msg)
			},
			want: outcome{class: errdefs.ErrNotImplemented, err: ErrNotYet, text: []string{"import: not implemented yet"}},
		},
		{
			name:   "unexpected answer",
			answer: func(any) any { return "surprise" },
			msg:    &CountVMs{},
			call: func(ctx context.Context, pid *actor.PID, msg any) (any, error) {
				return request[*Subscribed](ctx, sys.Root, pid, msg)
			},
			want: outcome{class: errdefs.ErrInternal, text: []string{"VM count: unexpected answer string"}},
		},
		{
			name:   "no answer before the caller's deadline",
			answer: func(any) any { return nil },
			msg:    &StartVM{Ref: "web1"},
			ctx:    deadlineIn(300 * time.Millisecond),
			want:   outcome{class: errdefs.ErrDeadlineExceeded, text: []string{"start of VM web1: no answer within", "paddock inspect web1"}},
		},
		{
			name:   "no answer, not about a VM",
			answer: func(any) any { return nil },
			msg:    &CountVMs{},
			ctx:    deadlineIn(300 * time.Millisecond),
			want:   outcome{class: errdefs.ErrDeadlineExceeded, text: []string{"VM count: no answer within", "journalctl -u paddock"}},
		},
		{
			name:   "deadline passed before sending",
			answer: func(any) any { return &Result{} },
			unsent: true,
			msg:    &StopVM{Ref: "web2"},
			ctx:    deadlineIn(-time.Second),
			want:   outcome{class: errdefs.ErrDeadlineExceeded, text: []string{"stop of VM web2"}},
		},
		{
			// No deadline: only honouring the cancellation ends the wait
			// before requestFallback, and then the class would be wrong.
			name:   "caller cancels while waiting",
			answer: func(any) any { return nil },
			msg:    &DeleteVM{Ref: "web3"},
			ctx: func(t *testing.T, got chan any) context.Context {
				ctx, cancel := context.WithCancel(context.Background())
				t.Cleanup(cancel)
				go func() { <-got; cancel() }()
				return ctx
			},
			want: outcome{class: errdefs.ErrCanceled, text: []string{"deletion of VM web3: canceled by the caller"}},
		},
		{
			name: "VM actor gone",
			msg:  &GetVM{Ref: "web4"},
			want: outcome{class: errdefs.ErrNotFound, err: ErrNotFound, text: []string{"VM web4 was deleted meanwhile"}},
		},
		{
			name: "other actor gone",
			msg:  &oddMessage{},
			want: outcome{class: errdefs.ErrUnavailable, text: []string{"oddMessage request: the actor that serves it is gone"}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pid, got := dead, make(chan any, 1)
			if tc.answer != nil {
				pid, got = spawn(tc.answer)
				t.Cleanup(func() { sys.Root.Stop(pid) })
			}
			ctx := context.Background()
			if tc.ctx != nil {
				ctx = tc.ctx(t, got)
			} else {
				c, cancel := context.WithTimeout(ctx, time.Minute)
				t.Cleanup(cancel)
				ctx = c
			}
			call := tc.call
			if call == nil {
				call = func(ctx context.Context, pid *actor.PID, msg any) (any, error) {
					return request[*Result](ctx, sys.Root, pid, msg)
				}
			}
			_, err := call(ctx, pid, tc.msg)
			if tc.unsent {
				// Probe: the mailbox is in order, so once the probe is
				// answered, an earlier request would have been seen.
				pctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if _, perr := request[*Result](pctx, sys.Root, pid, &Ping{}); perr != nil {
					t.Fatal(perr)
				}
				if m := <-got; !isPing(m) {
					t.Errorf("the actor got %T before the probe", m)
				}
			}
			if tc.want.class == nil {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			if c := errdefs.Class(err); c != tc.want.class {
				t.Errorf("class %v (%v), want %v", c, err, tc.want.class)
			}
			if tc.want.err != nil && !errors.Is(err, tc.want.err) {
				t.Errorf("%v is not %v", err, tc.want.err)
			}
			for _, s := range tc.want.text {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("%q does not say %q", err, s)
				}
			}
			if strings.Contains(err.Error(), "future:") || strings.Contains(err.Error(), "*actors.") {
				t.Errorf("%q shows actor internals to users", err)
			}
		})
	}
}

// A timeout names the VM in the error, so the API reply carries it.
func TestRequestTimeoutNamesVM(t *testing.T) {
	err := requestError(&StartVM{Ref: "web1"}, 2*time.Minute, actor.ErrTimeout)
	var ae *Error
	if !errors.As(err, &ae) || ae.VM != "web1" || !errdefs.IsDeadlineExceeded(err) {
		t.Fatalf("requestError = %#v", err)
	}
	if !strings.Contains(err.Error(), "within 2m0s") {
		t.Errorf("%q does not say how long it waited", err)
	}
}

// deadlineIn is a test case's context with a deadline d from now (d < 0: passed).
func deadlineIn(d time.Duration) func(*testing.T, chan any) context.Context {
	return func(t *testing.T, _ chan any) context.Context {
		ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(d))
		t.Cleanup(cancel)
		return ctx
	}
}
