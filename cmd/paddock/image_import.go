package main

import (
	"context"
	"os"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/imaging/layoutref"
)

func (c *cli) newImageImportCommand() *cobra.Command {
	var name, cfgPath string
	var quiet, public bool
	cmd := &cobra.Command{Use: "import PATH[:TAG|@DIGEST]", Short: "Import an OCI layout directory, a docker save archive, or a rootfs tar (--name)", Args: exactly(1, "one path")}
	cmd.Flags().StringVar(&name, "name", "", "name[:tag] to record (required for a rootfs tar)")
	cmd.Flags().StringVar(&cfgPath, "config", "", "image config JSON for a rootfs tar (Entrypoint, Cmd, Env, ...)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress; print the image's digest only")
	cmd.Flags().BoolVar(&public, "public", false, "publish its name to every user, not just yourself (admins only)")
	cmd.RunE = func(_ *cobra.Command, a []string) error {
		path, sel := layoutref.Split(a[0])
		// Opened here, with the caller's own rights; the daemon reads
		// through the descriptor.
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		in := api.ImportIn{Source: path, Select: sel, Name: name, Public: public}
		if cfgPath != "" {
			if in.Config, err = os.ReadFile(cfgPath); err != nil {
				return err
			}
		}
		return c.importing(quiet, func(ctx context.Context, cl *api.Client, p func(api.ImportProgress)) (*api.ImportOut, error) {
			return cl.ImportImage(ctx, in, f, p)
		})
	}
	return cmd
}
