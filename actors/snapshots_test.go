package actors

import (
	"context"
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/state"
)

// Snapshot, restore, clone and resize, with new tops made as copies
// (reflink hosts) and as overlays (qcow2): a restore brings the snapshot's
// tree back, a clone starts from the source's current state (or a
// snapshot) and changes apart from it, a removed source leaves its clones
// whole, and once every workspace is gone no layer is left.
func TestWorkspaceSnapshots(t *testing.T) {
	for _, overlay := range []bool{false, true} {
		t.Run(map[bool]string{false: "reflink", true: "overlay"}[overlay], func(t *testing.T) {
			fb := &fakeBuild{overlay: overlay}
			h := startWorkspaces(t, t.TempDir(), fb)
			if _, err := h.create(t, wsAlice, "proj", "v1"); err != nil {
				t.Fatal(err)
			}
			r, err := h.do(t, &SnapshotWorkspace{Caller: wsAlice, Ref: "proj", Snapshot: "s1"})
			if err != nil || len(r.Workspace.Snapshots) != 1 || r.Workspace.Snapshots[0].Name != "s1" {
				t.Fatalf("snapshot s1: %+v %v", r, err)
			}
			if _, err := h.importTree(t, wsAlice, "proj", "v2"); err != nil {
				t.Fatal(err)
			}
			h.wantTree(t, "proj", "v2")
			if _, err := h.do(t, &RestoreWorkspace{Caller: wsAlice, Ref: "proj", Snapshot: "s1"}); err != nil {
				t.Fatal(err)
			}
			h.wantTree(t, "proj", "v1")

			// Clones: of the current state and of s1; each changes apart.
			if _, err := h.importTree(t, wsAlice, "proj", "v3"); err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct{ name, snap, want string }{{"now", "", "v3"}, {"old", "s1", "v1"}} {
				r, err := h.do(t, &CloneWorkspace{Caller: wsAlice, Ref: "proj", Name: c.name, Snapshot: c.snap})
				if err != nil || r.Workspace.Status != state.WorkspaceReady || r.Workspace.UID != 1000 {
					t.Fatalf("clone %s: %+v %v", c.name, r, err)
				}
				h.wantTree(t, c.name, c.want)
			}
			if _, err := h.importTree(t, wsAlice, "now", "changed"); err != nil {
				t.Fatal(err)
			}
			h.wantTree(t, "proj", "v3")

			// The source goes; its clones keep what they share with it.
			if _, err := h.do(t, &RemoveWorkspace{Caller: wsAlice, Ref: "proj"}); err != nil {
				t.Fatal(err)
			}
			h.wantTree(t, "old", "v1")
			h.wantTree(t, "now", "changed")

			// Resize: flattened into one raw top, the tree kept.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			w, err := h.sys.ResizeWorkspace(ctx, ResizeWorkspace{Caller: wsAlice, Ref: "old", Size: 128 << 20})
			if err != nil || w.Size != 128<<20 || w.Top == "" || len(w.Backing) != 0 {
				t.Fatalf("resize: %+v %v", w, err)
			}
			h.wantTree(t, "old", "v1")

			for _, n := range []string{"now", "old"} {
				if _, err := h.do(t, &RemoveWorkspace{Caller: wsAlice, Ref: n}); err != nil {
					t.Fatal(err)
				}
			}
			if es, _ := os.ReadDir(h.store.Layer("")); len(es) != 0 {
				t.Fatalf("layers left once every workspace is gone: %d", len(es))
			}
		})
	}
}

