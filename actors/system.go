package actors

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/imaging/source"
	"github.com/paddock-vm/paddock/netspec"
	"github.com/paddock-vm/paddock/state"
)

// Deps is what the tree needs from the daemon.
type Deps struct {
	Log      *slog.Logger
	Store    *state.Store
	Images   ImageResolver
	Defaults Defaults
	// OnCounts is called from inside the Manager whenever the tally changes;
	// it must not block.
	OnCounts func(api.Counts)
	// Importer builds images; nil leaves the Import actor answering "not yet".
	Importer *imaging.Importer
	// Host runs VMs for real; nil keeps VMs as records only.
	Host *Host
	// Stats configures the Stats actor (with Host).
	Stats StatsDeps
	// Workspaces configures the Workspaces actor; a nil Store leaves it
	// answering "not configured".
	Workspaces WorkspaceDeps
	// Templates configures the Templates actor; a nil Store leaves it
	// answering "not configured".
	Templates TemplateDeps
	// NetFacts are the host's facts a VM's ports and network are checked
	// against on create and set, whether or not VMs run here; nil checks
	// the spec's own rules only (unit tests).
	NetFacts NetFacts
}

// NetFacts returns the host's facts (netspec.Facts) for a caller who is,
// or is not, an admin.
type NetFacts func(admin bool) (netspec.Facts, error)

// System is the running supervision tree.
type System struct {
	sys     *actor.ActorSystem
	Manager *actor.PID
	Stats   *actor.PID
	Import  *actor.PID
	Events  *actor.PID
	// Workspaces serves workspaces: a sibling of the Manager that reaches
	// VMs only by message or through function values given here.
	Workspaces *actor.PID
	// Templates keeps template snapshots, reaching VMs through a request
	// function given here.
	Templates *actor.PID
	stopped   sync.Once
	host      *Host
	// recs is the Manager's published index: Get and List read it.
	recs *records
}

// Names of the top-level actors, for logs and the wiring test.
const (
	NameManager = "manager"
	NameStats   = "stats"
	NameImport  = "import"
	NameEvents  = "events"
	// NameWorkspaces is the Workspaces actor.
	NameWorkspaces = "workspaces"
)

