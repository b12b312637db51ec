package daemon

import (
	"context"
	"slices"
	"sync"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/state"
	"github.com/paddock-vm/paddock/varlink"
)

// hostShutdownReason is the stop reason VMs show after a host shutdown.
const hostShutdownReason = "host shutdown (vm.on_host_shutdown = \"stop\")"

// hostShutdown applies [vm] on_host_shutdown for paddock-guests.service as
// the host shuts down: "stop" powers every running VM off cleanly, all at
// once (a host's shutdown is bounded: one slow guest must not hold the
// others), each as a graceful stop bounded by the stop timeout; "keep"
// leaves them. Admins only: it acts on every owner's VMs.
func (d *Daemon) hostShutdown(ctx context.Context, c *varlink.Call) error {
	if err := c.Decode(&struct{}{}); err != nil {
		return err
	}
	if err := d.requireAdmin(c, "stopping every VM for a host shutdown"); err != nil {
		return err
	}
	caller := d.auth.caller(c.Peer)
	vms, err := d.actors.ListVMs(ctx, caller)
	if err != nil {
		return err
	}
	var live []state.VM
	for _, vm := range vms {
		if vm.Status == state.StatusRunning || vm.Status == state.StatusStarting {
			live = append(live, vm)
		}
	}
	out := api.HostShutdownOut{Policy: d.config().VM.OnHostShutdown, Stopped: []string{}}
	if out.Policy == "keep" {
		out.Kept = len(live)
		d.log.Info("host shutdown: VMs left running (vm.on_host_shutdown = \"keep\")", "vms", len(live))
		return c.Reply(out)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, vm := range live {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := d.actors.Request(ctx, &actors.StopVM{Caller: caller, ID: vm.ID, Force: vm.Status == state.StatusStarting, Reason: hostShutdownReason})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				d.log.Warn("host shutdown: a VM did not stop cleanly", "vm_id", vm.ID, "vm_name", vm.Name, "err", err)
				out.Failed = append(out.Failed, vm.Name)
				return
			}
			out.Stopped = append(out.Stopped, vm.Name)
		}()
	}
	wg.Wait()
	slices.Sort(out.Stopped)
	slices.Sort(out.Failed)
	d.log.Info("host shutdown: VMs stopped", "stopped", len(out.Stopped), "failed", len(out.Failed))
	return c.Reply(out)
}
