package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/paddock-vm/paddock/guestboot"
	"golang.org/x/sys/unix"
)

// mountAll mounts the seed's block devices (the VM's workspaces) before
// the entrypoint starts: each device waited for (up to wait), its mount
// point made, mounted read-only when asked. A device that does not mount
// is reported (the boot is degraded) and the others still are.
// mountAll mounts ms and returns the paths it mounted (what Stats reports
// on: an unmounted path would show the root's figures).
func mountAll(ms []guestboot.Mount, wait time.Duration) (mounted []string, err error) {
	var errs []error
	for _, m := range ms {
		if err := mountOne(m, wait); err != nil {
			errs = append(errs, fmt.Errorf("%s on %s: %w", m.Device, m.Path, err))
			continue
		}
		mounted = append(mounted, m.Path)
	}
	return mounted, errors.Join(errs...)
}

func mountOne(m guestboot.Mount, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		_, err := os.Stat(m.Device)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("device did not appear within %v: %w", wait, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := os.MkdirAll(m.Path, 0o755); err != nil {
		return err
	}
	fstype := m.FSType
	if fstype == "" {
		fstype = guestboot.DefaultRootFSType
	}
	flags := uintptr(unix.MS_NOATIME | unix.MS_NOSUID | unix.MS_NODEV)
	if m.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	err := unix.Mount(m.Device, m.Path, fstype, flags, "")
	if err != nil && m.ReadOnly && fstype == guestboot.DefaultRootFSType {
		// A journal left to replay cannot be replayed on a read-only
		// device: read the volume as its last checkpoint left it.
		err = unix.Mount(m.Device, m.Path, fstype, flags, "noload")
	}
	return err
}
