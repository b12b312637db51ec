package daemon

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/config"
	"github.com/paddock-vm/paddock/daemon/dbusapi"
	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/varlink"
)

var update = flag.Bool("update", false, "rewrite golden files")

func newTestDaemon(t testing.TB) *Daemon {
	t.Helper()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.StateDir, cfg.RuntimeDir, cfg.CacheDir = filepath.Join(dir, "state"), filepath.Join(dir, "run"), filepath.Join(dir, "cache")
	cfg.Log.Format = "text"
	cfg.VM.Run = "off" // unit tests never touch host devices
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d, err := New(context.Background(), "", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.actors.Shutdown)
	return d
}

// The surface clients see: every method name and the exact interface
// description. A refactor that changes either must update the golden file
// on purpose (go test ./daemon -update).
func TestDispatchSurfaceGolden(t *testing.T) {
	d := newTestDaemon(t)
	var names []string
	for m := range d.dispatch() {
		names = append(names, m)
	}
	sort.Strings(names)
	got := "# methods\n" + strings.Join(names, "\n") + "\n\n# " + api.Interface + ".varlink\n" + api.Description
	golden := filepath.Join("testdata", "surface.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./daemon -update to create it)", err)
	}
	if got != string(want) {
		t.Fatalf("the API surface changed; if that is intended, run go test ./daemon -update\n--- got ---\n%s", got)
	}
}

// Start-up populates every actor and every dispatch entry: each method the
// interface declares has a handler, and no handler serves an undeclared one.
func TestWiring(t *testing.T) {
	d := newTestDaemon(t)
	for name, pid := range map[string]any{"manager": d.actors.Manager, "stats": d.actors.Stats, "import": d.actors.Import, "workspaces": d.actors.Workspaces, "events": d.actors.Events} {
		if pid == nil {
			t.Errorf("actor %s not spawned", name)
		}
	}
	if err := d.actors.Ping(context.Background()); err != nil {
		t.Fatalf("actor tree not answering: %v", err)
	}
	table := d.dispatch()
	declared := varlink.Methods(api.Description)
	if len(declared) == 0 || varlink.InterfaceName(api.Description) != api.Interface {
		t.Fatalf("description does not parse: %d methods, interface %q", len(declared), varlink.InterfaceName(api.Description))
	}
	for _, m := range declared {
		if table[api.Interface+"."+m] == nil {
			t.Errorf("method %s declared but not dispatched", m)
		}
	}
	if len(table) != len(declared) {
		t.Errorf("dispatch has %d entries, interface declares %d", len(table), len(declared))
	}
	if d.server == nil {
		t.Fatal("no API server")
	}
}

