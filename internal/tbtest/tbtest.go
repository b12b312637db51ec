// Package tbtest tests test helpers: a testing.TB that records Skip and
// Fatal instead of acting on them, so that a test can check when a helper
// skips or fails the test it is given.
package tbtest

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
)

// TB records Skip and Fatal. Both end the calling goroutine, as they end a
// test. Its other methods are the parent's given to Run.
type TB struct {
	testing.TB
	mu      sync.Mutex
	skipped bool
	failed  bool
	msg     string
}

// Run calls fn with a recording TB over parent (nil: none) in a goroutine of
// its own, and returns that TB once fn has returned or was ended.
func Run(parent testing.TB, fn func(testing.TB)) *TB {
	f := &TB{TB: parent}
	done := make(chan struct{})
	go func() { defer close(done); fn(f) }()
	<-done
	return f
}

func (f *TB) end(skip bool, msg string) {
	f.mu.Lock()
	if skip {
		f.skipped = true
	} else {
		f.failed = true
	}
	f.msg = msg
	f.mu.Unlock()
	runtime.Goexit()
}

func (f *TB) Helper()                           {}
func (f *TB) Skip(args ...any)                  { f.end(true, fmt.Sprint(args...)) }
func (f *TB) Skipf(format string, args ...any)  { f.end(true, fmt.Sprintf(format, args...)) }
func (f *TB) Fatal(args ...any)                 { f.end(false, fmt.Sprint(args...)) }
func (f *TB) Fatalf(format string, args ...any) { f.end(false, fmt.Sprintf(format, args...)) }

// Skipped reports whether Skip or Skipf was called.
func (f *TB) Skipped() bool { f.mu.Lock(); defer f.mu.Unlock(); return f.skipped }

// Failed reports whether Fatal or Fatalf was called.
func (f *TB) Failed() bool { f.mu.Lock(); defer f.mu.Unlock(); return f.failed }

// Msg is what the last Skip or Fatal said.
func (f *TB) Msg() string { f.mu.Lock(); defer f.mu.Unlock(); return f.msg }
