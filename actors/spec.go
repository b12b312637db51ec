package actors

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"

	"github.com/paddock-vm/paddock/netspec"
	"github.com/paddock-vm/paddock/state"
)

// RunChange is what create and set say about how a VM boots, what its
// main process is and which network it is on. nil leaves a field as it
// is; Reset returns fields to the image's (entrypoint, cmd, workdir,
// user), the default kit (kernel), the default network (network) or none
// (ports).
type RunChange struct {
	Kernel     *string
	Entrypoint *[]string
	Cmd        *[]string
	Workdir    *string
	User       *string
	// Ports replace the published ports; Network is "" (the daemon's
	// default), bridge, user or shared:GROUP.
	Ports   *[]netspec.PortMapping
	Network *string
	// Workspaces replace the VM's workspaces, resolved to the caller's own
	// (System.ResolveWorkspaces).
	Workspaces *[]state.WorkspaceMount
	Reset      []string
}

// resettable are the fields RunChange.Reset may name.
var resettable = []string{"kernel", "entrypoint", "cmd", "workdir", "user", "ports", "network", "workspaces"}

var (
	kitNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	userRE    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$`)
)

// maxArgv bounds an entrypoint or command: it travels in the seed disk,
// which holds at most 1 MiB with the image's config.
const maxArgv = 64 << 10

// changed lists the fields r changes, for the refusal while a VM runs.
func (r RunChange) changed(s state.Spec) []string {
	reset := func(f string) bool { return slices.Contains(r.Reset, f) }
	var out []string
	for _, f := range []struct {
		name    string
		changes bool
	}{
		{"kernel", r.Kernel != nil && *r.Kernel != s.Kernel || reset("kernel") && s.Kernel != ""},
		{"entrypoint", r.Entrypoint != nil && (s.Entrypoint == nil || !slices.Equal(*r.Entrypoint, *s.Entrypoint)) || reset("entrypoint") && s.Entrypoint != nil},
		{"cmd", r.Cmd != nil && !slices.Equal(*r.Cmd, s.Cmd) || reset("cmd") && s.Cmd != nil},
		{"workdir", r.Workdir != nil && *r.Workdir != s.Workdir || reset("workdir") && s.Workdir != ""},
		{"user", r.User != nil && *r.User != s.User || reset("user") && s.User != ""},
		{"ports", r.Ports != nil && !slices.Equal(*r.Ports, s.Ports) || reset("ports") && len(s.Ports) > 0},
		{"network", r.Network != nil && *r.Network != s.Network || reset("network") && s.Network != ""},
		{"workspaces", r.Workspaces != nil && !slices.Equal(*r.Workspaces, s.Workspaces) || reset("workspaces") && len(s.Workspaces) > 0},
	} {
		if f.changes {
			out = append(out, f.name)
		}
	}
	return out
}

// applyRun validates r and applies it to s: resets first, then values.
func applyRun(s *state.Spec, r RunChange) error {
	for _, f := range r.Reset {
		switch f {
		case "kernel":
			s.Kernel = ""
		case "entrypoint":
			s.Entrypoint = nil
		case "cmd":
			s.Cmd = nil
		case "workdir":
			s.Workdir = ""
		case "user":
			s.User = ""
		case "ports":
			s.Ports = nil
		case "network":
			s.Network = ""
		case "workspaces":
			s.Workspaces = nil
		default:
			return invalid("reset", "reset %q: want one of %s", f, strings.Join(resettable, ", "))
		}
	}
	if r.Kernel != nil {
		if *r.Kernel != "" && !kitNameRE.MatchString(*r.Kernel) {
			return invalid("kernel", "kernel %q is not a boot kit name ([A-Za-z0-9][A-Za-z0-9._-], at most 64)", *r.Kernel)
		}
		s.Kernel = *r.Kernel
	}
	if r.Entrypoint != nil {
		if err := checkArgv("entrypoint", *r.Entrypoint); err != nil {
			return err
		}
		e := slices.Clone(*r.Entrypoint)
		if e == nil {
			e = []string{}
		}
		s.Entrypoint = &e
	}
	if r.Cmd != nil {
		if err := checkArgv("cmd", *r.Cmd); err != nil {
			return err
		}
		s.Cmd = nil
		if len(*r.Cmd) > 0 {
			s.Cmd = slices.Clone(*r.Cmd)
		}
	}
	if r.Workdir != nil {
		w := *r.Workdir
		if w != "" && (!path.IsAbs(w) || len(w) > 4096 || strings.ContainsAny(w, "\x00\n")) {
			return invalid("workdir", "workdir %q must be an absolute path", w)
		}
		s.Workdir = w
	}
	if r.User != nil {
		if u := *r.User; u != "" && !userRE.MatchString(u) {
			return invalid("user", "user %q: want USER or USER:GROUP (names or numeric ids)", u)
		}
		s.User = *r.User
	}
	if r.Ports != nil {
		s.Ports = nil
		if len(*r.Ports) > 0 {
			s.Ports = slices.Clone(*r.Ports)
		}
	}
	if r.Network != nil {
		s.Network = *r.Network
	}
	if r.Workspaces != nil {
		if err := checkWorkspaces(*r.Workspaces); err != nil {
			return err
		}
		s.Workspaces = nil
		if len(*r.Workspaces) > 0 {
			s.Workspaces = slices.Clone(*r.Workspaces)
		}
	}
	return nil
}

// checkWorkspaces refuses what a VM cannot attach: too many, one workspace
// twice, two at one path, a path that is not a clean absolute one, or one
// on the guest's API file systems.
func checkWorkspaces(ms []state.WorkspaceMount) error {
	if len(ms) > MaxWorkspaces {
		return invalid("workspaces", "%d workspaces: at most %d", len(ms), MaxWorkspaces)
	}
	ids, paths := map[string]bool{}, map[string]string{}
	for _, m := range ms {
		p := m.Path
		if !path.IsAbs(p) || path.Clean(p) != p || p == "/" || len(p) > 4096 || strings.ContainsAny(p, "\x00\n") {
			return invalid("workspaces", "workspace %s: mount path %q must be a clean absolute path other than /", m.Name, p)
		}
		for _, api := range []string{"/proc", "/sys", "/dev", "/run"} {
			if p == api || strings.HasPrefix(p, api+"/") {
				return invalid("workspaces", "workspace %s: mount path %q is on the guest's %s", m.Name, p, api)
			}
		}
		if ids[m.ID] {
			return invalid("workspaces", "workspace %s is named twice", m.Name)
		}
		if other, ok := paths[p]; ok {
			return invalid("workspaces", "workspaces %s and %s are both mounted at %s", other, m.Name, p)
		}
		ids[m.ID], paths[p] = true, m.Name
	}
	return nil
}

// checkNet validates the ports and network of s (netspec.Validate, the one
// place they are checked) when r touches them, with the host's facts as
// the caller sees them. A VM whose host lost an address it publishes on
// still takes other changes.
func checkNet(facts NetFacts, s state.Spec, r RunChange, c Caller) error {
	if r.Ports == nil && r.Network == nil && !slices.Contains(r.Reset, "network") {
		return nil
	}
	f := netspec.Facts{Admin: c.Admin}
	if facts != nil {
		var err error
		if f, err = facts(c.Admin); err != nil {
			return fmt.Errorf("check the VM's ports: %w", err)
		}
	}
	if err := netspec.ValidateNetwork(s.Network, f); err != nil {
		return invalid("network", "%v", err)
	}
	if err := netspec.ValidatePorts(s.Ports, f); err != nil {
		return invalid("ports", "%v", err)
	}
	return nil
}

func checkArgv(field string, argv []string) error {
	n := 0
	for _, a := range argv {
		if strings.ContainsRune(a, 0) {
			return invalid(field, "%s argument %q holds a NUL byte", field, a)
		}
		n += len(a) + 1
	}
	if n > maxArgv {
		return invalid(field, "%s is %d bytes long; at most %d", field, n, maxArgv)
	}
	if len(argv) > 0 && argv[0] == "" {
		return invalid(field, "%s starts with an empty program name", field)
	}
	return nil
}

func invalid(field, format string, args ...any) error {
	return &Error{Kind: ErrInvalidArgument, Field: field, Msg: fmt.Sprintf(format, args...)}
}

// applySet applies a set request to spec (a copy of vm's). What shapes the
// boot (hardware, kit, main process) changes only while the VM is down.
func applySet(spec *state.Spec, m *SetVM, vm state.VM, facts NetFacts) error {
	if err := applySpec(spec, m.CPUs, m.Memory, m.DiskSize, m.AutoStop, vm.Spec.DiskSize); err != nil {
		return err
	}
	switch vm.Status {
	case state.StatusRunning, state.StatusStarting, state.StatusStopping:
		if f := m.RunChange.changed(vm.Spec); len(f) > 0 {
			return &Error{Kind: ErrInvalidState, VM: vm.Name, Status: vm.Status,
				Msg: fmt.Sprintf("cannot change %s of VM %s while it is %s: stop it first", strings.Join(f, ", "), vm.Name, vm.Status)}
		}
	}
	if err := applyRun(spec, m.RunChange); err != nil {
		return err
	}
	return checkNet(facts, *spec, m.RunChange, m.Caller)
}
