package actors

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/state"
)

// quick is a request that must be answered at once, whatever layer work
// runs meanwhile.
func (h *wsHarness) quick(t *testing.T, msg any) (*WorkspaceResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return h.sys.WorkspaceRequest(ctx, msg)
}

// inBackground sends msg and returns where its answer comes.
func (h *wsHarness) inBackground(msg any) chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := h.sys.WorkspaceRequest(ctx, msg)
		done <- err
	}()
	return done
}

func waitSignal(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s never happened", what)
	}
}

// A snapshot, a restore or a clone whose top layer is slow to make holds
// only its own workspaces: meanwhile ls and inspect answer at once (a
// clone's name listed "creating"), another workspace is exported, a second
// request on a busy workspace is refused saying what it waits for, and
// when the layer work ends the request is answered with the new state.
func TestWorkspaceLayerOpsOffMailbox(t *testing.T) {
	for _, c := range []struct {
		name    string
		msg     any
		busy    string // the workspace held busy, and why
		why     string
		listed  []string
		wantRef string // a workspace that then holds v1
	}{
		{"snapshot", &SnapshotWorkspace{Caller: wsAlice, Ref: "proj", Snapshot: "s2"}, "proj", "being snapshotted", []string{"other:ready", "proj:ready"}, "proj"},
		{"restore", &RestoreWorkspace{Caller: wsAlice, Ref: "proj", Snapshot: "s1"}, "proj", "being restored", []string{"other:ready", "proj:ready"}, "proj"},
		{"clone", &CloneWorkspace{Caller: wsAlice, Ref: "proj", Name: "copy"}, "proj", "being cloned", []string{"copy:creating", "other:ready", "proj:ready"}, "copy"},
		{"clone of a snapshot", &CloneWorkspace{Caller: wsAlice, Ref: "proj", Name: "copy", Snapshot: "s1"}, "proj", "being cloned", []string{"copy:creating", "other:ready", "proj:ready"}, "copy"},
	} {
		t.Run(c.name, func(t *testing.T) {
			fb := &fakeBuild{overlay: true}
			h := startWorkspaces(t, t.TempDir(), fb)
			for n, tree := range map[string]string{"proj": "v1", "other": "o"} {
				if _, err := h.create(t, wsAlice, n, tree); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := h.do(t, &SnapshotWorkspace{Caller: wsAlice, Ref: "proj", Snapshot: "s1"}); err != nil {
				t.Fatal(err)
			}
			fb.topStarted, fb.topGate = make(chan struct{}, 1), make(chan struct{})
			done := h.inBackground(c.msg)
			waitSignal(t, fb.topStarted, c.name+"'s new top")

			r, err := h.quick(t, &ListWorkspaces{Caller: wsAlice})
			if err != nil {
				t.Fatalf("ls during the %s: %v", c.name, err)
			}
			var listed []string
			for _, w := range r.Workspaces {
				listed = append(listed, w.Name+":"+string(w.Status))
			}
			if !slices.Equal(listed, c.listed) {
				t.Fatalf("ls during the %s: %v, want %v", c.name, listed, c.listed)
			}
			if _, err := h.quick(t, &GetWorkspace{Caller: wsAlice, Ref: "other"}); err != nil {
				t.Fatalf("inspect other during the %s: %v", c.name, err)
			}
			if got, err := h.export(t, wsAlice, "other"); err != nil || got != "o" {
				t.Fatalf("export of other during the %s: %q %v", c.name, got, err)
			}
			for _, second := range []any{
				&SnapshotWorkspace{Caller: wsAlice, Ref: c.busy, Snapshot: "s3"},
				&CloneWorkspace{Caller: wsAlice, Ref: c.busy, Name: "copy2"},
				&RemoveWorkspace{Caller: wsAlice, Ref: c.busy},
			} {
				_, err := h.quick(t, second)
				if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "workspace "+c.busy+" is "+c.why+": try again when that is done") {
					t.Fatalf("%T during the %s: %v", second, c.name, err)
				}
			}
			if strings.HasPrefix(c.name, "clone") {
				if _, err := h.quick(t, &CloneWorkspace{Caller: wsAlice, Ref: "other", Name: "copy"}); !errors.Is(err, ErrNameInUse) {
					t.Fatalf("a second clone named copy: %v", err)
				}
				if _, err := h.quick(t, &RemoveWorkspace{Caller: wsAlice, Ref: "copy"}); !errors.Is(err, ErrInvalidState) {
					t.Fatalf("rm of the clone being made: %v", err)
				}
			}
			select {
			case err := <-done:
				t.Fatalf("the %s ended before its top was made: %v", c.name, err)
			default:
			}

			close(fb.topGate)
			if err := <-done; err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			h.wantTree(t, c.wantRef, "v1")
			h.wantTree(t, "other", "o")
			if _, err := h.quick(t, &SnapshotWorkspace{Caller: wsAlice, Ref: c.busy, Snapshot: "after"}); err != nil {
				t.Fatalf("a snapshot once the %s is done: %v", c.name, err)
			}
		})
	}
}

