package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/config"
	"github.com/paddock-vm/paddock/host/cgroup"
	"github.com/paddock-vm/paddock/host/netdev"
	"github.com/paddock-vm/paddock/host/portcheck"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/netspec"
	"github.com/paddock-vm/paddock/state"
)

// ImageResolver finds an image in the image store, as a viewer sees it.
type ImageResolver interface {
	Resolve(v imaging.Viewer, ref string) (*imaging.Image, error)
}

// Defaults supplies the spec defaults live (they reload on SIGHUP).
type Defaults func() config.Defaults

// nameKey is a VM name in its owner's namespace: alice's "web" and bob's
// "web" are different VMs, and nobody learns whether another user has one.
type nameKey struct {
	owner uint32
	name  string
}

type manager struct {
	log      *slog.Logger
	store    *state.Store
	images   ImageResolver
	defaults Defaults
	events   *actor.PID
	onCounts func(api.Counts)
	host     *Host
	netFacts NetFacts
	ws       wsLink
	recs     *records // where Get and List read the index (nil in some tests)

	byID   map[string]*entry
	byName map[nameKey]string
	counts api.Counts

	pending      map[string]bool // VM actors still reconciling at start-up
	ready        bool
	readyWaiters []*actor.PID
}

// awaitReady is answered (true) once every VM is reconciled and orphans
// are swept: the daemon reports ready then.
type awaitReady struct{}

func (m *manager) Receive(ctx actor.Context) {
	switch msg := ctx.Message().(type) {
	case *actor.Started:
		m.start(ctx)
	case *Ping:
		ctx.Respond(&Pong{From: "manager"})
	case *CreateVM:
		vm, err := m.create(ctx, msg)
		ctx.Respond(&Result{VM: vm, Err: err})
	case *ListVMs:
		ctx.Respond(&Result{VMs: m.list(msg.Caller)})
	case *CountVMs:
		ctx.Respond(m.counts)
	case *imageUsers:
		users := []ImageUser{}
		for id, e := range m.byID {
			if msg.Digest == "" || e.vm().Spec.ImageDigest == msg.Digest {
				users = append(users, ImageUser{ID: id, Name: e.vm().Name, Owner: e.vm().OwnerUID, Digest: e.vm().Spec.ImageDigest})
			}
		}
		ctx.Respond(users)
	case *GetVM:
		// Answered from the mirror: VM actors report every change before
		// they reply, so it is never older than what a caller has seen.
		e, err := m.route(msg)
		if err != nil {
			ctx.Respond(&Result{Err: err})
			return
		}
		vm := *e.vm()
		ctx.Respond(&Result{VM: &vm})
	case vmRequest:
		e, err := m.route(msg)
		if err == nil {
			err = m.portsFree(msg, *e.vm())
		}
		if err != nil {
			ctx.Respond(&Result{Err: err})
			return
		}
		ctx.Forward(e.pid)
	case *vmChanged:
		m.changed(msg.VM)
	case *vmReconciled:
		if m.pending[msg.ID] {
			delete(m.pending, msg.ID)
			m.maybeReady(ctx)
		}
	case *awaitReady:
		if m.ready {
			ctx.Respond(true)
		} else {
			m.readyWaiters = append(m.readyWaiters, ctx.Sender())
		}
	case *vmDeleted:
		if e, ok := m.byID[msg.ID]; ok {
			if m.byName[e.key] == msg.ID {
				delete(m.byName, e.key)
			}
			delete(m.byID, msg.ID)
			m.published()
			ctx.Stop(e.pid)
			m.recount()
			if m.pending[msg.ID] {
				// Deleted while reconciling at start-up: it will not
				// report reconciled, and readiness must not wait for it.
				delete(m.pending, msg.ID)
				m.maybeReady(ctx)
			}
		}
	}
}

