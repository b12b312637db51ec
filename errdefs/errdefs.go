// Package errdefs holds paddock's error classes: what kind of failure an
// error is, whichever package made it. Packages give their sentinels a class
// (New), or class an error on its way out (Wrap, Newf) without changing its
// text; the API maps each class to one error name (daemon's error table), and
// callers branch with the Is* helpers. containerd's errdefs is the model.
package errdefs

import (
	"context"
	"errors"
	"fmt"
)

// The classes. A classed error matches its class with errors.Is and keeps
// its own message: the class never shows in the text users read.
var (
	// ErrNotFound: the named thing does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: the name or thing to create is taken.
	ErrAlreadyExists = errors.New("already exists")
	// ErrInvalidArgument: the request is wrong as given; retrying it as is
	// fails again.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrFailedPrecondition: the thing is not in a state that allows the
	// request (a running VM's memory, an image in use).
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrPermissionDenied: the caller may not do this.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrUnavailable: a facility the request needs is missing or not ready
	// (a VMM binary, a guest agent still booting); it may work later.
	ErrUnavailable = errors.New("unavailable")
	// ErrDeadlineExceeded: the work did not finish in the time it had.
	ErrDeadlineExceeded = errors.New("deadline exceeded")
	// ErrCanceled: the caller gave up.
	ErrCanceled = errors.New("canceled")
	// ErrNotImplemented: paddock cannot do this (yet).
	ErrNotImplemented = errors.New("not implemented")
	// ErrInternal: anything else; a bug or an unexpected host failure.
	ErrInternal = errors.New("internal")
)

// classes in the order Class reports them; ErrInternal is the fallback.
var classes = []error{
	ErrNotFound, ErrAlreadyExists, ErrInvalidArgument, ErrFailedPrecondition, ErrPermissionDenied,
	ErrUnavailable, ErrDeadlineExceeded, ErrCanceled, ErrNotImplemented, ErrInternal,
}

// classed gives err a class and keeps err's message and chain.
type classed struct {
	class error
	err   error
}

func (e *classed) Error() string   { return e.err.Error() }
func (e *classed) Unwrap() []error { return []error{e.err, e.class} }

// New returns an error with text msg in class; use it for sentinels, which
// keep their own identity for errors.Is.
func New(class error, msg string) error { return &classed{class: class, err: errors.New(msg)} }

// Newf formats like fmt.Errorf (%w included) and puts the result in class.
func Newf(class error, format string, args ...any) error {
	return &classed{class: class, err: fmt.Errorf(format, args...)}
}

// Wrap puts err in class without changing its text; nil stays nil.
func Wrap(class error, err error) error {
	if err == nil {
		return nil
	}
	return &classed{class: class, err: err}
}

// Class returns err's class: the outermost one given along its chain, so a
// caller that re-classes an error wins over the class it wrapped. A context
// deadline or cancellation counts as ErrDeadlineExceeded or ErrCanceled.
// An error with no class is ErrInternal; nil has none (nil).
func Class(err error) error {
	if err == nil {
		return nil
	}
	if c := find(err); c != nil {
		return c
	}
	return ErrInternal
}

func find(err error) error {
	if err == nil {
		return nil
	}
	if c, ok := err.(*classed); ok {
		return c.class
	}
	for _, c := range classes {
		if err == c {
			return c
		}
	}
	switch err {
	case context.DeadlineExceeded:
		return ErrDeadlineExceeded
	case context.Canceled:
		return ErrCanceled
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return find(u.Unwrap())
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if c := find(e); c != nil {
				return c
			}
		}
	}
	return nil
}

// IsNotFound reports whether err is in ErrNotFound.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// IsAlreadyExists reports whether err is in ErrAlreadyExists.
func IsAlreadyExists(err error) bool { return errors.Is(err, ErrAlreadyExists) }

// IsInvalidArgument reports whether err is in ErrInvalidArgument.
func IsInvalidArgument(err error) bool { return errors.Is(err, ErrInvalidArgument) }

// IsFailedPrecondition reports whether err is in ErrFailedPrecondition.
func IsFailedPrecondition(err error) bool { return errors.Is(err, ErrFailedPrecondition) }

// IsPermissionDenied reports whether err is in ErrPermissionDenied.
func IsPermissionDenied(err error) bool { return errors.Is(err, ErrPermissionDenied) }

// IsUnavailable reports whether err is in ErrUnavailable.
func IsUnavailable(err error) bool { return errors.Is(err, ErrUnavailable) }

// IsDeadlineExceeded reports whether err is in ErrDeadlineExceeded or is a
// context deadline.
func IsDeadlineExceeded(err error) bool {
	return errors.Is(err, ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded)
}

// IsCanceled reports whether err is in ErrCanceled or is a context
// cancellation.
func IsCanceled(err error) bool {
	return errors.Is(err, ErrCanceled) || errors.Is(err, context.Canceled)
}

// IsNotImplemented reports whether err is in ErrNotImplemented.
func IsNotImplemented(err error) bool { return errors.Is(err, ErrNotImplemented) }

// IsInternal reports whether err's class is ErrInternal (given, or none).
func IsInternal(err error) bool { return err != nil && Class(err) == ErrInternal }
