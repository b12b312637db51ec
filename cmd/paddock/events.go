package main

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newEventsCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "events [VM]", Short: "Stream VM state changes until interrupted", Args: cobra.MaximumNArgs(1)}
	cmd.RunE = func(_ *cobra.Command, a []string) error {
		enc := json.NewEncoder(c.out)
		return c.stream(func(ctx context.Context, cl *api.Client) error {
			return cl.Events(ctx, optional(a), func(ev api.Event) error {
				if c.json {
					return enc.Encode(ev)
				}
				_, err := fmt.Fprintln(c.out, eventLine(ev))
				return err
			})
		})
	}
	return cmd
}

func eventLine(ev api.Event) string {
	subject := orDash(ev.VMName)
	if ev.Workspace != "" {
		subject = ev.Workspace
	}
	line := safef("%s %s %s %s", ev.Time, ev.Kind, subject, ev.Status)
	if ev.PreviousStatus != "" {
		line += safef(" (was %s)", ev.PreviousStatus)
	}
	if ev.Reason != "" {
		line += safef(": %s", ev.Reason)
	}
	return line
}
