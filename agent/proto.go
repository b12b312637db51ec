// Package agent is paddock's host↔guest agent protocol: the framing and
// messages, the host-side Client (which treats every byte from the guest as
// untrusted), the guest-side Server that paddock-agent runs as PID 1, and the
// transports (virtio-serial ports, AF_VSOCK, Firecracker's hybrid vsock).
//
// # Wire format
//
// A frame is a 4-byte big-endian length N followed by N bytes of JSON
// encoding one Message; both sides refuse frames over their limit
// (DefaultMaxFrame). Message.T says what a message is:
//
//	req   host→guest request {id, op, b}; ops: hello ping health stats ports exec archive extract signal resize shutdown freeze thaw identity
//	res   guest→host response {id, b} or {id, err}
//	in    host→guest stdin data of exec stream s {s, d} or end of input {s, eof}
//	out   guest→host output of stream s {s, fd (1|2), d} or end of that fd {s, fd, eof}
//	exit  guest→host exit status of stream s {s, b: ExitStatus}; the last message of a stream
//	win   flow-control credit {s, fd, n}: the receiver of in/out data grants n more bytes
//
// The first request on a connection must be hello, which carries
// ProtocolVersion both ways; a guest with another major version is refused.
// archive and extract open a stream as exec does, run by the agent itself
// rather than a process: archive's output (fd 1) is a tar stream of a guest
// path, extract's input a tar stream it unpacks; the exit message says how
// it ended (ExitStatus.Error).
// Exec streams are numbered by the host (s > 0) and multiplexed on one
// connection; each direction of each stream has a window of StreamWindow
// bytes that the sender must not exceed, so both sides' buffering is bounded.
package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// ProtocolVersion is the protocol's major version; hello exchanges it.
const ProtocolVersion = 1

// StreamWindow is the initial flow-control credit per stream direction.
const StreamWindow = 256 << 10

// Message types.
const (
	TypeRequest  = "req"
	TypeResponse = "res"
	TypeInput    = "in"
	TypeOutput   = "out"
	TypeExit     = "exit"
	TypeWindow   = "win"
)

// Operations.
const (
	OpHello    = "hello"
	OpPing     = "ping"
	OpHealth   = "health"
	OpStats    = "stats"
	OpPorts    = "ports"
	OpExec     = "exec"
	OpArchive  = "archive"
	OpExtract  = "extract"
	OpSignal   = "signal"
	OpResize   = "resize"
	OpShutdown = "shutdown"
	OpFreeze   = "freeze"
	OpThaw     = "thaw"
	OpIdentity = "identity"
)

// Message is the one envelope of the protocol (see the package doc).
type Message struct {
	T      string          `json:"t"`
	ID     uint64          `json:"id,omitempty"`
	Op     string          `json:"op,omitempty"`
	Stream uint32          `json:"s,omitempty"`
	Fd     int             `json:"fd,omitempty"`
	Data   []byte          `json:"d,omitempty"`
	EOF    bool            `json:"eof,omitempty"`
	N      int             `json:"n,omitempty"`
	Body   json.RawMessage `json:"b,omitempty"`
	Err    *Error          `json:"err,omitempty"`
}

func (m *Message) validate() error {
	switch m.T {
	case TypeRequest:
		if m.ID == 0 || m.Op == "" {
			return errors.New("request without id or op")
		}
	case TypeResponse:
		if m.ID == 0 {
			return errors.New("response without id")
		}
	case TypeInput, TypeOutput, TypeExit, TypeWindow:
		if m.Stream == 0 {
			return fmt.Errorf("%s message without stream id", m.T)
		}
		if len(m.Data) > MaxChunk {
			return fmt.Errorf("data chunk of %d bytes exceeds %d", len(m.Data), MaxChunk)
		}
		if m.T == TypeOutput && m.Fd != 1 && m.Fd != 2 {
			return fmt.Errorf("output on fd %d", m.Fd)
		}
		if m.T == TypeWindow && (m.N <= 0 || m.N > StreamWindow) {
			return fmt.Errorf("window credit %d out of range", m.N)
		}
	default:
		return fmt.Errorf("unknown message type %q", truncate([]byte(m.T), 16))
	}
	return nil
}

// Error is an error reported by the other side.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes.
const (
	CodeBadRequest = "bad_request"
	CodeUnknownOp  = "unknown_op"
	CodeNotFound   = "not_found"
	CodeFailed     = "failed"
	CodeVersion    = "version"
	CodeBusy       = "busy"
)

func (e *Error) Error() string { return "agent: guest error " + e.Code + ": " + e.Message }

// HelloRequest is the body of the hello request.
type HelloRequest struct {
	Protocol int    `json:"protocol"`
	Client   string `json:"client,omitempty"`
}

