package main

import (
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newWorkspaceCommand() *cobra.Command {
	ws := &cobra.Command{Use: "workspace", Aliases: []string{"ws"}, Short: "Manage workspaces: persistent project volumes, independent of VMs (create, ls, inspect, rm, export, import, push, pull, snapshot, restore, clone, resize)"}
	ws.AddCommand(c.newWorkspaceCreateCommand(), c.newWorkspaceLsCommand(), c.newWorkspaceInspectCommand(), c.newWorkspaceRmCommand(),
		c.newWorkspaceExportCommand(), c.newWorkspaceImportCommand(), c.newWorkspacePushCommand(), c.newWorkspacePullCommand(),
		c.newWorkspaceSnapshotCommand(), c.newWorkspaceRestoreCommand(), c.newWorkspaceCloneCommand(), c.newWorkspaceResizeCommand())
	return ws
}

// workspaceFields are what inspect and create show of a workspace.
func workspaceFields(w *api.Workspace) [][2]string {
	return [][2]string{
		{"Name", w.Name}, {"ID", w.ID}, {"Status", w.Status},
		{"Size", humanBytes(w.Size)}, {"Used", humanBytes(w.Used)},
		{"Owner", itoa(w.OwnerUID)}, {"Files", itoa(w.UID) + ":" + itoa(w.GID)},
		{"Source", orDash(w.Source)}, {"Created", w.Created},
		{"Attached to", holdersText(w.Attached)},
		{"Snapshots", snapshotsText(w.Snapshots)},
	}
}

// workspaceFields prints w's fields (the human output of the workspace
// commands answered with one workspace).
func (c *cli) workspaceFields(w *api.Workspace) error {
	fields(c.out, workspaceFields(w))
	return nil
}

// snapshotsText lists a workspace's snapshots.
func snapshotsText(ss []api.WorkspaceSnapshot) string {
	if len(ss) == 0 {
		return "(none)"
	}
	s := make([]string, len(ss))
	for i, sn := range ss {
		s[i] = sn.Name + " (" + humanBytes(sn.Size) + ", " + sn.Created + ")"
	}
	return strings.Join(s, ", ")
}

// holdersText lists the VMs a workspace is attached to.
func holdersText(hs []api.WorkspaceHolder) string {
	if len(hs) == 0 {
		return "(none)"
	}
	s := make([]string, len(hs))
	for i, h := range hs {
		s[i] = h.VM + " (read-write)"
		if h.ReadOnly {
			s[i] = h.VM + " (read-only)"
		}
	}
	return strings.Join(s, ", ")
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }
