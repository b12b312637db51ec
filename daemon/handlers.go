package daemon

import (
	"context"
	"encoding/json"
	"runtime"
	"time"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/netspec"
	"github.com/paddock-vm/paddock/state"
	"github.com/paddock-vm/paddock/varlink"
	"github.com/paddock-vm/paddock/version"
)

// dispatch is the one table from method name to handler. Every method the
// interface description declares must be here, and nothing else
// (TestDispatchMatchesInterface).
func (d *Daemon) dispatch() map[string]varlink.Handler {
	t := map[string]varlink.Handler{
		"Create":            d.create,
		"Get":               d.get,
		"List":              d.list,
		"Set":               d.set,
		"Start":             d.start,
		"Stop":              d.stop,
		"Delete":            d.delete,
		"Events":            d.events,
		"PullImage":         d.pullImage,
		"ImportImage":       d.importImage,
		"ListImages":        d.listImages,
		"InspectImage":      d.inspectImage,
		"RemoveImage":       d.removeImage,
		"PruneImages":       d.pruneImages,
		"ImportKernel":      d.importKernel,
		"ListKernels":       d.listKernels,
		"RemoveKernel":      d.removeKernel,
		"Exec":              d.exec,
		"Logs":              d.logs,
		"Console":           d.console,
		"Stats":             d.stats,
		"CreateWorkspace":   d.createWorkspace,
		"ListWorkspaces":    d.listWorkspaces,
		"InspectWorkspace":  d.inspectWorkspace,
		"RemoveWorkspace":   d.removeWorkspace,
		"CreateTemplate":    d.createTemplate,
		"ListTemplates":     d.listTemplates,
		"RemoveTemplate":    d.removeTemplate,
		"ExportWorkspace":   d.exportWorkspace,
		"ImportWorkspace":   d.importWorkspace,
		"SnapshotWorkspace": d.snapshotWorkspace,
		"RestoreWorkspace":  d.restoreWorkspace,
		"CloneWorkspace":    d.cloneWorkspace,
		"ResizeWorkspace":   d.resizeWorkspace,
		"PullWorkspace":     d.pullWorkspace,
		"PushWorkspace":     d.pushWorkspace,
		"CopyOut":           d.copyOut,
		"CopyIn":            d.copyIn,
		"HostShutdown":      d.hostShutdown,
		"Version":           d.version,
		"Info":              d.info,
	}
	out := make(map[string]varlink.Handler, len(t))
	for name, h := range t {
		out[api.Interface+"."+name] = d.guard(h)
	}
	return out
}

// inline names the methods answered from the Manager's published records
// (or constants) without waiting on an actor: the server runs them on the
// connection's reading goroutine, with no handoff (the Get tail).
func inline() map[string]bool {
	return map[string]bool{api.Interface + ".Get": true, api.Interface + ".List": true, api.Interface + ".Version": true}
}

// guard bounds each call by the configured request timeout (streams are
// bounded by their client and by shutdown instead).
func (d *Daemon) guard(h varlink.Handler) varlink.Handler {
	return func(ctx context.Context, c *varlink.Call) error {
		if !c.More && !isImport(c.Method) {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d.callTimeout(c.Method))
			defer cancel()
		}
		return h(ctx, c)
	}
}

func (d *Daemon) toAPI(vm *state.VM) api.VM {
	ip := ""
	if vm.Net != nil {
		ip = vm.Net.IP
	}
	ports := make([]api.PortMapping, len(vm.Spec.Ports))
	for i, p := range vm.Spec.Ports {
		ports[i] = api.PortOf(p)
	}
	return api.VM{
		ID: vm.ID, Name: vm.Name, OwnerUID: vm.OwnerUID, Status: string(vm.Status), Reason: vm.Reason, IP: ip,
		Network: d.vmNetwork(vm),
		Spec: api.Spec{Image: vm.Spec.Image, ImageDigest: vm.Spec.ImageDigest, CPUs: vm.Spec.CPUs,
			Memory: vm.Spec.Memory, DiskSize: vm.Spec.DiskSize, AutoStop: orOff(vm.Spec.AutoStop), Env: orEmptyList(vm.Spec.Env),
			Kernel: vm.Spec.Kernel, Entrypoint: vm.Spec.Entrypoint, Cmd: vm.Spec.Cmd, Workdir: vm.Spec.Workdir, User: vm.Spec.User,
			Ports: ports, Network: vm.Spec.Network, Workspaces: workspaceMountsToAPI(vm.Spec.Workspaces)},
		CreatedAt: stamp(vm.CreatedAt), UpdatedAt: stamp(vm.UpdatedAt), LastBoot: bootToAPI(vm.LastBoot),
	}
}

