package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"time"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/varlink"
)

// The daemon only relays copies: the CLI archives and unpacks host files
// as the caller, the agent guest files, and every byte of a guest's tar
// is checked again by whoever unpacks it.

func (d *Daemon) copyOut(ctx context.Context, c *varlink.Call) error {
	in, r, out, err := d.copyCall(ctx, c, "where the tar stream goes")
	if err != nil {
		return err
	}
	defer out.Close()
	if err := d.archiveFrom(ctx, r, in.VM, agent.ArchiveRequest{Path: in.Path}, out); err != nil {
		return err
	}
	return c.Reply(nil)
}

func (d *Daemon) copyIn(ctx context.Context, c *varlink.Call) error {
	in, r, tar, err := d.copyCall(ctx, c, "the tar stream")
	if err != nil {
		return err
	}
	defer tar.Close()
	if err := d.extractInto(ctx, r, in.VM, in.Path, in.Name, tar); err != nil {
		return err
	}
	return c.Reply(nil)
}

// copyCall is what CopyOut and CopyIn start with: the parameters, the
// VM's agent (another user's VM is not found) and the call's stream.
func (d *Daemon) copyCall(ctx context.Context, c *varlink.Call, what string) (api.CopyIn, *actors.AgentResult, *os.File, error) {
	var in api.CopyIn
	if err := c.Decode(&in); err != nil {
		return in, nil, nil, err
	}
	r, err := d.agent(ctx, c, in.VM)
	if err != nil {
		return in, nil, nil, err
	}
	_, method := varlink.SplitMethod(c.Method)
	f, err := copyStream(c, method, what, in.VM+":"+in.Path)
	if err != nil {
		return in, nil, nil, err
	}
	d.actors.Touch(r.VM.ID, "copy")
	return in, r, f, nil
}

// copyStream is a copy call's one descriptor, made ready for deadlines.
func copyStream(c *varlink.Call, method, what, name string) (*os.File, error) {
	if len(c.FDs) != 1 {
		return nil, &actors.Error{Kind: actors.ErrInvalidArgument, Field: "path", Msg: fmt.Sprintf("%s takes one file descriptor (%s), got %d", method, what, len(c.FDs))}
	}
	return passedStream(c.FDs[0], name, what)
}

// guestPathError is a path the guest could not copy, as the caller's
// mistake (the guest's text is bounded by the agent client).
func guestPathError(vm, p string, err error) error {
	var ge *agent.Error
	if errors.As(err, &ge) {
		err = errors.New(ge.Message)
	}
	return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "path", Msg: fmt.Sprintf("%s:%s: %v", vm, p, err)}
}

// streamEnd waits for a copy stream's exit status and makes a failure
// the caller's error.
func streamEnd(ctx context.Context, p *agent.Process, vm, guestPath string) error {
	st, err := p.Wait(ctx)
	if err != nil {
		return fmt.Errorf("copy %s:%s: %w", vm, guestPath, err)
	}
	if st.Code != 0 || st.Error != "" {
		return guestPathError(vm, guestPath, fmt.Errorf("%s", st))
	}
	return nil
}

// kill ends a stream the call gave up on, a bounded time.
func kill(ctx context.Context, p *agent.Process) {
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = p.Signal(kctx, 9)
}

// archiveFrom relays the guest's tar stream of guestPath to out.
func (d *Daemon) archiveFrom(ctx context.Context, r *actors.AgentResult, vm string, req agent.ArchiveRequest, out *os.File) error {
	guestPath := req.Path
	p, err := r.Agent.Archive(ctx, req)
	if err != nil {
		return guestPathError(vm, guestPath, err)
	}
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(out, p.Stdout())
		copied <- err
	}()
	var cerr error
	select {
	case cerr = <-copied:
	case <-ctx.Done():
		cerr = ctx.Err()
	}
	if cerr != nil {
		kill(ctx, p)
		expire(out)
		select {
		case <-copied:
		case <-time.After(5 * time.Second):
			d.log.Warn("copy: the copy from the guest still runs after the call ended", "vm", r.VM.ID)
		}
		return fmt.Errorf("copy %s:%s: %w", vm, guestPath, cerr)
	}
	return streamEnd(ctx, p, vm, guestPath)
}

// extractInto relays the caller's tar stream to the guest, unpacked for
// guestPath as name.
func (d *Daemon) extractInto(ctx context.Context, r *actors.AgentResult, vm, guestPath, name string, tar *os.File) error {
	p, err := r.Agent.Extract(ctx, agent.ExtractRequest{Path: guestPath, Name: name})
	if err != nil {
		return guestPathError(vm, guestPath, err)
	}
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		// The input ends at EOF; a closed client or an ended stream ends it too.
		_, _ = io.Copy(processWriter{p}, tar)
		_ = p.CloseStdin()
	}()
	err = streamEnd(ctx, p, vm, guestPath)
	if ctx.Err() != nil {
		kill(ctx, p)
	}
	expire(tar)
	select {
	case <-sent:
	case <-time.After(5 * time.Second):
		d.log.Warn("copy: the copy to the guest still runs after the call ended", "vm", r.VM.ID)
	}
	return err
}

