package actors

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/state"
)

func TestApplyRun(t *testing.T) {
	str := func(s string) *string { return &s }
	list := func(s ...string) *[]string { return &s }
	set := state.Spec{Kernel: "debian", Entrypoint: list("/bin/sh"), Cmd: []string{"-c", "x"}, Workdir: "/w", User: "app"}
	cases := []struct {
		name    string
		from    state.Spec
		change  RunChange
		want    state.Spec
		errText string // a refusal naming this
	}{
		{"nothing", state.Spec{}, RunChange{}, state.Spec{}, ""},
		{"every field", state.Spec{}, RunChange{Kernel: str("debian"), Entrypoint: list("/bin/sh"), Cmd: list("-c", "x"), Workdir: str("/w"), User: str("app")}, set, ""},
		{"empty entrypoint is kept as a clear", state.Spec{}, RunChange{Entrypoint: list()}, state.Spec{Entrypoint: &[]string{}}, ""},
		{"empty cmd is the image's", set, RunChange{Cmd: list()}, state.Spec{Kernel: "debian", Entrypoint: list("/bin/sh"), Workdir: "/w", User: "app"}, ""},
		{"empty strings are the defaults", set, RunChange{Kernel: str(""), Workdir: str(""), User: str("")}, state.Spec{Entrypoint: list("/bin/sh"), Cmd: []string{"-c", "x"}}, ""},
		{"reset every field", set, RunChange{Reset: []string{"kernel", "entrypoint", "cmd", "workdir", "user"}}, state.Spec{}, ""},
		{"reset then set", set, RunChange{Reset: []string{"cmd"}, Cmd: list("y")}, func() state.Spec { s := set; s.Cmd = []string{"y"}; return s }(), ""},
		{"numeric user and group", state.Spec{}, RunChange{User: str("1000:100")}, state.Spec{User: "1000:100"}, ""},
		{"unknown reset", state.Spec{}, RunChange{Reset: []string{"cpus"}}, state.Spec{}, `reset "cpus"`},
		{"bad kit name", state.Spec{}, RunChange{Kernel: str("../x")}, state.Spec{}, `kernel "../x"`},
		{"relative workdir", state.Spec{}, RunChange{Workdir: str("srv")}, state.Spec{}, `workdir "srv"`},
		{"user with a space", state.Spec{}, RunChange{User: str("a b")}, state.Spec{}, `user "a b"`},
		{"NUL in cmd", state.Spec{}, RunChange{Cmd: list("a\x00b")}, state.Spec{}, "NUL"},
		{"empty program", state.Spec{}, RunChange{Entrypoint: list("", "x")}, state.Spec{}, "empty program"},
		{"huge cmd", state.Spec{}, RunChange{Cmd: list(strings.Repeat("x", maxArgv))}, state.Spec{}, "at most"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.from
			err := applyRun(&s, tc.change)
			if tc.errText != "" {
				if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("err = %v, want InvalidArgument naming %q", err, tc.errText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(s, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", s, tc.want)
			}
		})
	}
}

// What shapes the boot changes only while a VM is down; auto-stop and
// no-op values may change any time.
func TestApplySetWhileRunning(t *testing.T) {
	str := func(s string) *string { return &s }
	running := state.VM{Name: "web", Status: state.StatusRunning, Spec: state.Spec{CPUs: 1, DiskSize: 1 << 30, Workdir: "/w"}}
	cases := []struct {
		name string
		m    SetVM
		err  string
	}{
		{"auto-stop", SetVM{AutoStop: str("30m")}, ""},
		{"same workdir", SetVM{RunChange: RunChange{Workdir: str("/w")}}, ""},
		{"reset of an unset field", SetVM{RunChange: RunChange{Reset: []string{"cmd"}}}, ""},
		{"new kernel", SetVM{RunChange: RunChange{Kernel: str("debian")}}, "cannot change kernel of VM web while it is running"},
		{"workdir and user", SetVM{RunChange: RunChange{Workdir: str("/x"), User: str("app")}}, "cannot change workdir, user"},
		{"reset of a set field", SetVM{RunChange: RunChange{Reset: []string{"workdir"}}}, "cannot change workdir"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := running.Spec
			err := applySet(&spec, &tc.m, running)
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidState) || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want InvalidState %q", err, tc.err)
			}
		})
	}
	stopped := running
	stopped.Status = state.StatusStopped
	spec := stopped.Spec
	if err := applySet(&spec, &SetVM{RunChange: RunChange{Kernel: str("debian"), Workdir: str("/x")}}, stopped); err != nil || spec.Kernel != "debian" || spec.Workdir != "/x" {
		t.Fatalf("set while stopped: %v %+v", err, spec)
	}
}