func bootToAPI(b *state.BootReport) *api.BootReport {
	if b == nil {
		return nil
	}
	phases := func(ps []state.BootPhase) []api.BootPhase {
		out := make([]api.BootPhase, len(ps))
		for i, p := range ps {
			out[i] = api.BootPhase{Name: p.Name, MS: p.MS}
		}
		return out
	}
	return &api.BootReport{Steps: phases(b.Steps), Guest: phases(b.Guest), GuestReadyMS: b.GuestReadyMS, Resumed: b.Resumed}
}

// vmNetwork is the network a VM is on: its spec's, else the daemon's
// default (vm.network), with its address and the guest's nameservers.
func (d *Daemon) vmNetwork(vm *state.VM) *api.Network {
	n := &api.Network{Mode: vm.Spec.Network, DNS: []string{}}
	if n.Mode == "" {
		n.Mode = d.config().VM.Network
	}
	if vm.Net != nil {
		n.IP, n.Gateway = vm.Net.IP, vm.Net.Gateway
	}
	if n.Mode != "none" {
		for _, a := range d.dns {
			n.DNS = append(n.DNS, a.String())
		}
	}
	return n
}

func runChange(in api.RunIn, net api.NetIn, reset []string) (actors.RunChange, error) {
	r := actors.RunChange{Kernel: in.Kernel, Entrypoint: in.Entrypoint, Cmd: in.Cmd, Workdir: in.Workdir, User: in.User, Network: net.Network, Reset: reset}
	if net.Ports != nil {
		ports := make([]netspec.PortMapping, len(*net.Ports))
		for i, p := range *net.Ports {
			m, err := p.Mapping()
			if err != nil {
				return r, &actors.Error{Kind: actors.ErrInvalidArgument, Field: "ports", Msg: err.Error()}
			}
			ports[i] = m
		}
		r.Ports = &ports
	}
	return r, nil
}

// resolveWorkspaces resolves the workspaces a create or set names to the
// caller's own (nil: unchanged).
func (d *Daemon) resolveWorkspaces(ctx context.Context, c *varlink.Call, in *[]api.WorkspaceMount) (*[]state.WorkspaceMount, error) {
	if in == nil {
		return nil, nil
	}
	refs := make([]actors.WorkspaceRef, len(*in))
	for i, m := range *in {
		refs[i] = actors.WorkspaceRef{Workspace: m.Workspace, Path: m.Path, ReadOnly: m.ReadOnly}
	}
	ms, err := d.actors.ResolveWorkspaces(ctx, d.auth.caller(c.Peer), refs)
	if err != nil {
		return nil, err
	}
	return &ms, nil
}

func workspaceMountsToAPI(ms []state.WorkspaceMount) []api.WorkspaceMount {
	out := make([]api.WorkspaceMount, len(ms))
	for i, m := range ms {
		out[i] = api.WorkspaceMount{Workspace: m.Name, Path: m.Path, ReadOnly: m.ReadOnly}
	}
	return out
}

