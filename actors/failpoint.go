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

// Crash points, derived from the resource table: every kind a VM acquires
// gets one after its intent is recorded, one after it is live, and one
// after its release; the procedures add their own around them.
var (
	StartFailpoints = func() []string {
		out := []string{"start-begin"}
		for _, k := range resourceKinds {
			out = append(out, "acquire-"+k+"-intent", "acquire-"+k+"-live")
		}
		return append(out, "start-before-running")
	}()
	StopFailpoints = func() []string {
		out := []string{"stop-begin"}
		for i := len(resourceKinds) - 1; i >= 0; i-- {
			out = append(out, "release-"+resourceKinds[i])
		}
		return append(out, "stop-before-stopped")
	}()
	// WorkspaceFailpoints are a workspace creation's: after its intent is
	// recorded, and after its volume is in place but before its record
	// says ready.
	WorkspaceFailpoints = []string{"workspace-create-intent", "workspace-create-built"}
	// SnapshotFailpoints are a snapshot's (its top frozen as a layer, the
	// record not yet saved) and a clone's (its "creating" record written,
	// before its top layer is made).
	SnapshotFailpoints = []string{"workspace-snapshot-frozen", "workspace-clone-intent"}
	// TemplateFailpoints are a template creation's (its intent recorded,
	// its builder booted, the save begun, the state written, the builder
	// stopped) and a resume's (the saved guest running, before its
	// identity step).
	TemplateFailpoints = []string{"template-begin", "template-booted", "save-begin", "save-before-stop", "template-saved", "template-resumed"}
	// FailpointNames are every crash point of a VM's start and stop, for
	// tests that loop over them (workspaces have their own).
	FailpointNames = append(append([]string(nil), StartFailpoints...), StopFailpoints...)
)

// failpointHook, when set (tests), sees every crash point reached.
var failpointHook func(name string)

func failpoint(name string) {
	if failpointHook != nil {
		failpointHook(name)
	}
	if failpoints[name] {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
