package actors

import (
	"context"
	"errors"
	"log/slog"

	"github.com/paddock-vm/paddock/host/netdev"
	"github.com/paddock-vm/paddock/state"
)

// tapStep: the VM's tap device on the bridge. Handle: name and ifindex
// (the name is deterministic, pdk-<id>, so the plan names it).
type tapStep struct {
	net   netdev.Interface
	owner netdev.Owner
	log   *slog.Logger
}

func (s tapStep) Plan(b *bootPlan) *state.TapRuntime {
	return &state.TapRuntime{Name: netdev.TapName(b.vmID)}
}

func (s tapStep) Acquire(ctx context.Context, b *bootPlan, _ *state.TapRuntime) (*state.TapRuntime, error) {
	tap, err := s.net.AcquireTap(ctx, b.vmID, s.owner)
	if err != nil {
		return nil, err
	}
	return &state.TapRuntime{Name: tap.Name, Ifindex: tap.Ifindex}, nil
}

func (s tapStep) Release(ctx context.Context, t *state.TapRuntime, _ releaseHow) error {
	if s.net == nil || t == nil || t.Name == "" {
		return nil
	}
	err := s.net.ReleaseTap(ctx, t.Name, t.Ifindex)
	if errors.Is(err, netdev.ErrNotOurs) {
		s.log.Warn("not deleting a link that is not this VM's tap", "tap", t.Name)
		return nil
	}
	return err
}

func (s tapStep) Probe(_ context.Context, t *state.TapRuntime) (bool, error) {
	if s.net == nil || t == nil {
		return false, nil
	}
	exists, ours, err := s.net.ProbeTap(t.Name)
	return exists && ours, err
}
