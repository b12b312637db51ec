package qemu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/internal/testwait"
)

// A VMM that is alive but never serves QMP (a QEMU paused before its
// sockets exist, or one whose /proc entry does not yet show QEMU's argv)
// must fail Start within ctx, and be killed: nothing is left behind. The
// fake is a shell script, so /proc shows an argv other than the recorded
// one, as it does for a child that has not exec'd yet.
func TestStartBoundedWhenVMMNeverAnswers(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "silent-qemu")
	// It also says whether it runs with transparent huge pages (a TCG
	// guest's VMM must not: see vmm.Command.NoHugePages).
	if err := os.WriteFile(script, []byte("#!/bin/sh\ngrep THP_enabled /proc/self/status > \"$(dirname \"$0\")/thp\"\necho $$ > \"$(dirname \"$0\")/pid\"\nexec sleep 600\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"vmlinux", "initrd"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	id := "silent-" + strings.ReplaceAll(filepath.Base(dir), "_", "-")
	if len(id) > 40 {
		id = id[:40]
	}
	d := &Driver{Binary: script}
	spec := vmm.Spec{VMID: id, Kernel: filepath.Join(dir, "vmlinux"), Initrd: filepath.Join(dir, "initrd"),
		RunDir: filepath.Join(dir, "run"), Accel: vmm.AccelTCG}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		p, err := d.Start(ctx, spec)
		if err == nil {
			_ = d.Kill(context.Background(), p)
		}
		done <- err
	}()
	err := testwait.Recv(t, "Start to return after its deadline", time.Minute, done)
	if err == nil {
		t.Fatal("Start succeeded against a VMM that never serves QMP")
	}
	if !strings.Contains(err.Error(), "did not answer") {
		t.Errorf("error does not say what did not answer: %v", err)
	}
	b, rerr := os.ReadFile(filepath.Join(dir, "pid"))
	if rerr != nil {
		t.Fatalf("the fake VMM never ran: %v", rerr)
	}
	pid := strings.TrimSpace(string(b))
	if thp, _ := os.ReadFile(filepath.Join(dir, "thp")); len(thp) > 0 && strings.Join(strings.Fields(string(thp)), " ") != "THP_enabled: 0" {
		t.Errorf("the TCG guest's VMM runs with transparent huge pages: %q", thp)
	}
	if st, serr := os.ReadFile("/proc/" + pid + "/stat"); serr == nil {
		t.Errorf("the silent VMM (pid %s) is still there after the failed start: %s", pid, st)
		_ = exec.Command("kill", "-9", pid).Run()
	}
	ents, _ := os.ReadDir(spec.RunDir)
	for _, e := range ents {
		if e.Type()&os.ModeSocket != 0 {
			t.Errorf("socket left behind: %s", e.Name())
		}
	}
}
