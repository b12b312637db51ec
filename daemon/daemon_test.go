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
	"github.com/paddock-vm/paddock/varlink"
)

var update = flag.Bool("update", false, "rewrite golden files")

func newTestDaemon(t *testing.T) *Daemon {
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
	for name, pid := range map[string]any{"manager": d.actors.Manager, "stats": d.actors.Stats, "import": d.actors.Import, "events": d.actors.Events} {
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

func TestMapErrorNamesEveryKind(t *testing.T) {
	for _, tc := range []struct {
		err   error
		want  string
		param string
	}{
		{&actors.Error{Kind: actors.ErrNotFound, VM: "web9", Msg: "no VM named web9"}, api.ErrVMNotFound, `"vm":"web9"`},
		{&actors.Error{Kind: actors.ErrNameInUse, Name: "web1", Msg: "m"}, api.ErrNameInUse, `"name":"web1"`},
		{&actors.Error{Kind: actors.ErrInvalidArgument, Field: "cpus", Msg: "m"}, api.ErrInvalidArgument, `"field":"cpus"`},
		{&actors.Error{Kind: actors.ErrInvalidState, VM: "web1", Status: "running", Msg: "m"}, api.ErrInvalidState, `"status":"running"`},
		{&actors.Error{Kind: actors.ErrPermissionDenied, VM: "web1", Msg: "m"}, api.ErrPermissionDenied, `"vm":"web1"`},
		{fmt.Errorf("persist: %w", os.ErrPermission), api.ErrInternal, "permission denied"},
		{context.DeadlineExceeded, api.ErrInternal, "in time"},
		{varlink.NewError(varlink.ErrInvalidParameter, map[string]string{"parameter": "x"}), varlink.ErrInvalidParameter, `"x"`},
	} {
		got := mapError(tc.err)
		if got.Name != tc.want || !strings.Contains(string(got.Parameters), tc.param) {
			t.Errorf("mapError(%v) = %s %s, want %s with %s", tc.err, got.Name, got.Parameters, tc.want, tc.param)
		}
	}
}
