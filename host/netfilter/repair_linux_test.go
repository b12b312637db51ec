package netfilter

import (
	"context"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/netspec"
)

// listTables is nft's listing of paddock's tables, with or without handles
// (a repaired table must equal the original without them).
func listTables(t *testing.T, tns *testNS, handles bool) string {
	t.Helper()
	args := []string{"list", "table"}
	if handles {
		args = append([]string{"-a"}, args...)
	}
	return tns.nft(t, "", append(args, "inet", testTable)...) + tns.nft(t, "", append(args, "bridge", testTable)...)
}

// handleOf finds the handle of the first rule line containing text.
func handleOf(t *testing.T, listing, text string) string {
	t.Helper()
	for _, l := range strings.Split(listing, "\n") {
		if strings.Contains(l, text) {
			if m := regexp.MustCompile(`# handle (\d+)$`).FindStringSubmatch(l); m != nil {
				return m[1]
			}
		}
	}
	t.Fatalf("no rule with %q in:\n%s", text, listing)
	return ""
}

// TestRepairAndChange: drift in paddock's tables is repaired, foreign rules
// in them are left alone, VM rules change as one unit, and a group chain
// lives as long as its members.
func TestRepairAndChange(t *testing.T) {
	requireRoot(t)
	nftPath(t)
	tns := newNS(t, "host")
	ctx := context.Background()
	cfg := Config{Table: testTable, Bridge: testBridge, Subnet: netip.MustParsePrefix("10.77.0.0/16"), Gateway: netip.MustParseAddr(gateway), NAT: true}
	m, err := New(cfg, tns.ns)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.EnsureBase(ctx); err != nil {
		t.Fatal(err)
	}
	clean := listTables(t, tns, false)

	// A base rule deleted by someone: put back.
	l := listTables(t, tns, true)
	tns.nft(t, "", "delete", "rule", "inet", testTable, "input", "handle", handleOf(t, l, `iifname "pdkbr0" drop`))
	if res, err := m.EnsureBase(ctx); err != nil || !res.RulesChanged {
		t.Fatalf("EnsureBase after a deleted rule: %+v, %v", res, err)
	}
	if got := listTables(t, tns, false); got != clean {
		t.Errorf("not repaired:\n%s\nwant:\n%s", got, clean)
	}

	// A base chain on the wrong priority: re-created.
	tns.nft(t, "", "delete", "table", "inet", testTable)
	tns.nft(t, "table inet "+testTable+" {\n\tchain forward {\n\t\ttype filter hook forward priority 5; policy accept;\n\t}\n}\n", "-f", "-")
	if res, err := m.EnsureBase(ctx); err != nil || !res.RulesChanged {
		t.Fatalf("EnsureBase after a wrong chain: %+v, %v", res, err)
	}
	if got := listTables(t, tns, false); got != clean {
		t.Errorf("not repaired:\n%s\nwant:\n%s", got, clean)
	}

	// A rule without paddock's comment in paddock's chain stays.
	tns.nft(t, "", "add", "rule", "inet", testTable, "input", "tcp", "dport", "7", "accept")
	withForeign := listTables(t, tns, false)
	if res, err := m.EnsureBase(ctx); err != nil || res.RulesChanged {
		t.Errorf("EnsureBase with a foreign rule: %+v, %v", res, err)
	}
	noNAT := cfg
	noNAT.NAT = false
	m2, err := New(noNAT, tns.ns)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m2.EnsureBase(ctx); err != nil {
		t.Fatal(err)
	}
	if got := listTables(t, tns, false); !strings.Contains(got, "tcp dport 7 accept") {
		t.Errorf("a base change deleted the foreign rule:\n%s\nbefore:\n%s", got, withForeign)
	}
	if _, err := m.EnsureBase(ctx); err != nil {
		t.Fatal(err)
	}

	// VM rules: a change of ports and group replaces them all; the old
	// group's chain goes with its last member.
	vm := VM{ID: "vm1", Tap: "pdk-1", MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, IP: netip.MustParseAddr("10.77.0.20"), Group: "g1",
		Ports: []netspec.PortMapping{{HostPort: 1000, GuestPort: 80, Proto: "tcp"}}}
	other := VM{ID: "vm2", Tap: "pdk-2", MAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, IP: netip.MustParseAddr("10.77.0.21"), Group: "g1"}
	for _, v := range []VM{vm, other} {
		if _, err := m.ApplyVM(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	g1, g2 := groupChain("g1"), groupChain("g2")
	vm.Group = "g2"
	vm.Ports = []netspec.PortMapping{{HostPort: 2000, GuestPort: 80, Proto: "udp"}}
	if changed, err := m.ApplyVM(ctx, vm); err != nil || !changed {
		t.Fatalf("ApplyVM with changes: %v, %v", changed, err)
	}
	got := listTables(t, tns, false)
	for _, want := range []string{"udp dport 2000", "chain " + g1, "chain " + g2, "ip daddr 10.77.0.21 accept", "ip daddr 10.77.0.20 accept"} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "dport 1000") || strings.Count(got, `comment "paddock:vm:vm1"`) != 6 {
		t.Errorf("old rules of vm1 left, or not 6 rules:\n%s", got)
	}
	if err := m.ReleaseVM(ctx, "vm2"); err != nil {
		t.Fatal(err)
	}
	if got := listTables(t, tns, false); strings.Contains(got, g1) || !strings.Contains(got, g2) {
		t.Errorf("group chain %s should be gone with its last member, %s kept:\n%s", g1, g2, got)
	}

	// The table deleted under a running daemon: ApplyVM brings base and VM
	// rules back.
	tns.nft(t, "", "delete", "table", "inet", testTable)
	if changed, err := m.ApplyVM(ctx, vm); err != nil || !changed {
		t.Fatalf("ApplyVM without the table: %v, %v", changed, err)
	}
	if ids, err := m.ListVMs(ctx); err != nil || len(ids) != 1 || ids[0] != "vm1" {
		t.Errorf("ListVMs: %v, %v", ids, err)
	}
	if err := m.ReleaseVM(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	if got := listTables(t, tns, false); got != clean {
		t.Errorf("after releasing every VM:\n%s\nwant the clean base:\n%s", got, clean)
	}

	// Without the tables at all, release and listing are no-ops.
	tns.nft(t, "", "delete", "table", "inet", testTable)
	tns.nft(t, "", "delete", "table", "bridge", testTable)
	if err := m.ReleaseVM(ctx, "vm1"); err != nil {
		t.Errorf("ReleaseVM without tables: %v", err)
	}
	if ids, err := m.ListVMs(ctx); err != nil || len(ids) != 0 {
		t.Errorf("ListVMs without tables: %v, %v", ids, err)
	}
	if _, err := m.ApplyVM(ctx, VM{ID: "bad id"}); err == nil {
		t.Errorf("ApplyVM with a bad id: no error")
	}
}
