package actors

import (
	"os"
	"strings"
	"syscall"
)

// failpoints are crash points for tests: PADDOCK_FAILPOINTS lists names at
// which the daemon kills itself with SIGKILL, as a power cut or an OOM kill
// would. Unset, it costs one map lookup.
var failpoints = func() map[string]bool {
	m := map[string]bool{}
	for _, n := range strings.Split(os.Getenv("PADDOCK_FAILPOINTS"), ",") {
		if n = strings.TrimSpace(n); n != "" {
			m[n] = true
		}
	}
	return m
}()

// FailpointNames are every crash point, for tests that loop over them.
var FailpointNames = []string{
	"start-begin",
	"acquire-tap-intent", "acquire-tap-live",
	"acquire-disk-intent", "acquire-disk-live",
	"acquire-vmm-intent", "acquire-vmm-live",
	"start-before-running",
	"stop-begin", "release-vmm", "release-disk", "release-tap", "stop-before-stopped",
}

func failpoint(name string) {
	if failpoints[name] {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
