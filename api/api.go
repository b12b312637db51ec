// Package api holds paddock's varlink interface io.paddock.v1: its
// description, the Go shapes of its parameters, and its error names.
package api

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/paddock-vm/paddock/netspec"
)

// Interface is the varlink interface name.
const Interface = "io.paddock.v1"

// Description is the interface description served by
// org.varlink.service.GetInterfaceDescription.
//
//go:embed io.paddock.v1.varlink
var Description string

// Error names.
const (
	ErrVMNotFound        = Interface + ".VMNotFound"
	ErrNameInUse         = Interface + ".NameInUse"
	ErrInvalidArgument   = Interface + ".InvalidArgument"
	ErrInvalidState      = Interface + ".InvalidState"
	ErrPermissionDenied  = Interface + ".PermissionDenied"
	ErrImageNotFound     = Interface + ".ImageNotFound"
	ErrImageInUse        = Interface + ".ImageInUse"
	ErrWorkspaceNotFound = Interface + ".WorkspaceNotFound"
	ErrUnavailable       = Interface + ".Unavailable"
	ErrTimeout           = Interface + ".Timeout"
	ErrInternal          = Interface + ".Internal"
)

// Spec is what the user asked for.
type Spec struct {
	Image       string   `json:"image"`
	ImageDigest string   `json:"image_digest"`
	CPUs        int      `json:"cpus"`
	Memory      int64    `json:"memory"`
	DiskSize    int64    `json:"disk_size"`
	AutoStop    string   `json:"auto_stop"`
	Env         []string `json:"env"`
	// Kernel is the boot kit asked for; "" is the daemon's default.
	Kernel string `json:"kernel"`
	// Entrypoint, Cmd, Workdir and User override the image's when set.
	Entrypoint *[]string `json:"entrypoint,omitempty"`
	Cmd        []string  `json:"cmd,omitempty"`
	Workdir    string    `json:"workdir,omitempty"`
	User       string    `json:"user,omitempty"`
	// Ports are the guest ports published on the host.
	Ports []PortMapping `json:"ports"`
	// Network is bridge, user, shared:GROUP, or "" for the daemon's default.
	Network string `json:"network"`
	// Workspaces are attached at every start.
	Workspaces []WorkspaceMount `json:"workspaces"`
}

// WorkspaceMount is a workspace a VM attaches: the caller's own, by name
// (or id), mounted at Path ("/workspace" when empty), read-only or not.
type WorkspaceMount struct {
	Workspace string `json:"workspace"`
	Path      string `json:"path,omitempty"`
	ReadOnly  bool   `json:"read_only,omitempty"`
}

// WorkspaceHolder is a VM a workspace is attached to.
type WorkspaceHolder struct {
	VMID     string `json:"vm_id"`
	VM       string `json:"vm"`
	ReadOnly bool   `json:"read_only"`
}

// PortMapping publishes guest_port on the host's host_ip:host_port/proto;
// host_ip "" is every address of the host.
type PortMapping struct {
	HostIP    string `json:"host_ip"`
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
	Proto     string `json:"proto"`
}

// Network is how a VM is networked: its mode (bridge, user, shared:GROUP,
// or none), address, gateway and nameservers.
type Network struct {
	Mode    string   `json:"mode"`
	IP      string   `json:"ip,omitempty"`
	Gateway string   `json:"gateway,omitempty"`
	DNS     []string `json:"dns"`
}

// RunIn is what Create and Set take about how a VM boots and what its main
// process is; nil leaves a field as it is (the image's, on create).
type RunIn struct {
	Kernel     *string   `json:"kernel,omitempty"`
	Entrypoint *[]string `json:"entrypoint,omitempty"`
	Cmd        *[]string `json:"cmd,omitempty"`
	Workdir    *string   `json:"workdir,omitempty"`
	User       *string   `json:"user,omitempty"`
	// Workspaces replace the VM's workspaces ([] detaches them all).
	Workspaces *[]WorkspaceMount `json:"workspaces,omitempty"`
}

// VM is the API view of a VM record.
type VM struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	OwnerUID uint32 `json:"owner_uid"`
	Status   string `json:"status"`
	Reason   string `json:"reason,omitempty"`
	IP       string `json:"ip,omitempty"`
	// Network is the network the VM is on; nil from a daemon that does not
	// report it.
	Network   *Network `json:"network,omitempty"`
	Spec      Spec     `json:"spec"`
	CreatedAt string   `json:"created_at"`
	UpdatedAt string   `json:"updated_at"`
	// LastBoot is where the last successful start spent its time.
	LastBoot *BootReport `json:"last_boot,omitempty"`
}

