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
		fields(c.out, [][2]string{{"client", v.Client}, {"daemon", fmt.Sprintf("%s (%s, %s)", v.Daemon.Version, v.Daemon.API, v.Daemon.GoVersion)}})
		return nil
	})
}
