package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/host/vmm"
)

// Saved state (templates): QEMU 7.2 has no "file:" migration URI and its
// sandbox forbids "exec:", so the state file is handed to QEMU as a
// descriptor (QMP getfd over the QMP socket) and migrated with "fd:".
// Migration then reads or writes the regular file directly. Completion is
// the MIGRATION event (capability "events"), not a poll.
//
// A guest booted with its RAM in a file (Spec.MemoryFile, shared) is saved
// with the "x-ignore-shared" capability: the stream then holds the device
// state only (~60 KB instead of the ~76 MB of RAM a booted guest has
// touched, written in ms), and the RAM file is moved beside it
// (vmm.MemPath). A resume maps that file privately (share=off: pages are
// read from the file and copied only when the guest writes them) with the
// same capability, so nothing is copied into guest memory at all: QEMU exec
// → running went from ~240 to ~30 ms here, and clones share the template's
// pages in the page cache. Every resume opens the file read-write (QEMU 7.2
// maps a read-only backend read-only for the guest too), so its integrity
// rests on the caller's hash and on the file being written by no one after
// the save.

// saveBandwidth lifts QEMU's default migration cap (128 MiB/s): a save to
// a local file is bounded by the disk, not the network it was made for.
const saveBandwidth = 64 << 30

// migrateFD is the name the state file's descriptor has inside QEMU.
const migrateFD = "pdk-state"

// Save pauses p's guest and writes its whole state (RAM and devices) to a
// new file at path, fsynced. The VMM stays paused afterwards: the caller
// quits it (the guest must not run on from the disks the state belongs to).
// On failure the partial file is removed.
func (d *Driver) Save(ctx context.Context, p *vmm.Process, path string) (vmm.Saved, error) {
	start := time.Now()
	if err := d.RequireRunning(p); err != nil {
		return vmm.Saved{}, err
	}
	q, err := dialQMP(ctx, p.APISocket)
	if err != nil {
		return vmm.Saved{}, err
	}
	defer q.Close()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return vmm.Saved{}, fmt.Errorf("save state: %w", err)
	}
	ok := false
	defer func() {
		f.Close()
		if !ok {
			os.Remove(path)
		}
	}()
	steps := []struct {
		cmd  string
		args any
	}{
		{"stop", nil},
		{"migrate-set-capabilities", capabilities(p.MemoryFile != "")},
		{"migrate-set-parameters", map[string]any{"max-bandwidth": saveBandwidth}},
	}
	for _, s := range steps {
		if err := q.execute(ctx, s.cmd, s.args, nil); err != nil {
			return vmm.Saved{}, fmt.Errorf("save state: %w", err)
		}
	}
	if err := q.passFile(ctx, migrateFD, f); err != nil {
		return vmm.Saved{}, fmt.Errorf("save state: %w", err)
	}
	if err := q.execute(ctx, "migrate", map[string]any{"uri": "fd:" + migrateFD}, nil); err != nil {
		return vmm.Saved{}, fmt.Errorf("save state: %w", err)
	}
	if err := q.awaitMigration(ctx); err != nil {
		// Leave QEMU as it was found but for the pause: a cancelled
		// migration must not keep writing into a removed file.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), qmpTimeout)
		_ = qmpDo(cctx, p.APISocket, "migrate_cancel", nil, nil)
		cancel()
		return vmm.Saved{}, fmt.Errorf("save state: %w", err)
	}
	if err := f.Sync(); err != nil {
		return vmm.Saved{}, fmt.Errorf("save state: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		return vmm.Saved{}, fmt.Errorf("save state: %w", err)
	}
	saved := vmm.Saved{Bytes: st.Size(), Files: []string{path}}
	if p.MemoryFile != "" {
		n, err := moveMemory(p.MemoryFile, vmm.MemPath(path))
		if err != nil {
			return vmm.Saved{}, fmt.Errorf("save state: %w", err)
		}
		saved.Bytes += n
		saved.Files = append(saved.Files, vmm.MemPath(path))
	}
	ok = true
	saved.Took = time.Since(start)
	return saved, nil
}

