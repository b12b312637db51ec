package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/version"
)

type versions struct {
	Client string          `json:"client"`
	Daemon *api.VersionOut `json:"daemon"`
}

func (c *cli) newVersionCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "version", Short: "Print client and daemon versions", Args: exactly(0, "no arguments")}
	return query(c, cmd, func(ctx context.Context, cl *api.Client, _ []string) (versions, error) {
		v, err := cl.Version(ctx)
		return versions{version.Version, v}, err
	}, func(v versions) error {
		_, err := fmt.Fprintf(c.out, "client: %s\ndaemon: %s (%s, %s)\n", v.Client, v.Daemon.Version, v.Daemon.API, v.Daemon.GoVersion)
		return err
	})
}
