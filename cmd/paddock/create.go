package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/netspec"
	"github.com/paddock-vm/paddock/varlink"
)

// vmFlags are create's flags; run takes them too.
type vmFlags struct {
	name, image, memory, disk, autoStop string
	cpus                                int
	env                                 []string
	pull                                string
	template                            string
	run                                 runFlags
	net                                 netFlags
}

func (f *vmFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&f.name, "name", "", "VM name (DNS label)")
	fs.StringVar(&f.image, "image", "", "image name[:tag] or digest")
	fs.IntVar(&f.cpus, "cpus", 1, "virtual CPUs")
	fs.StringVar(&f.memory, "memory", "", "memory, e.g. 512MiB")
	fs.StringVar(&f.disk, "disk", "", "disk size, e.g. 4GiB")
	fs.StringVar(&f.autoStop, "auto-stop", "", "stop after this long idle, e.g. 30m, or off")
	fs.StringArrayVarP(&f.env, "env", "e", nil, "add KEY=VALUE to the image's environment (repeatable)")
	fs.StringVar(&f.pull, "pull", "missing", "pull the image from its registry: missing (when not stored), always, never")
	fs.StringVar(&f.template, "from-template", "", "resume your template TEMPLATE instead of booting (its image, CPUs, memory, disk and network; see paddock template)")
	f.run.register(cmd, "")
	f.net.register(cmd, false)
}

// netFlags are the published ports and the network; create, run and set
// take them.
type netFlags struct {
	publish []string
	network string
}

func (f *netFlags) register(cmd *cobra.Command, set bool) {
	publish, network := "repeatable", ""
	if set {
		publish, network = "repeatable; replaces the VM's published ports, --reset ports clears them", `; --reset network: the daemon's default`
	}
	fs := cmd.Flags()
	fs.StringArrayVarP(&f.publish, "publish", "p", nil, "publish a guest port on the host: [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp] ("+publish+")")
	fs.StringVar(&f.network, "network", "", "network: bridge, user (no privilege needed) or shared:GROUP (your VMs in GROUP reach each other)"+network)
}

// netIn reads the flags the user gave; a malformed -p is a usage error
// naming it.
func (f *netFlags) netIn(cmd *cobra.Command) (api.NetIn, error) {
	var in api.NetIn
	if cmd.Flags().Changed("publish") {
		ports := make([]api.PortMapping, 0, len(f.publish))
		for _, s := range f.publish {
			m, err := netspec.ParsePort(s)
			if err != nil {
				return in, usageError{fmt.Errorf("-p: %v", err)}
			}
			ports = append(ports, api.PortOf(m))
		}
		in.Ports = &ports
	}
	if cmd.Flags().Changed("network") {
		if _, _, err := netspec.ParseNetwork(f.network); err != nil {
			return in, usageError{fmt.Errorf("--network: %v", err)}
		}
		in.Network = &f.network
	}
	return in, nil
}

// runFlags say how a VM boots and what its main process is; create, run
// and set take them, and a command after -- replaces the image's Cmd.
type runFlags struct {
	kernel, entrypoint, workdir, user string
	workspaces                        []string
}

func (f *runFlags) register(cmd *cobra.Command, reset string) {
	fs := cmd.Flags()
	fs.StringVar(&f.kernel, "kernel", "", "boot kit to boot (paddock kernel ls)"+reset)
	fs.StringVar(&f.entrypoint, "entrypoint", "", `replace the image's entrypoint: a program, or a JSON list ("" clears it; the image's Cmd is dropped unless a command follows --)`)
	fs.StringVarP(&f.workdir, "workdir", "w", "", "working directory of the main process"+reset)
	fs.StringVarP(&f.user, "user", "u", "", "user[:group] of the main process"+reset)
	ws := "attach a workspace of yours: NAME[:/PATH][:ro] (default path /workspace; repeatable)"
	if reset != "" {
		ws += "; replaces the VM's workspaces, --reset workspaces detaches them all"
	}
	fs.StringArrayVar(&f.workspaces, "workspace", nil, ws)
}

// parseWorkspace reads NAME[:/PATH][:ro].
func parseWorkspace(s string) (api.WorkspaceMount, error) {
	parts := strings.Split(s, ":")
	m := api.WorkspaceMount{Workspace: parts[0]}
	rest := parts[1:]
	if n := len(rest); n > 0 && (rest[n-1] == "ro" || rest[n-1] == "rw") {
		m.ReadOnly = rest[n-1] == "ro"
		rest = rest[:n-1]
	}
	switch {
	case m.Workspace == "":
		return m, usageError{fmt.Errorf("--workspace %q: want NAME[:/PATH][:ro]", s)}
	case len(rest) > 1:
		return m, usageError{fmt.Errorf("--workspace %q: want NAME[:/PATH][:ro] (a path holds no ':')", s)}
	case len(rest) == 1:
		if !strings.HasPrefix(rest[0], "/") {
			return m, usageError{fmt.Errorf("--workspace %q: the path %q is not absolute (NAME[:/PATH][:ro])", s, rest[0])}
		}
		m.Path = rest[0]
	}
	return m, nil
}

// runIn reads the flags the user gave and the command after --.
func (f *runFlags) runIn(cmd *cobra.Command, command []string) (api.RunIn, error) {
	var in api.RunIn
	changed := cmd.Flags().Changed
	if changed("kernel") {
		in.Kernel = &f.kernel
	}
	if changed("entrypoint") {
		e, err := parseEntrypoint(f.entrypoint)
		if err != nil {
			return in, err
		}
		in.Entrypoint = &e
	}
	if changed("workdir") {
		in.Workdir = &f.workdir
	}
	if changed("user") {
		in.User = &f.user
	}
	if changed("workspace") {
		ms := make([]api.WorkspaceMount, 0, len(f.workspaces))
		for _, w := range f.workspaces {
			m, err := parseWorkspace(w)
			if err != nil {
				return in, err
			}
			ms = append(ms, m)
		}
		in.Workspaces = &ms
	}
	if len(command) > 0 {
		in.Cmd = &command
	}
	return in, nil
}

