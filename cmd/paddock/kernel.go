package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newKernelCommand() *cobra.Command {
	k := &cobra.Command{Use: "kernel", Short: "Manage boot kits (guest kernel + initramfs)"}
	k.AddCommand(c.newKernelImportCommand(), c.newKernelLsCommand(), c.newKernelRmCommand())
	return k
}

func (c *cli) newKernelImportCommand() *cobra.Command {
	var modules, name string
	cmd := &cobra.Command{Use: "import VMLINUZ --modules DIR [--name N]", Short: "Build a boot kit from a kernel and its modules (e.g. Debian's linux-image-amd64)", Args: exactly(1, "one kernel image")}
	cmd.Flags().StringVar(&modules, "modules", "", "the kernel's module tree")
	cmd.Flags().StringVar(&name, "name", "", "kit name (default \"default\")")
	cmd.PreRunE = func(*cobra.Command, []string) error {
		if modules == "" {
			return usageError{fmt.Errorf("--modules DIR is required (e.g. /lib/modules/$(uname -r))")}
		}
		return nil
	}
	return query(c, cmd, func(ctx context.Context, cl *api.Client, a []string) (*api.Kernel, error) {
		files, err := openAll(a[0], modules)
		if err != nil {
			return nil, err
		}
		defer closeAll(files)
		kernelPath, _ := filepath.Abs(a[0])
		modPath, _ := filepath.Abs(modules)
		return cl.ImportKernel(ctx, api.ImportKernelIn{Name: name, Kernel: kernelPath, Modules: modPath}, files[0], files[1])
	}, func(kit *api.Kernel) error {
		return say(c.out, "boot kit %s: kernel %s, %d modules", kit.Name, kit.Release, kit.Modules)
	})
}

func (c *cli) newKernelLsCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "ls", Short: "List boot kits", Args: exactly(0, "no arguments")}
	return query(c, cmd, func(ctx context.Context, cl *api.Client, _ []string) ([]api.Kernel, error) {
		return cl.ListKernels(ctx)
	}, func(kits []api.Kernel) error {
		return table(c.out, "NAME\tRELEASE\tMODULES\tDEFAULT\tCREATED", kits, func(k api.Kernel) []string {
			def := ""
			if k.Default {
				def = "*"
			}
			return []string{k.Name, k.Release, fmt.Sprint(k.Modules), def, ago(k.Created)}
		})
	})
}

func (c *cli) newKernelRmCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "rm NAME", Short: "Remove a boot kit", Args: exactly(1, "one kit name")}
	return c.eachCommand(cmd, "removed", func(ctx context.Context, cl *api.Client, name string) (any, error) {
		return nil, cl.RemoveKernel(ctx, name)
	})
}

// openAll opens files with the caller's own rights, to pass to the daemon.
func openAll(paths ...string) ([]*os.File, error) {
	var files []*os.File
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			closeAll(files)
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
