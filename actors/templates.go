package actors

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/host/disk"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/state"
)

// NameTemplates is the Templates actor: a sibling of the Manager that
// keeps template snapshots and makes them, reaching VMs only through the
// request function it is given.
const NameTemplates = "templates"

// TemplateDeps wire the Templates actor.
type TemplateDeps struct {
	Store *state.TemplateStore
	// Parts are the identities of what a saved guest depends on, for the
	// kit named kernel: its kernel, its initramfs (the agent), the VMM
	// binary. A template whose parts changed is refused and swept.
	Parts func(kernel string) ([]state.FileID, error)
	// Flatten writes the disk at path (format raw or qcow2) as a raw
	// sparse file at out.
	Flatten func(ctx context.Context, path, format, out string) error
	// Timeout bounds one creation (boot, save, freeze); default 10 min.
	Timeout time.Duration
	Log     *slog.Logger
	// vms sends a VM request through the Manager (set by Start).
	vms func(ctx context.Context, msg any) (*Result, error)
}

// Requests to the Templates actor; each is answered with *TemplateResult.
type (
	// CreateTemplate boots Image once, waits for its agent, saves the
	// guest and freezes its disk as the caller's template Name. Answered
	// when the template is ready (or failed, with nothing left).
	CreateTemplate struct {
		Caller   Caller
		Name     string
		Image    string
		CPUs     *int
		Memory   *int64
		DiskSize *int64
		Network  *string
		Kernel   *string
	}
	ListTemplates struct{ Caller Caller }
	GetTemplate   struct {
		Caller Caller
		Ref    string
	}
	RemoveTemplate struct {
		Caller Caller
		Ref    string
	}
)

// TemplateResult answers a Templates request.
type TemplateResult struct {
	Template  *state.Template
	Templates []state.Template
	Err       error
}

func (r *TemplateResult) failure() error { return r.Err }

func (m *CreateTemplate) describe() string { return "creation of template " + m.Name }
func (m *ListTemplates) describe() string  { return "template list" }
func (m *GetTemplate) describe() string    { return "lookup of template " + m.Ref }
func (m *RemoveTemplate) describe() string { return "removal of template " + m.Ref }

type templatesActor struct {
	d        TemplateDeps
	log      *slog.Logger
	t        map[string]*state.Template // by id
	cutShort []*state.Template          // creations a crash cut short
	// stopVerify ends the background check of the saved states (verifyAll).
	stopVerify context.CancelFunc
}

// sweepTemplates, sent once the Manager is ready, removes the creations a
// crash cut short and their builder VMs.
type sweepTemplates struct{}

// imageRemoved tells the Templates actor that Caller removed the image
// Digest: its templates go with it.
type imageRemoved struct {
	Caller Caller
	Digest string
}

func (m *imageRemoved) describe() string { return "removal of the templates of image " + m.Digest }

// templateMade ends a creation in the mailbox.
type templateMade struct {
	t    *state.Template
	err  error
	done *actor.PID
}

func newTemplatesActor(d TemplateDeps) actor.Actor {
	return &templatesActor{d: d, log: d.Log.With("actor", NameTemplates), t: map[string]*state.Template{}}
}

