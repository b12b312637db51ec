package e2e

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/api"
)

// Defect 6: with the VMM binary missing, paddockd still starts, says so
// once in its log (naming the binary and the config key), reports it in
// `paddock info` and its health, and every start fails naming the binary,
// leaving the VM as it was.
func TestMissingVMMBinary(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-qemu-system-x86_64")
	// No network device and a plain copy disk: nothing on the host is
	// touched, and the refusal comes before any of it would be.
	e := newEnv(t, "\n[vm]\nrun = \"on\"\nnetwork = \"none\"\ndisk_backend = \"copy\"\nvmm_binary = \""+missing+"\"\n")
	p := e.daemon(t, nil)
	p.waitLog(t, "VMM binary not usable", missing, "vm.vmm_binary")

	info := e.cli(t, nil, "info").ok(t, "info")
	for _, want := range []string{"health: degraded", "problem:", missing, "vm.vmm_binary"} {
		if !strings.Contains(unpad(info), want) {
			t.Errorf("paddock info lacks %q:\n%s", want, info)
		}
	}
	var out api.InfoOut
	if err := json.Unmarshal([]byte(e.cli(t, nil, "info", "--json").ok(t, "info --json")), &out); err != nil {
		t.Fatal(err)
	}
	if out.Health != api.HealthDegraded || len(out.Problems) != 1 || !strings.Contains(out.Problems[0], missing) {
		t.Errorf("info --json: health %q, problems %q", out.Health, out.Problems)
	}

	e.cli(t, nil, "create", "web1", "--image", "alpine").ok(t, "create")
	for _, args := range [][]string{{"start", "web1"}, {"run", "web2", "--image", "alpine"}} {
		r := e.cli(t, nil, args...)
		if r.code == 0 {
			t.Fatalf("paddock %s succeeded without a VMM", strings.Join(args, " "))
		}
		for _, want := range []string{"cannot start VM", missing, "vm.vmm_binary", "(Unavailable)"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("paddock %s: stderr lacks %q:\n%s", strings.Join(args, " "), want, r.stderr)
			}
		}
		if strings.Contains(r.stderr, "exec:") || strings.Contains(r.stderr, "future:") {
			t.Errorf("paddock %s: stderr shows internals:\n%s", strings.Join(args, " "), r.stderr)
		}
	}
	var vm api.VM
	if err := json.Unmarshal([]byte(e.cli(t, nil, "inspect", "web1", "--json").ok(t, "inspect")), &vm); err != nil {
		t.Fatal(err)
	}
	if vm.Status != "created" {
		t.Errorf("after the refused start web1 is %s (%s), want created", vm.Status, vm.Reason)
	}
	// Once: neither info nor the refused starts repeat the warning.
	if n := strings.Count(p.stderr.String(), "VMM binary not usable"); n != 1 {
		t.Errorf("the warning appears %d times:\n%s", n, p.stderr.String())
	}
}