// Every class and kind reaches the client as its own varlink error, with
// the culprit in the parameters and the text unchanged.
func TestMapError(t *testing.T) {
	timeout := &actors.Error{Kind: errdefs.ErrDeadlineExceeded, VM: "web1", Msg: "start of VM web1: no answer within 2m0s; …"}
	for _, tc := range []struct {
		name   string
		err    error
		want   string
		params []string
	}{
		{"vm not found", &actors.Error{Kind: actors.ErrNotFound, VM: "web9", Msg: "no VM named web9"}, api.ErrVMNotFound, []string{`"vm":"web9"`, `"message":"no VM named web9"`}},
		{"name in use", &actors.Error{Kind: actors.ErrNameInUse, Name: "web1", Msg: "m"}, api.ErrNameInUse, []string{`"name":"web1"`}},
		{"invalid argument", &actors.Error{Kind: actors.ErrInvalidArgument, Field: "cpus", Msg: "m"}, api.ErrInvalidArgument, []string{`"field":"cpus"`}},
		{"invalid state", &actors.Error{Kind: actors.ErrInvalidState, VM: "web1", Status: "running", Msg: "m"}, api.ErrInvalidState, []string{`"status":"running"`, `"vm":"web1"`}},
		{"permission denied", &actors.Error{Kind: actors.ErrPermissionDenied, VM: "web1", Msg: "m"}, api.ErrPermissionDenied, []string{`"vm":"web1"`}},
		{"image not found (actors)", &actors.Error{Kind: actors.ErrImageNotFound, VM: "alpine", Msg: "m"}, api.ErrImageNotFound, []string{`"image":"alpine"`}},
		{"image not found (store)", fmt.Errorf("image %q: %w", "busybox", imaging.ErrImageNotFound), api.ErrImageNotFound, []string{`image \"busybox\": image not found`}},
		{"workspace not found", &actors.Error{Kind: actors.ErrWorkspaceNotFound, VM: "proj", Msg: "no workspace named \"proj\""}, api.ErrWorkspaceNotFound, []string{`"workspace":"proj"`}},
		{"image in use", &actors.Error{Kind: actors.ErrImageInUse, VM: "alpine", Msg: "m"}, api.ErrImageInUse, []string{`"image":"alpine"`}},
		{"agent unavailable", &actors.Error{Kind: actors.ErrAgentUnavailable, VM: "web1", Msg: "the agent of VM web1 is not connected (yet)"}, api.ErrUnavailable, []string{"not connected"}},
		{"unavailable", errdefs.Newf(errdefs.ErrUnavailable, "cannot start VM web1: QEMU binary %q: not found", "qemu"), api.ErrUnavailable, []string{`cannot start VM web1: QEMU binary \"qemu\"`}},
		{"not implemented", &actors.Error{Kind: actors.ErrNotYet, Msg: "stats: not implemented yet"}, api.ErrUnavailable, []string{"not implemented yet"}},
		{"other not found is the caller's argument", errdefs.New(errdefs.ErrNotFound, "no boot kit named x"), api.ErrInvalidArgument, []string{"no boot kit named x"}},
		{"request timeout", timeout, api.ErrTimeout, []string{`"vm":"web1"`, "start of VM web1: no answer"}},
		{"wrapped timeout keeps its context", fmt.Errorf("exec: %w", timeout), api.ErrTimeout, []string{`"vm":"web1"`, "exec: start of VM web1"}},
		{"bare context deadline", context.DeadlineExceeded, api.ErrTimeout, []string{"api.request_timeout"}},
		{"unclassed", fmt.Errorf("persist: %w", os.ErrPermission), api.ErrInternal, []string{"persist: permission denied"}},
		{"varlink error passes", varlink.NewError(varlink.ErrInvalidParameter, map[string]string{"parameter": "x"}), varlink.ErrInvalidParameter, []string{`"x"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := mapError(tc.err)
			if got.Name != tc.want {
				t.Fatalf("mapError(%v) = %s %s, want %s", tc.err, got.Name, got.Parameters, tc.want)
			}
			for _, p := range tc.params {
				if !strings.Contains(string(got.Parameters), p) {
					t.Errorf("parameters %s lack %s", got.Parameters, p)
				}
			}
		})
	}
}

// Every error the interface declares is one the table can produce, and the
// table names no undeclared error.
func TestErrorTableMatchesInterface(t *testing.T) {
	declared := map[string]bool{}
	for _, line := range strings.Split(api.Description, "\n") {
		if name, ok := strings.CutPrefix(line, "error "); ok {
			declared[api.Interface+"."+strings.Fields(name)[0]] = true
		}
	}
	produced := map[string]bool{}
	for _, r := range errorTable {
		if !declared[r.name] {
			t.Errorf("the table maps %v to %s, which the interface does not declare", r.class, r.name)
		}
		produced[r.name] = true
	}
	for name := range declared {
		if !produced[name] {
			t.Errorf("the interface declares %s but no class maps to it", name)
		}
	}
	for _, class := range []error{errdefs.ErrNotFound, errdefs.ErrAlreadyExists, errdefs.ErrInvalidArgument, errdefs.ErrFailedPrecondition,
		errdefs.ErrPermissionDenied, errdefs.ErrUnavailable, errdefs.ErrDeadlineExceeded, errdefs.ErrCanceled, errdefs.ErrNotImplemented, errdefs.ErrInternal} {
		found := false
		for _, r := range errorTable {
			found = found || (r.class == class && r.kind == nil)
		}
		if !found {
			t.Errorf("class %v has no row for errors of no particular kind", class)
		}
	}
}

// The D-Bus front-end routes only into methods of the one dispatch table.
func TestDBusRoutesDispatched(t *testing.T) {
	d := newTestDaemon(t)
	table := d.dispatch()
	routes := dbusapi.Routes()
	if len(routes) == 0 {
		t.Fatal("the D-Bus surface routes nothing")
	}
	for _, m := range routes {
		if table[m] == nil {
			t.Errorf("D-Bus routes to %s, which the dispatch table lacks", m)
		}
	}
}

func TestWhichBus(t *testing.T) {
	for _, b := range []string{"system", "session", "off"} {
		if got := whichBus(b); got != b {
			t.Errorf("whichBus(%q) = %q", b, got)
		}
	}
	t.Setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent")
	want := "session"
	if os.Geteuid() == 0 {
		want = "system"
	}
	if got := whichBus("auto"); got != want {
		t.Errorf("whichBus(auto) = %q, want %q", got, want)
	}
}