func (a *templatesActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.load(ctx)
	case *sweepTemplates:
		for _, t := range a.cutShort {
			go a.abandon(t)
		}
		a.cutShort = nil
		a.startVerify()
	case *actor.Stopping:
		if a.stopVerify != nil {
			a.stopVerify()
		}
	case *Ping:
		ctx.Respond(&Pong{From: NameTemplates})
	case *ListTemplates:
		var out []state.Template
		for _, t := range a.t {
			if m.Caller.May(t.OwnerUID) && t.Status == state.TemplateReady {
				out = append(out, *t)
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
		ctx.Respond(&TemplateResult{Templates: out})
	case *GetTemplate:
		t, err := a.lookup(m.Caller, m.Ref)
		if err != nil {
			ctx.Respond(&TemplateResult{Err: err})
			return
		}
		c := *t
		ctx.Respond(&TemplateResult{Template: &c})
	case *RemoveTemplate:
		t, err := a.lookup(m.Caller, m.Ref)
		if err == nil {
			err = a.removeFiles(t.ID)
		}
		if err != nil {
			ctx.Respond(&TemplateResult{Err: err})
			return
		}
		delete(a.t, t.ID)
		a.log.Info("template removed", "template", t.Name, "template_id", t.ID, "owner_uid", t.OwnerUID)
		ctx.Respond(&TemplateResult{Template: t})
	case *imageUsers:
		users := []ImageUser{}
		for _, t := range a.t {
			if m.Digest == "" || t.ImageDigest == m.Digest {
				users = append(users, ImageUser{ID: t.ID, Name: t.Name, Owner: t.OwnerUID, Digest: t.ImageDigest, Template: true})
			}
		}
		ctx.Respond(users)
	case *imageRemoved:
		ctx.Respond(&TemplateResult{Err: a.imageRemoved(m)})
	case *CreateTemplate:
		a.create(ctx, m)
	case *templateMade:
		a.made(ctx, m)
	}
}

// load reads the store: templates whose parts changed are swept, so are
// creations a crash cut short (their builder VM is removed first, off the
// mailbox).
func (a *templatesActor) load(ctx actor.Context) {
	if a.d.Store == nil {
		return
	}
	all, swept, corrupt, err := a.d.Store.LoadAll()
	if err != nil {
		a.log.Error("loading templates", "err", err)
		return
	}
	for _, s := range swept {
		a.log.Info("swept a template removal cut short", "dir", s)
	}
	for _, err := range corrupt {
		a.log.Error("template record unreadable; kept", "err", err)
	}
	for _, t := range all {
		if t.Status != state.TemplateReady {
			// Removed with its builder once the VMs are reconciled
			// (sweepTemplates): a delete must not race the re-adoption.
			a.log.Warn("template creation was cut short: removing it and its builder VM", "template", t.Name, "builder", t.Builder)
			a.cutShort = append(a.cutShort, t)
			continue
		}
		if p := state.Changed(t.Parts); p != "" {
			a.log.Warn("template invalidated: what it was saved with changed", "template", t.Name, "changed", p)
			if err := a.removeFiles(t.ID); err != nil {
				a.log.Error("removing an invalid template", "template", t.Name, "err", err)
			}
			continue
		}
		a.t[t.ID] = t
	}
}

// startVerify checks every ready template's saved files off the mailbox,
// one file at a time, so that the first resume after a start finds them
// verified (verifyState hashes each file once per daemon and file
// version; a template's memory is its guest's RAM size: hashing 512 MiB
// took 0.6-2.9 s here, which the first resume would otherwise wait on). A
// damaged template is logged, and refused naming it when used.
func (a *templatesActor) startVerify() {
	var boots []*TemplateBoot
	from := TemplateBootFrom(a.d.Store)
	for id := range a.t {
		if tb, err := from(id); err == nil {
			boots = append(boots, tb)
		}
	}
	if len(boots) == 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.stopVerify = cancel
	log := a.log
	go func() {
		defer cancel()
		for _, tb := range boots {
			if ctx.Err() != nil {
				return
			}
			if err := verifyState(tb); err != nil {
				log.Warn("template check: a resume from it will be refused", "template", tb.Name, "err", err)
			}
		}
	}()
}

// removeFiles takes template id's files away, and its state's entry in
// the verified-state cache with them (the cache would otherwise keep one
// per template ever made).
func (a *templatesActor) removeFiles(id string) error {
	statePath := a.d.Store.Path(id, state.TemplateState)
	verifiedStates.forget(statePath)
	verifiedStates.forget(vmm.MemPath(statePath))
	return a.d.Store.Remove(id)
}

// imageRemoved sweeps the templates of an image its caller removed: those
// the caller may see (an admin's purge: everyone's). Others' stay, with
// their own hold on the image.
func (a *templatesActor) imageRemoved(m *imageRemoved) error {
	for id, t := range a.t {
		if t.ImageDigest != m.Digest || t.Status != state.TemplateReady || !m.Caller.May(t.OwnerUID) {
			continue
		}
		if err := a.removeFiles(id); err != nil {
			return fmt.Errorf("template %s: %w", t.Name, err)
		}
		delete(a.t, id)
		a.log.Info("template removed with its image", "template", t.Name, "template_id", id, "owner_uid", t.OwnerUID, "image_digest", m.Digest)
	}
	return nil
}

func (a *templatesActor) lookup(c Caller, ref string) (*state.Template, error) {
	// An id, else the caller's own name, else (admins) a name one user has.
	var found *state.Template
	var others []*state.Template
	for _, t := range a.t {
		if t.Status != state.TemplateReady || !c.May(t.OwnerUID) {
			continue
		}
		switch {
		case t.ID == ref, t.Name == ref && t.OwnerUID == c.UID:
			found = t
		case t.Name == ref:
			others = append(others, t)
		}
		if found != nil {
			break
		}
	}
	if found == nil && len(others) > 1 {
		return nil, &Error{Kind: ErrInvalidArgument, Field: "template", Msg: fmt.Sprintf("%d users have a template named %q: give its id", len(others), ref)}
	}
	if found == nil && len(others) == 1 {
		found = others[0]
	}
	if found == nil {
		return nil, &Error{Kind: ErrNotFound, VM: ref, Msg: fmt.Sprintf("no template named %q", ref)}
	}
	if p := state.Changed(found.Parts); p != "" {
		return nil, &Error{Kind: ErrInvalidState, VM: ref, Msg: fmt.Sprintf("template %s is stale: %s changed since it was saved (paddock template rm %s, then create it again)", found.Name, p, found.Name)}
	}
	return found, nil
}

func (a *templatesActor) create(ctx actor.Context, m *CreateTemplate) {
	fail := func(err error) { ctx.Respond(&TemplateResult{Err: err}) }
	if a.d.Store == nil || a.d.vms == nil {
		fail(errorf(ErrNotYet, "templates need VMs to run here (vm.run = \"on\")"))
		return
	}
	if err := state.ValidateNewName(m.Name); err != nil {
		fail(&Error{Kind: ErrInvalidArgument, Field: "name", Msg: "template " + err.Error()})
		return
	}
	for _, t := range a.t {
		if t.Name == m.Name && t.OwnerUID == m.Caller.UID {
			fail(&Error{Kind: ErrNameInUse, Name: m.Name, Msg: fmt.Sprintf("you have a template named %q already", m.Name)})
			return
		}
	}
	t := &state.Template{ID: state.NewID(), Name: m.Name, OwnerUID: m.Caller.UID, Status: state.TemplateCreating, Created: time.Now().UTC(), Image: m.Image}
	t.Builder = "template-" + t.ID[:12]
	if err := a.d.Store.Begin(t); err != nil {
		fail(err)
		return
	}
	a.t[t.ID] = t
	failpoint("template-begin")
	self, root, to := ctx.Self(), ctx.ActorSystem().Root, ctx.Sender()
	timeout := a.d.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	c := *t
	go func() {
		bctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		err := a.build(bctx, &c, m)
		root.Send(self, &templateMade{t: &c, err: err, done: to})
	}()
}

// build is a creation, off the mailbox: boot the builder VM, save it,
// freeze its disk, record what it depends on; the builder goes in any case.
func (a *templatesActor) build(ctx context.Context, t *state.Template, m *CreateTemplate) (err error) {
	owner := Caller{UID: t.OwnerUID}
	defer func() {
		// The builder goes whatever happened; a failed creation leaves nothing.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if derr := a.removeBuilder(dctx, t); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	run := RunChange{Network: m.Network, Kernel: m.Kernel}
	r, err := a.d.vms(ctx, &CreateVM{Caller: owner, Name: t.Builder, Image: m.Image, CPUs: m.CPUs, Memory: m.Memory, DiskSize: m.DiskSize, RunChange: run, TemplateBoot: true})
	if err != nil {
		return err
	}
	vm := r.VM
	// From here the builder is known by id: the clean-up never deletes a
	// VM of the same name that is not this creation's.
	t.BuilderID = vm.ID
	if err := a.d.Store.Save(t); err != nil {
		return err
	}
	t.ImageDigest, t.Kernel, t.CPUs, t.Memory, t.DiskSize, t.Network = vm.Spec.ImageDigest, vm.Spec.Kernel, vm.Spec.CPUs, vm.Spec.Memory, vm.Spec.DiskSize, vm.Spec.Network
	if t.Parts, err = a.d.Parts(vm.Spec.Kernel); err != nil {
		return err
	}
	if _, err := a.d.vms(ctx, &StartVM{Caller: owner, Ref: vm.ID}); err != nil {
		return fmt.Errorf("boot of the template's guest: %w", err)
	}
	failpoint("template-booted")
	statePath := a.d.Store.Path(t.ID, state.TemplateState)
	t0 := time.Now()
	r, err = a.d.vms(ctx, &SaveVM{Caller: owner, ID: vm.ID, Path: statePath})
	if err != nil {
		return err
	}
	t.SaveMS = float64(time.Since(t0).Microseconds()) / 1000
	failpoint("template-saved")
	dk := decodeDisk(r.VM.Disk)
	if dk == nil || dk.Path == "" || dk.Backend == disk.DM {
		return fmt.Errorf("template %s: the builder's disk (%s backend) cannot be frozen: templates need a file disk (disk_backend reflink, qcow2 or copy)", t.Name, r.VM.Runtime.DiskBackend)
	}
	if err := a.d.Flatten(ctx, dk.Path, dk.Format, a.d.Store.Path(t.ID, state.TemplateDisk)); err != nil {
		return fmt.Errorf("template %s: freeze the disk: %w", t.Name, err)
	}
	if t.StateSHA256, t.StateSize, err = digestFile(statePath); err != nil {
		return err
	}
	// Hashed just now: the first resume need not read it again.
	verifiedStates.remember(statePath, t.StateSHA256)
	// The guest's memory, when the driver saved it apart (vmm.Saver).
	memPath := vmm.MemPath(statePath)
	if _, err := os.Lstat(memPath); err == nil {
		if t.MemorySHA256, t.MemorySize, err = digestFile(memPath); err != nil {
			return err
		}
		verifiedStates.remember(memPath, t.MemorySHA256)
	}
	return nil
}

// removeBuilder deletes t's builder VM: by its id once recorded; before
// that (a crash or a lost answer right after the create) only a VM of the
// builder's name that is booted for a template — never the owner's own VM
// that happens to have the name.
func (a *templatesActor) removeBuilder(ctx context.Context, t *state.Template) error {
	owner := Caller{UID: t.OwnerUID}
	id := t.BuilderID
	if id == "" {
		r, err := a.d.vms(ctx, &GetVM{Caller: owner, Ref: t.Builder})
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("looking up builder VM %s: %w", t.Builder, err)
		}
		if !r.VM.Spec.TemplateBoot {
			return nil // the owner's own VM: not ours to remove
		}
		id = r.VM.ID
	}
	if _, err := a.d.vms(ctx, &DeleteVM{Caller: owner, Ref: id, Force: true}); err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("removing builder VM %s: %w", t.Builder, err)
	}
	return nil
}

