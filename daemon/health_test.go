package daemon

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/host/vmm/qemu"
)

// A missing VMM binary makes the daemon degraded, names the binary and the
// config key in Info's problems and in sd_notify's STATUS, and refuses
// starts as Unavailable with the same words; a usable one (or vm.run off)
// is healthy.
func TestVMMHealth(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-qemu")
	for _, tc := range []struct {
		name     string
		binary   string
		check    func() error // nil: vm.run = off
		health   api.Health
		problems int
	}{
		{"vm.run off", "", nil, api.HealthOK, 0},
		{"binary present", "/bin/sh", (&qemu.Driver{Binary: "/bin/sh"}).Check, api.HealthOK, 0},
		{"binary missing", missing, (&qemu.Driver{Binary: missing}).Check, api.HealthDegraded, 1},
		{"name not in PATH", "paddock-no-such-qemu", (&qemu.Driver{Binary: "paddock-no-such-qemu"}).Check, api.HealthDegraded, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newTestDaemon(t)
			d.vmmCheck = tc.check
			problems := d.problems()
			if got := health(problems); got != tc.health || len(problems) != tc.problems {
				t.Fatalf("health %s, problems %q; want %s with %d", got, problems, tc.health, tc.problems)
			}
			line := statusLine(api.Counts{Total: 1, Stopped: 1}, problems)
			err := d.canStart("web1")
			if tc.problems == 0 {
				if err != nil || strings.Contains(line, "degraded") {
					t.Fatalf("canStart = %v, status %q", err, line)
				}
				return
			}
			for _, want := range []string{"vm.vmm_binary", "QEMU binary", tc.binary} {
				if !strings.Contains(problems[0], want) {
					t.Errorf("problem %q does not say %q", problems[0], want)
				}
			}
			if !strings.Contains(line, "degraded: "+problems[0]) {
				t.Errorf("STATUS %q does not carry the problem", line)
			}
			if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "cannot start VM web1") || !strings.Contains(err.Error(), "vm.vmm_binary") || !strings.Contains(err.Error(), tc.binary) {
				t.Fatalf("canStart = %v: want Unavailable naming the VM and the key", err)
			}
			if got := mapError(err); got.Name != api.ErrUnavailable {
				t.Errorf("a refused start reaches the client as %s", got.Name)
			}
		})
	}
}