// BootReport is where a start spent its time: paddock's steps (record,
// prepare, tap, rules, passt, disk, workspaces, vmm, agent: the VMM's
// launch to the agent's hello) and the guest's phases as its agent reports
// them (its kernel first).
type BootReport struct {
	Steps []BootPhase `json:"steps"`
	Guest []BootPhase `json:"guest,omitempty"`
	// GuestReadyMS is when the agent was ready, on the guest's boot clock.
	GuestReadyMS float64 `json:"guest_ready_ms,omitempty"`
	// Resumed names the template the start resumed (no guest boot).
	Resumed string `json:"resumed,omitempty"`
}

// BootPhase is one named span of a start, in milliseconds.
type BootPhase struct {
	Name string  `json:"name"`
	MS   float64 `json:"ms"`
}

// EventKind says what an Event reports; its value is the wire string.
type EventKind string

// Event kinds, as the interface description lists them.
const (
	EventCreated     EventKind = "created"
	EventStatus      EventKind = "status"  // Status is the new status, PreviousStatus the old one
	EventUpdated     EventKind = "updated" // the spec changed
	EventDeleted     EventKind = "deleted"
	EventHealth      EventKind = "health" // Status is healthy, degraded or unreachable
	EventAutoStopped EventKind = "auto-stopped"
	// EventWorkspaceCreated and EventWorkspaceRemoved report a workspace
	// (Workspace, WorkspaceID; no VM).
	EventWorkspaceCreated EventKind = "workspace-created"
	EventWorkspaceRemoved EventKind = "workspace-removed"
)

// EventKinds lists every kind, in the order the description names them.
var EventKinds = []EventKind{EventCreated, EventStatus, EventUpdated, EventDeleted, EventHealth, EventAutoStopped, EventWorkspaceCreated, EventWorkspaceRemoved}

// Event is one state change.
type Event struct {
	Seq            uint64    `json:"seq"`
	Time           string    `json:"time"`
	Kind           EventKind `json:"kind"`
	VMID           string    `json:"vm_id"`
	VMName         string    `json:"vm_name"`
	Status         string    `json:"status"`
	PreviousStatus string    `json:"previous_status,omitempty"`
	Reason         string    `json:"reason,omitempty"`
	Workspace      string    `json:"workspace,omitempty"`
	WorkspaceID    string    `json:"workspace_id,omitempty"`
}

// Counts tallies VMs by status.
type Counts struct {
	Total   int `json:"total"`
	Created int `json:"created"`
	Running int `json:"running"`
	Stopped int `json:"stopped"`
	Error   int `json:"error"`
	Other   int `json:"other"`
}

// CreateIn are Create's parameters.
type CreateIn struct {
	Name     string   `json:"name"`
	Image    string   `json:"image"`
	CPUs     *int     `json:"cpus,omitempty"`
	Memory   *int64   `json:"memory,omitempty"`
	DiskSize *int64   `json:"disk_size,omitempty"`
	AutoStop *string  `json:"auto_stop,omitempty"`
	Env      []string `json:"env,omitempty"`
	// Template names the caller's template the VM resumes at its first
	// start (image, CPUs, memory, disk size and network come from it).
	Template string `json:"template,omitempty"`
	RunIn
	NetIn
}

// NetIn is what Create and Set take about a VM's network; nil leaves a
// field as it is (none published, the daemon's default network, on
// create).
type NetIn struct {
	Ports   *[]PortMapping `json:"ports,omitempty"`
	Network *string        `json:"network,omitempty"`
}

// VMRef names one VM.
type VMRef struct {
	VM string `json:"vm"`
}

// SetIn are Set's parameters.
type SetIn struct {
	VM       string  `json:"vm"`
	CPUs     *int    `json:"cpus,omitempty"`
	Memory   *int64  `json:"memory,omitempty"`
	DiskSize *int64  `json:"disk_size,omitempty"`
	AutoStop *string `json:"auto_stop,omitempty"`
	RunIn
	NetIn
	// Reset returns fields to the image's (entrypoint, cmd, workdir,
	// user), the default kit (kernel), the default network (network) or
	// none (ports).
	Reset []string `json:"reset,omitempty"`
}