// Phase is one step of the guest's boot, in guest CLOCK_BOOTTIME.
type Phase struct {
	Name string `json:"name"`
	// StartNS and EndNS are nanoseconds since the guest kernel started.
	StartNS int64  `json:"start_ns"`
	EndNS   int64  `json:"end_ns"`
	Error   string `json:"error,omitempty"`
}

// Duration of the phase in nanoseconds.
func (p Phase) Duration() int64 { return p.EndNS - p.StartNS }

// HelloInfo is the guest's answer to hello.
type HelloInfo struct {
	Protocol     int     `json:"protocol"`
	AgentVersion string  `json:"agent_version"`
	Kit          string  `json:"kit,omitempty"`
	Kernel       string  `json:"kernel,omitempty"`
	Hostname     string  `json:"hostname,omitempty"`
	Phases       []Phase `json:"phases,omitempty"`
	// ReadyNS is when the agent became ready, in guest CLOCK_BOOTTIME ns.
	ReadyNS int64 `json:"ready_ns"`
	// UptimeNS is the guest's CLOCK_BOOTTIME when it answered.
	UptimeNS int64 `json:"uptime_ns"`
	// BootError is set when the boot did not complete (e.g. no root disk).
	BootError string `json:"boot_error,omitempty"`
	// Idle is the guest's idle time when the agent started and when it was
	// ready; only in a boot with paddock.debug (it costs a read of
	// /proc/timer_list each). Under QEMU's -icount, where the guest clock
	// counts instructions, the boot's busy time is its instructions.
	Idle *Idle `json:"idle,omitempty"`
}

// Idle is the guest's idle time, all CPUs, waits on I/O included, in ns.
type Idle struct {
	StartNS int64 `json:"start_ns"`
	ReadyNS int64 `json:"ready_ns"`
}

// Pong answers ping.
type Pong struct {
	UptimeNS int64 `json:"uptime_ns"`
}

// MainState describes the image's main process (entrypoint + cmd).
type MainState struct {
	// State is "none" (no entrypoint), "running", "restarting" or "exited".
	State    string      `json:"state"`
	PID      int         `json:"pid,omitempty"`
	Restarts int         `json:"restarts"`
	LastExit *ExitStatus `json:"last_exit,omitempty"`
	Argv     []string    `json:"argv,omitempty"`
}

// Health answers health.
type Health struct {
	// Status is "ok", "degraded" (boot error or main process down) or "stopping".
	Status    string    `json:"status"`
	BootError string    `json:"boot_error,omitempty"`
	Main      MainState `json:"main"`
	UptimeNS  int64     `json:"uptime_ns"`
	Sessions  int       `json:"sessions"`
	// TimeNS is the guest's wall clock (Unix ns) when it answered, for the
	// host to measure clock skew.
	TimeNS int64 `json:"time_ns"`
	// RootWritable: "/" is mounted read-write and not full.
	RootWritable bool `json:"root_writable"`
}

// Stats answers stats.
type Stats struct {
	UptimeNS     int64   `json:"uptime_ns"`
	Load1        float64 `json:"load1"`
	Load5        float64 `json:"load5"`
	Load15       float64 `json:"load15"`
	MemTotal     uint64  `json:"mem_total"`
	MemAvailable uint64  `json:"mem_available"`
	// CPU times in USER_HZ ticks (user, nice, system, idle, iowait, irq, softirq, steal).
	CPU       []uint64   `json:"cpu"`
	Procs     int        `json:"procs"`
	DiskTotal uint64     `json:"disk_total"`
	DiskFree  uint64     `json:"disk_free"`
	Net       []NetStats `json:"net,omitempty"`
	// Inbound counts established TCP connections to a listening port of
	// the guest (what keeps a VM busy for auto-stop).
	Inbound int `json:"inbound"`
	// Mounts are the file systems the agent mounted for the VM (its
	// workspaces), at most MaxMountStats.
	Mounts []MountStats `json:"mounts,omitempty"`
}

// MountStats are one mounted volume's size and free bytes.
type MountStats struct {
	Path  string `json:"path"`
	Total uint64 `json:"total"`
	Free  uint64 `json:"free"`
}

// MaxMountStats bounds Stats.Mounts (a VM has few workspaces; a guest
// that reports more is lying).
const MaxMountStats = 16

// NetStats are one interface's counters.
type NetStats struct {
	Name      string `json:"name"`
	RxBytes   uint64 `json:"rx_bytes"`
	TxBytes   uint64 `json:"tx_bytes"`
	RxPackets uint64 `json:"rx_packets"`
	TxPackets uint64 `json:"tx_packets"`
}

// Port is a listening socket in the guest.
type Port struct {
	Proto   string `json:"proto"` // tcp, tcp6, udp, udp6
	Addr    string `json:"addr"`
	Port    int    `json:"port"`
	PID     int    `json:"pid,omitempty"`
	Command string `json:"command,omitempty"`
}

