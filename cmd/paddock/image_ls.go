package main

import (
	"context"
	"strings"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newImageLsCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "ls", Aliases: []string{"list"}, Short: "List your images and the public ones (every image, for an admin)", Args: exactly(0, "no arguments")}
	return query(c, cmd, func(ctx context.Context, cl *api.Client, _ []string) ([]api.Image, error) {
		return cl.ListImages(ctx)
	}, func(imgs []api.Image) error {
		// NAMES are the caller's (its own, then public ones); PUBLIC
		// says whether an admin published the image to every user.
		return table(c.out, "DIGEST\tNAMES\tPUBLIC\tSIZE\tCREATED", imgs, func(im api.Image) []string {
			public := "-"
			if len(im.Public) > 0 {
				public = "yes"
			}
			return []string{shortDigest(im.Digest), orDash(strings.Join(im.Names, ",")), public, humanBytes(im.Size), ago(im.Created)}
		})
	})
}
