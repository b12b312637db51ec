package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/config"
)

func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progressPrinter draws a bar on a terminal and plain lines elsewhere.
type progressPrinter struct {
	w     io.Writer
	tty   bool
	phase string
}

func (p *progressPrinter) show(pr api.ImportProgress) {
	if !p.tty {
		if pr.Phase != p.phase || pr.Phase == "layers" && pr.Layer > 0 {
			line := pr.Phase
			if pr.Phase == "layers" {
				line = fmt.Sprintf("layer %d/%d, %s read", pr.Layer, pr.Layers, config.FormatSize(pr.Bytes))
			}
			fmt.Fprintln(p.w, line)
		}
		p.phase = pr.Phase
		return
	}
	const width = 30
	fill := 0
	if pr.Layers > 0 {
		fill = width * max(pr.Layer-1, 0) / pr.Layers
		if pr.Phase != "layers" && pr.Phase != "resolve" {
			fill = width
		}
	}
	bar := strings.Repeat("=", fill) + strings.Repeat(" ", width-fill)
	fmt.Fprintf(p.w, "\r\033[K[%s] %-7s layer %d/%d  %s", bar, pr.Phase, pr.Layer, pr.Layers, humanBytes(pr.Bytes))
	p.phase = pr.Phase
}

func (p *progressPrinter) done() {
	if p.tty && p.phase != "" {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func shortDigest(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	if len(d) > 12 {
		return d[:12]
	}
	return d
}

func (c *cli) imageCommands() *cobra.Command {
	img := &cobra.Command{Use: "image", Short: "Manage images (pull, import, ls, inspect, rm, prune)"}

	// importing runs one import with progress on stderr; Ctrl-C cancels it.
	importing := func(run func(context.Context, *api.Client, func(api.ImportProgress)) (*api.ImportOut, error)) error {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		cl, err := c.dial(ctx)
		if err != nil {
			return err
		}
		defer cl.Close()
		pp := &progressPrinter{w: os.Stderr, tty: isTTY(os.Stderr)}
		out, err := run(ctx, cl, pp.show)
		pp.done()
		if ctx.Err() != nil {
			return errors.New("import canceled")
		}
		if err != nil {
			return c.explain(err)
		}
		if c.json {
			return c.printJSON(out)
		}
		how := "imported"
		if out.Cached {
			how = "already present"
		}
		fmt.Fprintf(c.out, "%s %s (%s, %s)\n", out.Image.Digest, how, strings.Join(out.Image.Names, ", "), humanBytes(out.Image.Size))
		return nil
	}

	var insecure bool
	pull := &cobra.Command{
		Use:   "pull REF",
		Short: "Pull an image from a registry (linux/amd64)",
		Args:  exact(1, "one image reference"),
		RunE: func(_ *cobra.Command, a []string) error {
			return importing(func(ctx context.Context, cl *api.Client, p func(api.ImportProgress)) (*api.ImportOut, error) {
				return cl.PullImage(ctx, api.PullIn{Ref: a[0], Insecure: insecure}, p)
			})
		},
	}
	pull.Flags().BoolVar(&insecure, "insecure", false, "reach the registry over plain HTTP")

	var name, cfgPath string
	imp := &cobra.Command{
		Use:   "import PATH[:TAG|@DIGEST]",
		Short: "Import an OCI layout directory, a docker save archive, or a rootfs tar (--name)",
		Args:  exact(1, "one path"),
		RunE: func(_ *cobra.Command, a []string) error {
			path, sel := a[0], ""
			if i := strings.LastIndex(path, "@sha256:"); i > 0 {
				path, sel = path[:i], path[i+1:]
			} else if i := strings.LastIndex(path, ":"); i > 0 && !strings.Contains(path[i:], "/") {
				if fi, err := os.Stat(path[:i]); err == nil && fi.IsDir() {
					path, sel = path[:i], path[i+1:]
				}
			}
			// Opened here, with the caller's own rights; the daemon reads
			// through the descriptor.
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			in := api.ImportIn{Source: path, Select: sel, Name: name}
			if cfgPath != "" {
				b, err := os.ReadFile(cfgPath)
				if err != nil {
					return err
				}
				in.Config = b
			}
			return importing(func(ctx context.Context, cl *api.Client, p func(api.ImportProgress)) (*api.ImportOut, error) {
				return cl.ImportImage(ctx, in, f, p)
			})
		},
	}
	imp.Flags().StringVar(&name, "name", "", "name[:tag] to record (required for a rootfs tar)")
	imp.Flags().StringVar(&cfgPath, "config", "", "image config JSON for a rootfs tar (Entrypoint, Cmd, Env, ...)")

	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List images",
		Args:    exact(0, "no arguments"),
		RunE: func(*cobra.Command, []string) error {
			return c.call(func(ctx context.Context, cl *api.Client) error {
				imgs, err := cl.ListImages(ctx)
				if err != nil {
					return err
				}
				if c.json {
					return c.printJSON(imgs)
				}
				tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "DIGEST\tNAMES\tSIZE\tCREATED")
				for _, im := range imgs {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", shortDigest(im.Digest), orDash(strings.Join(im.Names, ",")), humanBytes(im.Size), ago(im.Created))
				}
				return tw.Flush()
			})
		},
	}
	inspect := &cobra.Command{
		Use:   "inspect IMAGE",
		Short: "Show an image with its config",
		Args:  exact(1, "one image"),
		RunE: func(_ *cobra.Command, a []string) error {
			return c.call(func(ctx context.Context, cl *api.Client) error {
				out, err := cl.InspectImage(ctx, a[0])
				if err != nil {
					return err
				}
				return c.printJSON(out)
			})
		},
	}
	var force bool
	rm := &cobra.Command{
		Use:     "rm IMAGE...",
		Aliases: []string{"remove"},
		Short:   "Remove images no VM uses (--force: even then)",
		Args:    args(1, "image"),
		RunE: func(_ *cobra.Command, a []string) error {
			return c.call(func(ctx context.Context, cl *api.Client) error {
				var failed []string
				for _, ref := range a {
					if _, err := cl.RemoveImage(ctx, ref, force); err != nil {
						fmt.Fprintf(os.Stderr, "paddock: %s: %v\n", ref, c.explain(err))
						failed = append(failed, ref)
						continue
					}
					fmt.Fprintf(c.out, "%s removed\n", ref)
				}
				if len(failed) > 0 {
					return fmt.Errorf("failed: %s", strings.Join(failed, ", "))
				}
				return nil
			})
		},
	}
	rm.Flags().BoolVarP(&force, "force", "f", false, "remove even if VMs use it")
	prune := &cobra.Command{
		Use:   "prune",
		Short: "Remove every image no VM uses",
		Args:  exact(0, "no arguments"),
		RunE: func(*cobra.Command, []string) error {
			return c.call(func(ctx context.Context, cl *api.Client) error {
				removed, err := cl.PruneImages(ctx)
				if err != nil {
					return err
				}
				if c.json {
					return c.printJSON(removed)
				}
				for _, d := range removed {
					fmt.Fprintln(c.out, d, "removed")
				}
				return nil
			})
		},
	}
	img.AddCommand(pull, imp, ls, inspect, rm, prune)
	for _, sub := range img.Commands() {
		sub.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	}
	return img
}
