package daemon

import (
	"fmt"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/errdefs"
)

// vmmProblem says why no VM can start here, or "" when VMs can. It looks
// again each time, so installing QEMU while paddockd runs clears it.
func (d *Daemon) vmmProblem() string {
	if d.vmmCheck == nil {
		return ""
	}
	if err := d.vmmCheck(); err != nil {
		return fmt.Sprintf("%v (config key vm.vmm_binary); install QEMU (Debian: apt-get install qemu-system-x86) or set vm.vmm_binary to its path", err)
	}
	return ""
}

// problems lists what keeps the daemon from being healthy.
func (d *Daemon) problems() []string {
	out := []string{}
	if p := d.vmmProblem(); p != "" {
		out = append(out, p)
	}
	return out
}

func health(problems []string) api.Health {
	if len(problems) > 0 {
		return api.HealthDegraded
	}
	return api.HealthOK
}

// canStart refuses a start that cannot work here, naming what is missing,
// before the VM actor rolls a boot forward and back for nothing.
func (d *Daemon) canStart(ref string) error {
	if p := d.vmmProblem(); p != "" {
		return errdefs.Newf(errdefs.ErrUnavailable, "cannot start VM %s: %s", ref, p)
	}
	return nil
}
