package errdefs

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

type detail struct{ msg string }

func (d *detail) Error() string { return d.msg }

func TestClass(t *testing.T) {
	sentinel := New(ErrNotFound, "vm not found")
	plain := errors.New("disk full")
	for _, tc := range []struct {
		name      string
		err       error
		class     error
		text      string
		is        func(error) bool
		stillIs   error // errors.Is must still find this along the chain
		stillAsOK bool  // errors.As must still find the *detail
	}{
		{"nil", nil, nil, "", nil, nil, false},
		{"unclassed is internal", plain, ErrInternal, "disk full", IsInternal, plain, false},
		{"sentinel keeps its text", sentinel, ErrNotFound, "vm not found", IsNotFound, sentinel, false},
		{"wrapped sentinel", fmt.Errorf("get web1: %w", sentinel), ErrNotFound, "get web1: vm not found", IsNotFound, sentinel, false},
		{"Wrap keeps the text", Wrap(ErrUnavailable, plain), ErrUnavailable, "disk full", IsUnavailable, plain, false},
		{"Wrap keeps As", Wrap(ErrInvalidArgument, &detail{"bad entry"}), ErrInvalidArgument, "bad entry", IsInvalidArgument, nil, true},
		{"Newf with %w", Newf(ErrPermissionDenied, "vm %s: %w", "web1", plain), ErrPermissionDenied, "vm web1: disk full", IsPermissionDenied, plain, false},
		{"outermost class wins", Wrap(ErrFailedPrecondition, fmt.Errorf("start: %w", New(ErrAlreadyExists, "vmm running"))), ErrFailedPrecondition, "start: vmm running", IsFailedPrecondition, nil, false},
		{"context deadline", fmt.Errorf("ping: %w", context.DeadlineExceeded), ErrDeadlineExceeded, "ping: context deadline exceeded", IsDeadlineExceeded, context.DeadlineExceeded, false},
		{"context canceled", fmt.Errorf("ping: %w", context.Canceled), ErrCanceled, "ping: context canceled", IsCanceled, context.Canceled, false},
		{"class itself", ErrAlreadyExists, ErrAlreadyExists, "already exists", IsAlreadyExists, nil, false},
		{"joined: first class", errors.Join(plain, New(ErrNotImplemented, "later")), ErrNotImplemented, "disk full\nlater", IsNotImplemented, plain, false},
		{"deadline class", New(ErrDeadlineExceeded, "start of VM web1: no answer"), ErrDeadlineExceeded, "start of VM web1: no answer", IsDeadlineExceeded, nil, false},
		{"canceled class", New(ErrCanceled, "gave up"), ErrCanceled, "gave up", IsCanceled, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Class(tc.err); got != tc.class {
				t.Fatalf("Class = %v, want %v", got, tc.class)
			}
			if tc.err == nil {
				if Wrap(ErrInternal, nil) != nil {
					t.Fatal("Wrap(nil) is not nil")
				}
				return
			}
			if tc.err.Error() != tc.text {
				t.Errorf("text %q, want %q", tc.err.Error(), tc.text)
			}
			if !tc.is(tc.err) {
				t.Errorf("Is helper says no for %v", tc.err)
			}
			if tc.class != ErrInternal && IsInternal(tc.err) {
				t.Errorf("IsInternal says yes for a %v error", tc.class)
			}
			if !errors.Is(tc.err, tc.class) && tc.class != ErrInternal && tc.class != ErrDeadlineExceeded && tc.class != ErrCanceled {
				t.Errorf("errors.Is(err, %v) = false", tc.class)
			}
			if tc.stillIs != nil && !errors.Is(tc.err, tc.stillIs) {
				t.Errorf("the chain lost %v", tc.stillIs)
			}
			var d *detail
			if tc.stillAsOK && !errors.As(tc.err, &d) {
				t.Error("errors.As lost the *detail")
			}
		})
	}
}

// Every Is helper answers for its own class only.
func TestIsHelpersAreDistinct(t *testing.T) {
	helpers := map[error]func(error) bool{
		ErrNotFound: IsNotFound, ErrAlreadyExists: IsAlreadyExists, ErrInvalidArgument: IsInvalidArgument,
		ErrFailedPrecondition: IsFailedPrecondition, ErrPermissionDenied: IsPermissionDenied, ErrUnavailable: IsUnavailable,
		ErrDeadlineExceeded: IsDeadlineExceeded, ErrCanceled: IsCanceled, ErrNotImplemented: IsNotImplemented, ErrInternal: IsInternal,
	}
	if len(helpers) != len(classes) {
		t.Fatalf("%d helpers for %d classes", len(helpers), len(classes))
	}
	for class := range helpers {
		err := New(class, "x")
		for other, is := range helpers {
			if got := is(err); got != (other == class) {
				t.Errorf("a %v error: the helper for %v says %v", class, other, got)
			}
		}
	}
}
