package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/paddock-vm/paddock/host/vmm"
)

// Save pauses p's guest and writes a full snapshot of it: the VM state to
// path, the guest memory to vmm.MemPath(path), both new files, fsynced. The
// guest stays paused: the caller kills the VMM (the guest must not run on
// from the disks the state belongs to). On failure the files are removed;
// a Firecracker still writing them when ctx ends writes into unlinked
// files until the caller kills it.
func (d *Driver) Save(ctx context.Context, p *vmm.Process, path string) (vmm.Saved, error) {
	start := time.Now()
	if !filepath.IsAbs(path) {
		// Firecracker would resolve it in its own working directory
		return vmm.Saved{}, fmt.Errorf("save state: %q must be an absolute path", path)
	}
	if err := d.RequireRunning(p); err != nil {
		return vmm.Saved{}, err
	}
	files := []string{path, vmm.MemPath(path)}
	for _, f := range files {
		// Firecracker truncates what is there; never overwrite another state
		if _, err := os.Lstat(f); !errors.Is(err, fs.ErrNotExist) {
			if err == nil {
				err = fs.ErrExist
			}
			return vmm.Saved{}, fmt.Errorf("save state: %s: %w", f, err)
		}
	}
	ok := false
	defer func() {
		if !ok {
			for _, f := range files {
				_ = os.Remove(f)
			}
		}
	}()
	c := d.client(p.APISocket)
	if err := c.do(ctx, http.MethodPatch, "/vm", vmState{State: "Paused"}, nil); err != nil {
		return vmm.Saved{}, fmt.Errorf("save state: pause the guest: %w", err)
	}
	body := snapshotCreate{SnapshotType: "Full", SnapshotPath: files[0], MemFilePath: files[1]}
	if err := c.long().do(ctx, http.MethodPut, "/snapshot/create", body, nil); err != nil {
		return vmm.Saved{}, fmt.Errorf("save state: write the snapshot: %w", err)
	}
	var total int64
	for _, f := range files {
		n, err := syncFile(f)
		if err != nil {
			return vmm.Saved{}, fmt.Errorf("save state: %w", err)
		}
		total += n
	}
	ok = true
	return vmm.Saved{Bytes: total, Took: time.Since(start), Files: files}, nil
}

