package actors

import (
	"context"
	"fmt"

	"github.com/paddock-vm/paddock/host/netfilter"
	"github.com/paddock-vm/paddock/state"
)

// Rules is what a VM needs of paddock's packet rules (host/netfilter): its
// anti-spoofing, published ports and group membership, all tagged with its
// id, replaced and removed as one batch.
type Rules interface {
	ApplyVM(ctx context.Context, vm netfilter.VM) (changed bool, err error)
	ProbeVM(ctx context.Context, vmID string) (bool, error)
	ReleaseVM(ctx context.Context, vmID string) error
	ListVMs(ctx context.Context) ([]string, error)
}

// PortCheck refuses a published host port that a listener on the host
// holds, naming the holder (host/portcheck).
type PortCheck func(ctx context.Context, vm netfilter.VM) error

// rulesStep: the VM's rules in paddock's nftables tables (bridge mode).
// Handle: the VM id they are tagged with, and what they publish. Intent
// and live name the same rules (the tag), so a crash anywhere in Acquire
// is torn down by the tag.
type rulesStep struct {
	rules Rules
	check PortCheck
	// why is the reason rules are unavailable while the bridge is up: a
	// bridged VM without its rules would see and spoof every other guest,
	// so it does not start.
	why error
}

func (s rulesStep) Plan(b *bootPlan) *state.RulesRuntime {
	return &state.RulesRuntime{VM: b.vmID}
}

func (s rulesStep) Acquire(ctx context.Context, b *bootPlan, _ *state.RulesRuntime) (*state.RulesRuntime, error) {
	if s.rules == nil {
		return nil, fmt.Errorf("packet rules unavailable, so no VM starts on the bridge: %w", s.why)
	}
	if s.check != nil {
		if err := s.check(ctx, b.rules); err != nil {
			return nil, err
		}
	}
	if _, err := s.rules.ApplyVM(ctx, b.rules); err != nil {
		return nil, err
	}
	return &state.RulesRuntime{VM: b.vmID, Tap: b.rules.Tap, Group: b.rules.Group, Ports: b.rules.Ports}, nil
}

func (s rulesStep) Release(ctx context.Context, r *state.RulesRuntime, _ releaseHow) error {
	if s.rules == nil || r == nil || r.VM == "" {
		return nil
	}
	return s.rules.ReleaseVM(ctx, r.VM)
}

func (s rulesStep) Probe(ctx context.Context, r *state.RulesRuntime) (bool, error) {
	if s.rules == nil || r == nil || r.VM == "" {
		return false, nil
	}
	return s.rules.ProbeVM(ctx, r.VM)
}
