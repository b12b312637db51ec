package main

import (
	"context"
	"strings"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newImageLsCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "ls", Aliases: []string{"list"}, Short: "List images", Args: exactly(0, "no arguments")}
	return query(c, cmd, func(ctx context.Context, cl *api.Client, _ []string) ([]api.Image, error) {
		return cl.ListImages(ctx)
	}, func(imgs []api.Image) error {
		return table(c.out, "DIGEST\tNAMES\tSIZE\tCREATED", imgs, func(im api.Image) []string {
			return []string{shortDigest(im.Digest), orDash(strings.Join(im.Names, ",")), humanBytes(im.Size), ago(im.Created)}
		})
	})
}
