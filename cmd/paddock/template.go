package main

import (
	"context"
	"errors"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newTemplateCommand() *cobra.Command {
	t := &cobra.Command{Use: "template", Aliases: []string{"tmpl"}, Short: "Manage template snapshots: a guest booted once and saved, which VMs resume in a fraction of a boot (create, ls, rm; run --from-template)"}
	t.AddCommand(c.newTemplateCreateCommand(), c.newTemplateLsCommand(), c.newTemplateRmCommand())
	return t
}

func templateFields(t *api.Template) [][2]string {
	return [][2]string{
		{"Name", t.Name}, {"ID", t.ID}, {"Image", t.Image}, {"CPUs", strconv.Itoa(t.CPUs)}, {"Memory", humanBytes(t.Memory)},
		{"Disk", humanBytes(t.DiskSize)}, {"Network", orDash(t.Network)}, {"Saved state", humanBytes(t.StateBytes)},
		{"Owner", itoa(t.OwnerUID)}, {"Created", t.Created},
	}
}

func (c *cli) newTemplateCreateCommand() *cobra.Command {
	var image, memory, disk, network, kernel string
	var cpus int
	cmd := &cobra.Command{Use: "create NAME --image IMAGE [--cpus N] [--memory M] [--disk SIZE] [--network MODE]",
		Short: "Boot an image once, wait for its agent, and save the guest as a template", Args: exactly(1, "a template NAME")}
	fs := cmd.Flags()
	fs.StringVar(&image, "image", "", "image name[:tag] or digest")
	fs.IntVar(&cpus, "cpus", 1, "virtual CPUs (every VM resumed from it has these)")
	fs.StringVar(&memory, "memory", "", "memory, e.g. 512MiB")
	fs.StringVar(&disk, "disk", "", "disk size, e.g. 4GiB")
	fs.StringVar(&network, "network", "", "network: bridge or user (every VM resumed from it has this)")
	fs.StringVar(&kernel, "kernel", "", "boot kit")
	cmd.RunE = func(cmd *cobra.Command, a []string) error {
		if image == "" {
			return usageError{errors.New("template create needs --image")}
		}
		in := api.CreateTemplateIn{Name: a[0], Image: image}
		var err error
		if cmd.Flags().Changed("cpus") {
			in.CPUs = &cpus
		}
		if in.Memory, err = sizeFlag(cmd, "memory", memory); err != nil {
			return err
		}
		if in.DiskSize, err = sizeFlag(cmd, "disk", disk); err != nil {
			return err
		}
		if cmd.Flags().Changed("network") {
			in.Network = &network
		}
		if cmd.Flags().Changed("kernel") {
			in.Kernel = &kernel
		}
		if err := c.pullFor(image, "missing"); err != nil {
			return err
		}
		return c.interruptible("template "+a[0]+" not created", func(ctx context.Context, cl *api.Client) error {
			t, err := cl.CreateTemplate(ctx, in)
			if err != nil {
				return err
			}
			if c.json {
				return c.printJSON(t)
			}
			fields(c.out, templateFields(t))
			return nil
		})
	}
	return cmd
}

func (c *cli) newTemplateLsCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "ls", Aliases: []string{"list"}, Short: "List your templates (every user's, for an admin)", Args: exactly(0, "no arguments")}
	return query(c, cmd, func(ctx context.Context, cl *api.Client, _ []string) ([]api.Template, error) {
		return cl.ListTemplates(ctx)
	}, func(ts []api.Template) error {
		return table(c.out, "NAME\tID\tIMAGE\tCPUS\tMEMORY\tNETWORK\tSTATE\tCREATED", ts, func(t api.Template) []string {
			return []string{t.Name, short(t.ID), t.Image, strconv.Itoa(t.CPUs), humanBytes(t.Memory), orDash(t.Network), humanBytes(t.StateBytes), ago(t.Created)}
		})
	})
}

func (c *cli) newTemplateRmCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "rm TEMPLATE...", Aliases: []string{"remove"}, Short: "Remove templates (VMs resumed from one keep their disks)", Args: atLeast(1, "template")}
	return c.eachCommand(cmd, "removed", func(ctx context.Context, cl *api.Client, ref string) (any, error) {
		return cl.RemoveTemplate(ctx, ref)
	})
}
