package vmmtest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/host/vmm"
)

func TestFake(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f := New()
	p, err := f.Start(ctx, vmm.Spec{VMID: "vm1", Kernel: "/k", RunDir: "/run/x"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Start(ctx, vmm.Spec{VMID: "vm1", Kernel: "/k", RunDir: "/run/x"}); !errors.Is(err, vmm.ErrAlreadyRunning) {
		t.Fatalf("second start: %v", err)
	}
	if s, _ := f.Probe(p); s != vmm.StateRunning {
		t.Fatalf("probe %v", s)
	}
	if err := f.Adopt(ctx, p); err != nil {
		t.Fatal(err)
	}
	old := *p
	old.PID++
	if s, _ := f.Probe(&old); s != vmm.StateNotOurs {
		t.Fatalf("foreign handle: %v", s)
	}
	got := make(chan vmm.Exit, 1)
	go func() { ex, _ := f.Wait(ctx, p); got <- ex }()
	f.Exit("vm1", vmm.Exit{Known: true, Code: 3})
	if ex := <-got; ex.Code != 3 {
		t.Fatalf("exit %v", ex)
	}
	if s, _ := f.Probe(p); s != vmm.StateExited {
		t.Fatalf("after exit: %v", s)
	}
	if err := f.Kill(ctx, p); err != nil || len(f.Running()) != 0 {
		t.Fatalf("kill: %v %v", err, f.Running())
	}
	f.Err["Stop"] = errors.New("boom")
	if err := f.Stop(ctx, p, time.Second); err == nil {
		t.Fatal("injected error not returned")
	}
	var ops []string
	for _, c := range f.Calls() {
		ops = append(ops, c.Op)
	}
	want := "Start Start Probe Adopt Probe Wait Probe Kill Stop"
	if got := strings.Join(ops, " "); got != want {
		t.Fatalf("calls %q, want %q", got, want)
	}
}
