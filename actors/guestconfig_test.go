package actors

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/paddock-vm/paddock/state"
)

func TestGuestConfig(t *testing.T) {
	const image = `{"Entrypoint":["/bin/app"],"Cmd":["--serve"],"Env":["PATH=/bin","MODE=prod"],"WorkingDir":"/srv","User":"app","Restart":"always"}`
	list := func(s ...string) *[]string { return &s }
	cases := []struct {
		name   string
		config string
		spec   state.Spec
		want   map[string]any // keys of the (inner) config after; others unchanged
	}{
		{"nothing to change", image, state.Spec{}, nil},
		{"env replaces by key and adds", image, state.Spec{Env: []string{"MODE=dev", "X=1"}},
			map[string]any{"Env": []any{"PATH=/bin", "MODE=dev", "X=1"}}},
		{"cmd replaces the image's cmd", image, state.Spec{Cmd: []string{"sleep", "1000"}},
			map[string]any{"Cmd": []any{"sleep", "1000"}}},
		{"entrypoint drops the image's cmd", image, state.Spec{Entrypoint: list("/bin/sh", "-c")},
			map[string]any{"Entrypoint": []any{"/bin/sh", "-c"}, "Cmd": []any{}}},
		{"entrypoint with cmd", image, state.Spec{Entrypoint: list("/bin/sh"), Cmd: []string{"-c", "echo hi"}},
			map[string]any{"Entrypoint": []any{"/bin/sh"}, "Cmd": []any{"-c", "echo hi"}}},
		{"empty entrypoint clears it", image, state.Spec{Entrypoint: list(), Cmd: []string{"/bin/true"}},
			map[string]any{"Entrypoint": []any{}, "Cmd": []any{"/bin/true"}}},
		{"workdir and user", image, state.Spec{Workdir: "/tmp", User: "1000:1000"},
			map[string]any{"WorkingDir": "/tmp", "User": "1000:1000"}},
		{"an empty config gets the fields", "", state.Spec{Cmd: []string{"sh"}, Env: []string{"A=1"}},
			map[string]any{"Cmd": []any{"sh"}, "Env": []any{"A=1"}}},
	}
	for _, tc := range cases {
		for _, nested := range []bool{false, true} {
			config := tc.config
			if nested && config != "" {
				config = `{"architecture":"amd64","config":` + config + `}`
			}
			t.Run(tc.name, func(t *testing.T) {
				out, err := guestConfig([]byte(config), tc.spec, nil)
				if err != nil {
					t.Fatal(err)
				}
				if tc.want == nil {
					if string(out) != config {
						t.Fatalf("changed with nothing to change: %s", out)
					}
					return
				}
				got := map[string]any{}
				if err := json.Unmarshal(out, &got); err != nil {
					t.Fatal(err)
				}
				if nested && config != "" {
					if got["architecture"] != "amd64" {
						t.Fatalf("outer document lost: %s", out)
					}
					got = got["config"].(map[string]any)
				}
				want := map[string]any{}
				if tc.config != "" {
					_ = json.Unmarshal([]byte(tc.config), &want)
				}
				for k, v := range tc.want {
					want[k] = v
				}
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("got  %v\nwant %v", got, want)
				}
			})
		}
	}
	if _, err := guestConfig([]byte("not json"), state.Spec{Cmd: []string{"x"}}, nil); err == nil {
		t.Fatal("a broken config was accepted")
	}
}
