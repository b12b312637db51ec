// Package sysctl reads and writes kernel parameters under /proc/sys in a
// given network namespace. Network sysctls are per namespace: the kernel
// resolves /proc/sys/net against the namespace of the task that opens the
// file, so the file is opened from a thread moved into the namespace.
package sysctl

import (
	"fmt"
	"os"
	"path"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
)

// root is where the parameters live; tests do not change it.
const root = "/proc/sys"

// Get returns the value of the parameter name ("net/ipv4/ip_forward",
// slash-separated because interface names may hold dots), without the
// trailing newline, as seen in ns (netns.None(): the caller's namespace).
func Get(ns netns.NsHandle, name string) (string, error) {
	p, err := file(name)
	if err != nil {
		return "", err
	}
	var v string
	err = in(ns, func() error {
		b, err := os.ReadFile(p)
		v = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", name, err)
	}
	return v, nil
}

// Ensure sets the parameter name to value in ns when it holds another
// value, and reports the value it had and whether it was changed.
func Ensure(ns netns.NsHandle, name, value string) (old string, changed bool, err error) {
	p, err := file(name)
	if err != nil {
		return "", false, err
	}
	err = in(ns, func() error {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		old = strings.TrimSpace(string(b))
		if old == value {
			return nil
		}
		changed = true
		return os.WriteFile(p, []byte(value+"\n"), 0o644)
	})
	if err != nil {
		return old, false, fmt.Errorf("set sysctl %s=%s: %w", name, value, err)
	}
	return old, changed, nil
}

func file(name string) (string, error) {
	clean := path.Clean("/" + name)
	if name == "" || clean != "/"+name || strings.Contains(name, "..") {
		return "", fmt.Errorf("sysctl name %q: want a relative slash-separated path such as net/ipv4/ip_forward", name)
	}
	return root + clean, nil
}

// in runs fn on a thread inside ns (directly when ns is not open). The
// thread is discarded when it cannot be moved back.
func in(ns netns.NsHandle, fn func() error) error {
	if !ns.IsOpen() {
		return fn()
	}
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("enter netns: %w", err)
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked and is discarded when this goroutine ends
		ch <- err
	}()
	return <-ch
}
