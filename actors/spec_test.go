package actors

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/netspec"
	"github.com/paddock-vm/paddock/state"
)

var web = netspec.PortMapping{HostPort: 8080, GuestPort: 80, Proto: netspec.TCP}

func ports(p ...netspec.PortMapping) *[]netspec.PortMapping { return &p }

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
		{"ports and network", state.Spec{}, RunChange{Ports: ports(web), Network: str("shared:g")}, state.Spec{Ports: []netspec.PortMapping{web}, Network: "shared:g"}, ""},
		{"no ports is none", state.Spec{Ports: []netspec.PortMapping{web}}, RunChange{Ports: ports()}, state.Spec{}, ""},
		{"reset ports and network", state.Spec{Ports: []netspec.PortMapping{web}, Network: "user"}, RunChange{Reset: []string{"ports", "network"}}, state.Spec{}, ""},
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
	running := state.VM{Name: "web", Status: state.StatusRunning, Spec: state.Spec{CPUs: 1, DiskSize: 1 << 30, Workdir: "/w", Ports: []netspec.PortMapping{web}}}
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
		{"same ports", SetVM{RunChange: RunChange{Ports: ports(web)}}, ""},
		{"new ports", SetVM{RunChange: RunChange{Ports: ports(web, netspec.PortMapping{HostPort: 9090, GuestPort: 90, Proto: netspec.UDP})}}, "cannot change ports of VM web while it is running"},
		{"ports reset", SetVM{RunChange: RunChange{Reset: []string{"ports"}}}, "cannot change ports"},
		{"network", SetVM{RunChange: RunChange{Network: str("user")}}, "cannot change network"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := running.Spec
			err := applySet(&spec, &tc.m, running, nil)
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
	if err := applySet(&spec, &SetVM{RunChange: RunChange{Kernel: str("debian"), Workdir: str("/x")}}, stopped, nil); err != nil || spec.Kernel != "debian" || spec.Workdir != "/x" {
		t.Fatalf("set while stopped: %v %+v", err, spec)
	}
}

// A set's or a create's ports and network are checked with the host's
// facts as the caller sees them; a change that touches neither is not.
func TestCheckNet(t *testing.T) {
	str := func(s string) *string { return &s }
	lo := netspec.PortMapping{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 8080, GuestPort: 80, Proto: netspec.TCP}
	h := NetFacts(func(admin bool) (netspec.Facts, error) {
		return netspec.Facts{HostAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, UnprivilegedPortStart: 1024, Admin: admin, Networks: []string{netspec.Bridge}}, nil
	})
	cases := []struct {
		name   string
		spec   state.Spec
		change RunChange
		caller Caller
		field  string // the refusal's field; "" for none
		err    string
	}{
		{"nothing touched", state.Spec{Ports: []netspec.PortMapping{{HostPort: 80, GuestPort: 80, Proto: "tcp"}}, Network: "user"}, RunChange{}, Caller{UID: 1000}, "", ""},
		{"fine", state.Spec{Ports: []netspec.PortMapping{lo}}, RunChange{Ports: ports(lo)}, Caller{UID: 1000}, "", ""},
		{"privileged for an admin", state.Spec{Ports: []netspec.PortMapping{{HostPort: 80, GuestPort: 80, Proto: "tcp"}}}, RunChange{Ports: ports()}, Caller{Admin: true}, "", ""},
		{"privileged", state.Spec{Ports: []netspec.PortMapping{{HostPort: 80, GuestPort: 80, Proto: "tcp"}}}, RunChange{Ports: ports()}, Caller{UID: 1000}, "ports", "needs CAP_NET_BIND_SERVICE"},
		{"twice", state.Spec{Ports: []netspec.PortMapping{web, lo}}, RunChange{Ports: ports()}, Caller{UID: 1000}, "ports", "already published by 8080:80/tcp"},
		{"not offered", state.Spec{Network: "user"}, RunChange{Network: str("user")}, Caller{UID: 1000}, "network", "offers bridge only"},
		{"bad name", state.Spec{Network: "x"}, RunChange{Network: str("x")}, Caller{UID: 1000}, "network", `network "x" is not`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := checkNet(h, tc.spec, tc.change, tc.caller)
			if tc.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) || !errors.Is(err, ErrInvalidArgument) || e.Field != tc.field || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want InvalidArgument on %s naming %q", err, tc.field, tc.err)
			}
		})
	}
}