// abandon removes a creation a crash cut short: its builder VM, then it.
func (a *templatesActor) abandon(t *state.Template) {
	if a.d.vms != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		err := a.removeBuilder(ctx, t)
		cancel()
		if err != nil {
			a.log.Error("removing the builder VM of a template cut short", "template", t.Name, "builder", t.Builder, "err", err)
			return // kept, to be tried again at the next start
		}
	}
	if err := a.removeFiles(t.ID); err != nil {
		a.log.Error("removing a template cut short", "template", t.Name, "err", err)
	}
}

func (a *templatesActor) made(ctx actor.Context, m *templateMade) {
	t := m.t
	if m.err == nil {
		t.Status = state.TemplateReady
		m.err = a.d.Store.Save(t)
	}
	if m.err != nil {
		delete(a.t, t.ID)
		if err := a.removeFiles(t.ID); err != nil {
			a.log.Error("removing a failed template", "template", t.Name, "err", err)
		}
		a.log.Warn("template not created", "template", t.Name, "err", m.err)
		ctx.Send(m.done, &TemplateResult{Err: m.err})
		return
	}
	a.t[t.ID] = t
	a.log.Info("template created", "template", t.Name, "template_id", t.ID, "owner_uid", t.OwnerUID, "state_bytes", t.StateSize, "save_ms", t.SaveMS)
	c := *t
	ctx.Send(m.done, &TemplateResult{Template: &c})
}

// digestFile is path's sha256 and size (the driver's Save fsynced it).
func digestFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("digest %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// TemplateRequest sends a request to the Templates actor.
func (s *System) TemplateRequest(ctx context.Context, msg any) (*TemplateResult, error) {
	return request[*TemplateResult](ctx, s.sys.Root, s.Templates, msg)
}