// StopIn are Stop's and Delete's parameters.
type StopIn struct {
	VM    string `json:"vm"`
	Force bool   `json:"force,omitempty"`
}

// EventsIn are Events' parameters.
type EventsIn struct {
	VM string `json:"vm,omitempty"`
}

// VMOut is the reply of the methods that return one VM.
type VMOut struct {
	VM VM `json:"vm"`
}

// ListOut is List's reply.
type ListOut struct {
	VMs []VM `json:"vms"`
}

// EventOut is one Events reply.
type EventOut struct {
	Event Event `json:"event"`
}

// VersionOut is Version's reply.
type VersionOut struct {
	Version   string `json:"version"`
	API       string `json:"api"`
	GoVersion string `json:"go_version"`
}

// InfoOut is Info's reply.
type InfoOut struct {
	Version    string  `json:"version"`
	Uptime     float64 `json:"uptime_seconds"`
	VMs        Counts  `json:"vms"`
	StateDir   string  `json:"state_dir"`
	RuntimeDir string  `json:"runtime_dir"`
	Socket     string  `json:"socket"`
	// Cgroup is the cgroup VMMs get cgroups of their own in, with the
	// controllers it lacks, or "none: <why>".
	Cgroup string `json:"cgroup"`
	// Launcher is what starts the VMMs: "paddock-guests.service (pid N)"
	// (the VMM launcher, whose cgroup holds them), or "in-process".
	Launcher string `json:"launcher"`
	Health   Health `json:"health"`
	// Problems name what keeps the daemon from being healthy, each with
	// its config key and the fix.
	Problems []string `json:"problems"`
}

// Health is the daemon's own health, as Info reports it.
type Health string

// Daemon health values.
const (
	HealthOK       Health = "ok"
	HealthDegraded Health = "degraded" // VMs cannot run as configured: see Problems
)

// Image is an image in the store.
//
// Names are the caller's: its own names for the image, then the public
// names its own do not shadow. Public lists the image's public names.
// Owners are the uids that hold it: the caller's own only, unless the
// caller is an admin.
type Image struct {
	Digest  string   `json:"digest"`
	Names   []string `json:"names"`
	Public  []string `json:"public"`
	Size    int64    `json:"size"`
	Created string   `json:"created"`
	Owners  []uint32 `json:"owners"`
}

// ImportProgress reports an import's advance. Text in it comes from the
// image's source: escape it before it reaches a terminal.
type ImportProgress struct {
	Phase      string `json:"phase"`
	Layer      int    `json:"layer"`
	Layers     int    `json:"layers"`
	Digest     string `json:"digest,omitempty"`
	LayerBytes int64  `json:"layer_bytes,omitempty"`
	LayerSize  int64  `json:"layer_size,omitempty"`
	Bytes      int64  `json:"bytes"`
	Total      int64  `json:"total"`
	Built      int64  `json:"built,omitempty"`
	BuildSize  int64  `json:"build_size,omitempty"`
}

// PullIn are PullImage's parameters.
type PullIn struct {
	Ref      string        `json:"ref"`
	Insecure bool          `json:"insecure,omitempty"`
	Auth     *RegistryAuth `json:"auth,omitempty"`
	// Public publishes the image's names to every user (admins only).
	Public bool `json:"public,omitempty"`
}

// RegistryAuth is a caller's credentials for the registry of one pull, as
// the client read them from the caller's own docker config. The daemon
// uses them for that pull only: never stored, never logged.
type RegistryAuth struct {
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	Auth          string `json:"auth,omitempty"`
	IdentityToken string `json:"identity_token,omitempty"`
	RegistryToken string `json:"registry_token,omitempty"`
}

// String keeps credentials out of anything that prints a request.
func (RegistryAuth) String() string { return "[credentials]" }

// GoString is String for %#v.
func (a RegistryAuth) GoString() string { return a.String() }

// LogValue is String for slog.
func (a RegistryAuth) LogValue() slog.Value { return slog.StringValue(a.String()) }

// ImportIn are ImportImage's parameters.
type ImportIn struct {
	Source string          `json:"source"`
	Select string          `json:"select,omitempty"`
	Name   string          `json:"name,omitempty"`
	Config json.RawMessage `json:"config,omitempty"`
	// Public publishes the image's names to every user (admins only).
	Public bool `json:"public,omitempty"`
}

