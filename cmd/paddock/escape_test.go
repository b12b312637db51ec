package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/varlink"
)

// evil is what a hostile image, guest or user puts in a string: a title
// change, a screen clear, a clipboard write, a C1 CSI, a direction
// override, a forged line and a forged column.
const evil = "x\x1b]0;owned\a\x1b[2J\x1b]52;c;cm0gLXJmIH4=\a\u009b31m\u202eevil\nFORGED LINE\tcol"

// hostileDaemon serves every method the human printers read, each answer
// carrying evil in every string a daemon passes on from others.
func hostileDaemon(t *testing.T) string {
	t.Helper()
	stats := api.VMStats{VMID: "0123456789abcdef01234567", VMName: "vm" + evil, Health: "degraded" + evil, HealthReason: evil,
		Main: "running" + evil, MainExit: evil, LastActivity: evil, ActivityCause: evil, AutoStopAt: evil,
		Ports: []api.Port{{Proto: "tcp", Port: 9000, PID: 7, Process: evil, Scheme: "tcp" + evil, URL: "tcp://" + evil}}}
	vm := api.VM{ID: "0123456789abcdef01234567", Name: "vm" + evil, Status: "error" + evil, Reason: evil, CreatedAt: evil}
	vm.Spec.Image = evil
	reply := func(v any) varlink.Handler {
		return func(_ context.Context, c *varlink.Call) error { return c.Reply(v) }
	}
	methods := map[string]varlink.Handler{
		"ListImages": reply(api.ImagesOut{Images: []api.Image{{Digest: "sha256:" + strings.Repeat("a", 64), Names: []string{evil}, Size: 1}}}),
		"Events": func(_ context.Context, c *varlink.Call) error {
			ev := api.Event{Seq: 1, Time: evil, Kind: api.EventKind("health" + evil), VMName: "vm" + evil, Status: "degraded" + evil, PreviousStatus: evil, Reason: evil}
			if err := c.Continue(api.EventOut{Event: ev}); err != nil {
				return err
			}
			return c.Reply(api.EventOut{})
		},
		"Stats":       reply(api.StatsOut{Stats: []api.VMStats{stats}}),
		"List":        reply(api.ListOut{VMs: []api.VM{vm}}),
		"Get":         reply(api.VMOut{VM: vm}),
		"Info":        reply(api.InfoOut{Version: evil, StateDir: evil, RuntimeDir: evil, Socket: evil, Health: api.Health(evil), Problems: []string{evil}}),
		"Version":     reply(api.VersionOut{Version: evil, API: evil, GoVersion: evil}),
		"ListKernels": reply(api.KernelsOut{Kernels: []api.Kernel{{Name: evil, Release: evil, Created: evil}}}),
		"PruneImages": reply(api.RemovedOut{Removed: []string{evil}}),
	}
	full := map[string]varlink.Handler{}
	for m, h := range methods {
		full[api.Interface+"."+m] = h
	}
	srv, err := varlink.NewServer(varlink.Config{Interfaces: map[string]string{api.Interface: "interface " + api.Interface}, Methods: full})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return sock
}

// Every human output shows what others supplied as visible escapes: no
// control character, no direction override, no line or column it did not
// make itself. JSON keeps the strings exact.
func TestHumanOutputIsEscaped(t *testing.T) {
	sock := hostileDaemon(t)
	for _, args := range [][]string{
		{"image", "ls"}, {"events"}, {"ports", "vm"}, {"health", "vm"}, {"stats"}, {"ls"}, {"ls", "-q"},
		{"inspect", "vm"}, {"info"}, {"version"}, {"kernel", "ls"}, {"image", "prune"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := run(append([]string{"--socket", sock}, args...), &out, &errOut); code != 0 {
				t.Fatalf("exit %d: %s", code, errOut.String())
			}
			for _, r := range out.String() {
				if r != '\n' && (unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r)) {
					t.Fatalf("raw %U in output:\n%q", r, out.String())
				}
			}
			if strings.Contains(out.String(), "\nFORGED LINE") {
				t.Fatalf("a value forged a line:\n%s", out.String())
			}
			if args[0] != "ls" || len(args) == 1 {
				if !strings.Contains(out.String(), `\x1b]0;owned\a`) {
					t.Fatalf("the escape is not shown as text:\n%s", out.String())
				}
			}
		})
	}
	// JSON stays exact.
	var out bytes.Buffer
	if code := run([]string{"--socket", sock, "ports", "vm", "--json"}, &out, &bytes.Buffer{}); code != 0 {
		t.Fatal("ports --json failed")
	}
	var ps []api.Port
	if err := json.Unmarshal(out.Bytes(), &ps); err != nil || len(ps) != 1 || ps[0].Process != evil {
		t.Fatalf("ports --json: %v %+v", err, ps)
	}
}

func TestSafef(t *testing.T) {
	for _, tc := range []struct {
		format string
		args   []any
		want   string
	}{
		{"%s: %d", []any{"a\nb", 3}, `a\nb: 3`},
		{"%s", []any{errString("e\x1b[2J")}, `e\x1b[2J`},
		{"%s %s", []any{api.EventKind("k\t"), "ok"}, `k\t ok`},
		{"%v", []any{1.5}, "1.5"},
	} {
		if got := safef(tc.format, tc.args...); got != tc.want {
			t.Errorf("safef(%q, %q) = %q, want %q", tc.format, tc.args, got, tc.want)
		}
	}
	if got := termField("tab\there\nline"); got != `tab\there\nline` {
		t.Errorf("termField: %q", got)
	}
}

type errString string

func (e errString) Error() string { return string(e) }
