// Package netnstest holds what tests that work inside a network namespace
// of their own share: running code on a thread in it, and listing what
// still refers to it when it should be gone.
package netnstest

import (
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
)

// Refs lists this process's threads and descriptors that refer to the
// namespace ident (the readlink of its ns/net, "net:[inode]").
func Refs(ident string) []string {
	var refs []string
	for _, pattern := range []string{"/proc/self/task/*/ns/net", "/proc/self/fd/*"} {
		paths, _ := filepath.Glob(pattern)
		for _, p := range paths {
			if v, _ := os.Readlink(p); v == ident {
				refs = append(refs, p)
			}
		}
	}
	return refs
}

// Run calls fn on a thread inside ns; sockets fn opens stay in it. The
// thread is discarded afterwards unless it could be moved back.
func Run(ns netns.NsHandle, fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			ch <- err
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		ch <- err
	}()
	return <-ch
}
