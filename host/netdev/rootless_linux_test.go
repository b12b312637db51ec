package netdev

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// threadCreds is the credential state of one thread.
type threadCreds struct {
	r, e, s    int
	rg, eg, sg int
	groups     []int
	caps       [2]unix.CapUserData
}

func getThreadCreds() (threadCreds, error) {
	var c threadCreds
	// getres[ug]id and getgroups report the calling thread's credentials.
	var r, e, s, rg, eg, sg uint32
	if _, _, errno := unix.RawSyscall(unix.SYS_GETRESUID, uintptr(unsafe.Pointer(&r)), uintptr(unsafe.Pointer(&e)), uintptr(unsafe.Pointer(&s))); errno != 0 {
		return c, errno
	}
	if _, _, errno := unix.RawSyscall(unix.SYS_GETRESGID, uintptr(unsafe.Pointer(&rg)), uintptr(unsafe.Pointer(&eg)), uintptr(unsafe.Pointer(&sg))); errno != 0 {
		return c, errno
	}
	c.r, c.e, c.s, c.rg, c.eg, c.sg = int(r), int(e), int(s), int(rg), int(eg), int(sg)
	groups, err := unix.Getgroups()
	if err != nil {
		return c, err
	}
	c.groups = groups
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	if err := unix.Capget(&hdr, &c.caps[0]); err != nil {
		return c, err
	}
	return c, nil
}

func rawSetres(nr uintptr, r, e, s int) error {
	if _, _, errno := unix.RawSyscall(nr, uintptr(r), uintptr(e), uintptr(s)); errno != 0 {
		return errno
	}
	return nil
}

func rawSetgroups(groups []int) error {
	g := make([]uint32, len(groups))
	for i, v := range groups {
		g[i] = uint32(v)
	}
	var p unsafe.Pointer
	if len(g) > 0 {
		p = unsafe.Pointer(&g[0])
	}
	if _, _, errno := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(g)), uintptr(p), 0); errno != 0 {
		return errno
	}
	return nil
}

func capset(caps [2]unix.CapUserData) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	return unix.Capset(&hdr, &caps[0])
}

// asUnprivileged runs fn on a thread inside tns whose uid and gid are 65534,
// without supplementary groups, and whose only effective capability is
// CAP_NET_ADMIN: what paddockd has when run as a user with CAP_NET_ADMIN
// ambient. Credentials are per thread in Linux; the raw syscalls change only
// this locked thread. The thread is handed back to the Go runtime only if
// its credentials and namespace were fully restored.
func asUnprivileged(tns *testNS, fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		restored := false
		defer func() {
			if restored {
				runtime.UnlockOSThread()
			} // else the thread dies with this goroutine
		}()
		orig, err := netns.Get()
		if err != nil {
			ch <- err
			return
		}
		defer orig.Close()
		saved, err := getThreadCreds()
		if err != nil {
			ch <- err
			return
		}
		if err := netns.Set(tns.ns); err != nil {
			ch <- err
			return
		}
		runErr := func() error {
			if err := rawSetgroups(nil); err != nil {
				return fmt.Errorf("setgroups: %w", err)
			}
			if err := rawSetres(unix.SYS_SETRESGID, 65534, 65534, 0); err != nil {
				return fmt.Errorf("setresgid: %w", err)
			}
			// Saved uid 0 keeps the permitted set (needed to come back);
			// the effective set, which is what the kernel checks, is
			// cleared by the uid change and then set to CAP_NET_ADMIN alone.
			if err := rawSetres(unix.SYS_SETRESUID, 65534, 65534, 0); err != nil {
				return fmt.Errorf("setresuid: %w", err)
			}
			caps := saved.caps
			caps[0].Effective, caps[1].Effective = 1<<unix.CAP_NET_ADMIN, 0
			caps[0].Inheritable, caps[1].Inheritable = 0, 0
			if err := capset(caps); err != nil {
				return fmt.Errorf("capset: %w", err)
			}
			now, err := getThreadCreds()
			if err != nil {
				return err
			}
			if now.e != 65534 || now.eg != 65534 || len(now.groups) != 0 || now.caps[0].Effective != 1<<unix.CAP_NET_ADMIN || now.caps[1].Effective != 0 {
				return fmt.Errorf("credentials not dropped: %+v", now)
			}
			return fn()
		}()
		// Restore: uid 0 again (allowed: it is the saved uid), which
		// refills the effective set from the permitted one; then the rest.
		err = errors.Join(
			rawSetres(unix.SYS_SETRESUID, saved.r, saved.e, saved.s),
			capset(saved.caps),
			rawSetres(unix.SYS_SETRESGID, saved.rg, saved.eg, saved.sg),
			rawSetgroups(saved.groups),
			netns.Set(orig),
		)
		if err == nil {
			now, gerr := getThreadCreds()
			cur, nerr := netns.Get()
			if gerr == nil && nerr == nil && cur.Equal(orig) && now.r == saved.r && now.e == saved.e && now.s == saved.s &&
				now.rg == saved.rg && now.eg == saved.eg && now.sg == saved.sg && slices.Equal(now.groups, saved.groups) && now.caps == saved.caps {
				restored = true
			}
			if nerr == nil {
				cur.Close()
			}
		}
		if !restored {
			err = errors.Join(err, errors.New("thread credentials or namespace not restored; thread discarded"))
		}
		ch <- errors.Join(runErr, err)
	}()
	return <-ch
}

