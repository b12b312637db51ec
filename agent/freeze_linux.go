package agent

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// FIFREEZE and FITHAW are _IOWR('X', 119, int) and _IOWR('X', 120, int).
const (
	ioctlFIFREEZE = 0xC0045877
	ioctlFITHAW   = 0xC0045878
)

// Freezer freezes and thaws the file systems the agent mounted, each freeze
// ending by itself after its timeout when no thaw comes.
type Freezer struct {
	// Allowed says which mount points may be frozen (the workspaces'):
	// freezing the root would block the agent itself.
	Allowed func(path string) bool
	// Logf logs automatic thaws (optional).
	Logf func(format string, args ...any)

	mu     sync.Mutex
	timers map[string]*time.Timer
}

// Set freezes path (frozen) for at most timeout, or thaws it.
func (f *Freezer) Set(path string, frozen bool, timeout time.Duration) error {
	if f.Allowed == nil || !f.Allowed(path) {
		return fmt.Errorf("%s is not a volume the agent mounted", path)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.timers == nil {
		f.timers = map[string]*time.Timer{}
	}
	if t := f.timers[path]; t != nil {
		t.Stop()
		delete(f.timers, path)
	}
	if !frozen {
		return thaw(path)
	}
	if timeout <= 0 || timeout > MaxFreeze {
		timeout = MaxFreeze
	}
	if err := ioctlPath(path, ioctlFIFREEZE); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("freeze %s: %w", path, err)
	}
	f.timers[path] = time.AfterFunc(timeout, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.timers, path)
		if err := thaw(path); err == nil && f.Logf != nil {
			f.Logf("thawed %s: no thaw came within %v", path, timeout)
		}
	})
	return nil
}

// ThawAll thaws every frozen file system (before a power-off).
func (f *Freezer) ThawAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for p, t := range f.timers {
		t.Stop()
		_ = thaw(p)
		delete(f.timers, p)
	}
}

// thaw thaws path; one that is not frozen (EINVAL) is no error.
func thaw(path string) error {
	if err := ioctlPath(path, ioctlFITHAW); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("thaw %s: %w", path, err)
	}
	return nil
}

func ioctlPath(path string, req uint) error {
	d, err := os.Open(path)
	if err != nil {
		return err
	}
	defer d.Close()
	_, err = unix.IoctlGetInt(int(d.Fd()), req)
	return err
}