// What snapshot, restore, clone and resize refuse, each saying why.
func TestWorkspaceSnapshotRefusals(t *testing.T) {
	fb := &fakeBuild{overlay: true}
	h := startWorkspaces(t, t.TempDir(), fb)
	w, err := h.create(t, wsAlice, "proj", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.create(t, wsAlice, "taken", "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.do(t, &SnapshotWorkspace{Caller: wsAlice, Ref: "proj", Snapshot: "s1"}); err != nil {
		t.Fatal(err)
	}
	resize := func(ref string, size int64) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := h.sys.ResizeWorkspace(ctx, ResizeWorkspace{Caller: wsAlice, Ref: ref, Size: size})
		return err
	}
	for _, c := range []struct {
		name  string
		do    func() error
		class error
		msg   string
	}{
		{"snapshot name taken", func() error {
			_, err := h.do(t, &SnapshotWorkspace{Caller: wsAlice, Ref: "proj", Snapshot: "s1"})
			return err
		}, errdefs.ErrAlreadyExists, `snapshot named "s1" already`},
		{"bad snapshot name", func() error {
			_, err := h.do(t, &SnapshotWorkspace{Caller: wsAlice, Ref: "proj", Snapshot: "a/b"})
			return err
		}, errdefs.ErrInvalidArgument, "snapshot"},
		{"restore of no such snapshot", func() error {
			_, err := h.do(t, &RestoreWorkspace{Caller: wsAlice, Ref: "proj", Snapshot: "nope"})
			return err
		}, errdefs.ErrInvalidArgument, `no snapshot named "nope"`},
		{"clone onto a name in use", func() error {
			_, err := h.do(t, &CloneWorkspace{Caller: wsAlice, Ref: "proj", Name: "taken"})
			return err
		}, errdefs.ErrAlreadyExists, `workspace named "taken"`},
		{"another user's", func() error {
			_, err := h.do(t, &CloneWorkspace{Caller: wsBob, Ref: "proj", Name: "mine"})
			return err
		}, errdefs.ErrNotFound, `no workspace named "proj"`},
		{"shrink", func() error { return resize("proj", 32<<20) }, errdefs.ErrInvalidArgument, "only grows"},
	} {
		err := c.do()
		if !errors.Is(err, c.class) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v, want %v with %q", c.name, err, c.class, c.msg)
		}
	}

	// Attached (read-only included): refused naming the VM.
	if err := h.attachTo(t, "vm1", w.ID, wsAlice.UID); err != nil {
		t.Fatal(err)
	}
	for name, msg := range map[string]any{
		"snapshot": &SnapshotWorkspace{Caller: wsAlice, Ref: "proj", Snapshot: "s2"},
		"restore":  &RestoreWorkspace{Caller: wsAlice, Ref: "proj", Snapshot: "s1"},
		"clone":    &CloneWorkspace{Caller: wsAlice, Ref: "proj", Name: "c"},
	} {
		if _, err := h.do(t, msg); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "attached to VM vm1") {
			t.Errorf("%s while attached: %v", name, err)
		}
	}
	if err := resize("proj", 128<<20); err == nil || !strings.Contains(err.Error(), "attached to VM vm1") {
		t.Errorf("resize while attached: %v", err)
	}
	if got := h.names(t, wsAlice); !slices.Equal(got, []string{"proj@" + w.ID[:6] + ":ready", got[1]}) || len(got) != 2 {
		t.Errorf("workspaces after the refusals: %v", got)
	}
}

func (h *wsHarness) wantTree(t *testing.T, ref, want string) {
	t.Helper()
	got, err := h.export(t, wsAlice, ref)
	if err != nil || got != want {
		t.Fatalf("%s holds %q (%v), want %q", ref, got, err, want)
	}
}

// A snapshot crosses its crash point, then a clone of the current state
// both (it freezes the source first); a clone of a snapshot only its own.
func TestSnapshotFailpointsReached(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	h := startWorkspaces(t, t.TempDir(), &fakeBuild{overlay: true})
	if _, err := h.create(t, wsAlice, "fp", "x"); err != nil {
		t.Fatal(err)
	}
	failpointHook = func(name string) { mu.Lock(); seen = append(seen, name); mu.Unlock() }
	t.Cleanup(func() { failpointHook = nil })
	for _, msg := range []any{
		&SnapshotWorkspace{Caller: wsAlice, Ref: "fp", Snapshot: "s"},
		&CloneWorkspace{Caller: wsAlice, Ref: "fp", Name: "c2"},
		&CloneWorkspace{Caller: wsAlice, Ref: "fp", Name: "c1", Snapshot: "s"},
	} {
		if _, err := h.do(t, msg); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	want := append(append(slices.Clone(SnapshotFailpoints[:1]), SnapshotFailpoints...), SnapshotFailpoints[1])
	if !slices.Equal(seen, want) {
		t.Fatalf("reached %v, want %v", seen, want)
	}
}

// A chain of frozen layers is bounded: past MaxWorkspaceLayers a snapshot
// is refused, saying how to flatten; a resize to the same size flattens
// (one raw top, the tree and the snapshots kept), and snapshots work again.
func TestWorkspaceLayersBounded(t *testing.T) {
	h := startWorkspaces(t, t.TempDir(), &fakeBuild{overlay: true})
	if _, err := h.create(t, wsAlice, "long", "v1"); err != nil {
		t.Fatal(err)
	}
	snap := func(i int) error {
		_, err := h.do(t, &SnapshotWorkspace{Caller: wsAlice, Ref: "long", Snapshot: "s" + strconv.Itoa(i)})
		return err
	}
	for i := range MaxWorkspaceLayers {
		if err := snap(i); err != nil {
			t.Fatalf("snapshot %d: %v", i, err)
		}
	}
	if err := snap(MaxWorkspaceLayers); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "paddock workspace resize long 67108864") {
		t.Fatalf("snapshot past the bound: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := h.sys.ResizeWorkspace(ctx, ResizeWorkspace{Caller: wsAlice, Ref: "long", Size: 64 << 20})
	if err != nil || len(w.Backing) != 0 || state.LayerFormat(w.TopFile()) != "raw" || len(w.Snapshots) != MaxWorkspaceLayers {
		t.Fatalf("flatten: %+v %v", w, err)
	}
	h.wantTree(t, "long", "v1")
	if err := snap(MaxWorkspaceLayers); err != nil {
		t.Fatalf("snapshot after the flatten: %v", err)
	}
}