// A panic of the Workspaces actor in the middle of a clone (before the
// clone's record is written, or while its top is made): the restarted
// actor reloads its state (sweeping what earlier crashes left) without
// touching the clone's files, keeps its name taken, and the clone ends
// well: the new workspace holds the source's tree, the source is whole,
// no stray file or layer is left, and removing both leaves nothing.
func TestWorkspaceCloneAcrossActorRestart(t *testing.T) {
	for _, at := range []string{"workspace-snapshot-frozen", "new top"} {
		t.Run(at, func(t *testing.T) {
			fb := &fakeBuild{overlay: true}
			dir := t.TempDir()
			h := startWorkspaces(t, dir, fb)
			if _, err := h.create(t, wsAlice, "proj", "v1"); err != nil {
				t.Fatal(err)
			}
			reached, release := make(chan struct{}, 1), make(chan struct{})
			if at == "new top" {
				fb.topStarted, fb.topGate = reached, release
			} else {
				var once sync.Once
				failpointHook = func(name string) {
					if name == at {
						once.Do(func() { reached <- struct{}{}; <-release })
					}
				}
				t.Cleanup(func() { failpointHook = nil })
			}
			done := h.inBackground(&CloneWorkspace{Caller: wsAlice, Ref: "proj", Name: "copy"})
			waitSignal(t, reached, at)

			// What an earlier crash left, which the restarted actor sweeps.
			left := filepath.Join(h.store.Root, ".deleted-"+state.NewID())
			if err := os.Mkdir(left, 0o700); err != nil {
				t.Fatal(err)
			}
			layersBefore, _ := os.ReadDir(h.store.Layer(""))
			h.sys.sys.Root.Send(h.sys.Workspaces, &crashWorkspaces{})
			if got := h.names(t, wsAlice); len(got) != 2 || !strings.HasPrefix(got[0], "copy@") || !strings.HasSuffix(got[0], ":creating") || !strings.HasSuffix(got[1], ":ready") {
				t.Fatalf("ls after the restart: %v", got)
			}
			if _, err := os.Stat(left); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the restarted actor did not reload (what a crash left is still there): %v", err)
			}
			if layersAfter, _ := os.ReadDir(h.store.Layer("")); len(layersAfter) != len(layersBefore) || len(layersAfter) != 1 {
				t.Fatalf("layers: %d before the restart, %d after, want the clone's frozen one kept", len(layersBefore), len(layersAfter))
			}
			if _, err := h.quick(t, &CloneWorkspace{Caller: wsAlice, Ref: "proj", Name: "copy"}); err == nil {
				t.Fatal("a second clone of the busy source after the restart was taken")
			}

			close(release)
			if err := <-done; err != nil {
				t.Fatalf("the clone across the restart: %v", err)
			}
			h.wantTree(t, "copy", "v1")
			h.wantTree(t, "proj", "v1")
			ws, err := workspaceDirs(h.store)
			if err != nil || len(ws) != 2 {
				t.Fatalf("workspace directories: %v %v", ws, err)
			}
			for _, d := range ws {
				if es, _ := os.ReadDir(filepath.Join(h.store.Root, d.Name())); len(es) != 2 {
					t.Fatalf("workspace %s holds %d files, want its record and its top", d.Name(), len(es))
				}
			}
			for _, n := range []string{"copy", "proj"} {
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
