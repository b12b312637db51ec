// Command paddock is the command-line client of paddockd.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/config"
	"github.com/paddock-vm/paddock/varlink"
	"github.com/paddock-vm/paddock/version"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

type usageError struct{ error }

type cli struct {
	socket  string
	json    bool
	timeout time.Duration
	out     io.Writer
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	c := &cli{out: stdout}
	root := c.commands()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	if code, ok := exitCode(err); ok {
		return code
	}
	var ue usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		fmt.Fprintf(stderr, "paddock: %v\nRun 'paddock --help' for usage.\n", err)
		return exitUsage
	}
	fmt.Fprintf(stderr, "paddock: %v\n", err)
	return exitFailure
}

func isCobraUsage(err error) bool {
	s := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "accepts ", "requires at least", "requires exactly", "invalid argument", "flag needs an argument", "required flag"} {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// defaultSocket picks the socket: the flag, then PADDOCK_SOCKET, then the
// caller's own per-user daemon if one is running, then the system one.
func defaultSocket() string {
	if s := os.Getenv("PADDOCK_SOCKET"); s != "" {
		return s
	}
	if os.Geteuid() != 0 {
		if rt := os.Getenv("XDG_RUNTIME_DIR"); rt != "" {
			p := filepath.Join(rt, "paddock", "io.paddock.v1")
			if fi, err := os.Stat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
				return p
			}
		}
	}
	return "/run/paddock/io.paddock.v1"
}

func args(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, a []string) error {
		if len(a) < n {
			return usageError{fmt.Errorf("missing %s", what)}
		}
		return nil
	}
}

func exact(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, a []string) error {
		if len(a) != n {
			return usageError{fmt.Errorf("want %s, got %d arguments", what, len(a))}
		}
		return nil
	}
}

