// Package testwait polls for what a test awaits from something asynchronous
// to it (a process, a socket, a log), with a deadline so that a test never
// hangs on it.
package testwait

import (
	"testing"
	"time"
)

// interval is how often For polls.
const interval = 10 * time.Millisecond

// For polls cond until it holds; if it still does not after d, t fails,
// naming what it waited for.
func For(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(interval)
	}
}

// Recv receives from ch; if nothing comes within d, t fails, naming what
// it waited for.
func Recv[T any](t testing.TB, what string, d time.Duration, ch <-chan T) T {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
	var zero T
	return zero
}