// inWorkspace is a path in a workspace as a guest path under its mount.
func inWorkspace(mount, rel string) string {
	return path.Join(mount, path.Clean("/"+rel))
}

// workspaceVM is the running VM a workspace is attached to, for a copy
// through its agent, and where the guest mounts it; nil when detached.
// A push needs a read-write attachment.
func (d *Daemon) workspaceVM(ctx context.Context, c *varlink.Call, w *actors.WorkspaceInfo, push bool) (*actors.AgentResult, string, error) {
	var holder *actors.WorkspaceHolder
	for i, h := range w.Attached {
		if !push || !h.ReadOnly {
			holder = &w.Attached[i]
			break
		}
	}
	if holder == nil {
		if push && len(w.Attached) > 0 {
			return nil, "", &actors.Error{Kind: actors.ErrInvalidState, VM: w.Attached[0].VMName,
				Msg: fmt.Sprintf("workspace %s is attached read-only to VM %s: it cannot be written to now", w.Name, w.Attached[0].VMName)}
		}
		return nil, "", nil
	}
	r, err := d.agent(ctx, c, holder.VMID)
	if err != nil {
		return nil, "", err
	}
	if rt := r.VM.Runtime.Workspaces; rt != nil {
		for _, it := range rt.Items {
			if it.ID == w.ID {
				return r, it.Path, nil
			}
		}
	}
	for _, m := range r.VM.Spec.Workspaces {
		if m.ID == w.ID {
			return r, m.Path, nil
		}
	}
	return nil, "", &actors.Error{Kind: actors.ErrInvalidState, VM: holder.VMName, Msg: fmt.Sprintf("VM %s holds workspace %s but does not say where it mounts it", holder.VMName, w.Name)}
}

func (d *Daemon) pullWorkspace(ctx context.Context, c *varlink.Call) error {
	var in api.WorkspaceCopyIn
	if err := c.Decode(&in); err != nil {
		return err
	}
	caller := d.auth.caller(c.Peer)
	wr, err := d.actors.WorkspaceRequest(ctx, &actors.GetWorkspace{Caller: caller, Ref: in.Workspace})
	if err != nil {
		return err
	}
	out, err := copyStream(c, "PullWorkspace", "where the tar stream goes", in.Workspace+":"+in.Path)
	if err != nil {
		return err
	}
	defer out.Close()
	r, mount, err := d.workspaceVM(ctx, c, wr.Workspace, false)
	if err != nil {
		return err
	}
	if in.Name == "" && path.Clean("/"+in.Path) == "/" {
		in.Name = wr.Workspace.Name // not the mount point's name
	}
	if r == nil {
		// The actor closes out when the export ends (closing it again is harmless).
		w, err := d.actors.ExportWorkspace(ctx, actors.ExportWorkspace{Caller: caller, Ref: in.Workspace, Part: &actors.ExportPart{Path: in.Path, Name: in.Name}, Out: out})
		if err != nil {
			return err
		}
		return c.Reply(api.WorkspaceCopyOut{Workspace: workspaceToAPI(w)})
	}
	d.actors.Touch(r.VM.ID, "copy")
	if err := d.archiveFrom(ctx, r, r.VM.Name, agent.ArchiveRequest{Path: inWorkspace(mount, in.Path), Name: in.Name}, out); err != nil {
		return err
	}
	return c.Reply(api.WorkspaceCopyOut{Workspace: workspaceToAPI(wr.Workspace), VM: r.VM.Name})
}

func (d *Daemon) pushWorkspace(ctx context.Context, c *varlink.Call) error {
	var in api.WorkspaceCopyIn
	if err := c.Decode(&in); err != nil {
		return err
	}
	wr, err := d.actors.WorkspaceRequest(ctx, &actors.GetWorkspace{Caller: d.auth.caller(c.Peer), Ref: in.Workspace})
	if err != nil {
		return err
	}
	tar, err := copyStream(c, "PushWorkspace", "the tar stream", in.Workspace+":"+in.Path)
	if err != nil {
		return err
	}
	defer tar.Close()
	r, mount, err := d.workspaceVM(ctx, c, wr.Workspace, true)
	if err != nil {
		return err
	}
	if r == nil {
		// No VM holds it: the volume is rebuilt with the tree pushed in.
		w, err := d.actors.PushWorkspace(ctx, actors.PushWorkspace{Caller: d.auth.caller(c.Peer), Ref: in.Workspace, Path: in.Path, Name: in.Name, Tar: tar})
		if err != nil {
			return workspaceError(err)
		}
		return c.Reply(api.WorkspaceCopyOut{Workspace: workspaceToAPI(w)})
	}
	d.actors.Touch(r.VM.ID, "copy")
	if err := d.extractInto(ctx, r, r.VM.Name, inWorkspace(mount, in.Path), in.Name, tar); err != nil {
		return err
	}
	return c.Reply(api.WorkspaceCopyOut{Workspace: workspaceToAPI(wr.Workspace), VM: r.VM.Name})
}