// ImportOut is one reply of PullImage or ImportImage.
type ImportOut struct {
	Progress *ImportProgress `json:"progress,omitempty"`
	Image    *Image          `json:"image,omitempty"`
	Cached   bool            `json:"cached,omitempty"`
}

// ImageRef names one image.
type ImageRef struct {
	Image string `json:"image"`
}

// RemoveImageIn are RemoveImage's parameters.
type RemoveImageIn struct {
	Image string `json:"image"`
	Force bool   `json:"force,omitempty"`
	// Public removes the image's public names (admins only) rather than
	// the caller's own hold.
	Public bool `json:"public,omitempty"`
}

// ImagesOut is ListImages' reply.
type ImagesOut struct {
	Images []Image `json:"images"`
}

// InspectImageOut is InspectImage's reply.
type InspectImageOut struct {
	Image  Image           `json:"image"`
	Config json.RawMessage `json:"config"`
	UsedBy []string        `json:"used_by"`
}

// RemovedOut is RemoveImage's and PruneImages' reply.
type RemovedOut struct {
	Removed []string `json:"removed"`
}

// Kernel is a boot kit.
type Kernel struct {
	Name    string `json:"name"`
	Release string `json:"release"`
	Created string `json:"created"`
	Modules int    `json:"modules"`
	Default bool   `json:"default"`
}

// ImportKernelIn are ImportKernel's parameters.
type ImportKernelIn struct {
	Name    string `json:"name,omitempty"`
	Kernel  string `json:"kernel"`
	Modules string `json:"modules"`
}

// KernelOut is ImportKernel's reply.
type KernelOut struct {
	Kernel Kernel `json:"kernel"`
}

// KernelsOut is ListKernels' reply.
type KernelsOut struct {
	Kernels []Kernel `json:"kernels"`
}

// NameIn names one thing.
type NameIn struct {
	Name string `json:"name"`
}

// ExecIn are Exec's parameters.
type ExecIn struct {
	VM      string   `json:"vm"`
	Command []string `json:"command"`
	Env     []string `json:"env,omitempty"`
	Workdir string   `json:"workdir,omitempty"`
	User    string   `json:"user,omitempty"`
	TTY     bool     `json:"tty,omitempty"`
	Rows    int      `json:"rows,omitempty"`
	Cols    int      `json:"cols,omitempty"`
}

// ExecOut is Exec's reply.
type ExecOut struct {
	ExitCode int `json:"exit_code"`
	Signal   int `json:"signal"`
}

// CopyIn are CopyOut's and CopyIn's parameters (see the interface):
// the tar stream is the call's one file descriptor.
type CopyIn struct {
	VM   string `json:"vm"`
	Path string `json:"path"`
	// Name is the copy's name in the stream (CopyIn only).
	Name string `json:"name,omitempty"`
}

// WorkspaceCopyIn are PullWorkspace's and PushWorkspace's parameters.
type WorkspaceCopyIn struct {
	Workspace string `json:"workspace"`
	// Path is relative to the workspace's root ("" or "." for it).
	Path string `json:"path,omitempty"`
	// Name is the copy's name in the stream: the top entry's (PushWorkspace),
	// or the one asked for (PullWorkspace; default path's last element).
	Name string `json:"name,omitempty"`
}

// WorkspaceCopyOut answers PullWorkspace and PushWorkspace.
type WorkspaceCopyOut struct {
	Workspace Workspace `json:"workspace"`
	// VM is the VM the copy went through, empty when offline.
	VM string `json:"vm,omitempty"`
}

// LogsIn are Logs' parameters.
type LogsIn struct {
	VM   string `json:"vm"`
	Tail int    `json:"tail,omitempty"`
}

// LogsOut is one Logs reply.
type LogsOut struct {
	Data string `json:"data"`
}

// HostStats are a VM's figures seen from the host.
type HostStats struct {
	CPUSeconds float64 `json:"cpu_seconds"`
	CPURate    float64 `json:"cpu_rate"` // CPUs' worth of VMM CPU time per second
	RSS        int64   `json:"rss"`
	DiskUsed   int64   `json:"disk_used"` // bytes the VM's own disk layer takes
	RxBytes    int64   `json:"rx_bytes"`
	TxBytes    int64   `json:"tx_bytes"`
	RxPackets  int64   `json:"rx_packets"`
	TxPackets  int64   `json:"tx_packets"`
}