// start loads every record before the daemon reports ready. A record that
// cannot be read becomes a VM in status error with the reason; it never
// stops start-up.
func (m *manager) start(ctx actor.Context) {
	m.byID, m.byName = map[string]*entry{}, map[nameKey]string{}
	if err := m.store.SweepDeleted(); err != nil {
		m.log.Warn("sweeping interrupted deletes", "err", err)
	}
	ids, stray, err := m.store.IDs()
	if err != nil {
		m.log.Error("listing VM records", "err", err)
	}
	for _, s := range stray {
		m.log.Warn("ignoring stray entry in the VM directory", "entry", s)
	}
	for _, id := range ids {
		vm := loadOrError(m.store, id, m.log)
		if vm.Name != "" {
			if other, dup := m.byName[keyOf(vm)]; dup {
				vm.Status, vm.Reason = state.StatusError, fmt.Sprintf("name %q is also used by VM %s", vm.Name, other)
				vm.Name = ""
			}
		}
		m.spawn(ctx, vm)
	}
	// Ready once every VM actor has reconciled its VM (they do it in their
	// own mailboxes, and say so with vmReconciled) and orphans are gone.
	m.pending = map[string]bool{}
	for id := range m.byID {
		m.pending[id] = true
	}
	m.published()
	m.recount()
	m.maybeReady(ctx)
}

// maybeReady sweeps orphans and answers awaitReady once no VM actor is
// still reconciling.
func (m *manager) maybeReady(ctx actor.Context) {
	if m.ready || len(m.pending) > 0 {
		return
	}
	if m.host != nil {
		m.sweep()
	}
	m.ready = true
	for _, w := range m.readyWaiters {
		ctx.Send(w, true)
	}
	m.readyWaiters = nil
}

// sweep removes host objects that carry paddock's tags but belong to no VM:
// what a crash between create and record, or a lost VM directory, leaves.
func (m *manager) sweep() {
	known := func(id string) bool { _, ok := m.byID[id]; return ok }
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := m.host
	if h.FindVMMs != nil {
		procs, err := h.FindVMMs()
		if err != nil {
			m.log.Warn("listing VMM processes for the orphan sweep", "err", err)
		}
		for _, p := range procs {
			switch {
			case known(p.VMID):
				// its VM actor reconciles it
			case !p.Ours:
				// Same paths, another daemon (another mount namespace,
				// another uid): never ours to kill.
				m.log.Info("leaving a VMM that is not provably this daemon's", "vm_id", p.VMID, "pid", p.PID, "why", p.Why)
			default:
				m.log.Warn("killing an orphan VMM", "vm_id", p.VMID, "pid", p.PID, "why", p.Why)
				if err := h.VMM.Kill(ctx, p.Process); err != nil {
					m.log.Error("killing an orphan VMM", "vm_id", p.VMID, "err", err)
				}
			}
		}
	}
	if h.Cgroup != "" {
		// The delegated cgroup is this daemon's alone (one per unit): a
		// VMM cgroup of a VM it does not know is a crash's leftover.
		dirs, err := cgroup.Find(h.Cgroup)
		if err != nil {
			m.log.Warn("listing VMM cgroups for the orphan sweep", "err", err)
		}
		for _, d := range dirs {
			if id := strings.TrimPrefix(filepath.Base(d), vmm.TagPrefix); !known(id) {
				m.log.Warn("removing an orphan VMM cgroup", "cgroup", d, "vm_id", id)
				if err := cgroup.Remove(ctx, d, true); err != nil {
					m.log.Error("removing an orphan VMM cgroup", "cgroup", d, "err", err)
				}
			}
		}
	}
	if h.SweepDisks != nil {
		if err := h.SweepDisks(ctx, known); err != nil {
			m.log.Warn("sweeping orphan disks", "err", err)
		}
	}
	if h.Rules != nil {
		ids, err := h.Rules.ListVMs(ctx)
		if err != nil {
			m.log.Warn("listing packet rules for the orphan sweep", "err", err)
		}
		for _, id := range ids {
			if !known(id) {
				m.log.Warn("removing an orphan VM's packet rules", "vm_id", id)
				if err := h.Rules.ReleaseVM(ctx, id); err != nil {
					m.log.Error("removing an orphan VM's packet rules", "vm_id", id, "err", err)
				}
			}
		}
	}
	if h.FindPassts != nil && h.Passt != nil {
		found, err := h.FindPassts()
		if err != nil {
			m.log.Warn("listing passt processes for the orphan sweep", "err", err)
		}
		for _, f := range found {
			switch {
			case known(f.Process.VMID):
			case !f.Ours:
				m.log.Info("leaving a passt that is not provably this daemon's", "pid", f.Process.PID, "why", f.Why)
			default:
				m.log.Warn("stopping an orphan passt", "vm_id", f.Process.VMID, "pid", f.Process.PID, "why", f.Why)
				if err := h.Passt.Stop(ctx, f.Process); err != nil {
					m.log.Error("stopping an orphan passt", "pid", f.Process.PID, "err", err)
				}
			}
		}
	}
	if h.Net != nil {
		owned, err := h.Net.ListOwned(ctx)
		if err != nil {
			m.log.Warn("listing tagged links for the orphan sweep", "err", err)
		}
		for _, o := range owned {
			if o.Kind == netdev.KindTap && o.Valid && !known(o.VMID) {
				m.log.Warn("removing an orphan tap", "tap", o.Name, "vm_id", o.VMID)
				if err := h.Net.ReleaseTap(ctx, o.Name, o.Ifindex); err != nil {
					m.log.Error("removing an orphan tap", "tap", o.Name, "err", err)
				}
			}
		}
	}
}

