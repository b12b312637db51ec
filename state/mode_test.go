package state

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// State is the daemon's alone whatever the umask: with umask 000, files are
// 0600 at most and directories 0700, and directories an older daemon left
// wider are narrowed. vm.json holds the values of --env.
func TestStateIsPrivateWhateverTheUmask(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)

	stateDir := filepath.Join(t.TempDir(), "state")
	// Left by an older paddockd (or an operator) with a wide mode.
	if err := os.MkdirAll(filepath.Join(stateDir, "vms"), 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := NewStore(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	vm := sample(NewID())
	vm.Spec.Env = []string{"TOKEN=hunter2"}
	if err := s.Save(vm); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveHandles(vm.ID, &Handles{}); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(filepath.Join(s.Dir(vm.ID), "other.json"), []byte("{}"), 0o666); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		want os.FileMode
	}{
		{stateDir, 0o700},
		{s.Root, 0o700},
		{s.Dir(vm.ID), 0o700},
		{filepath.Join(s.Dir(vm.ID), "vm.json"), 0o600},
		{filepath.Join(s.Dir(vm.ID), "handles.json"), 0o600},
		{filepath.Join(s.Dir(vm.ID), "other.json"), 0o600},
	} {
		fi, err := os.Stat(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != tc.want {
			t.Errorf("%s: mode %v, want %v", tc.path, fi.Mode().Perm(), tc.want)
		}
	}
}

func TestMkdirPrivate(t *testing.T) {
	for _, tc := range []struct {
		name       string
		have, want os.FileMode // have 0: does not exist
	}{
		{"new", 0, 0o700},
		{"wide", 0o777, 0o700},
		{"group readable", 0o750, 0o700},
		{"already private", 0o700, 0o700},
		{"narrower stays narrower", 0o500, 0o500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "d")
			if tc.have != 0 {
				if err := os.Mkdir(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(dir, tc.have); err != nil {
					t.Fatal(err)
				}
			}
			if err := MkdirPrivate(dir); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != tc.want {
				t.Fatalf("mode %v, want %v", fi.Mode().Perm(), tc.want)
			}
		})
	}
}