// GuestStats are a VM's figures as its agent reports them.
type GuestStats struct {
	MemTotal     int64   `json:"mem_total"`
	MemAvailable int64   `json:"mem_available"`
	Load1        float64 `json:"load1"`
	CPURate      float64 `json:"cpu_rate"` // busy share of the guest's CPUs, 0..1
	Uptime       float64 `json:"uptime_seconds"`
	RootUsed     int64   `json:"root_used"`
	RootFree     int64   `json:"root_free"`
	Procs        int     `json:"procs"`
	Inbound      int     `json:"inbound"`  // established inbound TCP connections
	Sessions     int     `json:"sessions"` // open exec sessions
	// Workspaces are the attached workspaces' figures in the guest's file
	// systems, in the VM's order.
	Workspaces []WorkspaceUse `json:"workspaces,omitempty"`
}

// WorkspaceUse is one attached workspace's space as the guest sees it.
type WorkspaceUse struct {
	Name string `json:"name"`
	Path string `json:"path"`
	Used int64  `json:"used"`
	Free int64  `json:"free"`
}

// Port is a listening TCP port of a guest, probed from outside.
type Port struct {
	Proto   string `json:"proto"`
	Port    int    `json:"port"`
	PID     int    `json:"pid,omitempty"`
	Process string `json:"process,omitempty"`
	Scheme  string `json:"scheme"` // https, http or tcp
	URL     string `json:"url,omitempty"`
}

// VMStats is what paddock knows about a running VM.
type VMStats struct {
	VMID          string      `json:"vm_id"`
	VMName        string      `json:"vm_name"`
	Time          string      `json:"time"`
	Health        string      `json:"health"` // healthy, degraded, unreachable
	HealthReason  string      `json:"health_reason,omitempty"`
	PingMS        float64     `json:"ping_ms,omitempty"`
	ClockSkewMS   float64     `json:"clock_skew_ms"`
	RootWritable  *bool       `json:"root_writable,omitempty"`
	Main          string      `json:"main,omitempty"`
	MainExit      string      `json:"main_exit,omitempty"`
	Host          HostStats   `json:"host"`
	Guest         *GuestStats `json:"guest,omitempty"`
	Ports         []Port      `json:"ports,omitempty"`
	LastActivity  string      `json:"last_activity,omitempty"`
	ActivityCause string      `json:"activity_cause,omitempty"`
	AutoStopAt    string      `json:"auto_stop_at,omitempty"`
}

// StatsIn are Stats' parameters.
type StatsIn struct {
	VM      string `json:"vm,omitempty"`
	Passive bool   `json:"passive,omitempty"`
}

// StatsOut is a Stats reply.
type StatsOut struct {
	Stats []VMStats `json:"stats"`
}

// PortOf is m on the wire.
func PortOf(m netspec.PortMapping) PortMapping {
	p := PortMapping{HostPort: int(m.HostPort), GuestPort: int(m.GuestPort), Proto: m.Proto}
	if m.HostIP.IsValid() {
		p.HostIP = m.HostIP.String()
	}
	return p
}

// Mapping reads p off the wire; netspec.Validate checks the rest. The
// error names the mapping.
func (p PortMapping) Mapping() (netspec.PortMapping, error) {
	m := netspec.PortMapping{Proto: p.Proto}
	bad := func(what string) error {
		return fmt.Errorf("port mapping %s:%d:%d/%s: %s", orAll(p.HostIP), p.HostPort, p.GuestPort, p.Proto, what)
	}
	if p.HostIP != "" {
		a, err := netip.ParseAddr(p.HostIP)
		if err != nil {
			return m, bad(fmt.Sprintf("host_ip %q is not an IP address", p.HostIP))
		}
		if !a.IsUnspecified() || !a.Is4() {
			m.HostIP = a
		}
	}
	if p.HostPort < 1 || p.HostPort > 65535 {
		return m, bad(fmt.Sprintf("host_port %d is out of range (1-65535)", p.HostPort))
	}
	if p.GuestPort < 1 || p.GuestPort > 65535 {
		return m, bad(fmt.Sprintf("guest_port %d is out of range (1-65535)", p.GuestPort))
	}
	m.HostPort, m.GuestPort = uint16(p.HostPort), uint16(p.GuestPort)
	return m, nil
}

func orAll(ip string) string {
	if ip == "" {
		return "0.0.0.0"
	}
	return ip
}

// Workspace is a workspace as its caller sees it.
type Workspace struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	OwnerUID uint32 `json:"owner_uid"`
	Status   string `json:"status"`
	Size     int64  `json:"size"`
	Used     int64  `json:"used"`
	UID      uint32 `json:"uid"`
	GID      uint32 `json:"gid"`
	Source   string `json:"source"`
	Created  string `json:"created"`
	// Attached are the VMs it is attached to (starting, running or
	// stopping).
	Attached []WorkspaceHolder `json:"attached"`
	// Snapshots are its snapshots, oldest first.
	Snapshots []WorkspaceSnapshot `json:"snapshots"`
}

// WorkspaceSnapshot is a frozen state of a workspace.
type WorkspaceSnapshot struct {
	Name    string `json:"name"`
	Size    int64  `json:"size"`
	Created string `json:"created"`
}

// WorkspaceSnapshotIn names a workspace and one of its snapshots
// (SnapshotWorkspace, RestoreWorkspace).
type WorkspaceSnapshotIn struct {
	Workspace string `json:"workspace"`
	Snapshot  string `json:"snapshot"`
}

// CloneWorkspaceIn are CloneWorkspace's parameters.
type CloneWorkspaceIn struct {
	Workspace string `json:"workspace"`
	Name      string `json:"name"`
	Snapshot  string `json:"snapshot,omitempty"`
}

// ResizeWorkspaceIn are ResizeWorkspace's parameters.
type ResizeWorkspaceIn struct {
	Workspace string `json:"workspace"`
	Size      int64  `json:"size"`
}

// CreateWorkspaceIn are CreateWorkspace's parameters; the tar stream, if
// any, is the call's one file descriptor.
type CreateWorkspaceIn struct {
	Name   string  `json:"name"`
	Size   *int64  `json:"size,omitempty"`
	UID    *uint32 `json:"uid,omitempty"`
	GID    *uint32 `json:"gid,omitempty"`
	Source string  `json:"source,omitempty"`
}

// WorkspaceRef names one workspace.
type WorkspaceRef struct {
	Workspace string `json:"workspace"`
}

// ImportWorkspaceIn are ImportWorkspace's parameters; the tar stream is the
// call's one file descriptor.
type ImportWorkspaceIn struct {
	Workspace string `json:"workspace"`
	Source    string `json:"source,omitempty"`
}

// WorkspaceOut answers CreateWorkspace, InspectWorkspace, RemoveWorkspace,
// ExportWorkspace and ImportWorkspace.
type WorkspaceOut struct {
	Workspace Workspace `json:"workspace"`
}

// Template is a template snapshot as its caller sees it.
type Template struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	OwnerUID uint32 `json:"owner_uid"`
	Image    string `json:"image"`
	CPUs     int    `json:"cpus"`
	Memory   int64  `json:"memory"`
	DiskSize int64  `json:"disk_size"`
	Network  string `json:"network,omitempty"`
	// StateBytes is the saved state with the guest memory saved apart
	// (its size: a sparse file whose unused pages take no disk).
	StateBytes int64   `json:"state_bytes"`
	SaveMS     float64 `json:"save_ms"`
	Created    string  `json:"created"`
}

// CreateTemplateIn are CreateTemplate's parameters.
type CreateTemplateIn struct {
	Name     string  `json:"name"`
	Image    string  `json:"image"`
	CPUs     *int    `json:"cpus,omitempty"`
	Memory   *int64  `json:"memory,omitempty"`
	DiskSize *int64  `json:"disk_size,omitempty"`
	Network  *string `json:"network,omitempty"`
	Kernel   *string `json:"kernel,omitempty"`
}

// TemplateRef names one template.
type TemplateRef struct {
	Template string `json:"template"`
}

// TemplateOut answers CreateTemplate and RemoveTemplate.
type TemplateOut struct {
	Template Template `json:"template"`
}

// TemplatesOut answers ListTemplates.
type TemplatesOut struct {
	Templates []Template `json:"templates"`
}

// WorkspacesOut answers ListWorkspaces.
type WorkspacesOut struct {
	Workspaces []Workspace `json:"workspaces"`
}

// HostShutdownOut is HostShutdown's reply: the VMs it stopped, those that
// did not stop cleanly (killed), and how many it left running ("keep").
type HostShutdownOut struct {
	Policy  string   `json:"policy"`
	Stopped []string `json:"stopped"`
	Failed  []string `json:"failed,omitempty"`
	Kept    int      `json:"kept"`
}