func (c *cli) commands() *cobra.Command {
	root := &cobra.Command{
		Use:           "paddock",
		Short:         "Run small Linux VMs from OCI images",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.Version,
	}
	root.PersistentFlags().StringVar(&c.socket, "socket", defaultSocket(), "paddockd's varlink socket (env PADDOCK_SOCKET)")
	root.PersistentFlags().BoolVar(&c.json, "json", false, "print JSON for scripts")
	root.PersistentFlags().DurationVar(&c.timeout, "timeout", 5*time.Minute, "how long to wait for the daemon (a boot under TCG on a busy host can take long)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.CompletionOptions.DisableDefaultCmd = true

	var create struct {
		name, image, memory, disk, autoStop string
		cpus                                int
		env                                 []string
	}
	createCmd := &cobra.Command{
		Use:   "create [NAME] --image IMAGE",
		Short: "Create a VM from an image",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			in := api.CreateIn{Name: create.name, Image: create.image, Env: create.env}
			if len(a) == 1 {
				if in.Name != "" && in.Name != a[0] {
					return usageError{fmt.Errorf("name given twice: %q and --name %q", a[0], in.Name)}
				}
				in.Name = a[0]
			}
			if in.Name == "" || in.Image == "" {
				return usageError{errors.New("create needs a NAME and --image")}
			}
			if cmd.Flags().Changed("cpus") {
				in.CPUs = &create.cpus
			}
			var err error
			if in.Memory, err = sizeFlag(cmd, "memory", create.memory); err != nil {
				return err
			}
			if in.DiskSize, err = sizeFlag(cmd, "disk", create.disk); err != nil {
				return err
			}
			if cmd.Flags().Changed("auto-stop") {
				in.AutoStop = &create.autoStop
			}
			return c.call(func(ctx context.Context, cl *api.Client) error {
				vm, err := cl.Create(ctx, in)
				if err != nil {
					return err
				}
				return c.printVM(vm, vm.ID)
			})
		},
	}
	f := createCmd.Flags()
	f.StringVar(&create.name, "name", "", "VM name (DNS label)")
	f.StringVar(&create.image, "image", "", "image name[:tag] or digest")
	f.IntVar(&create.cpus, "cpus", 1, "virtual CPUs")
	f.StringVar(&create.memory, "memory", "", "memory, e.g. 512MiB")
	f.StringVar(&create.disk, "disk", "", "disk size, e.g. 4GiB")
	f.StringVar(&create.autoStop, "auto-stop", "", "stop after this long idle, e.g. 30m, or off")
	f.StringArrayVarP(&create.env, "env", "e", nil, "add KEY=VALUE to the image's environment (repeatable)")

	var quiet bool
	lsCmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list", "ps"},
		Short:   "List VMs",
		Args:    exact(0, "no arguments"),
		RunE: func(*cobra.Command, []string) error {
			return c.call(func(ctx context.Context, cl *api.Client) error {
				vms, err := cl.List(ctx)
				if err != nil {
					return err
				}
				if c.json {
					return c.printJSON(vms)
				}
				if quiet {
					for _, vm := range vms {
						fmt.Fprintln(c.out, vm.ID)
					}
					return nil
				}
				tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tNAME\tSTATUS\tIMAGE\tCPUS\tMEMORY\tDISK\tCREATED")
				for _, vm := range vms {
					name, status := vm.Name, vm.Status
					if name == "" {
						name = "-"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", short(vm.ID), name, status, orDash(vm.Spec.Image),
						vm.Spec.CPUs, config.FormatSize(vm.Spec.Memory), config.FormatSize(vm.Spec.DiskSize), ago(vm.CreatedAt))
				}
				return tw.Flush()
			})
		},
	}
	lsCmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print ids only")

	inspectCmd := &cobra.Command{
		Use:   "inspect VM...",
		Short: "Show a VM in full",
		Args:  args(1, "VM name or id"),
		RunE: func(_ *cobra.Command, a []string) error {
			return c.call(func(ctx context.Context, cl *api.Client) error {
				var vms []*api.VM
				for _, ref := range a {
					vm, err := cl.Get(ctx, ref)
					if err != nil {
						return err
					}
					vms = append(vms, vm)
				}
				if c.json {
					if len(vms) == 1 {
						return c.printJSON(vms[0])
					}
					return c.printJSON(vms)
				}
				for i, vm := range vms {
					if i > 0 {
						fmt.Fprintln(c.out)
					}
					printDetail(c.out, vm)
					if vm.Status == "running" {
						_ = cl.Stats(ctx, api.StatsIn{VM: vm.ID, Passive: true}, false, func(st []api.VMStats) error {
							if len(st) == 1 {
								printActivity(c.out, st[0])
							}
							return nil
						})
					}
				}
				return nil
			})
		},
	}

	var set struct {
		memory, disk, autoStop string
		cpus                   int
	}
	setCmd := &cobra.Command{
		Use:   "set VM [--cpus N] [--memory SIZE] [--disk SIZE] [--auto-stop DUR|off]",
		Short: "Change a VM's spec (cpus, memory and disk only while stopped)",
		Args:  exact(1, "one VM name or id"),
		RunE: func(cmd *cobra.Command, a []string) error {
			in := api.SetIn{VM: a[0]}
			if cmd.Flags().Changed("cpus") {
				in.CPUs = &set.cpus
			}
			var err error
			if in.Memory, err = sizeFlag(cmd, "memory", set.memory); err != nil {
				return err
			}
			if in.DiskSize, err = sizeFlag(cmd, "disk", set.disk); err != nil {
				return err
			}
			if cmd.Flags().Changed("auto-stop") {
				in.AutoStop = &set.autoStop
			}
			if in.CPUs == nil && in.Memory == nil && in.DiskSize == nil && in.AutoStop == nil {
				return usageError{errors.New("set needs at least one of --cpus, --memory, --disk, --auto-stop")}
			}
			return c.call(func(ctx context.Context, cl *api.Client) error {
				vm, err := cl.Set(ctx, in)
				if err != nil {
					return err
				}
				return c.printVM(vm, vm.Name+" updated")
			})
		},
	}
	sf := setCmd.Flags()
	sf.IntVar(&set.cpus, "cpus", 1, "virtual CPUs")
	sf.StringVar(&set.memory, "memory", "", "memory, e.g. 1GiB")
	sf.StringVar(&set.disk, "disk", "", "disk size (grow only)")
	sf.StringVar(&set.autoStop, "auto-stop", "", "idle time before auto-stop, or off")

	each := func(use, short string, fn func(context.Context, *api.Client, string) (*api.VM, error), done string) *cobra.Command {
		return &cobra.Command{
			Use:   use + " VM...",
			Short: short,
			Args:  args(1, "VM name or id"),
			RunE: func(_ *cobra.Command, a []string) error {
				return c.eachVM(a, fn, done)
			},
		}
	}
	var stopForce, rmForce bool
	startCmd := each("start", "Start VMs", func(ctx context.Context, cl *api.Client, ref string) (*api.VM, error) {
		return cl.Start(ctx, ref)
	}, "started")
	stopCmd := each("stop", "Stop VMs", func(ctx context.Context, cl *api.Client, ref string) (*api.VM, error) {
		return cl.Stop(ctx, ref, stopForce)
	}, "stopped")
	stopCmd.Flags().BoolVarP(&stopForce, "force", "f", false, "stop even a VM that is still starting")
	rmCmd := each("rm", "Delete VMs", func(ctx context.Context, cl *api.Client, ref string) (*api.VM, error) {
		return nil, cl.Delete(ctx, ref, rmForce)
	}, "deleted")
	rmCmd.Aliases = []string{"delete"}
	rmCmd.Flags().BoolVarP(&rmForce, "force", "f", false, "stop a running VM first")

	eventsCmd := &cobra.Command{
		Use:   "events [VM]",
		Short: "Stream VM state changes until interrupted",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(_ *cobra.Command, a []string) error {
			ref := ""
			if len(a) == 1 {
				ref = a[0]
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cl, err := c.dial(ctx)
			if err != nil {
				return err
			}
			defer cl.Close()
			enc := json.NewEncoder(c.out)
			err = cl.Events(ctx, ref, func(ev api.Event) error {
				if c.json {
					return enc.Encode(ev)
				}
				line := fmt.Sprintf("%s %s %s %s", ev.Time, ev.Kind, orDash(ev.VMName), ev.Status)
				if ev.PreviousStatus != "" {
					line += " (was " + ev.PreviousStatus + ")"
				}
				if ev.Reason != "" {
					line += ": " + ev.Reason
				}
				_, err := fmt.Fprintln(c.out, line)
				return err
			})
			if ctx.Err() != nil {
				return nil
			}
			return c.explain(err)
		},
	}

	versionCmd := &cobra.Command{
		Use:   "version",
		Short: "Print client and daemon versions",
		Args:  exact(0, "no arguments"),
		RunE: func(*cobra.Command, []string) error {
			return c.call(func(ctx context.Context, cl *api.Client) error {
				v, err := cl.Version(ctx)
				if err != nil {
					return err
				}
				if c.json {
					return c.printJSON(map[string]any{"client": version.Version, "daemon": v})
				}
				fmt.Fprintf(c.out, "client: %s\ndaemon: %s (%s, %s)\n", version.Version, v.Version, v.API, v.GoVersion)
				return nil
			})
		},
	}

	infoCmd := &cobra.Command{
		Use:   "info",
		Short: "Show the daemon's status",
		Args:  exact(0, "no arguments"),
		RunE: func(*cobra.Command, []string) error {
			return c.call(func(ctx context.Context, cl *api.Client) error {
				in, err := cl.Info(ctx)
				if err != nil {
					return err
				}
				if c.json {
					return c.printJSON(in)
				}
				fmt.Fprintf(c.out, "version:     %s\nuptime:      %s\nhealth:      %s\nvms:         %d (%d running, %d stopped, %d created, %d error)\nstate dir:   %s\nruntime dir: %s\nsocket:      %s\n",
					in.Version, (time.Duration(in.Uptime) * time.Second).Round(time.Second), orDash(string(in.Health)), in.VMs.Total, in.VMs.Running, in.VMs.Stopped, in.VMs.Created, in.VMs.Error, in.StateDir, in.RuntimeDir, in.Socket)
				for _, p := range in.Problems {
					fmt.Fprintf(c.out, "problem:     %s\n", p)
				}
				return nil
			})
		},
	}

	completionCmd := &cobra.Command{
		Use:       "completion bash|zsh|fish",
		Short:     "Print a shell completion script",
		Args:      exact(1, "one of bash, zsh, fish"),
		ValidArgs: []string{"bash", "zsh", "fish"},
		RunE: func(cmd *cobra.Command, a []string) error {
			switch a[0] {
			case "bash":
				return root.GenBashCompletionV2(c.out, true)
			case "zsh":
				return root.GenZshCompletion(c.out)
			case "fish":
				return root.GenFishCompletion(c.out, true)
			}
			return usageError{fmt.Errorf("unknown shell %q: want bash, zsh or fish", a[0])}
		},
	}

	root.AddCommand(createCmd, lsCmd, inspectCmd, setCmd, startCmd, stopCmd, rmCmd, eventsCmd, versionCmd, infoCmd, completionCmd, c.imageCommands(), c.kernelCommands())
	root.AddCommand(c.execCommands()...)
	root.AddCommand(c.statsCommands()...)
	root.AddCommand(c.lifecycleCommands(createCmd)...)
	for _, cmd := range root.Commands() {
		cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	}
	return root
}

