package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/config"
)

func (c *cli) newInspectCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "inspect VM...", Short: "Show a VM in full", Args: atLeast(1, "VM name or id")}
	cmd.RunE = func(_ *cobra.Command, a []string) error {
		return c.call(func(ctx context.Context, cl *api.Client) error {
			var vms []*api.VM
			for _, ref := range a {
				vm, err := cl.Get(ctx, ref)
				if err != nil {
					return err
				}
				vms = append(vms, vm)
			}
			if c.json && len(vms) == 1 {
				return c.printJSON(vms[0])
			}
			return c.show(vms, func() error {
				for i, vm := range vms {
					if i > 0 {
						fmt.Fprintln(c.out)
					}
					printDetail(c.out, vm)
					if vm.Status == "running" {
						c.printActivity(ctx, cl, vm.ID)
					}
				}
				return nil
			})
		})
	}
	return cmd
}

func printDetail(w io.Writer, vm *api.VM) {
	rows := [][2]string{{"ID", vm.ID}, {"Name", orDash(vm.Name)}, {"Status", vm.Status}}
	if vm.Reason != "" {
		rows = append(rows, [2]string{"Reason", vm.Reason})
	}
	rows = append(rows, [2]string{"Owner UID", fmt.Sprint(vm.OwnerUID)})
	if vm.IP != "" {
		rows = append(rows, [2]string{"IP", vm.IP})
	}
	if n := vm.Network; n != nil {
		mode := n.Mode
		if vm.Spec.Network == "" {
			mode += " (the daemon's default)"
		}
		rows = append(rows, [2]string{"Network", mode})
		if n.Gateway != "" {
			rows = append(rows, [2]string{"Gateway", n.Gateway})
		}
		rows = append(rows, [2]string{"DNS", orText(strings.Join(n.DNS, ", "), "none")})
	}
	rows = append(rows, [2]string{"Ports", portsText(vm.Spec.Ports)})
	rows = append(rows, [2]string{"Workspaces", workspacesText(vm.Spec.Workspaces)})
	rows = append(rows,
		[2]string{"Image", orDash(vm.Spec.Image)},
		[2]string{"Image digest", orDash(vm.Spec.ImageDigest)},
		[2]string{"Kernel", orText(vm.Spec.Kernel, "default")},
		[2]string{"Entrypoint", argvText(vm.Spec.Entrypoint, "image's")},
		[2]string{"Cmd", argvText(&vm.Spec.Cmd, "image's")},
		[2]string{"Workdir", orText(vm.Spec.Workdir, "image's")},
		[2]string{"User", orText(vm.Spec.User, "image's")},
		[2]string{"CPUs", fmt.Sprint(vm.Spec.CPUs)},
		[2]string{"Memory", config.FormatSize(vm.Spec.Memory)},
		[2]string{"Disk", config.FormatSize(vm.Spec.DiskSize)},
		[2]string{"Auto-stop", vm.Spec.AutoStop},
		[2]string{"Created", vm.CreatedAt},
		[2]string{"Updated", vm.UpdatedAt})
	if b := vm.LastBoot; b != nil {
		rows = append(rows, [2]string{"Last start", phasesText(b.Steps)})
		if b.Resumed != "" {
			rows = append(rows, [2]string{"Resumed from", "template " + b.Resumed})
		}
		if len(b.Guest) > 0 {
			rows = append(rows, [2]string{"Guest boot", phasesText(b.Guest)})
		}
	}
	fields(w, rows)
}

// phasesText is "name N ms, ..." (fields escapes what the guest named).
func phasesText(ps []api.BootPhase) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = fmt.Sprintf("%s %.0f ms", p.Name, p.MS)
	}
	return strings.Join(s, ", ")
}

// portsText lists published ports in the -p form.
func portsText(ps []api.PortMapping) string {
	if len(ps) == 0 {
		return "(none published)"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = fmt.Sprintf("%d:%d/%s", p.HostPort, p.GuestPort, p.Proto)
		if p.HostIP != "" {
			s[i] = p.HostIP + ":" + s[i]
		}
	}
	return strings.Join(s, ", ")
}

// workspacesText lists a VM's workspaces in the --workspace form.
func workspacesText(ms []api.WorkspaceMount) string {
	if len(ms) == 0 {
		return "(none)"
	}
	s := make([]string, len(ms))
	for i, m := range ms {
		s[i] = m.Workspace + ":" + m.Path
		if m.ReadOnly {
			s[i] += ":ro"
		}
	}
	return strings.Join(s, ", ")
}

// argvText shows a command as a JSON list; def when it is not set.
func argvText(argv *[]string, def string) string {
	if argv == nil || *argv == nil {
		return "(" + def + ")"
	}
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(*argv)
	return strings.TrimSpace(b.String())
}

func orText(s, def string) string {
	if s == "" {
		return "(" + def + ")"
	}
	return s
}

// printActivity adds a running VM's health and activity, read passively
// (looking is not activity); nothing when the figures are not there.
func (c *cli) printActivity(ctx context.Context, cl *api.Client, id string) {
	_ = cl.Stats(ctx, api.StatsIn{VM: id, Passive: true}, false, func(st []api.VMStats) error {
		if len(st) != 1 {
			return nil
		}
		s := st[0]
		h := s.Health
		if s.HealthReason != "" {
			h += " (" + s.HealthReason + ")"
		}
		fields(c.out, [][2]string{
			{"Health", h},
			{"Last activity", fmt.Sprintf("%s (%s)", orDash(s.LastActivity), orDash(s.ActivityCause))},
			{"Auto-stop at", orDash(s.AutoStopAt)},
		})
		return nil
	})
}