func (m *manager) spawn(ctx actor.Context, vm state.VM) {
	id := vm.ID
	// The entry first: the VM actor publishes into it as soon as it starts.
	e := newEntry(nil, vm)
	e.key = keyOf(vm)
	props := actor.PropsFromProducer(func() actor.Actor {
		return &vmActor{id: id, publish: e.publish, gone: e.gone.Store, store: m.store, log: m.log.With("actor", "vm", "vm_id", id), events: m.events, host: m.host, netFacts: m.netFacts, ws: m.ws}
	})
	pid, err := ctx.SpawnNamed(props, "vm-"+id)
	if err != nil {
		m.log.Error("spawning VM actor", "vm_id", id, "err", err)
		return
	}
	e.pid = pid
	m.byID[id] = e
	if vm.Name != "" {
		m.byName[e.key] = id
	}
}

func (m *manager) changed(vm state.VM) {
	e, ok := m.byID[vm.ID]
	if !ok {
		return
	}
	if k := keyOf(vm); e.key != k {
		if m.byName[e.key] == vm.ID {
			delete(m.byName, e.key)
		}
		if vm.Name != "" {
			m.byName[k] = vm.ID
		}
		e.key = k
		m.published()
	}
	m.recount()
}

// recount counts the published records where they are: a copy of every
// record per create was a megabyte of garbage at 1,000 VMs, and the GC
// cycles it cost landed on the calls that followed.
func (m *manager) recount() {
	var c api.Counts
	for _, e := range m.byID {
		count(&c, e.vm().Status)
	}
	if c != m.counts {
		m.counts = c
		if m.onCounts != nil {
			m.onCounts(c)
		}
	}
}

// Tally counts VMs by status.
func Tally(vms []state.VM) api.Counts {
	var c api.Counts
	for i := range vms {
		count(&c, vms[i].Status)
	}
	return c
}

func count(c *api.Counts, s state.Status) {
	c.Total++
	switch s {
	case state.StatusCreated:
		c.Created++
	case state.StatusRunning:
		c.Running++
	case state.StatusStopped:
		c.Stopped++
	case state.StatusError:
		c.Error++
	default:
		c.Other++
	}
}

func keyOf(vm state.VM) nameKey { return nameKey{owner: vm.OwnerUID, name: vm.Name} }

