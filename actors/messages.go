// Package actors holds paddockd's supervision tree (protoactor-go): the
// Manager and one actor per VM, with Stats, Import and Events siblings.
// Actors hold no durable truth: every fact that must survive a crash is on
// disk before an actor acts on it.
package actors

import (
	"fmt"
	"time"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/state"
)

// Kinds of refusal; an *Error wraps one so callers use errors.Is. Each kind
// is in an errdefs class, which decides the API error a client sees.
var (
	ErrNotFound         = errdefs.New(errdefs.ErrNotFound, "vm not found")
	ErrNameInUse        = errdefs.New(errdefs.ErrAlreadyExists, "name in use")
	ErrInvalidArgument  = errdefs.New(errdefs.ErrInvalidArgument, "invalid argument")
	ErrInvalidState     = errdefs.New(errdefs.ErrFailedPrecondition, "invalid state")
	ErrPermissionDenied = errdefs.New(errdefs.ErrPermissionDenied, "permission denied")
	ErrNotYet           = errdefs.New(errdefs.ErrNotImplemented, "not implemented yet")
	// ErrAgentUnavailable: the VM runs but its agent is not connected; it
	// may be booting or reconnecting after a daemon restart.
	ErrAgentUnavailable = errdefs.New(errdefs.ErrUnavailable, "agent unavailable")
)

// Error is a refusal that names its culprit.
type Error struct {
	Kind   error
	VM     string // the reference or id concerned
	Name   string // for ErrNameInUse
	Field  string // for ErrInvalidArgument
	Status state.Status
	Msg    string
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Kind }

func errorf(kind error, format string, args ...any) *Error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// Caller is who asks, as established by the API front-end.
type Caller struct {
	UID   uint32
	Admin bool
}

// May reports whether the caller may see and touch a VM owned by owner.
func (c Caller) May(owner uint32) bool { return c.Admin || c.UID == owner }

// viewer is how the caller looks at the image store.
func (c Caller) viewer() imaging.Viewer {
	return imaging.Viewer{Namespace: imaging.UserNamespace(c.UID), Admin: c.Admin}
}

// Requests accepted by the Manager. Each is answered with *Result.
type (
	// CreateVM makes a new VM record.
	CreateVM struct {
		Caller   Caller
		Name     string
		Image    string
		CPUs     *int
		Memory   *int64
		DiskSize *int64
		AutoStop *string
		Env      []string
		RunChange
		// Template (an id) makes the VM resume that template at its first
		// start; TemplateBoot boots it to be saved as one.
		Template     string
		TemplateBoot bool
	}
	// GetVM reads one VM.
	GetVM struct {
		Caller Caller
		Ref    string
	}
	// ListVMs reads every VM the caller may see.
	ListVMs struct{ Caller Caller }
	// SetVM changes spec fields.
	SetVM struct {
		Caller   Caller
		Ref      string
		CPUs     *int
		Memory   *int64
		DiskSize *int64
		AutoStop *string
		RunChange
	}
	// StartVM starts a VM.
	StartVM struct {
		Caller Caller
		Ref    string
		// Received is when the API call arrived (the start's report
		// counts its "api" span from it); zero when not from the API.
		Received time.Time
	}
	// StopVM stops a VM. Reason, when set, is recorded as why it stopped.
	// ID, when set, addresses the VM by its exact id only (paddock's own
	// callers: auto-stop); Ref is what a user typed.
	StopVM struct {
		Caller Caller
		Ref    string
		ID     string
		Force  bool
		Reason string
	}
	// DeleteVM removes a VM.
	DeleteVM struct {
		Caller Caller
		Ref    string
		Force  bool
	}
	// CountVMs tallies VMs by status; answered with Counts.
	CountVMs struct{}
	// SaveVM writes a running VM's whole guest state to Path (a new file)
	// with the VMM driver's Saver, then stops the VM by killing its VMM
	// (the guest must not run on from the disk the state belongs to).
	// Answered when the VM is stopped. Paddock's own callers (templates)
	// address the VM by its exact id.
	SaveVM struct {
		Caller Caller
		ID     string
		Path   string
	}
)

// Result answers a VM request.
type Result struct {
	VM  *state.VM
	VMs []state.VM
	Err error
}

// Ping is answered with Pong by every long-lived actor; the watchdog uses it.
type Ping struct{}

// Pong answers Ping.
type Pong struct{ From string }

// vmRequest is implemented by requests the Manager routes to a VM actor.
type vmRequest interface {
	ref() string
	caller() Caller
}

// byID is implemented by requests that may address a VM by its exact id
// only: paddock's own callers (the Stats actor) never go through names, so
// no VM named after another's id can stand in for it.
type byID interface{ vmID() string }

func (m *StopVM) vmID() string { return m.ID }
func (m *SaveVM) vmID() string { return m.ID }

func (m *GetVM) ref() string       { return m.Ref }
func (m *GetVM) caller() Caller    { return m.Caller }
func (m *SetVM) ref() string       { return m.Ref }
func (m *SetVM) caller() Caller    { return m.Caller }
func (m *StartVM) ref() string     { return m.Ref }
func (m *StartVM) caller() Caller  { return m.Caller }
func (m *StopVM) ref() string      { return orID(m.Ref, m.ID) }
func (m *StopVM) caller() Caller   { return m.Caller }
func (m *DeleteVM) ref() string    { return m.Ref }
func (m *DeleteVM) caller() Caller { return m.Caller }
func (m *SaveVM) ref() string      { return m.ID }
func (m *SaveVM) caller() Caller   { return m.Caller }
func (m *crashVM) ref() string     { return m.Ref }
func (m *crashVM) caller() Caller  { return Caller{Admin: true} }

// What each request is called in error text (request.go).
func (m *CreateVM) describe() string { return "creation of VM " + m.Name }
func (m *GetVM) describe() string    { return "lookup of VM " + m.Ref }
func (m *ListVMs) describe() string  { return "VM list" }
func (m *SetVM) describe() string    { return "change of VM " + m.Ref }
func (m *StartVM) describe() string  { return "start of VM " + m.Ref }
func (m *StopVM) describe() string   { return "stop of VM " + m.ref() }
func (m *DeleteVM) describe() string { return "deletion of VM " + m.Ref }
func (m *SaveVM) describe() string   { return "save of VM " + m.ID }
func (m *CountVMs) describe() string { return "VM count" }
func (m *Ping) describe() string     { return "liveness ping" }
func (m *imageUsers) describe() string {
	if m.Digest == "" {
		return "list of the VMs that use images"
	}
	return "list of the VMs that use image " + m.Digest
}

// crashVM makes a VM actor panic, or with Kind one of its resource
// children; tests use it to prove supervision.
type crashVM struct{ Ref, Kind string }

// crashRes makes a resource child panic.
type crashRes struct{}

// imageUsers asks the Manager which VMs (every user's) use an image, or
// any image with Digest ""; answered with []ImageUser.
type imageUsers struct{ Digest string }

// Messages between the Manager and its VM children.
type (
	vmChanged struct{ VM state.VM }
	vmDeleted struct{ ID string }
)