// parseEntrypoint takes a program, or a JSON list of strings as podman
// does; "" is an empty entrypoint.
func parseEntrypoint(s string) ([]string, error) {
	if s == "" {
		return []string{}, nil
	}
	if !strings.HasPrefix(strings.TrimSpace(s), "[") {
		return []string{s}, nil
	}
	var e []string
	if err := json.Unmarshal([]byte(s), &e); err != nil {
		return nil, usageError{fmt.Errorf("--entrypoint %s: not a JSON list of strings: %v", s, err)}
	}
	return e, nil
}

// splitDash splits the arguments at --: at most max before it, the
// command after it.
func splitDash(cmd *cobra.Command, a []string, max int) (before, command []string, err error) {
	before = a
	if at := cmd.ArgsLenAtDash(); at >= 0 {
		before, command = a[:at], a[at:]
	}
	if len(before) > max {
		return nil, nil, usageError{fmt.Errorf("unexpected argument %q: a command for the VM goes after --, as in: paddock %s ... -- %s",
			before[max], cmd.Name(), strings.Join(before[max:], " "))}
	}
	return before, command, nil
}

// createIn turns the flags and the arguments ([NAME] [-- CMD...]) into a
// request.
func (f *vmFlags) createIn(cmd *cobra.Command, a []string) (api.CreateIn, error) {
	a, command, err := splitDash(cmd, a, 1)
	if err != nil {
		return api.CreateIn{}, err
	}
	in := api.CreateIn{Name: f.name, Image: f.image, Env: f.env, Template: f.template}
	if len(a) == 1 {
		if in.Name != "" && in.Name != a[0] {
			return in, usageError{fmt.Errorf("name given twice: %q and --name %q", a[0], in.Name)}
		}
		in.Name = a[0]
	}
	if in.Name == "" || in.Image == "" && in.Template == "" {
		return in, usageError{errors.New(cmd.Name() + " needs a NAME and --image (or --from-template)")}
	}
	switch f.pull {
	case "missing", "always", "never":
	default:
		return in, usageError{fmt.Errorf("--pull %q: want missing, always or never", f.pull)}
	}
	if cmd.Flags().Changed("cpus") {
		in.CPUs = &f.cpus
	}
	if in.Memory, err = sizeFlag(cmd, "memory", f.memory); err != nil {
		return in, err
	}
	if in.DiskSize, err = sizeFlag(cmd, "disk", f.disk); err != nil {
		return in, err
	}
	if cmd.Flags().Changed("auto-stop") {
		in.AutoStop = &f.autoStop
	}
	if in.RunIn, err = f.run.runIn(cmd, command); err != nil {
		return in, err
	}
	in.NetIn, err = f.net.netIn(cmd)
	return in, err
}

// creating makes create or run: it pulls the image as --pull says, creates
// the VM, then acts on it.
func (c *cli) creating(cmd *cobra.Command, then func(context.Context, *api.Client, *api.VM) error) *cobra.Command {
	var f vmFlags
	f.register(cmd)
	cmd.RunE = func(cmd *cobra.Command, a []string) error {
		in, err := f.createIn(cmd, a)
		if err != nil {
			return err
		}
		if in.Image != "" {
			if err := c.pullFor(in.Image, f.pull); err != nil {
				return err
			}
		}
		return c.call(func(ctx context.Context, cl *api.Client) error {
			vm, err := cl.Create(ctx, in)
			if err != nil {
				return err
			}
			return then(ctx, cl, vm)
		})
	}
	return cmd
}

func (c *cli) newCreateCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "create [NAME] --image IMAGE [flags] [-- COMMAND [ARG...]]", Short: "Create a VM from an image (pulled when missing)"}
	return c.creating(cmd, func(_ context.Context, _ *api.Client, vm *api.VM) error {
		return c.printVM(vm, vm.ID)
	})
}

// storedID matches what names a stored image rather than a registry's: a
// digest or an id prefix.
var storedID = regexp.MustCompile(`^(sha256:)?[0-9a-f]{6,64}$`)

// pullFor pulls the image create and run are given, as --pull says:
// missing (when the store does not hold it), always, or never. Progress
// goes to stderr, as for image pull; with --json, nothing does.
func (c *cli) pullFor(ref, policy string) error {
	if policy == "never" || storedID.MatchString(ref) {
		return nil
	}
	if _, err := name.ParseReference(ref); err != nil {
		return nil // not a registry reference: create names the culprit
	}
	if policy == "missing" {
		missing := false
		err := c.call(func(ctx context.Context, cl *api.Client) error {
			_, err := cl.InspectImage(ctx, ref)
			var ve *varlink.Error
			if errors.As(err, &ve) && ve.Name == api.ErrImageNotFound {
				missing = true
				return nil
			}
			return err
		})
		if err != nil || !missing {
			return err
		}
		if !c.json {
			_ = say(c.errOut, "image %s is not stored; pulling it", ref)
		}
	}
	in, err := pullIn(ref, false, authn.DefaultKeychain)
	if err != nil {
		return err
	}
	out, err := c.transfer(c.json, pullImage(in))
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	if !c.json {
		_ = say(c.errOut, "image %s %s (%s)", ref, importedHow(out), out.Image.Digest)
	}
	return nil
}