// resolve finds a VM the caller may see by exact id first, then by the
// caller's own name (an admin's, then any user's name that only one VM
// has), then by an unambiguous id prefix. A VM the caller may not see is
// not found, with the very error a VM that does not exist gets.
func (s *recordSet) resolve(c Caller, ref string) (*entry, error) {
	if ref == "" {
		return nil, &Error{Kind: ErrInvalidArgument, Field: "vm", Msg: "no VM named: give a name or an id"}
	}
	if e, ok := s.byID[ref]; ok && !e.gone.Load() && c.May(e.vm().OwnerUID) {
		return e, nil
	}
	if id, ok := s.byName[nameKey{owner: c.UID, name: ref}]; ok && !s.byID[id].gone.Load() {
		return s.byID[id], nil
	}
	var hits []*entry
	if c.Admin {
		for k, id := range s.byName {
			if k.name == ref && !s.byID[id].gone.Load() {
				hits = append(hits, s.byID[id])
			}
		}
		if len(hits) > 1 {
			return nil, ambiguous(ref, hits, "name %q is used by %d VMs of different users: give an id (%s)")
		}
	}
	if len(hits) == 0 && len(ref) >= 4 && len(ref) < state.IDLen {
		for id, e := range s.byID {
			if strings.HasPrefix(id, ref) && !e.gone.Load() && c.May(e.vm().OwnerUID) {
				hits = append(hits, e)
			}
		}
	}
	switch len(hits) {
	case 0:
		return nil, notFound(ref)
	case 1:
		return hits[0], nil
	}
	return nil, ambiguous(ref, hits, "id prefix %q matches %d VMs: give more characters (%s)")
}

// live is the Manager's own index, read in its mailbox.
func (m *manager) live() *recordSet { return &recordSet{byID: m.byID, byName: m.byName} }

func (m *manager) resolve(c Caller, ref string) (*entry, error) { return m.live().resolve(c, ref) }

// published swaps the index Get and List callers read.
func (m *manager) published() { m.recs.swap(m.byID, m.byName) }

// notFound is the one refusal for a VM that does not exist and for one the
// caller may not see.
func notFound(ref string) error {
	return &Error{Kind: ErrNotFound, VM: ref, Msg: fmt.Sprintf("no VM named %q", ref)}
}

func ambiguous(ref string, hits []*entry, format string) error {
	ids := make([]string, len(hits))
	for i, e := range hits {
		ids[i] = e.vm().ID
	}
	sort.Strings(ids)
	return &Error{Kind: ErrInvalidArgument, Field: "vm", VM: ref, Msg: fmt.Sprintf(format, ref, len(hits), strings.Join(ids, ", "))}
}

// route finds the VM a request is for. paddock's own callers address it by
// exact id only.
func (m *manager) route(req vmRequest) (*entry, error) {
	if r, ok := req.(byID); ok && r.vmID() != "" {
		if e, ok := m.byID[r.vmID()]; ok && !e.gone.Load() && req.caller().May(e.vm().OwnerUID) {
			return e, nil
		}
		return nil, notFound(r.vmID())
	}
	return m.resolve(req.caller(), req.ref())
}

func (s *recordSet) list(c Caller) []state.VM {
	out := make([]state.VM, 0, len(s.byID))
	for _, e := range s.byID {
		if !e.gone.Load() && c.May(e.vm().OwnerUID) {
			out = append(out, *e.vm())
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].ID < out[j].ID
	})
	return out
}

func (m *manager) list(c Caller) []state.VM { return m.live().list(c) }