// Start builds the tree; the Manager has loaded every record when it
// returns, so the daemon can report ready.
func Start(ctx context.Context, d Deps) (*System, error) {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	pl := slog.New(demote{d.Log.Handler().WithAttrs([]slog.Attr{slog.String("actor", "protoactor")})})
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return pl }))
	s := &System{sys: sys, host: d.Host}
	root := sys.Root
	// A VM actor that keeps failing is stopped rather than restarted forever;
	// the others never notice (one-for-one).
	vmSupervisor := actor.NewOneForOneStrategy(10, time.Minute, actor.DefaultDecider)
	var err error
	if s.Events, err = root.SpawnNamed(actor.PropsFromProducer(func() actor.Actor { return newEventsActor(d.Log) }), NameEvents); err != nil {
		return nil, fmt.Errorf("spawn events actor: %w", err)
	}
	statsProducer := func() actor.Actor { return &notYetActor{name: NameStats} }
	if d.Host != nil {
		sd := d.Stats
		sd.Log = d.Log
		admin := Caller{Admin: true}
		// From the Manager's published records: a poll (twice when a
		// sample failed) costs the Manager's mailbox nothing.
		sd.Running = func(ctx context.Context) ([]state.VM, error) {
			vms, err := s.ListVMs(ctx, admin)
			if err != nil {
				return nil, err
			}
			var out []state.VM
			for _, vm := range vms {
				if vm.Status == state.StatusRunning {
					out = append(out, vm)
				}
			}
			return out, nil
		}
		// The Stats actor addresses VMs by exact id only, never by a name.
		sd.Agent = func(ctx context.Context, vmID string) (*agent.Client, error) {
			r, err := request[*AgentResult](ctx, s.sys.Root, s.Manager, &ExecVM{Caller: admin, ID: vmID})
			if err != nil {
				return nil, err
			}
			return r.Agent, nil
		}
		sd.Stop = func(ctx context.Context, vmID, reason string) error {
			_, err := s.Request(ctx, &StopVM{Caller: admin, ID: vmID, Reason: reason})
			return err
		}
		sd.Events = s.Events
		statsProducer = func() actor.Actor { return newStatsActor(sd) }
	}
	if s.Stats, err = root.SpawnNamed(actor.PropsFromProducer(statsProducer), NameStats); err != nil {
		return nil, fmt.Errorf("spawn stats actor: %w", err)
	}
	users := func() ([]ImageUser, error) {
		// The Import actor asks (off its mailbox) while it handles a
		// removal; it has no caller's context, so the wait gets its own
		// bound. An error refuses the removal: never remove on a guess.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return s.imageUsers(ctx, "")
	}
	gone := func(c Caller, digest string) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := request[*TemplateResult](ctx, s.sys.Root, s.Templates, &imageRemoved{Caller: c, Digest: digest})
		return err
	}
	if s.Import, err = root.SpawnNamed(actor.PropsFromProducer(func() actor.Actor { return newImportActor(d.Log, d.Importer, users, gone) }), NameImport); err != nil {
		return nil, fmt.Errorf("spawn import actor: %w", err)
	}
	wd := d.Workspaces
	wd.Log, wd.Events = d.Log, s.Events
	// The claims and the work in flight outlive a restart of the actor (a
	// panic): the VMs that hold them do not claim again until their next
	// start, and the work reports its end to the new actor.
	kept := newWorkspacesKept()
	if s.Workspaces, err = root.SpawnNamed(actor.PropsFromProducer(func() actor.Actor { return newWorkspacesActor(wd, kept) }), NameWorkspaces); err != nil {
		return nil, fmt.Errorf("spawn workspaces actor: %w", err)
	}
	// The VMs reach the Workspaces actor through these two function values
	// only: messages, never a pointer into it.
	link := wsLink{
		attach: func(ctx context.Context, m *AttachWorkspaces) ([]state.WorkspaceAttached, error) {
			r, err := request[*AttachResult](ctx, s.sys.Root, s.Workspaces, m)
			if err != nil {
				return nil, err
			}
			return r.Items, nil
		},
		detach: func(ctx context.Context, vmID string) error {
			_, err := request[*AttachResult](ctx, s.sys.Root, s.Workspaces, &DetachWorkspaces{VMID: vmID})
			return err
		},
	}
	s.recs = &records{}
	mgr := func() actor.Actor {
		return &manager{recs: s.recs, log: d.Log.With("actor", NameManager), store: d.Store, images: d.Images, defaults: d.Defaults, events: s.Events, onCounts: d.OnCounts, host: d.Host, netFacts: d.NetFacts, ws: link}
	}
	if s.Manager, err = root.SpawnNamed(actor.PropsFromProducer(mgr, actor.WithSupervisor(vmSupervisor)), NameManager); err != nil {
		return nil, fmt.Errorf("spawn manager: %w", err)
	}
	td := d.Templates
	td.Log = d.Log
	if d.Host != nil {
		td.vms = s.Request
	}
	if s.Templates, err = root.SpawnNamed(actor.PropsFromProducer(func() actor.Actor { return newTemplatesActor(td) }), NameTemplates); err != nil {
		return nil, fmt.Errorf("spawn templates actor: %w", err)
	}
	// Ready once every VM is reconciled and orphans are swept.
	wait := 10 * time.Minute
	if dl, ok := ctx.Deadline(); ok {
		wait = time.Until(dl)
	}
	if _, err := root.RequestFuture(s.Manager, &awaitReady{}, wait).Result(); err != nil {
		sys.Shutdown()
		return nil, fmt.Errorf("the VMs were not reconciled within %s: %w", wait, err)
	}
	if err := s.Ping(ctx); err != nil {
		sys.Shutdown()
		return nil, fmt.Errorf("actor system did not come up: %w", err)
	}
	root.Send(s.Templates, &sweepTemplates{})
	return s, nil
}