// PortsReply answers ports.
type PortsReply struct {
	Ports []Port `json:"ports"`
}

// ExecRequest starts a process in the guest.
type ExecRequest struct {
	Argv []string `json:"argv"`
	// Env entries KEY=VALUE; when empty the image's environment is used.
	Env []string `json:"env,omitempty"`
	Dir string   `json:"dir,omitempty"`
	// User is "uid[:gid]" or "name[:group]" as in an OCI config; default root.
	User string `json:"user,omitempty"`
	// TTY runs the process on a pseudo-terminal (stdout only; fd 2 unused).
	TTY  bool `json:"tty,omitempty"`
	Rows int  `json:"rows,omitempty"`
	Cols int  `json:"cols,omitempty"`
	// Stdin: when false the process gets /dev/null as stdin.
	Stdin bool `json:"stdin,omitempty"`
}

// ExecReply answers exec.
type ExecReply struct {
	PID int `json:"pid"`
}

// ExitStatus is how a process ended.
type ExitStatus struct {
	// Code is the exit code, or -1 when killed by a signal.
	Code int `json:"code"`
	// Signal is the number of the signal that killed it (0 if none).
	Signal int `json:"signal,omitempty"`
	// Error says why an archive or extract stream failed (Code 1).
	Error string `json:"error,omitempty"`
}

func (e ExitStatus) String() string {
	if e.Error != "" {
		return e.Error
	}
	if e.Signal != 0 {
		return fmt.Sprintf("killed by signal %d", e.Signal)
	}
	return fmt.Sprintf("exit code %d", e.Code)
}

// ArchiveRequest asks for a tar stream of Path (absolute, in the guest):
// a file, a symbolic link (never followed) or a directory with everything
// under it, its entries named Name (default Path's last element), Name/...
type ArchiveRequest struct {
	Path string `json:"path"`
	Name string `json:"name,omitempty"`
	// Stream is the stream's id, set by the client.
	Stream uint32 `json:"s,omitempty"`
}

// ExtractRequest unpacks a tar stream whose entries are Name, Name/...
// for the guest path Path as cp does: inside Path when it is a directory,
// else as Path itself.
type ExtractRequest struct {
	Path string `json:"path"`
	Name string `json:"name"`
	// Stream is the stream's id, set by the client.
	Stream uint32 `json:"s,omitempty"`
}

// SignalRequest sends a signal to an exec stream's process (group).
type SignalRequest struct {
	Stream uint32 `json:"s"`
	Signal int    `json:"signal"`
}

// ResizeRequest changes a tty stream's window size.
type ResizeRequest struct {
	Stream uint32 `json:"s"`
	Rows   int    `json:"rows"`
	Cols   int    `json:"cols"`
}

// ShutdownRequest powers the guest off (or reboots it).
type ShutdownRequest struct {
	Reboot bool `json:"reboot,omitempty"`
}

// FreezeRequest asks the agent to freeze (FIFREEZE) or thaw the file system
// mounted at Path, one of the volumes it mounted. A freeze ends by itself
// after TimeoutMS (at most MaxFreeze) if no thaw comes: a host that went
// away must not leave the guest's writers blocked for good.
type FreezeRequest struct {
	Path      string `json:"path"`
	TimeoutMS int64  `json:"timeout_ms,omitempty"`
}

// IdentityRequest gives a guest resumed from a template snapshot its own
// identity, once, before anything of the VM runs: the clock stepped to the
// host's, the kernel's entropy pool mixed with Seed and its CRNG reseeded
// (clones of one snapshot otherwise share it), the hostname, the network
// interface's MAC and addresses, /etc/hosts and resolv.conf, then the VM's
// own entrypoint and env (Config, as a seed disk holds it). Only a guest
// booted as a template (its config's PaddockTemplate) takes it.
type IdentityRequest struct {
	TimeNS   int64    `json:"time_ns"` // the host's wall clock, Unix ns
	Seed     []byte   `json:"seed"`    // MinIdentitySeed to MaxIdentitySeed bytes
	Hostname string   `json:"hostname"`
	MAC      string   `json:"mac,omitempty"`
	IPs      []string `json:"ips,omitempty"` // prefixes, e.g. 10.77.0.5/16
	Gateways []string `json:"gateways,omitempty"`
	DNS      []string `json:"dns,omitempty"`
	// Config is the VM's guest config; its entrypoint starts last.
	Config json.RawMessage `json:"config,omitempty"`
}

// Bounds of IdentityRequest.Seed.
const (
	MinIdentitySeed = 32
	MaxIdentitySeed = 512
)

// IdentityReply says how long each part of the identity step took.
type IdentityReply struct {
	Phases []Phase `json:"phases,omitempty"`
}

// MaxFreeze bounds how long a freeze lasts without a thaw.
const MaxFreeze = 10 * time.Minute