func (m *manager) create(ctx actor.Context, req *CreateVM) (*state.VM, error) {
	if err := state.ValidateNewName(req.Name); err != nil {
		return nil, &Error{Kind: ErrInvalidArgument, Field: "name", Msg: err.Error()}
	}
	if id, ok := m.byName[nameKey{owner: req.Caller.UID, name: req.Name}]; ok {
		return nil, &Error{Kind: ErrNameInUse, Name: req.Name, Msg: fmt.Sprintf("name %q is already used by your VM %s", req.Name, id[:12])}
	}
	d := m.defaults()
	spec := state.Spec{CPUs: d.CPUs, Memory: int64(d.Memory), DiskSize: int64(d.DiskSize)}
	if d.AutoStop.Duration > 0 {
		spec.AutoStop = d.AutoStop.String()
	}
	if err := applySpec(&spec, req.CPUs, req.Memory, req.DiskSize, req.AutoStop, 0); err != nil {
		return nil, err
	}
	if req.Image == "" {
		return nil, &Error{Kind: ErrInvalidArgument, Field: "image", Msg: "no image given"}
	}
	for _, kv := range req.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" || strings.ContainsAny(kv, "\x00") {
			return nil, &Error{Kind: ErrInvalidArgument, Field: "env", Msg: fmt.Sprintf("env %q is not KEY=VALUE", kv)}
		}
	}
	spec.Env = req.Env
	if err := applyRun(&spec, req.RunChange); err != nil {
		return nil, err
	}
	spec.Template, spec.TemplateBoot = req.Template, req.TemplateBoot
	if (spec.Template != "" || spec.TemplateBoot) && len(spec.Workspaces) > 0 {
		return nil, &Error{Kind: ErrInvalidArgument, Field: "workspaces", Msg: "a VM made from a template (or for one) attaches no workspaces: its devices are the saved guest's"}
	}
	if err := checkNet(m.netFacts, spec, req.RunChange, req.Caller); err != nil {
		return nil, err
	}
	if err := m.portsTaken(spec.Ports, "", req.Caller); err != nil {
		return nil, err
	}
	img, err := m.images.Resolve(req.Caller.viewer(), req.Image)
	if err != nil {
		if errors.Is(err, imaging.ErrImageNotFound) || errors.Is(err, imaging.ErrAmbiguous) {
			return nil, &Error{Kind: ErrInvalidArgument, Field: "image", Msg: fmt.Sprintf("%v (import or pull it first)", err)}
		}
		return nil, fmt.Errorf("resolve image %q: %w", req.Image, err)
	}
	spec.Image, spec.ImageDigest = req.Image, img.Digest
	now := time.Now().UTC()
	vm := state.VM{ID: state.NewID(), Name: req.Name, OwnerUID: req.Caller.UID, Spec: spec, Status: state.StatusCreated, CreatedAt: now, UpdatedAt: now}
	for m.byID[vm.ID] != nil {
		vm.ID = state.NewID()
	}
	if m.host != nil && m.host.Alloc != nil {
		// The address is the VM's for life, chosen here where every other
		// VM's is known.
		taken := map[netip.Addr]bool{}
		for _, e := range m.byID {
			if e.vm().Net != nil {
				if p, err := netip.ParsePrefix(e.vm().Net.IP); err == nil {
					taken[p.Addr()] = true
				}
			}
		}
		addr, err := m.host.Alloc.Allocate(vm.ID, taken)
		if err != nil {
			return nil, fmt.Errorf("allocate an address for %s: %w", req.Name, err)
		}
		vm.Net = &state.NetRuntime{IP: netip.PrefixFrom(addr, m.host.Alloc.Subnet().Bits()).String(), Gateway: m.host.Alloc.Gateway().String(), MAC: netdev.GuestMAC(vm.ID).String()}
	}
	// vm.json first: a crash before handles.json leaves a whole VM whose
	// handle set is empty, which is what a missing handles.json means.
	if err := m.store.Save(&vm); err != nil {
		_ = m.store.Remove(vm.ID)
		return nil, fmt.Errorf("create vm %s: %w", req.Name, err)
	}
	if err := m.store.SaveHandles(vm.ID, &state.Handles{}); err != nil {
		_ = m.store.Remove(vm.ID)
		return nil, fmt.Errorf("create vm %s: %w", req.Name, err)
	}
	m.spawn(ctx, vm)
	m.published()
	m.recount()
	ctx.Send(m.events, &emit{Owner: vm.OwnerUID, Event: api.Event{Kind: api.EventCreated, VMID: vm.ID, VMName: vm.Name, Status: string(vm.Status)}})
	return &vm, nil
}

