package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

// statsOf streams (watch) or fetches the figures of ref ("" for all) to show.
func (c *cli) statsOf(ref string, watch bool, show func([]api.VMStats) error) error {
	return c.stream(func(ctx context.Context, cl *api.Client) error {
		return cl.Stats(ctx, api.StatsIn{VM: ref}, watch, show)
	})
}

// oneVMStats makes ping and health: show gets the figures of the one VM
// named.
func (c *cli) oneVMStats(use, short string, show func(api.VMStats) error) *cobra.Command {
	cmd := &cobra.Command{Use: use + " VM", Short: short, Args: exactly(1, "one VM")}
	cmd.RunE = func(_ *cobra.Command, a []string) error {
		return c.statsOf(a[0], false, func(st []api.VMStats) error {
			if len(st) == 0 {
				return fmt.Errorf("no figures for %s", a[0])
			}
			return show(st[0])
		})
	}
	return cmd
}

func (c *cli) newStatsCommand() *cobra.Command {
	var watch bool
	cmd := &cobra.Command{Use: "stats [VM]", Short: "Show CPU, memory, disk and network figures of running VMs", Args: cobra.MaximumNArgs(1)}
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "keep printing new figures at every poll")
	cmd.RunE = func(_ *cobra.Command, a []string) error {
		return c.statsOf(optional(a), watch, func(st []api.VMStats) error {
			return c.show(st, func() error {
				return table(c.out, "NAME\tHEALTH\tVMM CPU\tRSS\tGUEST CPU\tMEM USED\tLOAD\tDISK\tRX/TX\tWORKSPACES", st, statsRow)
			})
		})
	}
	return cmd
}

func statsRow(s api.VMStats) []string {
	guestCPU, mem, load, ws := "-", "-", "-", "-"
	if g := s.Guest; g != nil {
		guestCPU = fmt.Sprintf("%.0f%%", g.CPURate*100)
		mem = fmt.Sprintf("%s/%s", humanBytes(g.MemTotal-g.MemAvailable), humanBytes(g.MemTotal))
		load = fmt.Sprintf("%.2f", g.Load1)
		if len(g.Workspaces) > 0 {
			parts := make([]string, len(g.Workspaces))
			for i, w := range g.Workspaces {
				parts[i] = fmt.Sprintf("%s %s/%s", w.Name, humanBytes(w.Used), humanBytes(w.Used+w.Free))
			}
			ws = strings.Join(parts, ", ")
		}
	}
	return []string{s.VMName, s.Health, fmt.Sprintf("%.0f%%", s.Host.CPURate*100), humanBytes(s.Host.RSS),
		guestCPU, mem, load, humanBytes(s.Host.DiskUsed), humanBytes(s.Host.RxBytes) + "/" + humanBytes(s.Host.TxBytes), ws}
}

// optional is the one optional argument, or "".
func optional(a []string) string {
	if len(a) == 1 {
		return a[0]
	}
	return ""
}
