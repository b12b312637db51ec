package daemon

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/paddock-vm/paddock/host/cgroup"
)

// vmmCgroup gives VMMs cgroups of their own when paddockd has a delegated
// cgroup (delegated is cgroup.Delegated): paddockd moves into
// <delegated>/supervisor, then enables in <delegated> the controllers the
// VMMs' limits need, as far as it offers them (a hybrid host's cgroup v2
// hierarchy offers none). It returns the cgroup the VMMs' cgroups go in
// ("": VMMs run in paddockd's own) and what Info says about it. Each
// outcome is logged once, here.
func vmmCgroup(log *slog.Logger, delegated func() (string, error)) (dir, info string) {
	d, err := delegated()
	if err != nil {
		reason := strings.TrimPrefix(err.Error(), cgroup.ErrNoDelegation.Error()+": ")
		log.Info("VMMs run without cgroups of their own (no resource limits, no group kill): no delegated cgroup", "reason", reason)
		return "", "none: " + reason
	}
	leaf, err := cgroup.EnterLeaf(d)
	if err != nil {
		log.Warn("VMMs run without cgroups of their own: paddockd cannot move into its leaf cgroup", "cgroup", d, "err", err)
		return "", fmt.Sprintf("none: %v", err)
	}
	enabled, missing, err := cgroup.EnableControllers(d)
	switch {
	case err != nil:
		log.Warn("VMM cgroups get no resource limits: enabling controllers failed", "cgroup", d, "err", err)
		return d, fmt.Sprintf("%s (no limits: %v)", d, err)
	case len(missing) > 0:
		log.Info("VMM cgroups go without the limits of controllers this cgroup does not offer",
			"cgroup", d, "missing", strings.Join(missing, ","), "enabled", strings.Join(enabled, ","))
		info = fmt.Sprintf("%s (no %s controller: those limits are skipped)", d, strings.Join(missing, ", "))
	default:
		info = d
	}
	log.Info("VMMs get cgroups of their own", "cgroup", d, "supervisor", leaf, "controllers", strings.Join(enabled, ","))
	return d, info
}
