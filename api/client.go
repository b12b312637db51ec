package api

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/paddock-vm/paddock/varlink"
)

// Client is a typed io.paddock.v1 client over one connection.
type Client struct {
	*varlink.Client
	Socket string
}

// Dial connects to the daemon's socket.
func Dial(ctx context.Context, socket string) (*Client, error) {
	c, err := varlink.Dial(ctx, socket)
	if err != nil {
		return nil, err
	}
	return &Client{Client: c, Socket: socket}, nil
}

func (c *Client) vm(ctx context.Context, method string, in any) (*VM, error) {
	var out VMOut
	if err := c.Call(ctx, Interface+"."+method, in, &out); err != nil {
		return nil, err
	}
	return &out.VM, nil
}

// Create makes a VM record.
func (c *Client) Create(ctx context.Context, in CreateIn) (*VM, error) {
	return c.vm(ctx, "Create", in)
}

// Get reads one VM.
func (c *Client) Get(ctx context.Context, ref string) (*VM, error) {
	return c.vm(ctx, "Get", VMRef{VM: ref})
}

// List reads every VM the caller may see.
func (c *Client) List(ctx context.Context) ([]VM, error) {
	var out ListOut
	if err := c.Call(ctx, Interface+".List", nil, &out); err != nil {
		return nil, err
	}
	return out.VMs, nil
}

// Set changes spec fields.
func (c *Client) Set(ctx context.Context, in SetIn) (*VM, error) { return c.vm(ctx, "Set", in) }

// Start starts a VM.
func (c *Client) Start(ctx context.Context, ref string) (*VM, error) {
	return c.vm(ctx, "Start", VMRef{VM: ref})
}

// Stop stops a VM.
func (c *Client) Stop(ctx context.Context, ref string, force bool) (*VM, error) {
	return c.vm(ctx, "Stop", StopIn{VM: ref, Force: force})
}

// Delete removes a VM.
func (c *Client) Delete(ctx context.Context, ref string, force bool) error {
	return c.Call(ctx, Interface+".Delete", StopIn{VM: ref, Force: force}, nil)
}

// Events streams state changes to fn until ctx ends or fn fails.
func (c *Client) Events(ctx context.Context, ref string, fn func(Event) error) error {
	return c.Stream(ctx, Interface+".Events", EventsIn{VM: ref}, func(raw json.RawMessage) error {
		var out EventOut
		if err := json.Unmarshal(raw, &out); err != nil {
			return fmt.Errorf("decode event: %w", err)
		}
		if out.Event.Seq == 0 {
			return nil // the closing reply of a stream ended by the daemon
		}
		return fn(out.Event)
	})
}

