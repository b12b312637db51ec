package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) kernelCommands() *cobra.Command {
	k := &cobra.Command{Use: "kernel", Short: "Manage boot kits (guest kernel + initramfs)"}
	var modules, name string
	imp := &cobra.Command{
		Use:   "import VMLINUZ --modules DIR [--name N]",
		Short: "Build a boot kit from a kernel and its modules (e.g. Debian's linux-image-amd64)",
		Args:  exact(1, "one kernel image"),
		RunE: func(_ *cobra.Command, a []string) error {
			if modules == "" {
				return usageError{fmt.Errorf("--modules DIR is required (e.g. /lib/modules/$(uname -r))")}
			}
			kf, err := os.Open(a[0])
			if err != nil {
				return err
			}
			defer kf.Close()
			md, err := os.Open(modules)
			if err != nil {
				return err
			}
			defer md.Close()
			kernelPath, _ := filepath.Abs(a[0])
			modPath, _ := filepath.Abs(modules)
			return c.call(func(ctx context.Context, cl *api.Client) error {
				kit, err := cl.ImportKernel(ctx, api.ImportKernelIn{Name: name, Kernel: kernelPath, Modules: modPath}, kf, md)
				if err != nil {
					return err
				}
				if c.json {
					return c.printJSON(kit)
				}
				fmt.Fprintf(c.out, "boot kit %s: kernel %s, %d modules\n", kit.Name, kit.Release, kit.Modules)
				return nil
			})
		},
	}
	imp.Flags().StringVar(&modules, "modules", "", "the kernel's module tree")
	imp.Flags().StringVar(&name, "name", "", "kit name (default \"default\")")
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List boot kits",
		Args:  exact(0, "no arguments"),
		RunE: func(*cobra.Command, []string) error {
			return c.call(func(ctx context.Context, cl *api.Client) error {
				kits, err := cl.ListKernels(ctx)
				if err != nil {
					return err
				}
				if c.json {
					return c.printJSON(kits)
				}
				tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tRELEASE\tMODULES\tDEFAULT\tCREATED")
				for _, k := range kits {
					def := ""
					if k.Default {
						def = "*"
					}
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", k.Name, k.Release, k.Modules, def, ago(k.Created))
				}
				return tw.Flush()
			})
		},
	}
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a boot kit",
		Args:  exact(1, "one kit name"),
		RunE: func(_ *cobra.Command, a []string) error {
			return c.call(func(ctx context.Context, cl *api.Client) error {
				if err := cl.RemoveKernel(ctx, a[0]); err != nil {
					return err
				}
				fmt.Fprintf(c.out, "%s removed\n", a[0])
				return nil
			})
		},
	}
	k.AddCommand(imp, ls, rm)
	for _, sub := range k.Commands() {
		sub.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	}
	return k
}