func orOff(s string) string {
	if s == "" {
		return "off"
	}
	return s
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func (d *Daemon) ask(ctx context.Context, c *varlink.Call, msg any) error {
	r, err := d.actors.Request(ctx, msg)
	if err != nil {
		return err
	}
	if r.VM == nil {
		return c.Reply(nil)
	}
	return c.Reply(api.VMOut{VM: d.toAPI(r.VM)})
}

func (d *Daemon) create(ctx context.Context, c *varlink.Call) error {
	var in api.CreateIn
	if err := c.Decode(&in); err != nil {
		return err
	}
	if err := d.checkKit(in.Kernel); err != nil {
		return err
	}
	run, err := runChange(in.RunIn, in.NetIn, nil)
	if err != nil {
		return err
	}
	if run.Workspaces, err = d.resolveWorkspaces(ctx, c, in.Workspaces); err != nil {
		return err
	}
	m := &actors.CreateVM{Caller: d.auth.caller(c.Peer), Name: in.Name, Image: in.Image,
		CPUs: in.CPUs, Memory: in.Memory, DiskSize: in.DiskSize, AutoStop: in.AutoStop, Env: in.Env, RunChange: run}
	if in.Template != "" {
		if err := d.fromTemplate(ctx, c, &in, m); err != nil {
			return err
		}
	}
	return d.ask(ctx, c, m)
}

func (d *Daemon) get(ctx context.Context, c *varlink.Call) error {
	var in api.VMRef
	if err := c.Decode(&in); err != nil {
		return err
	}
	// The reply is encoded once per record (and configuration, whose
	// default network it shows), not once per call.
	enc, err := d.actors.ViewVM(ctx, d.auth.caller(c.Peer), in.VM, d.config(), func(vm *state.VM) (any, error) {
		return json.Marshal(api.VMOut{VM: d.toAPI(vm)})
	})
	if err != nil {
		return err
	}
	return c.ReplyJSON(enc.([]byte))
}

func (d *Daemon) list(ctx context.Context, c *varlink.Call) error {
	if err := c.Decode(&struct{}{}); err != nil {
		return err
	}
	vms, err := d.actors.ListVMs(ctx, d.auth.caller(c.Peer))
	if err != nil {
		return err
	}
	out := api.ListOut{VMs: make([]api.VM, len(vms))}
	for i := range vms {
		out.VMs[i] = d.toAPI(&vms[i])
	}
	return c.Reply(out)
}

func (d *Daemon) set(ctx context.Context, c *varlink.Call) error {
	var in api.SetIn
	if err := c.Decode(&in); err != nil {
		return err
	}
	if err := d.checkKit(in.Kernel); err != nil {
		return err
	}
	run, err := runChange(in.RunIn, in.NetIn, in.Reset)
	if err != nil {
		return err
	}
	if run.Workspaces, err = d.resolveWorkspaces(ctx, c, in.Workspaces); err != nil {
		return err
	}
	return d.ask(ctx, c, &actors.SetVM{Caller: d.auth.caller(c.Peer), Ref: in.VM, CPUs: in.CPUs, Memory: in.Memory, DiskSize: in.DiskSize, AutoStop: in.AutoStop,
		RunChange: run})
}

func (d *Daemon) start(ctx context.Context, c *varlink.Call) error {
	received := time.Now()
	var in api.VMRef
	if err := c.Decode(&in); err != nil {
		return err
	}
	if err := d.canStart(in.VM); err != nil {
		return err
	}
	return d.ask(ctx, c, &actors.StartVM{Caller: d.auth.caller(c.Peer), Ref: in.VM, Received: received})
}

func (d *Daemon) stop(ctx context.Context, c *varlink.Call) error {
	var in api.StopIn
	if err := c.Decode(&in); err != nil {
		return err
	}
	return d.ask(ctx, c, &actors.StopVM{Caller: d.auth.caller(c.Peer), Ref: in.VM, Force: in.Force})
}

func (d *Daemon) delete(ctx context.Context, c *varlink.Call) error {
	var in api.StopIn
	if err := c.Decode(&in); err != nil {
		return err
	}
	return d.ask(ctx, c, &actors.DeleteVM{Caller: d.auth.caller(c.Peer), Ref: in.VM, Force: in.Force})
}

// eventBuffer is how far a subscriber may fall behind before it is dropped.
const eventBuffer = 1024

func (d *Daemon) events(ctx context.Context, c *varlink.Call) error {
	var in api.EventsIn
	if err := c.Decode(&in); err != nil {
		return err
	}
	if !c.More {
		return c.ReplyError(varlink.ErrExpectedMore, map[string]string{"message": "Events streams: call it with more=true"})
	}
	caller := d.auth.caller(c.Peer)
	vmID := ""
	if in.VM != "" {
		rctx, cancel := context.WithTimeout(ctx, d.requestTimeout())
		vm, err := d.actors.GetVM(rctx, caller, in.VM)
		cancel()
		if err != nil {
			return err
		}
		vmID = vm.ID
	}
	id, ch, err := d.actors.Subscribe(ctx, caller, vmID, eventBuffer)
	if err != nil {
		return err
	}
	defer d.actors.Unsubscribe(id)
	for {
		select {
		case <-ctx.Done():
			// Client gone or daemon shutting down: end the stream.
			return c.Reply(nil)
		case ev, ok := <-ch:
			if !ok {
				return errdefs.Newf(errdefs.ErrUnavailable, "events stream dropped: the client fell %d events behind (read events as they come, or filter by VM)", eventBuffer)
			}
			if err := c.Continue(api.EventOut{Event: ev}); err != nil {
				return err
			}
		}
	}
}

func (d *Daemon) version(_ context.Context, c *varlink.Call) error {
	if err := c.Decode(&struct{}{}); err != nil {
		return err
	}
	return c.Reply(api.VersionOut{Version: version.Version, API: api.Interface, GoVersion: runtime.Version()})
}

func (d *Daemon) info(ctx context.Context, c *varlink.Call) error {
	if err := c.Decode(&struct{}{}); err != nil {
		return err
	}
	counts, err := d.actors.Counts(ctx)
	if err != nil {
		return err
	}
	caller := d.auth.caller(c.Peer)
	if !caller.Admin {
		// Other users' VMs are not theirs to count.
		vms, err := d.actors.ListVMs(ctx, caller)
		if err != nil {
			return err
		}
		counts = actors.Tally(vms)
	}
	cfg := d.config()
	problems := d.problems()
	return c.Reply(api.InfoOut{Version: version.Version, Uptime: time.Since(d.started).Seconds(), VMs: counts,
		StateDir: cfg.StateDir, RuntimeDir: cfg.RuntimeDir, Socket: d.socketPath, Cgroup: d.cgroupInfo, Launcher: d.launcherInfo(ctx), Health: health(problems), Problems: problems})
}

// Imports and workspace creations are bounded by their client (which may
// cancel) rather than by the request timeout: a large pull or tree takes
// minutes. A workspace build has its own deadline besides.
func isImport(method string) bool {
	return method == api.Interface+".PullImage" || method == api.Interface+".ImportImage" || method == api.Interface+".Exec" || method == api.Interface+".Console" ||
		method == api.Interface+".CreateWorkspace" || method == api.Interface+".ExportWorkspace" || method == api.Interface+".ImportWorkspace" ||
		method == api.Interface+".CopyOut" || method == api.Interface+".CopyIn" || method == api.Interface+".PullWorkspace" || method == api.Interface+".PushWorkspace" ||
		method == api.Interface+".ResizeWorkspace"
}

// callTimeout bounds one call: boots and shutdowns are bounded by the VM
// timeouts (a TCG boot on a loaded host can take long), the rest by the
// request timeout.
func (d *Daemon) callTimeout(method string) time.Duration {
	t := d.requestTimeout()
	switch method {
	case api.Interface + ".Start", api.Interface + ".Stop", api.Interface + ".Delete", api.Interface + ".HostShutdown":
		vm := d.config().VM
		return max(t, vm.StartTimeout.Duration+vm.StopTimeout.Duration+30*time.Second)
	case api.Interface + ".CreateTemplate":
		vm := d.config().VM
		return max(t, 2*vm.StartTimeout.Duration+vm.StopTimeout.Duration+2*time.Minute)
	}
	return t
}
