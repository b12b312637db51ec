package main

import (
	"context"
	"errors"
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

// transferFunc runs one pull or import, reporting progress to its third
// argument.
type transferFunc func(context.Context, *api.Client, func(api.ImportProgress)) (*api.ImportOut, error)

// transfer runs a pull or import with progress on stderr (none when quiet);
// Ctrl-C cancels it.
func (c *cli) transfer(quiet bool, run transferFunc) (*api.ImportOut, error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var out *api.ImportOut
	err := c.with(ctx, func(ctx context.Context, cl *api.Client) error {
		var show func(api.ImportProgress)
		if !quiet {
			pp := newProgress(c.errOut)
			defer pp.finish()
			show = pp.show
		}
		var err error
		out, err = run(ctx, cl, show)
		return err
	})
	if ctx.Err() != nil {
		return nil, errors.New("import canceled")
	}
	return out, err
}

// importing is image pull and import: progress, then the image (its
// digest alone with quiet).
func (c *cli) importing(quiet bool, run transferFunc) error {
	out, err := c.transfer(quiet || c.json, run)
	if err != nil {
		return err
	}
	if quiet && !c.json {
		return say(c.out, "%s", out.Image.Digest)
	}
	return c.show(out, func() error {
		return say(c.out, "%s %s (%s, %s)", out.Image.Digest, importedHow(out), strings.Join(out.Image.Names, ", "), humanBytes(out.Image.Size))
	})
}

func importedHow(out *api.ImportOut) string {
	if out.Cached {
		return "already present"
	}
	return "imported"

}
