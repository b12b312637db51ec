package daemon

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"
)

type recordingProber struct{ asked []string }

func (p *recordingProber) KVMUsable(_ context.Context, kernel string) (bool, string) {
	p.asked = append(p.asked, kernel)
	return false, "no"
}

// With vm.accel auto every kit's kernel is probed ahead of the first start;
// kvm or tcg need no probe; a daemon shutting down stops asking.
func TestWarmKVMProbe(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, accel := range []string{"auto", ""} {
		p := &recordingProber{}
		warmKVMProbe(context.Background(), log, p, accel, []string{"/k/a", "/k/b"})
		if !slices.Equal(p.asked, []string{"/k/a", "/k/b"}) {
			t.Errorf("accel %q: probed %v", accel, p.asked)
		}
	}
	for _, accel := range []string{"kvm", "tcg"} {
		p := &recordingProber{}
		warmKVMProbe(context.Background(), log, p, accel, []string{"/k/a"})
		if len(p.asked) != 0 {
			t.Errorf("accel %q: probed %v", accel, p.asked)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p := &recordingProber{}
	warmKVMProbe(ctx, log, p, "auto", []string{"/k/a"})
	if len(p.asked) != 0 {
		t.Errorf("after shutdown: probed %v", p.asked)
	}
}
