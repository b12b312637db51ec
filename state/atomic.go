// Package state holds paddock's durable records on disk: VM records
// (vm.json), resource handles (handles.json), and the atomic file writes that
// keep them whole across crashes. Everything here is the daemon's alone:
// files are at most 0600 and directories 0700 whatever the umask (vm.json
// holds the values of a VM's --env).
package state

import (
	"fmt"
	"os"
	"path/filepath"
)

// Private is the mode bits state may carry: the owner's only.
const Private os.FileMode = 0o700

// MkdirPrivate creates dir (and missing parents) and makes sure dir itself
// is the owner's alone: one left wider by an older paddockd or another
// umask is narrowed to 0700 less whatever the owner lacked.
func MkdirPrivate(dir string) error {
	if err := os.MkdirAll(dir, Private); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if fi.Mode().Perm()&^Private != 0 {
		if err := os.Chmod(dir, fi.Mode().Perm()&Private); err != nil {
			return fmt.Errorf("make %s private: %w", dir, err)
		}
	}
	return nil
}

// WriteFileAtomic replaces path with data so that a crash leaves either the
// old or the new content, never a mix: temp file, fsync, rename, fsync dir.
// The file gets perm less any group and other bits: state is private.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Chmod(perm & Private); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", path, err)
	}
	ok = true
	return SyncDir(dir)
}

// SyncDir makes a rename or unlink in dir durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}
