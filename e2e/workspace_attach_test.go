package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// Issue 12, second slice: a workspace attached to real VMs (QEMU, TCG). The
// agent mounts it before the entrypoint, which runs as the workspace's
// uid:gid (the image names no User); what the guest writes survives a stop
// and a start; a second read-write attach is refused naming the VM that
// holds it, a read-only one works once nothing holds it read-write, and rm
// of an attached workspace is refused naming the VM.
func TestWorkspaceAttach(t *testing.T) {
	for _, n := range []string{"mke2fs", "debugfs", "e2fsck"} {
		testenv.RequireTool(t, n, "e2fsprogs")
	}
	e, p, ns, image := vmEnvImage(t, "", nil)
	src := filepath.Join(t.TempDir(), "src")
	if err := os.MkdirAll(filepath.Join(src, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for rel, body := range map[string]string{"run.sh": "#!/bin/sh\necho \"script ran as $(id -u):$(id -g) in $(pwd)\"\n", "sub/data.txt": "seeded\n"} {
		if err := os.WriteFile(filepath.Join(src, rel), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(src, "run.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.cli(t, nil, "workspace", "create", "proj", "--from", src, "--size", "128MiB", "--uid", "1000", "--gid", "1000").ok(t, "workspace create proj")

	// The entrypoint records who it runs as, in the workspace.
	main := `id -u > /workspace/entry-id; id -g >> /workspace/entry-id; exec sleep 100000`
	e.cli(t, nil, "run", "--image", image, "--name", "w1", "--workspace", "proj", "--", "/bin/sh", "-c", main).ok(t, "run --workspace proj")
	vm := inspectVM(t, e, "w1")
	if len(vm.Spec.Workspaces) != 1 || vm.Spec.Workspaces[0] != (api.WorkspaceMount{Workspace: "proj", Path: "/workspace"}) {
		t.Fatalf("spec workspaces %+v", vm.Spec.Workspaces)
	}
	if out := e.cli(t, nil, "inspect", "w1").ok(t, "inspect w1"); !strings.Contains(out, "proj:/workspace") {
		t.Fatalf("inspect does not show the workspace:\n%s", out)
	}
	out, code := execOut(t, e, "w1", "", "ls", "-ln", "/workspace")
	t.Logf("ls -ln /workspace:\n%s", out)
	if code != 0 || !strings.Contains(out, "run.sh") || !strings.Contains(out, " 1000 ") {
		// the agent reports a workspace it could not mount as a boot error
		h := e.cli(t, nil, "health", "w1")
		t.Fatalf("ls -ln /workspace: %d\n%s\nhealth: %s%s", code, out, h.stdout, h.stderr)
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		if strings.HasSuffix(l, " lost+found") {
			continue // mke2fs's, root's as on any ext4
		}
		if f := strings.Fields(l); len(f) < 4 || f[2] != "1000" || f[3] != "1000" {
			t.Fatalf("not owned by 1000:1000: %q", l)
		}
	}
	// exec runs as the entrypoint's user (the workspace's owner) by
	// default, as root when asked.
	if out, code := execOut(t, e, "w1", "", "sh", "-c", "cd /workspace && ./run.sh"); code != 0 || !strings.Contains(out, "script ran as 1000:1000 in /workspace") {
		t.Fatalf("run.sh: %d %q", code, out)
	}
	if out, code := execOutAs(t, e, "w1", "0:0", "sh", "-c", "cd /workspace && ./run.sh"); code != 0 || !strings.Contains(out, "script ran as 0:0 in /workspace") {
		t.Fatalf("run.sh: %d %q", code, out)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, _ := execOut(t, e, "w1", "", "cat", "/workspace/entry-id")
		if strings.Fields(out) != nil && strings.Join(strings.Fields(out), ":") == "1000:1000" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the entrypoint did not run as 1000:1000: %q", out)
		}
		time.Sleep(time.Second)
	}
	if out, code := execOut(t, e, "w1", "", "sh", "-c", "echo made-in-the-guest > /workspace/sub/new.txt && sync && mount | grep /workspace"); code != 0 || !strings.Contains(out, "/dev/vdc on /workspace type ext4 (rw") {
		t.Fatalf("write in the guest: %d %q", code, out)
	}

	// Held read-write by w1: a second VM naming it is refused at start,
	// read-write or read-only, naming w1; rm is refused naming w1.
	var ws api.Workspace
	if err := json.Unmarshal([]byte(e.cli(t, nil, "workspace", "inspect", "proj", "--json").ok(t, "workspace inspect")), &ws); err != nil {
		t.Fatal(err)
	}
	if len(ws.Attached) != 1 || ws.Attached[0].VM != "w1" || ws.Attached[0].ReadOnly {
		t.Fatalf("workspace inspect: attached %+v", ws.Attached)
	}
	r := e.cli(t, nil, "run", "--image", image, "--name", "w2", "--workspace", "proj")
	if r.code == 0 || !strings.Contains(r.stderr, "attached read-write to VM w1") {
		t.Fatalf("second rw attach: %d %s %s", r.code, r.stdout, r.stderr)
	}
	r = e.cli(t, nil, "run", "--image", image, "--name", "r1", "--workspace", "proj:/src:ro")
	if r.code == 0 || !strings.Contains(r.stderr, "VM w1") {
		t.Fatalf("ro attach while w1 holds it rw: %d %s %s", r.code, r.stdout, r.stderr)
	}
	r = e.cli(t, nil, "workspace", "rm", "proj")
	if r.code == 0 || !strings.Contains(r.stderr, "attached to VM w1") {
		t.Fatalf("rm while attached: %d %s %s", r.code, r.stdout, r.stderr)
	}

	// kill -9 of paddockd: the restarted daemon re-adopts w1, which claims
	// its workspace again before anything is served.
	p.signal(t, syscall.SIGKILL)
	p.wait(t, 30*time.Second)
	_ = e.daemon(t, inNetns(ns))
	if err := json.Unmarshal([]byte(e.cli(t, nil, "workspace", "inspect", "proj", "--json").ok(t, "workspace inspect after kill -9")), &ws); err != nil {
		t.Fatal(err)
	}
	if len(ws.Attached) != 1 || ws.Attached[0].VM != "w1" {
		t.Fatalf("after kill -9 of paddockd: attached %+v", ws.Attached)
	}
	r = e.cli(t, nil, "start", "w2")
	if r.code == 0 || !strings.Contains(r.stderr, "attached read-write to VM w1") {
		t.Fatalf("second rw attach after kill -9: %d %s %s", r.code, r.stdout, r.stderr)
	}

	// Stop, start: what the guest wrote is there.
	e.cli(t, nil, "stop", "w1").ok(t, "stop w1")
	e.cli(t, nil, "start", "w1").ok(t, "start w1")
	if out, code := execOut(t, e, "w1", "", "cat", "/workspace/sub/new.txt", "/workspace/sub/data.txt"); code != 0 || out != "made-in-the-guest\nseeded\n" {
		t.Fatalf("after stop and start: %d %q", code, out)
	}
	// A full volume: ENOSPC reaches the guest program, the VM stays
	// healthy, and space freed is usable again.
	if out, code := execOut(t, e, "w1", "", "sh", "-c", "dd if=/dev/zero of=/workspace/fill bs=1M count=200 2>&1"); code == 0 || !strings.Contains(out, "No space left on device") {
		t.Fatalf("filling the workspace: exit %d %q", code, out)
	}
	if out, code := execOut(t, e, "w1", "", "sh", "-c", "rm /workspace/fill && echo again > /workspace/after-full && cat /workspace/after-full"); code != 0 || out != "again\n" {
		t.Fatalf("after freeing space: exit %d %q", code, out)
	}
	if out := e.cli(t, nil, "health", "w1").ok(t, "health after ENOSPC"); !strings.Contains(out, "healthy") {
		t.Fatalf("health after a full workspace: %s", out)
	}
	e.cli(t, nil, "stop", "w1").ok(t, "stop w1")

	// Nothing holds it read-write: read-only attaches work, and see the
	// guest's file; writing there fails.
	e.cli(t, nil, "start", "r1").ok(t, "start r1 (read-only)")
	if out, code := execOut(t, e, "r1", "", "cat", "/src/sub/new.txt"); code != 0 || out != "made-in-the-guest\n" {
		t.Fatalf("read-only attach: %d %q", code, out)
	}
	if _, code := execOut(t, e, "r1", "", "sh", "-c", "echo x > /src/nope"); code == 0 {
		t.Fatal("a read-only workspace took a write")
	}
	r = e.cli(t, nil, "start", "w1")
	if r.code == 0 || !strings.Contains(r.stderr, "attached read-only to VM r1") {
		t.Fatalf("rw attach while r1 reads: %d %s %s", r.code, r.stdout, r.stderr)
	}
	e.cli(t, nil, "stop", "r1").ok(t, "stop r1")
	e.cli(t, nil, "rm", "r1").ok(t, "rm r1")
	e.cli(t, nil, "rm", "w2").ok(t, "rm w2")
	e.cli(t, nil, "rm", "w1").ok(t, "rm w1")
	e.cli(t, nil, "workspace", "rm", "proj").ok(t, "workspace rm once detached")
	if l := e.leaks(t, ns); l.host() != 0 {
		t.Fatalf("leaked %+v %v", l, l.detail)
	}
}