// Version asks the daemon's version.
func (c *Client) Version(ctx context.Context) (*VersionOut, error) {
	var out VersionOut
	if err := c.Call(ctx, Interface+".Version", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Info asks the daemon's status.
func (c *Client) Info(ctx context.Context) (*InfoOut, error) {
	var out InfoOut
	if err := c.Call(ctx, Interface+".Info", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func (c *Client) importStream(ctx context.Context, method string, in any, files []*os.File, progress func(ImportProgress)) (*ImportOut, error) {
	var last ImportOut
	err := c.StreamFDs(ctx, Interface+"."+method, in, files, func(raw json.RawMessage) error {
		var out ImportOut
		if err := json.Unmarshal(raw, &out); err != nil {
			return fmt.Errorf("decode %s reply: %w", method, err)
		}
		if out.Progress != nil && progress != nil {
			progress(*out.Progress)
		}
		if out.Image != nil {
			last = out
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if last.Image == nil {
		return nil, fmt.Errorf("%s ended without an image", method)
	}
	return &last, nil
}

// PullImage pulls ref from a registry.
func (c *Client) PullImage(ctx context.Context, in PullIn, progress func(ImportProgress)) (*ImportOut, error) {
	return c.importStream(ctx, "PullImage", in, nil, progress)
}

// ImportImage imports the open file or directory f.
func (c *Client) ImportImage(ctx context.Context, in ImportIn, f *os.File, progress func(ImportProgress)) (*ImportOut, error) {
	return c.importStream(ctx, "ImportImage", in, []*os.File{f}, progress)
}

// ListImages lists the image store.
func (c *Client) ListImages(ctx context.Context) ([]Image, error) {
	var out ImagesOut
	if err := c.Call(ctx, Interface+".ListImages", nil, &out); err != nil {
		return nil, err
	}
	return out.Images, nil
}

// InspectImage reads one image with its config.
func (c *Client) InspectImage(ctx context.Context, ref string) (*InspectImageOut, error) {
	var out InspectImageOut
	if err := c.Call(ctx, Interface+".InspectImage", ImageRef{Image: ref}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RemoveImage removes the caller's hold on one image (with Public, an
// admin removes its public names).
func (c *Client) RemoveImage(ctx context.Context, in RemoveImageIn) ([]string, error) {
	var out RemovedOut
	if err := c.Call(ctx, Interface+".RemoveImage", in, &out); err != nil {
		return nil, err
	}
	return out.Removed, nil
}

// PruneImages removes unused images.
func (c *Client) PruneImages(ctx context.Context) ([]string, error) {
	var out RemovedOut
	if err := c.Call(ctx, Interface+".PruneImages", nil, &out); err != nil {
		return nil, err
	}
	return out.Removed, nil
}

// ImportKernel builds a boot kit from an open kernel file and modules directory.
func (c *Client) ImportKernel(ctx context.Context, in ImportKernelIn, kernel, modules *os.File) (*Kernel, error) {
	var out KernelOut
	if err := c.CallFDs(ctx, Interface+".ImportKernel", in, &out, []*os.File{kernel, modules}); err != nil {
		return nil, err
	}
	return &out.Kernel, nil
}

// ListKernels lists boot kits.
func (c *Client) ListKernels(ctx context.Context) ([]Kernel, error) {
	var out KernelsOut
	if err := c.Call(ctx, Interface+".ListKernels", nil, &out); err != nil {
		return nil, err
	}
	return out.Kernels, nil
}

// RemoveKernel removes a boot kit.
func (c *Client) RemoveKernel(ctx context.Context, name string) error {
	return c.Call(ctx, Interface+".RemoveKernel", NameIn{Name: name}, nil)
}

// Exec runs a command in a VM with the given stdin, stdout and stderr.
func (c *Client) Exec(ctx context.Context, in ExecIn, stdin, stdout, stderr *os.File) (*ExecOut, error) {
	var out ExecOut
	if err := c.CallFDs(ctx, Interface+".Exec", in, &out, []*os.File{stdin, stdout, stderr}); err != nil {
		return nil, err
	}
	return &out, nil
}

// CopyOut has the daemon write a tar stream of in.Path in a running VM
// to out (a pipe's write end), passed by descriptor.
func (c *Client) CopyOut(ctx context.Context, in CopyIn, out *os.File) error {
	return c.CallFDs(ctx, Interface+".CopyOut", in, nil, []*os.File{out})
}

// CopyIn has the daemon unpack the tar stream tar (entries in.Name,
// in.Name/...) for in.Path in a running VM.
func (c *Client) CopyIn(ctx context.Context, in CopyIn, tar *os.File) error {
	return c.CallFDs(ctx, Interface+".CopyIn", in, nil, []*os.File{tar})
}

// PullWorkspace has the daemon write a tar stream of in.Path in a
// workspace to out.
func (c *Client) PullWorkspace(ctx context.Context, in WorkspaceCopyIn, out *os.File) (*WorkspaceCopyOut, error) {
	var o WorkspaceCopyOut
	if err := c.CallFDs(ctx, Interface+".PullWorkspace", in, &o, []*os.File{out}); err != nil {
		return nil, err
	}
	return &o, nil
}

// PushWorkspace has the daemon unpack the tar stream tar for in.Path in a
// workspace.
func (c *Client) PushWorkspace(ctx context.Context, in WorkspaceCopyIn, tar *os.File) (*WorkspaceCopyOut, error) {
	var o WorkspaceCopyOut
	if err := c.CallFDs(ctx, Interface+".PushWorkspace", in, &o, []*os.File{tar}); err != nil {
		return nil, err
	}
	return &o, nil
}

// Logs hands the console log to fn; with follow, until ctx ends.
func (c *Client) Logs(ctx context.Context, in LogsIn, follow bool, fn func(string) error) error {
	decode := func(raw json.RawMessage) error {
		var out LogsOut
		if err := json.Unmarshal(raw, &out); err != nil {
			return err
		}
		return fn(out.Data)
	}
	if !follow {
		var out LogsOut
		if err := c.Call(ctx, Interface+".Logs", in, &out); err != nil {
			return err
		}
		return fn(out.Data)
	}
	return c.Stream(ctx, Interface+".Logs", in, decode)
}

// Console attaches stdin and stdout to a VM's serial console until detach.
func (c *Client) Console(ctx context.Context, vm string, stdin, stdout *os.File) error {
	return c.CallFDs(ctx, Interface+".Console", VMRef{VM: vm}, nil, []*os.File{stdin, stdout})
}

// Stats reads fresh stats of running VMs (ref "" for all); with watch, fn
// gets a new set at every poll until ctx ends.
func (c *Client) Stats(ctx context.Context, in StatsIn, watch bool, fn func([]VMStats) error) error {
	decode := func(raw json.RawMessage) error {
		var out StatsOut
		if err := json.Unmarshal(raw, &out); err != nil {
			return err
		}
		if len(out.Stats) == 0 && watch {
			return nil
		}
		return fn(out.Stats)
	}
	if !watch {
		var out StatsOut
		if err := c.Call(ctx, Interface+".Stats", in, &out); err != nil {
			return err
		}
		return fn(out.Stats)
	}
	return c.Stream(ctx, Interface+".Stats", in, decode)
}

// CreateWorkspace creates a workspace seeded from the tar stream tar (nil:
// empty), passed by descriptor.
func (c *Client) CreateWorkspace(ctx context.Context, in CreateWorkspaceIn, tar *os.File) (*Workspace, error) {
	var files []*os.File
	if tar != nil {
		files = []*os.File{tar}
	}
	var out WorkspaceOut
	if err := c.CallFDs(ctx, Interface+".CreateWorkspace", in, &out, files); err != nil {
		return nil, err
	}
	return &out.Workspace, nil
}

// ListWorkspaces lists the workspaces the caller may see.
func (c *Client) ListWorkspaces(ctx context.Context) ([]Workspace, error) {
	var out WorkspacesOut
	if err := c.Call(ctx, Interface+".ListWorkspaces", nil, &out); err != nil {
		return nil, err
	}
	return out.Workspaces, nil
}

// InspectWorkspace reads one workspace.
func (c *Client) InspectWorkspace(ctx context.Context, ref string) (*Workspace, error) {
	var out WorkspaceOut
	if err := c.Call(ctx, Interface+".InspectWorkspace", WorkspaceRef{Workspace: ref}, &out); err != nil {
		return nil, err
	}
	return &out.Workspace, nil
}

// ExportWorkspace has the daemon write the tree of a workspace as a tar
// stream to out (a pipe's write end or a file), passed by descriptor; it
// returns when the daemon is done.
func (c *Client) ExportWorkspace(ctx context.Context, ref string, out *os.File) (*Workspace, error) {
	var o WorkspaceOut
	if err := c.CallFDs(ctx, Interface+".ExportWorkspace", WorkspaceRef{Workspace: ref}, &o, []*os.File{out}); err != nil {
		return nil, err
	}
	return &o.Workspace, nil
}

// ImportWorkspace replaces the tree of a workspace with the tar stream
// tar, passed by descriptor.
func (c *Client) ImportWorkspace(ctx context.Context, in ImportWorkspaceIn, tar *os.File) (*Workspace, error) {
	var o WorkspaceOut
	if err := c.CallFDs(ctx, Interface+".ImportWorkspace", in, &o, []*os.File{tar}); err != nil {
		return nil, err
	}
	return &o.Workspace, nil
}

// RemoveWorkspace removes one workspace.
func (c *Client) RemoveWorkspace(ctx context.Context, ref string) (*Workspace, error) {
	var out WorkspaceOut
	if err := c.Call(ctx, Interface+".RemoveWorkspace", WorkspaceRef{Workspace: ref}, &out); err != nil {
		return nil, err
	}
	return &out.Workspace, nil
}

// workspaceCall makes one workspace call answered with a Workspace.
func (c *Client) workspaceCall(ctx context.Context, method string, in any) (*Workspace, error) {
	var out WorkspaceOut
	if err := c.Call(ctx, Interface+"."+method, in, &out); err != nil {
		return nil, err
	}
	return &out.Workspace, nil
}

// SnapshotWorkspace freezes a workspace's current state as snapshot.
func (c *Client) SnapshotWorkspace(ctx context.Context, ref, snapshot string) (*Workspace, error) {
	return c.workspaceCall(ctx, "SnapshotWorkspace", WorkspaceSnapshotIn{Workspace: ref, Snapshot: snapshot})
}

// RestoreWorkspace brings a workspace back to its snapshot.
func (c *Client) RestoreWorkspace(ctx context.Context, ref, snapshot string) (*Workspace, error) {
	return c.workspaceCall(ctx, "RestoreWorkspace", WorkspaceSnapshotIn{Workspace: ref, Snapshot: snapshot})
}

// CloneWorkspace makes a new workspace from a snapshot of another (its
// current state when in.Snapshot is empty).
func (c *Client) CloneWorkspace(ctx context.Context, in CloneWorkspaceIn) (*Workspace, error) {
	return c.workspaceCall(ctx, "CloneWorkspace", in)
}

// ResizeWorkspace grows a workspace to size bytes.
func (c *Client) ResizeWorkspace(ctx context.Context, ref string, size int64) (*Workspace, error) {
	return c.workspaceCall(ctx, "ResizeWorkspace", ResizeWorkspaceIn{Workspace: ref, Size: size})
}

// HostShutdown applies the daemon's on_host_shutdown policy (admins).
func (c *Client) HostShutdown(ctx context.Context) (*HostShutdownOut, error) {
	var out HostShutdownOut
	if err := c.Call(ctx, Interface+".HostShutdown", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateTemplate boots an image once and saves it as a template; it
// returns when the template is ready.
func (c *Client) CreateTemplate(ctx context.Context, in CreateTemplateIn) (*Template, error) {
	var out TemplateOut
	if err := c.Call(ctx, Interface+".CreateTemplate", in, &out); err != nil {
		return nil, err
	}
	return &out.Template, nil
}

// ListTemplates lists the caller's templates.
func (c *Client) ListTemplates(ctx context.Context) ([]Template, error) {
	var out TemplatesOut
	if err := c.Call(ctx, Interface+".ListTemplates", nil, &out); err != nil {
		return nil, err
	}
	return out.Templates, nil
}

// RemoveTemplate removes one template.
func (c *Client) RemoveTemplate(ctx context.Context, ref string) (*Template, error) {
	var out TemplateOut
	if err := c.Call(ctx, Interface+".RemoveTemplate", TemplateRef{Template: ref}, &out); err != nil {
		return nil, err
	}
	return &out.Template, nil
}