// applySpec validates and applies requested spec changes. minDisk > 0 forbids
// shrinking below it.
func applySpec(s *state.Spec, cpus *int, memory, disk *int64, autoStop *string, minDisk int64) error {
	if cpus != nil {
		if *cpus < 1 || *cpus > 256 {
			return &Error{Kind: ErrInvalidArgument, Field: "cpus", Msg: fmt.Sprintf("cpus must be 1..256, got %d", *cpus)}
		}
		s.CPUs = *cpus
	}
	if memory != nil {
		if *memory < 64<<20 || *memory%(1<<20) != 0 || *memory > 1<<40 {
			return &Error{Kind: ErrInvalidArgument, Field: "memory", Msg: fmt.Sprintf("memory must be a whole number of MiB from 64MiB to 1TiB, got %d bytes", *memory)}
		}
		s.Memory = *memory
	}
	if disk != nil {
		if *disk < 64<<20 || *disk > 16<<40 {
			return &Error{Kind: ErrInvalidArgument, Field: "disk_size", Msg: fmt.Sprintf("disk_size must be from 64MiB to 16TiB, got %d bytes", *disk)}
		}
		if minDisk > 0 && *disk < minDisk {
			return &Error{Kind: ErrInvalidArgument, Field: "disk_size", Msg: fmt.Sprintf("disk_size can only grow: %s is smaller than the current %s", config.FormatSize(*disk), config.FormatSize(minDisk))}
		}
		s.DiskSize = *disk
	}
	if autoStop != nil {
		d, err := config.ParseDuration(*autoStop)
		if err != nil {
			return &Error{Kind: ErrInvalidArgument, Field: "auto_stop", Msg: "auto_stop: " + err.Error()}
		}
		s.AutoStop = ""
		if d > 0 {
			s.AutoStop = d.String()
		}
	}
	return nil
}

// loadOrError reads a record; an unreadable one becomes an error VM that
// only admins see (its owner is unknown) and that can be deleted.
func loadOrError(store *state.Store, id string, log *slog.Logger) state.VM {
	vm, err := store.Load(id)
	if err != nil {
		log.Error("VM record unreadable; marking it error", "vm_id", id, "err", err)
		return state.VM{ID: id, Status: state.StatusError, Reason: err.Error(), OwnerUID: 0}
	}
	return *vm
}

func orID(name, id string) string {
	if name != "" {
		return name
	}
	return id
}

// portsFree refuses a set or start whose published host ports another VM
// publishes: checked here, where every VM is known (create checks too).
func (m *manager) portsFree(req vmRequest, vm state.VM) error {
	switch r := req.(type) {
	case *SetVM:
		if r.Ports != nil {
			// the value's own faults (a privileged port, say) first
			spec := vm.Spec
			spec.Ports = *r.Ports
			if r.Network != nil {
				spec.Network = *r.Network
			}
			if err := checkNet(m.netFacts, spec, r.RunChange, r.Caller); err != nil {
				return err
			}
			return m.portsTaken(*r.Ports, vm.ID, r.Caller)
		}
	case *StartVM:
		if err := m.hostIPsPresent(vm.Spec.Ports); err != nil {
			return err
		}
		return m.portsTaken(vm.Spec.Ports, vm.ID, r.Caller)
	}
	return nil
}

// hostIPsPresent refuses to start a VM publishing on an address the host
// has lost since the ports were set.
func (m *manager) hostIPsPresent(ports []netspec.PortMapping) error {
	if m.netFacts == nil || !slices.ContainsFunc(ports, func(p netspec.PortMapping) bool { return p.HostIP.IsValid() }) {
		return nil
	}
	f, err := m.netFacts(false)
	if err != nil {
		return fmt.Errorf("check the VM's ports: %w", err)
	}
	if err := netspec.HostIPsPresent(ports, f.HostAddrs); err != nil {
		return invalid("ports", "%v", err)
	}
	return nil
}

// portsTaken is an error naming the first of want whose host port a VM
// other than self publishes: by name only to a caller who may see it.
func (m *manager) portsTaken(want []netspec.PortMapping, self string, c Caller) error {
	if len(want) == 0 {
		return nil
	}
	var others []portcheck.Published
	for id, e := range m.byID {
		if id == self {
			continue
		}
		for _, p := range e.vm().Spec.Ports {
			others = append(others, portcheck.Published{VMID: id, VMName: e.vm().Name, Owner: e.vm().OwnerUID, Mapping: p})
		}
	}
	if err := portcheck.CheckVMs(want, others, portcheck.Viewer{UID: c.UID, Admin: c.Admin}); err != nil {
		return &Error{Kind: ErrInvalidArgument, Field: "ports", Msg: err.Error()}
	}
	return nil
}
