package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) statsCommands() []*cobra.Command {
	var watch bool
	one := func(a []string) string {
		if len(a) == 1 {
			return a[0]
		}
		return ""
	}
	run := func(ref string, watch bool, show func([]api.VMStats) error) error {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		cl, err := c.dial(ctx)
		if err != nil {
			return err
		}
		defer cl.Close()
		err = cl.Stats(ctx, api.StatsIn{VM: ref}, watch, show)
		if ctx.Err() != nil {
			return nil
		}
		return c.explain(err)
	}
	stats := &cobra.Command{
		Use:   "stats [VM]",
		Short: "Show CPU, memory, disk and network figures of running VMs",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(_ *cobra.Command, a []string) error {
			return run(one(a), watch, func(st []api.VMStats) error {
				if c.json {
					return c.printJSON(st)
				}
				tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tHEALTH\tVMM CPU\tRSS\tGUEST CPU\tMEM USED\tLOAD\tDISK\tRX/TX")
				for _, s := range st {
					guestCPU, mem, load := "-", "-", "-"
					if g := s.Guest; g != nil {
						guestCPU = fmt.Sprintf("%.0f%%", g.CPURate*100)
						mem = fmt.Sprintf("%s/%s", humanBytes(g.MemTotal-g.MemAvailable), humanBytes(g.MemTotal))
						load = fmt.Sprintf("%.2f", g.Load1)
					}
					fmt.Fprintf(tw, "%s\t%s\t%.0f%%\t%s\t%s\t%s\t%s\t%s\t%s/%s\n", s.VMName, s.Health, s.Host.CPURate*100, humanBytes(s.Host.RSS),
						guestCPU, mem, load, humanBytes(s.Host.DiskUsed), humanBytes(s.Host.RxBytes), humanBytes(s.Host.TxBytes))
				}
				return tw.Flush()
			})
		},
	}
	stats.Flags().BoolVarP(&watch, "watch", "w", false, "keep printing new figures at every poll")
	ping := &cobra.Command{
		Use:   "ping VM",
		Short: "Round trip to a VM's agent",
		Args:  exact(1, "one VM"),
		RunE: func(_ *cobra.Command, a []string) error {
			return run(a[0], false, func(st []api.VMStats) error {
				if len(st) == 0 {
					return fmt.Errorf("no figures for %s", a[0])
				}
				if st[0].Health == "unreachable" {
					return fmt.Errorf("%s: agent unreachable: %s", a[0], st[0].HealthReason)
				}
				if c.json {
					return c.printJSON(map[string]any{"vm": st[0].VMName, "rtt_ms": st[0].PingMS})
				}
				fmt.Fprintf(c.out, "%s: agent answered in %.2f ms\n", st[0].VMName, st[0].PingMS)
				return nil
			})
		},
	}
	health := &cobra.Command{
		Use:   "health VM",
		Short: "Whether a VM is healthy, degraded or unreachable, and why",
		Args:  exact(1, "one VM"),
		RunE: func(_ *cobra.Command, a []string) error {
			return run(a[0], false, func(st []api.VMStats) error {
				if len(st) == 0 {
					return fmt.Errorf("no figures for %s", a[0])
				}
				s := st[0]
				if c.json {
					return c.printJSON(map[string]any{"vm": s.VMName, "health": s.Health, "reason": s.HealthReason, "main": s.Main, "main_exit": s.MainExit,
						"clock_skew_ms": s.ClockSkewMS, "root_writable": s.RootWritable, "ping_ms": s.PingMS})
				}
				line := s.VMName + ": " + s.Health
				if s.HealthReason != "" {
					line += " (" + s.HealthReason + ")"
				}
				if s.Main != "" {
					line += "; main process " + s.Main
					if s.MainExit != "" {
						line += ", " + s.MainExit
					}
				}
				if s.RootWritable != nil {
					line += fmt.Sprintf("; root writable %v; clock skew %.0f ms", *s.RootWritable, s.ClockSkewMS)
				}
				fmt.Fprintln(c.out, line)
				return nil
			})
		},
	}
	ports := &cobra.Command{
		Use:   "ports VM",
		Short: "Listening TCP ports of a VM, probed from outside: https, http or tcp, with a URL",
		Args:  exact(1, "one VM"),
		RunE: func(_ *cobra.Command, a []string) error {
			return run(a[0], false, func(st []api.VMStats) error {
				var ps []api.Port
				if len(st) > 0 {
					ps = st[0].Ports
				}
				if ps == nil {
					ps = []api.Port{}
				}
				if c.json {
					return c.printJSON(ps)
				}
				tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "PORT\tSCHEME\tURL\tPROCESS")
				for _, p := range ps {
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", p.Port, p.Scheme, orDash(p.URL), strings.TrimSpace(fmt.Sprintf("%s %s", orDash(p.Process), pidText(p.PID))))
				}
				return tw.Flush()
			})
		},
	}
	return []*cobra.Command{stats, ping, health, ports}
}

func pidText(pid int) string {
	if pid == 0 {
		return ""
	}
	return fmt.Sprintf("(pid %d)", pid)
}
