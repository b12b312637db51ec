package daemon

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/host/disk"
	"github.com/paddock-vm/paddock/netspec"
	"github.com/paddock-vm/paddock/state"
	"github.com/paddock-vm/paddock/varlink"
)

// templateDeps wire the Templates actor to the host: what a saved guest
// depends on, and how a saved VM's disk is frozen.
func (d *Daemon) templateDeps(store *state.TemplateStore, host *actors.Host) actors.TemplateDeps {
	td := actors.TemplateDeps{Store: store}
	if host == nil {
		return td
	}
	td.Parts = func(kernel string) ([]state.FileID, error) {
		kit, err := host.Kit(kernel)
		if err != nil {
			return nil, err
		}
		vmmBin, err := exec.LookPath(d.config().VM.VMMBinary)
		if err != nil {
			return nil, fmt.Errorf("VMM binary: %w", err)
		}
		var out []state.FileID
		for _, p := range []string{kit.Kernel, kit.Initrd, vmmBin} {
			id, err := state.StatFileID(p)
			if err != nil {
				return nil, err
			}
			out = append(out, id)
		}
		return out, nil
	}
	td.Flatten = func(ctx context.Context, path, format, out string) error {
		// qemu-img writes a sparse raw file; the temporary name keeps a
		// torn one from being taken for the disk.
		tmp := out + ".tmp"
		if err := disk.Run(ctx, "qemu-img", "convert", "-q", "-f", format, "-O", "raw", path, tmp); err != nil {
			return err
		}
		if err := disk.SyncFile(tmp); err != nil {
			return err
		}
		return renameSync(tmp, out)
	}
	// A VM made from a template reads it straight from the store.
	host.Template = actors.TemplateBootFrom(store)
	return td
}

func renameSync(from, to string) error {
	if err := os.Rename(from, to); err != nil {
		return err
	}
	return state.SyncDir(filepath.Dir(to))
}

func templateToAPI(t *state.Template) api.Template {
	return api.Template{ID: t.ID, Name: t.Name, OwnerUID: t.OwnerUID, Image: t.Image, CPUs: t.CPUs, Memory: t.Memory, DiskSize: t.DiskSize,
		Network: t.Network, StateBytes: t.StateSize + t.MemorySize, SaveMS: t.SaveMS, Created: t.Created.Format(time.RFC3339)}
}

func (d *Daemon) createTemplate(ctx context.Context, c *varlink.Call) error {
	var in api.CreateTemplateIn
	if err := c.Decode(&in); err != nil {
		return err
	}
	if err := d.checkKit(in.Kernel); err != nil {
		return err
	}
	if n := cmp.Or(d.config().VM.Network, netspec.Bridge); in.Network == nil && n != "none" {
		// Recorded as given, not as "the daemon's default": a VM resumed
		// after vm.network changed must still have the saved devices
		// ("none" cannot be named; a default of none stays implicit).
		in.Network = &n
	}
	r, err := d.actors.TemplateRequest(ctx, &actors.CreateTemplate{Caller: d.auth.caller(c.Peer), Name: in.Name, Image: in.Image,
		CPUs: in.CPUs, Memory: in.Memory, DiskSize: in.DiskSize, Network: in.Network, Kernel: in.Kernel})
	if err != nil {
		return err
	}
	return c.Reply(api.TemplateOut{Template: templateToAPI(r.Template)})
}

func (d *Daemon) listTemplates(ctx context.Context, c *varlink.Call) error {
	if err := c.Decode(&struct{}{}); err != nil {
		return err
	}
	r, err := d.actors.TemplateRequest(ctx, &actors.ListTemplates{Caller: d.auth.caller(c.Peer)})
	if err != nil {
		return err
	}
	out := api.TemplatesOut{Templates: []api.Template{}}
	for i := range r.Templates {
		out.Templates = append(out.Templates, templateToAPI(&r.Templates[i]))
	}
	return c.Reply(out)
}

func (d *Daemon) removeTemplate(ctx context.Context, c *varlink.Call) error {
	var in api.TemplateRef
	if err := c.Decode(&in); err != nil {
		return err
	}
	r, err := d.actors.TemplateRequest(ctx, &actors.RemoveTemplate{Caller: d.auth.caller(c.Peer), Ref: in.Template})
	if err != nil {
		return err
	}
	return c.Reply(api.TemplateOut{Template: templateToAPI(r.Template)})
}

// fromTemplate fills a Create from the caller's template: what the saved
// guest was made with is what the VM has; anything else given that differs
// is refused rather than silently ignored.
func (d *Daemon) fromTemplate(ctx context.Context, c *varlink.Call, in *api.CreateIn, m *actors.CreateVM) error {
	r, err := d.actors.TemplateRequest(ctx, &actors.GetTemplate{Caller: d.auth.caller(c.Peer), Ref: in.Template})
	if err != nil {
		return err
	}
	t := r.Template
	differs := func(field string, given bool) error {
		if given {
			return &actors.Error{Kind: actors.ErrInvalidArgument, Field: field, Msg: fmt.Sprintf("%s comes from template %s: leave it out", field, t.Name)}
		}
		return nil
	}
	for _, chk := range []struct {
		field string
		given bool
	}{
		{"image", in.Image != "" && in.Image != t.Image && in.Image != t.ImageDigest},
		{"cpus", in.CPUs != nil && *in.CPUs != t.CPUs},
		{"memory", in.Memory != nil && *in.Memory != t.Memory},
		{"disk_size", in.DiskSize != nil && *in.DiskSize != t.DiskSize},
		{"network", in.Network != nil && *in.Network != t.Network},
		{"kernel", in.Kernel != nil && *in.Kernel != t.Kernel},
		{"workspaces", in.Workspaces != nil && len(*in.Workspaces) > 0},
	} {
		if err := differs(chk.field, chk.given); err != nil {
			return err
		}
	}
	cpus, mem, size, network := t.CPUs, t.Memory, t.DiskSize, t.Network
	m.Image, m.CPUs, m.Memory, m.DiskSize, m.Network, m.Template = t.ImageDigest, &cpus, &mem, &size, &network, t.ID
	if t.Kernel != "" {
		k := t.Kernel
		m.Kernel = &k
	}
	return nil
}