func sizeFlag(cmd *cobra.Command, name, val string) (*int64, error) {
	if !cmd.Flags().Changed(name) {
		return nil, nil
	}
	n, err := config.ParseSize(val)
	if err != nil {
		return nil, usageError{fmt.Errorf("--%s: %v", name, err)}
	}
	return &n, nil
}

func (c *cli) dial(ctx context.Context) (*api.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cl, err := api.Dial(dctx, c.socket)
	if err != nil {
		return nil, fmt.Errorf("cannot reach paddockd at %s: %v (is paddock.socket running? use --socket or PADDOCK_SOCKET)", c.socket, errors.Unwrap(err))
	}
	return cl, nil
}

func (c *cli) call(fn func(context.Context, *api.Client) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	cl, err := c.dial(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()
	return c.explain(fn(ctx, cl))
}

// explain adds the varlink error name to the daemon's message.
func (c *cli) explain(err error) error {
	var ve *varlink.Error
	if errors.As(err, &ve) {
		_, short := varlink.SplitMethod(ve.Name)
		return fmt.Errorf("%s (%s)", ve.Error(), short)
	}
	return err
}

func (c *cli) eachVM(refs []string, fn func(context.Context, *api.Client, string) (*api.VM, error), done string) error {
	return c.call(func(ctx context.Context, cl *api.Client) error {
		var failed []string
		var out []*api.VM
		for _, ref := range refs {
			vm, err := fn(ctx, cl, ref)
			if err != nil {
				fmt.Fprintf(os.Stderr, "paddock: %s: %v\n", ref, c.explain(err))
				failed = append(failed, ref)
				continue
			}
			if vm != nil {
				out = append(out, vm)
			}
			if !c.json {
				fmt.Fprintf(c.out, "%s %s\n", ref, done)
			}
		}
		if c.json && len(out) > 0 {
			if err := c.printJSON(out); err != nil {
				return err
			}
		}
		if len(failed) > 0 {
			return fmt.Errorf("failed: %s", strings.Join(failed, ", "))
		}
		return nil
	})
}

func (c *cli) printJSON(v any) error {
	enc := json.NewEncoder(c.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (c *cli) printVM(vm *api.VM, human string) error {
	if c.json {
		return c.printJSON(vm)
	}
	_, err := fmt.Fprintln(c.out, human)
	return err
}

func printDetail(w io.Writer, vm *api.VM) {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("ID", vm.ID)
	row("Name", orDash(vm.Name))
	row("Status", vm.Status)
	if vm.Reason != "" {
		row("Reason", vm.Reason)
	}
	row("Owner UID", fmt.Sprint(vm.OwnerUID))
	if vm.IP != "" {
		row("IP", vm.IP)
	}
	row("Image", orDash(vm.Spec.Image))
	row("Image digest", orDash(vm.Spec.ImageDigest))
	row("CPUs", fmt.Sprint(vm.Spec.CPUs))
	row("Memory", config.FormatSize(vm.Spec.Memory))
	row("Disk", config.FormatSize(vm.Spec.DiskSize))
	row("Auto-stop", vm.Spec.AutoStop)
	row("Created", vm.CreatedAt)
	row("Updated", vm.UpdatedAt)
	_ = tw.Flush()
}

func printActivity(w io.Writer, s api.VMStats) {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	h := s.Health
	if s.HealthReason != "" {
		h += " (" + s.HealthReason + ")"
	}
	fmt.Fprintf(tw, "Health:\t%s\n", h)
	fmt.Fprintf(tw, "Last activity:\t%s (%s)\n", orDash(s.LastActivity), orDash(s.ActivityCause))
	fmt.Fprintf(tw, "Auto-stop at:\t%s\n", orDash(s.AutoStopAt))
	_ = tw.Flush()
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func ago(ts string) string {
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}
