package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/api"
)

// Published ports and networks through the CLI, on a daemon without
// privileges: run/create -p and --network, refusals naming the value with
// nothing made, set and set --reset while stopped, inspect and ports. No
// VM boots (vm.run = "off").
func TestPortsCLI(t *testing.T) {
	e := usersEnv(t, "")
	e.waitReady(t, e.usersDaemon(t, false))

	out := e.runAs(t, alice, nil, "create", "web", "--image", "alpine", "-p", "18080:8080", "-p", "127.0.0.1:18443:443/tcp", "-p", "15353:53/udp", "--network", "shared:grp", "--json").ok(t, "create with ports")
	var vm api.VM
	if err := json.Unmarshal([]byte(out), &vm); err != nil {
		t.Fatal(err)
	}
	want := []api.PortMapping{{HostPort: 18080, GuestPort: 8080, Proto: "tcp"}, {HostIP: "127.0.0.1", HostPort: 18443, GuestPort: 443, Proto: "tcp"}, {HostPort: 15353, GuestPort: 53, Proto: "udp"}}
	if len(vm.Spec.Ports) != 3 || vm.Spec.Ports[0] != want[0] || vm.Spec.Ports[1] != want[1] || vm.Spec.Ports[2] != want[2] || vm.Spec.Network != "shared:grp" {
		t.Fatalf("created spec: %+v", vm.Spec)
	}
	if vm.Network == nil || vm.Network.Mode != "shared:grp" {
		t.Fatalf("network: %+v", vm.Network)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-p", "70000:80"}, `port mapping "70000:80": HOSTPORT 70000 is out of range`},
		{[]string{"-p", "18081:80", "-p", "18081:81"}, "host port 18081/tcp is published twice"},
		{[]string{"-p", "18082:80", "-p", "127.0.0.1:18082:81"}, "already published by 18082:80/tcp"},
		{[]string{"-p", "192.0.2.77:18083:80"}, "HOSTIP 192.0.2.77 is not an address of this host"},
		{[]string{"-p", "80:80"}, "host port 80 is privileged"},
		{[]string{"--network", "shared:Bad"}, `group "Bad" must be`},
		{[]string{"--network", "host"}, `network "host" is not bridge, user or shared:GROUP`},
	} {
		r := e.runAs(t, alice, nil, append([]string{"create", "bad", "--image", "alpine"}, tc.args...)...)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("create %v: exit %d, stderr %q; want a refusal naming %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
	if out := e.runAs(t, alice, nil, "ls", "-q").ok(t, "ls"); strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Fatalf("a refused create left a VM behind:\n%s", out)
	}
	// An admin may publish a privileged port.
	e.runAs(t, carol, nil, "create", "priv", "--image", "alpine", "-p", "80:80").ok(t, "an admin publishes port 80")

	e.runAs(t, alice, nil, "set", "web", "-p", "18090:90").ok(t, "set replaces the ports")
	insp := e.runAs(t, alice, nil, "inspect", "web").ok(t, "inspect")
	for _, w := range []string{"Network", "shared:grp", "DNS", "Ports", "18090:90/tcp"} {
		if !strings.Contains(insp, w) {
			t.Errorf("inspect does not show %q:\n%s", w, insp)
		}
	}
	if strings.Contains(insp, "18080") {
		t.Errorf("inspect still shows the replaced port:\n%s", insp)
	}
	ports := e.runAs(t, alice, nil, "ports", "web").ok(t, "ports of a stopped VM")
	if !strings.Contains(ports, "0.0.0.0:18090/tcp") || !strings.Contains(ports, "90/tcp") || !strings.Contains(ports, ":18090") {
		t.Errorf("ports:\n%s", ports)
	}
	var entries []struct {
		Published *api.PortMapping `json:"published"`
		HostURL   string           `json:"host_url"`
	}
	if err := json.Unmarshal([]byte(e.runAs(t, alice, nil, "ports", "web", "--json").ok(t, "ports --json")), &entries); err != nil ||
		len(entries) != 1 || entries[0].Published == nil || entries[0].Published.HostPort != 18090 || !strings.HasSuffix(entries[0].HostURL, ":18090") {
		t.Fatalf("ports --json: %v %+v", err, entries)
	}

	e.runAs(t, alice, nil, "set", "web", "--reset", "ports,network").ok(t, "set --reset ports,network")
	if err := json.Unmarshal([]byte(e.runAs(t, alice, nil, "inspect", "web", "--json").ok(t, "inspect --json")), &vm); err != nil {
		t.Fatal(err)
	}
	if len(vm.Spec.Ports) != 0 || vm.Spec.Network != "" || vm.Network == nil || vm.Network.Mode != "bridge" {
		t.Fatalf("after reset: spec %+v network %+v", vm.Spec, vm.Network)
	}
	r := e.runAs(t, alice, nil, "set", "web", "-p", "80:80")
	if r.code == 0 || !strings.Contains(r.stderr, "privileged") {
		t.Fatalf("set -p 80:80 as alice: exit %d %q", r.code, r.stderr)
	}
}
