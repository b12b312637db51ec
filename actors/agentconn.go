package actors

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/state"
)

// agentActor owns the connection to a VM's guest agent for its whole life:
// it dials (the hello is the end of a boot), hands the client to the VM
// actor, asks the guest to power off, and closes the connection when the
// VMM goes. Dials and requests run in goroutines with deadlines, so the
// mailbox always answers.
type agentActor struct {
	dial func(ctx context.Context, p *vmm.Process) (*agent.Client, error)
	log  *slog.Logger

	gen    uint64 // of the current connection attempt
	cancel context.CancelFunc
	client *agent.Client
}

// Messages to the agent child.
type (
	// connectAgent dials p's agent until deadline; answered with
	// agentReady to the parent.
	// With identity (a guest resumed from a template) the hello is
	// followed by the identity step, its clock field set at sending.
	connectAgent struct {
		gen      uint64
		proc     *vmm.Process
		deadline time.Time
		identity *agent.IdentityRequest
	}
	// disconnectAgent closes the connection (or cancels the dial).
	disconnectAgent struct{}
	// powerOffAgent asks the guest to shut down; answered with
	// agentPoweredOff.
	powerOffAgent struct{ gen uint64 }
)

// Answers to the VM actor.
type (
	agentReady struct {
		gen    uint64
		client *agent.Client
		err    error
		// identity is the resumed guest's identity step: what it took from
		// the request to the answer, and the guest's phases.
		identity *identityTaken
	}
	agentPoweredOff struct {
		gen uint64
		err error
	}
	dialed struct {
		gen      uint64
		client   *agent.Client
		err      error
		identity *identityTaken
	}
)

// identityTaken is how a resumed guest's identity step went.
type identityTaken struct {
	took   time.Duration
	phases []agent.Phase
}

func (a *agentActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Stopping:
		a.close()
	case *connectAgent:
		a.close()
		a.gen = m.gen
		dctx, cancel := context.WithDeadline(context.Background(), m.deadline)
		a.cancel = cancel
		self, root := ctx.Self(), ctx.ActorSystem().Root
		go func() {
			c, err := a.dial(dctx, m.proc)
			var taken *identityTaken
			if err == nil && m.identity != nil {
				failpoint("template-resumed")
				req := *m.identity
				s := time.Now()
				req.TimeNS = s.UnixNano()
				r, ierr := c.Identity(dctx, req)
				if ierr != nil {
					_ = c.Close()
					c, err = nil, fmt.Errorf("the guest resumed from the template did not take its identity: %w", ierr)
				}
				taken = &identityTaken{took: time.Since(s), phases: r.Phases}
			}
			root.Send(self, &dialed{gen: m.gen, client: c, err: err, identity: taken})
		}()
	case *dialed:
		if m.gen != a.gen || a.cancel == nil {
			if m.client != nil {
				_ = m.client.Close() // superseded or disconnected meanwhile
			}
			return
		}
		a.cancel()
		a.cancel = nil
		a.client = m.client
		if m.client != nil {
			if h := m.client.Hello(); h.BootError != "" {
				// the guest runs degraded (no root, a workspace not mounted):
				// said here, where a reader of the journal looks first
				a.log.Warn("guest boot incomplete", "boot_error", h.BootError)
			}
		}
		ctx.Send(ctx.Parent(), &agentReady{gen: m.gen, client: m.client, err: m.err, identity: m.identity})
	case *disconnectAgent:
		a.close()
	case *powerOffAgent:
		c := a.client
		if c == nil {
			ctx.Send(ctx.Parent(), &agentPoweredOff{gen: m.gen, err: fmt.Errorf("the agent is not connected")})
			return
		}
		parent, root := ctx.Parent(), ctx.ActorSystem().Root
		go func() {
			sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			root.Send(parent, &agentPoweredOff{gen: m.gen, err: c.Shutdown(sctx, false)})
		}()
	}
}

func (a *agentActor) close() {
	if a.cancel != nil {
		a.cancel()
		a.cancel = nil
	}
	if a.client != nil {
		_ = a.client.Close()
		a.client = nil
	}
}

// ExecVM asks a running VM for its agent connection; answered with
// *AgentResult. The caller runs the exec itself so that a long session
// never blocks the VM's mailbox.
// ID, when set, addresses the VM by its exact id only (the Stats actor).
type ExecVM struct {
	Caller Caller
	Ref    string
	ID     string
}

func (m *ExecVM) ref() string    { return orID(m.Ref, m.ID) }
func (m *ExecVM) caller() Caller { return m.Caller }
func (m *ExecVM) vmID() string   { return m.ID }

// AgentResult answers ExecVM.
type AgentResult struct {
	VM    *state.VM
	Agent *agent.Client
	Dir   string // the VM's state directory (console log)
	Err   error
}