// moveMemory makes the paused guest's RAM file durable and moves it to
// dst (a new name: never over another state's), returning its size. Both
// must be on one file system (the caller's state directory): a copy would
// be the very cost the shared RAM saves.
func moveMemory(src, dst string) (int64, error) {
	f, err := os.Open(src)
	if err != nil {
		return 0, fmt.Errorf("guest memory file: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("guest memory file: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("guest memory file: %w", err)
	}
	if err := os.Link(src, dst); err != nil {
		return 0, fmt.Errorf("move the guest memory file beside the state: %w", err)
	}
	if err := os.Remove(src); err != nil {
		_ = os.Remove(dst)
		return 0, fmt.Errorf("move the guest memory file beside the state: %w", err)
	}
	return st.Size(), nil
}

// capabilities is migrate-set-capabilities' argument: completion events,
// and with ramApart the RAM left out of the stream (x-ignore-shared).
func capabilities(ramApart bool) map[string]any {
	caps := []any{map[string]any{"capability": "events", "state": true}}
	if ramApart {
		caps = append(caps, map[string]any{"capability": "x-ignore-shared", "state": true})
	}
	return map[string]any{"capabilities": caps}
}

// restore loads the state file at path into a VMM started with
// "-incoming defer" (and -S: it stays paused until the caller's cont), its
// RAM already mapped from a file when ramApart. A file QEMU cannot load
// makes QEMU exit; the error then says so.
func (q *qmpConn) restore(ctx context.Context, path string, ramApart bool) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("restore state: %w", err)
	}
	defer f.Close()
	if err := q.execute(ctx, "migrate-set-capabilities", capabilities(ramApart), nil); err != nil {
		return fmt.Errorf("restore state: %w", err)
	}
	if err := q.passFile(ctx, migrateFD, f); err != nil {
		return fmt.Errorf("restore state: %w", err)
	}
	if err := q.execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + migrateFD}, nil); err != nil {
		return fmt.Errorf("restore state: %w", err)
	}
	if err := q.awaitMigration(ctx); err != nil {
		return fmt.Errorf("restore state from %s: %w", path, err)
	}
	return nil
}

// passFile hands f to QEMU under name (QMP getfd, the descriptor passed
// with SCM_RIGHTS alongside the command).
func (q *qmpConn) passFile(ctx context.Context, name string, f *os.File) error {
	uc, ok := q.c.(*net.UnixConn)
	if !ok {
		return errors.New("qmp getfd: not a UNIX socket")
	}
	q.deadline(ctx)
	b, _ := json.Marshal(map[string]any{"execute": "getfd", "arguments": map[string]string{"fdname": name}, "id": "getfd"})
	if _, _, err := uc.WriteMsgUnix(append(b, '\n'), unix.UnixRights(int(f.Fd())), nil); err != nil {
		return fmt.Errorf("qmp getfd: %w", err)
	}
	return q.await(ctx, "getfd", nil)
}

// awaitMigration reads QMP messages until a MIGRATION event says the
// migration ended: nil when it completed, its error when it failed.
func (q *qmpConn) awaitMigration(ctx context.Context) error {
	q.deadline(ctx)
	stop := context.AfterFunc(ctx, func() { _ = q.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	for {
		m, err := q.read()
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("migration not done in time: %w", ctx.Err())
			}
			return fmt.Errorf("migration: QEMU closed its monitor (it exits when it cannot load a state): %w", err)
		}
		if m.Event != "MIGRATION" {
			continue
		}
		var data struct {
			Status string `json:"status"`
		}
		if err := json.Unmarshal(m.Data, &data); err != nil {
			return fmt.Errorf("migration event: %w", err)
		}
		switch data.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			var info struct {
				Error string `json:"error-desc"`
			}
			if err := q.execute(ctx, "query-migrate", nil, &info); err == nil && info.Error != "" {
				return fmt.Errorf("migration %s: %s", data.Status, info.Error)
			}
			return fmt.Errorf("migration %s", data.Status)
		}
	}
}