// Ping round-trips through every top-level actor; the systemd watchdog is fed
// only when it succeeds, so a wedged actor system gets restarted.
func (s *System) Ping(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, pid := range []*actor.PID{s.Manager, s.Stats, s.Import, s.Workspaces, s.Templates, s.Events} {
		if _, err := request[*Pong](ctx, s.sys.Root, pid, &Ping{}); err != nil {
			return fmt.Errorf("ping %s: %w", pid.Id, err)
		}
	}
	return nil
}

// withDefaultTimeout bounds ctx by d unless it has a deadline already.
func withDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}

// Request sends msg to the Manager and waits for the answer.
func (s *System) Request(ctx context.Context, msg any) (*Result, error) {
	r, err := request[*Result](ctx, s.sys.Root, s.Manager, msg)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// GetVM finds a VM the caller may see, from the Manager's published
// records: no actor round trip, and never older than what a caller was told
// (VM actors publish before they answer).
func (s *System) GetVM(ctx context.Context, c Caller, ref string) (*state.VM, error) {
	set := s.recs.load()
	if set == nil {
		r, err := s.Request(ctx, &GetVM{Caller: c, Ref: ref})
		if err != nil {
			return nil, err
		}
		return r.VM, nil
	}
	e, err := set.resolve(c, ref)
	if err != nil {
		return nil, err
	}
	vm := *e.vm()
	return &vm, nil
}

// ViewVM is GetVM for a caller that only derives a value from the record
// (its API encoding): derive gets the published record itself (read-only) and
// runs once per record and key, which must be comparable. Ownership is
// checked as for GetVM before any view is made or reused.
func (s *System) ViewVM(ctx context.Context, c Caller, ref string, key any, derive func(*state.VM) (any, error)) (any, error) {
	set := s.recs.load()
	if set == nil {
		vm, err := s.GetVM(ctx, c, ref)
		if err != nil {
			return nil, err
		}
		return derive(vm)
	}
	e, err := set.resolve(c, ref)
	if err != nil {
		return nil, err
	}
	return e.viewOf(key, derive)
}

// ListVMs lists the VMs the caller may see, by name then id, from the
// Manager's published records.
func (s *System) ListVMs(ctx context.Context, c Caller) ([]state.VM, error) {
	set := s.recs.load()
	if set == nil {
		r, err := s.Request(ctx, &ListVMs{Caller: c})
		if err != nil {
			return nil, err
		}
		return r.VMs, nil
	}
	return set.list(c), nil
}

// Counts asks the Manager for the tally.
func (s *System) Counts(ctx context.Context) (api.Counts, error) {
	ctx, cancel := withDefaultTimeout(ctx, 5*time.Second)
	defer cancel()
	return request[api.Counts](ctx, s.sys.Root, s.Manager, &CountVMs{})
}

// Subscribe registers an events subscriber with a buffer of n.
func (s *System) Subscribe(ctx context.Context, c Caller, vmID string, n int) (uint64, <-chan api.Event, error) {
	ctx, cancel := withDefaultTimeout(ctx, 5*time.Second)
	defer cancel()
	ch := make(chan api.Event, n)
	r, err := request[*Subscribed](ctx, s.sys.Root, s.Events, &Subscribe{Caller: c, VMID: vmID, Ch: ch})
	if err != nil {
		return 0, nil, err
	}
	return r.ID, ch, nil
}

// Unsubscribe ends a subscription.
func (s *System) Unsubscribe(id uint64) { s.sys.Root.Send(s.Events, &Unsubscribe{ID: id}) }

// Images sends an image store request to the Import actor.
func (s *System) Images(ctx context.Context, msg any) (*ImageResult, error) {
	r, err := request[*ImageResult](ctx, s.sys.Root, s.Import, msg)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Agent returns a running VM's agent connection, after the same routing
// and permission checks as every VM request.
func (s *System) Agent(ctx context.Context, c Caller, ref string) (*AgentResult, error) {
	return request[*AgentResult](ctx, s.sys.Root, s.Manager, &ExecVM{Caller: c, Ref: ref})
}

// GetStats asks the Stats actor for fresh figures.
func (s *System) GetStats(ctx context.Context, c Caller, vmID string) ([]api.VMStats, error) {
	ctx, cancel := withDefaultTimeout(ctx, 60*time.Second)
	defer cancel()
	r, err := request[*StatsResult](ctx, s.sys.Root, s.Stats, &GetStats{Caller: c, VMID: vmID})
	if err != nil {
		return nil, err
	}
	return r.Stats, nil
}

// Touch records user activity on a VM for auto-stop.
func (s *System) Touch(vmID, cause string) {
	s.sys.Root.Send(s.Stats, &Touch{VMID: vmID, Cause: cause})
}

// Host is the host facilities VMs run on (nil: records only).
func (s *System) Host() *Host { return s.host }

// imageUsers asks the Manager and the Templates actor which VMs and
// templates use the image digest (any image with "").
func (s *System) imageUsers(ctx context.Context, digest string) ([]ImageUser, error) {
	vms, err := request[[]ImageUser](ctx, s.sys.Root, s.Manager, &imageUsers{Digest: digest})
	if err != nil {
		return nil, err
	}
	tmpls, err := request[[]ImageUser](ctx, s.sys.Root, s.Templates, &imageUsers{Digest: digest})
	if err != nil {
		return nil, err
	}
	return append(vms, tmpls...), nil
}

// ImageUsers names the VMs and templates that use an image, of those the
// caller may see.
func (s *System) ImageUsers(ctx context.Context, c Caller, digest string) ([]string, error) {
	ctx, cancel := withDefaultTimeout(ctx, 10*time.Second)
	defer cancel()
	users, err := s.imageUsers(ctx, digest)
	if err != nil {
		return nil, err
	}
	names := visibleUsers(c, users)
	if names == nil {
		names = []string{}
	}
	return names, nil
}

var importSeq atomic.Uint64

// ImportImage runs an import through the Import actor, streaming progress to fn,
// until it is done or ctx ends (which withdraws this caller; the import
// stops when no one else waits for it).
func (s *System) ImportImage(ctx context.Context, c Caller, public bool, open func(context.Context) (*source.Image, error), fn func(imaging.Progress)) (*ImportDone, error) {
	req := &ImportImage{ID: importSeq.Add(1), Caller: c, Public: public, Open: open, Progress: make(chan imaging.Progress, 64), Done: make(chan ImportDone, 1)}
	s.sys.Root.Send(s.Import, req)
	for {
		select {
		case p := <-req.Progress:
			if fn != nil {
				fn(p)
			}
		case d := <-req.Done:
			if d.Err != nil {
				return nil, d.Err
			}
			return &d, nil
		case <-ctx.Done():
			s.sys.Root.Send(s.Import, &CancelImport{ID: req.ID})
			return nil, ctx.Err()
		}
	}
}

// Shutdown stops every actor (stopping releases nothing: VMs keep running,
// their handles stay recorded for the next daemon). State is already on
// disk.
func (s *System) Shutdown() {
	s.stopped.Do(func() {
		for _, pid := range []*actor.PID{s.Manager, s.Stats, s.Import, s.Workspaces, s.Templates, s.Events} {
			if pid != nil {
				_ = s.sys.Root.StopFuture(pid).Wait()
			}
		}
		s.sys.Shutdown()
	})
}

// demote logs protoactor's own chatter one level lower, so its Info lines
// (dead letters, supervision) appear only at debug while warnings stay.
type demote struct{ slog.Handler }

func (d demote) Enabled(ctx context.Context, l slog.Level) bool {
	if l < slog.LevelWarn {
		l -= 4
	}
	return d.Handler.Enabled(ctx, l)
}

func (d demote) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		r.Level -= 4
	}
	return d.Handler.Handle(ctx, r)
}

func (d demote) WithAttrs(as []slog.Attr) slog.Handler { return demote{d.Handler.WithAttrs(as)} }
func (d demote) WithGroup(n string) slog.Handler       { return demote{d.Handler.WithGroup(n)} }
