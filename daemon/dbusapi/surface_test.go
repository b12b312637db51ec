package dbusapi

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/varlink"
)

var update = flag.Bool("update", false, "rewrite golden files")

// The D-Bus surface clients see, pinned like the varlink surface: a change
// must update the golden file on purpose (go test ./daemon/dbusapi -update).
func TestIntrospectionGolden(t *testing.T) {
	got := Surface()
	golden := filepath.Join("testdata", "introspect.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./daemon/dbusapi -update to create it)", err)
	}
	if got != string(want) {
		t.Fatalf("the D-Bus surface changed; if that is intended, run go test ./daemon/dbusapi -update\n--- got ---\n%s", got)
	}
}

// Every property the VM interface declares is one vmProps fills (or the
// feed's own two), with the declared type.
func TestVMPropertiesMatchDeclared(t *testing.T) {
	props := vmProps(api.VM{})
	props["Health"], props["LastEventSeq"] = dbus.MakeVariant(""), dbus.MakeVariant(uint64(0))
	if len(props) != len(vmProperties) {
		t.Errorf("vmProps fills %d properties, the interface declares %d", len(props), len(vmProperties))
	}
	for _, p := range vmProperties {
		v, ok := props[p.name]
		if !ok {
			t.Errorf("property %s declared but not filled", p.name)
			continue
		}
		if v.Signature().String() != sig(p.val) {
			t.Errorf("property %s: filled as %s, declared %s", p.name, v.Signature(), sig(p.val))
		}
	}
}

// Every io.paddock.v1 error reaches a D-Bus caller as its own
// org.paddock1.Error name, with the text.
func TestErrorNames(t *testing.T) {
	for _, line := range strings.Split(api.Description, "\n") {
		name, ok := strings.CutPrefix(line, "error ")
		if !ok {
			continue
		}
		full := api.Interface + "." + strings.Fields(name)[0]
		de := dbusError(varlink.NewError(full, map[string]string{"message": "why"}))
		if errorNames[full] == "" || de.Name != ErrorPrefix+errorNames[full] || len(de.Body) != 1 || de.Body[0] != "why" {
			t.Errorf("%s maps to %s %v", full, de.Name, de.Body)
		}
	}
	if de := dbusError(varlink.NewError(api.ErrVMNotFound, nil)); de.Name != "org.paddock1.Error.NotFound" {
		t.Errorf("VMNotFound maps to %s", de.Name)
	}
	if de := dbusError(varlink.ErrShuttingDown); de.Name != ErrorPrefix+"Unavailable" {
		t.Errorf("shutdown maps to %s", de.Name)
	}
	if de := dbusError(errors.New("x")); de.Name != ErrorPrefix+"Internal" {
		t.Errorf("plain error maps to %s", de.Name)
	}
}

// a{sv} options become the varlink parameters they name, nested ones too.
func TestPlain(t *testing.T) {
	in := options{"name": dbus.MakeVariant("web"), "cpus": dbus.MakeVariant(int32(2)), "env": dbus.MakeVariant([]string{"A=1"}),
		"ports": dbus.MakeVariant([]map[string]dbus.Variant{{"guest_port": dbus.MakeVariant(int32(80))}})}
	got := plain(in).(map[string]any)
	if got["name"] != "web" || got["cpus"] != int32(2) || got["ports"].([]any)[0].(map[string]any)["guest_port"] != int32(80) {
		t.Fatalf("plain = %#v", got)
	}
}

// Paths name what they should; anything else is no object.
func TestLookupObject(t *testing.T) {
	s := newServer(Deps{})
	for path, want := range map[string]kind{"/": kindInner, "/org": kindInner, "/org/paddock1": kindManager, "/org/paddock1/vm": kindVMDir,
		"/org/paddock1/vm/0123abcd": kindVM, "/org/paddock1/job": kindJobDir, "/org/paddock1/job/7": kindJob} {
		o, ok := s.LookupObject(dbus.ObjectPath(path))
		if !ok || o.(*object).kind != want {
			t.Errorf("%s: %v %v", path, ok, o)
		}
	}
	for _, path := range []string{"/org/paddock1/vm/web_1", "/org/paddock1/job/x", "/org/other", "/org/paddock1/vm/ab/cd"} {
		if _, ok := s.LookupObject(dbus.ObjectPath(path)); ok {
			t.Errorf("%s: found", path)
		}
	}
}

// Stats figures reach D-Bus with types a client can read: integers as x,
// fractions as d, objects a{sv}, lists av, nulls left out.
func TestVariants(t *testing.T) {
	v, err := variants(map[string]any{"rss": int64(1) << 40, "rate": 0.25, "name": "w", "ok": true, "none": nil,
		"guest": map[string]any{"procs": 3}, "ws": []any{map[string]any{"used": 5}}})
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"rss": "x", "rate": "d", "name": "s", "ok": "b", "guest": "a{sv}", "ws": "av"} {
		if got := v[k].Signature().String(); got != want {
			t.Errorf("%s: %s, want %s", k, got, want)
		}
	}
	if _, ok := v["none"]; ok {
		t.Error("a null was kept")
	}
	if v["rss"].Value() != int64(1)<<40 {
		t.Errorf("rss %v", v["rss"].Value())
	}
	if g := v["guest"].Value().(map[string]dbus.Variant); g["procs"].Value() != int64(3) {
		t.Errorf("guest %v", g)
	}
}