// syncFile fsyncs a file Firecracker wrote and returns its size.
func syncFile(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("fsync %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// checkSaved refuses a saved state whose files Firecracker could not read,
// before a VMM is launched for it.
func checkSaved(state string) error {
	if !filepath.IsAbs(state) {
		return fmt.Errorf("%w: saved state %q must be an absolute path", vmm.ErrInvalidSpec, state)
	}
	for _, f := range []struct{ what, path string }{{"saved state", state}, {"guest memory file of saved state " + state, vmm.MemPath(state)}} {
		fh, err := os.Open(f.path)
		if err != nil {
			return fmt.Errorf("%w: %s: %w", vmm.ErrInvalidSpec, f.what, err)
		}
		st, err := fh.Stat()
		fh.Close()
		if err == nil && !st.Mode().IsRegular() {
			err = errors.New("not a regular file")
		}
		if err != nil {
			return fmt.Errorf("%w: %s %s: %w", vmm.ErrInvalidSpec, f.what, f.path, err)
		}
	}
	return nil
}

// restore waits for the API and resumes the saved guest spec.Incoming on
// this VM's devices: load it paused with the vsock and tap redirected,
// check that the restored machine is the Spec's, point each drive at this
// VM's disk, then resume. Anything that cannot be redirected fails the
// start before the guest runs (StartVMM then kills the VMM).
func (d *Driver) restore(ctx context.Context, p *vmm.Process, spec vmm.Spec) error {
	c := d.client(p.APISocket)
	if err := d.waitAPI(ctx, p, c); err != nil {
		return err
	}
	load := snapshotLoad{
		SnapshotPath: spec.Incoming,
		MemBackend:   memBackend{BackendType: "File", BackendPath: vmm.MemPath(spec.Incoming)},
		// not resume_vm: until PATCH /drives the drives are the saved VM's
		ResumeVM:      false,
		VsockOverride: &vsockOverride{UDSPath: spec.VsockUDS},
	}
	if spec.Tap != nil {
		load.NetworkOverrides = []networkOverride{{IfaceID: "eth0", HostDevName: spec.Tap.Name}}
	}
	if err := c.long().do(ctx, http.MethodPut, "/snapshot/load", load, nil); err != nil {
		return fmt.Errorf("restore %s: load the snapshot: %w", spec.Incoming, err)
	}
	var cfg vmConfig
	if err := c.do(ctx, http.MethodGet, "/vm/config", nil, &cfg); err != nil {
		return fmt.Errorf("restore %s: read the restored configuration: %w", spec.Incoming, err)
	}
	if err := checkRestored(cfg, spec); err != nil {
		return fmt.Errorf("restore %s: %w", spec.Incoming, err)
	}
	for i, disk := range spec.Disks {
		id := "disk" + strconv.Itoa(i)
		if err := c.do(ctx, http.MethodPatch, "/drives/"+id, partialDrive{DriveID: id, PathOnHost: disk.Path}, nil); err != nil {
			return fmt.Errorf("restore %s: point drive %s at %s: %w", spec.Incoming, id, disk.Path, err)
		}
	}
	if err := c.do(ctx, http.MethodPatch, "/vm", vmState{State: "Resumed"}, nil); err != nil {
		return fmt.Errorf("restore %s: resume the guest: %w", spec.Incoming, err)
	}
	return nil
}

// checkRestored compares the machine a snapshot restored with spec: the
// same vCPUs and memory, drives disk0..N-1 with the Spec's read-only flags
// (their files are redirected next), the tap iff spec has one, and the
// vsock on this VM's socket. A device the API cannot redirect is refused
// by name.
func checkRestored(cfg vmConfig, spec vmm.Spec) error {
	if mc := cfg.MachineConfig; mc != nil && (mc.VCPUCount != spec.CPUs || mc.MemSizeMiB != spec.MemoryMiB) {
		return fmt.Errorf("%w: the saved guest has %d vCPUs and %d MiB, this VM %d and %d", vmm.ErrInvalidSpec, mc.VCPUCount, mc.MemSizeMiB, spec.CPUs, spec.MemoryMiB)
	}
	if len(cfg.Drives) != len(spec.Disks) {
		return fmt.Errorf("%w: the saved guest has %d drives, this VM %d disks", vmm.ErrInvalidSpec, len(cfg.Drives), len(spec.Disks))
	}
	disks := map[string]int{}
	for i := range spec.Disks {
		disks["disk"+strconv.Itoa(i)] = i
	}
	for _, dr := range cfg.Drives {
		i, ok := disks[dr.DriveID]
		if !ok {
			return fmt.Errorf("%w: the saved guest's drive %q (%s) is none of this VM's disks: it cannot be redirected", vmm.ErrInvalidSpec, dr.DriveID, dr.PathOnHost)
		}
		if dr.IsReadOnly != spec.Disks[i].ReadOnly {
			return fmt.Errorf("%w: drive %s is read-only=%v in the saved guest, %v in this VM (Firecracker cannot change it)", vmm.ErrInvalidSpec, dr.DriveID, dr.IsReadOnly, spec.Disks[i].ReadOnly)
		}
	}
	for _, ni := range cfg.NetworkInterfaces {
		if spec.Tap == nil || ni.IfaceID != "eth0" {
			return fmt.Errorf("%w: the saved guest's network interface %q (tap %s) has no tap in this VM: it cannot be redirected", vmm.ErrInvalidSpec, ni.IfaceID, ni.HostDevName)
		}
		if ni.HostDevName != spec.Tap.Name {
			return fmt.Errorf("%w: network interface %s still on tap %s after the load, not %s", vmm.ErrInvalidSpec, ni.IfaceID, ni.HostDevName, spec.Tap.Name)
		}
	}
	if spec.Tap != nil && len(cfg.NetworkInterfaces) == 0 {
		return fmt.Errorf("%w: this VM has tap %s but the saved guest no network interface", vmm.ErrInvalidSpec, spec.Tap.Name)
	}
	if cfg.Vsock == nil || cfg.Vsock.UDSPath != spec.VsockUDS {
		got := "none"
		if cfg.Vsock != nil {
			got = cfg.Vsock.UDSPath
		}
		return fmt.Errorf("%w: the restored vsock device is on %s, not this VM's %s (the agent could not be reached)", vmm.ErrInvalidSpec, got, spec.VsockUDS)
	}
	return nil
}
