package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newImageCommand() *cobra.Command {
	img := &cobra.Command{Use: "image", Short: "Manage images (pull, import, ls, inspect, rm, prune)"}
	img.AddCommand(c.newImagePullCommand(), c.newImageImportCommand(), c.newImageLsCommand(),
		c.newImageInspectCommand(), c.newImageRmCommand(), c.newImagePruneCommand())
	return img
}

// importing runs one pull or import with progress on stderr; Ctrl-C
// cancels it.
func (c *cli) importing(run func(context.Context, *api.Client, func(api.ImportProgress)) (*api.ImportOut, error)) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var out *api.ImportOut
	err := c.with(ctx, func(ctx context.Context, cl *api.Client) error {
		pp := &progressPrinter{w: c.errOut, tty: isTTY(c.errOut)}
		var err error
		out, err = run(ctx, cl, pp.show)
		pp.done()
		return err
	})
	if ctx.Err() != nil {
		return errors.New("import canceled")
	}
	if err != nil {
		return err
	}
	return c.show(out, func() error {
		how := "imported"
		if out.Cached {
			how = "already present"
		}
		_, err := fmt.Fprintf(c.out, "%s %s (%s, %s)\n", out.Image.Digest, how, termSafe(strings.Join(out.Image.Names, ", ")), humanBytes(out.Image.Size))
		return err
	})
}