// paddockd running as an unprivileged user with only CAP_NET_ADMIN (in the
// namespace it runs in) can create the bridge, create and release taps.
func TestRootless(t *testing.T) {
	tns := newNS(t)
	hd := newHelperDir(t) // a 0666 tun node: the host's may be 0600
	ctx := context.Background()
	var tapName string
	err := asUnprivileged(tns, func() error {
		m, err := New(Config{}, netns.None())
		if err != nil {
			return err
		}
		defer m.Close()
		m.tunPath = hd.tun
		if _, err := m.EnsureBridge(ctx); err != nil {
			return fmt.Errorf("EnsureBridge: %w", err)
		}
		tap, err := m.AcquireTap(ctx, vmA, Owner{UID: 65534, GID: 65534})
		if err != nil {
			return fmt.Errorf("AcquireTap: %w", err)
		}
		tapName = tap.Name
		if again, err := m.AcquireTap(ctx, vmA, Owner{UID: 65534, GID: 65534}); err != nil || !again.Adopted {
			return fmt.Errorf("AcquireTap again: %+v %w", again, err)
		}
		if owned, err := m.ListOwned(ctx); err != nil || len(owned) != 2 {
			return fmt.Errorf("ListOwned: %v %w", owned, err)
		}
		if err := m.ReleaseTap(ctx, tap.Name, tap.Ifindex); err != nil {
			return fmt.Errorf("ReleaseTap: %w", err)
		}
		return m.ReleaseBridge(ctx, "")
	})
	if err != nil {
		t.Fatal(err)
	}
	if tapName != TapName(vmA) {
		t.Errorf("tap %q", tapName)
	}
	// Sanity: the same thread setup without CAP_NET_ADMIN cannot create a
	// bridge, so the test really ran unprivileged.
	err = asUnprivileged(tns, func() error {
		caps := [2]unix.CapUserData{}
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		if err := unix.Capget(&hdr, &caps[0]); err != nil {
			return err
		}
		caps[0].Effective = 0
		if err := capset(caps); err != nil {
			return err
		}
		m, err := New(Config{}, netns.None())
		if err != nil {
			return err
		}
		defer m.Close()
		if _, err := m.EnsureBridge(ctx); !errors.Is(err, unix.EPERM) {
			return fmt.Errorf("EnsureBridge without CAP_NET_ADMIN: %v, want EPERM", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
