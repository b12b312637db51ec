package daemon

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/host/cgroup"
)

// Without a delegated cgroup VMMs run in paddockd's own: said once at info
// level with the reason, which Info shows after "none: ".
func TestVMMCgroupWithoutDelegation(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	why := "in the root cgroup of /sys/fs/cgroup/unified (not started by a service manager with Delegate=yes)"
	dir, info := vmmCgroup(log, func() (string, error) { return "", fmt.Errorf("%w: %s", cgroup.ErrNoDelegation, why) })
	if dir != "" || info != "none: "+why {
		t.Fatalf("vmmCgroup = %q, %q", dir, info)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], "level=INFO") || !strings.Contains(lines[0], "without cgroups") || !strings.Contains(lines[0], why) {
		t.Fatalf("log:\n%s", buf.String())
	}
}
