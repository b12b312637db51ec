package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// Issue 12, item 7 and the long-running scenario: a VM whose entrypoint
// keeps writing into its workspace is polled by the Stats actor for
// a minute and more (its stats carry the workspace's use, which grows), is then
// auto-stopped like any idle VM (slow writes are not activity), and leaves
// the volume clean and the data whole: every chunk the log names is there
// at full size.
func TestWorkspaceStatsAutoStop(t *testing.T) {
	for _, n := range []string{"mke2fs", "debugfs", "e2fsck"} {
		testenv.RequireTool(t, n, "e2fsprogs")
	}
	e, _, _, image := vmEnvImage(t, "\n[vm]\nrun = \"on\"\nstart_timeout = \"90s\"\nstop_timeout = \"20s\"\n[stats]\ninterval = \"1s\"\nidle_cpu = 0.3\n", nil)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "README"), []byte("kept\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var ws api.Workspace
	out := e.cli(t, nil, "workspace", "create", "proj", "--from", src, "--size", "64MiB", "--json").ok(t, "workspace create")
	if err := json.Unmarshal([]byte(out), &ws); err != nil {
		t.Fatal(err)
	}
	const chunk = 64 << 10
	writer := fmt.Sprintf(`i=0; while :; do dd if=/dev/urandom of=/workspace/chunk.$i bs=%d count=1 2>/dev/null && echo $i >> /workspace/log; i=$((i+1)); sleep 2; done`, chunk)
	start := time.Now()
	e.cli(t, nil, "run", "--image", image, "--name", "w", "--workspace", "proj", "--auto-stop", "60s", "--", "/bin/sh", "-c", writer).ok(t, "run the writer")

	use := func() api.WorkspaceUse {
		t.Helper()
		st := statsOf(t, e, "w")
		if st.Guest == nil || len(st.Guest.Workspaces) != 1 {
			t.Fatalf("stats of w carry no workspace figures: %+v %+v", st, st.Guest)
		}
		return st.Guest.Workspaces[0]
	}
	first := use()
	if first.Name != "proj" || first.Path != "/workspace" || first.Used <= 0 || first.Free <= 0 || first.Used+first.Free > 64<<20 {
		t.Fatalf("workspace figures: %+v", first)
	}
	if out := e.cli(t, nil, "stats", "w").ok(t, "stats"); !strings.Contains(out, "WORKSPACES") || !strings.Contains(out, "proj ") {
		t.Fatalf("stats table lacks the workspace:\n%s", out)
	}
	time.Sleep(20 * time.Second)
	later := use()
	t.Logf("workspace use: %d bytes, %d bytes 20 s later", first.Used, later.Used)
	if later.Used < first.Used+4*chunk {
		t.Fatalf("the workspace's use did not grow with the writes: %+v then %+v", first, later)
	}

	// Idle by CPU, inbound connections and sessions: auto-stopped.
	stopped := waitStatusTimeout(t, e, "w", "running", 4*time.Minute)
	if stopped.Status == "stopping" {
		stopped = waitStatusTimeout(t, e, "w", "stopping", time.Minute)
	}
	if stopped.Status != "stopped" || !strings.Contains(stopped.Reason, "auto-stop") {
		t.Fatalf("w: %s %q", stopped.Status, stopped.Reason)
	}
	t.Logf("auto-stopped %s after the run", time.Since(start).Round(time.Second))

	vol := filepath.Join(e.state, "workspaces", ws.ID, "volume.ext4")
	if out, err := exec.Command(sbinTool(t, "e2fsck"), "-fn", vol).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn %s after auto-stop: %v\n%s", vol, err, out)
	}
	dst := filepath.Join(t.TempDir(), "out")
	e.cli(t, nil, "workspace", "export", "proj", "--to", dst).ok(t, "export")
	log, err := os.ReadFile(filepath.Join(dst, "log"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(string(log))
	if len(lines) < 15 {
		t.Fatalf("only %d writes in the run: %q", len(lines), log)
	}
	for i, l := range lines {
		if l != strconv.Itoa(i) {
			t.Fatalf("log line %d is %q:\n%s", i, l, log)
		}
		fi, err := os.Stat(filepath.Join(dst, "chunk."+l))
		if err != nil || fi.Size() != chunk {
			t.Fatalf("chunk.%s: %v %v", l, fi, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dst, "README")); err != nil || string(b) != "kept\n" {
		t.Fatalf("seeded file: %q %v", b, err)
	}
	t.Logf("%d chunks written and kept; volume clean", len(lines))
}
