package actors

import (
	"context"
	"encoding/json"

	"github.com/paddock-vm/paddock/host/disk"
)

// diskStep: the VM's own copy-on-write layer over its image's base, made at
// the first start and kept (deactivated) across stops. Handle: the disk
// backend's *disk.Disk (files, loop devices, dm names).
type diskStep struct {
	backend disk.Backend // makes new disks
	opts    disk.Options // finds the backend of an existing one
}

// backendOf is the backend that made d: the configured one, or the one
// named in its record (the configuration may have changed since).
func (s diskStep) backendOf(d *disk.Disk) (disk.Backend, error) {
	if s.backend != nil && d.Backend == s.backend.Name() {
		return s.backend, nil
	}
	return disk.ForDisk(d, s.opts)
}

func (s diskStep) Plan(b *bootPlan) *disk.Disk {
	if b.disk != nil {
		return b.disk
	}
	return s.backend.Plan(b.vmDir)
}

func (s diskStep) Acquire(ctx context.Context, b *bootPlan, _ *disk.Disk) (*disk.Disk, error) {
	if b.disk != nil {
		be, err := s.backendOf(b.disk)
		if err != nil {
			return nil, err
		}
		return be.Activate(ctx, b.disk)
	}
	return s.backend.Create(ctx, b.vmDir, b.rootfs, b.diskSize)
}

func (s diskStep) Release(ctx context.Context, d *disk.Disk, how releaseHow) error {
	if d == nil || d.Backend == "" {
		return nil
	}
	be, err := s.backendOf(d)
	if err != nil {
		return err
	}
	if how.Discard {
		return be.Release(ctx, d)
	}
	return be.Deactivate(ctx, d)
}

// Probe: a disk is files (and devices made from them) under the VM's
// directory; it is there when its record is.
func (s diskStep) Probe(_ context.Context, d *disk.Disk) (bool, error) {
	return d != nil && d.Backend != "", nil
}

// decodeDisk reads a disk handle recorded in vm.json.
func decodeDisk(raw json.RawMessage) *disk.Disk {
	if len(raw) == 0 {
		return nil
	}
	var d disk.Disk
	if json.Unmarshal(raw, &d) != nil || d.Backend == "" {
		return nil
	}
	return &d
}
