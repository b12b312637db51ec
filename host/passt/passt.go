// Package passt runs one passt per VM: user-mode networking (egress and
// published ports) that needs no capability at all, for vm.network = "user".
//
// passt (Debian package "passt") translates between the Ethernet frames a
// guest sends on a UNIX stream socket and ordinary TCP/UDP/ICMP sockets of
// the host, opened as the daemon's own user. QEMU attaches its virtio-net
// device to that socket (vmm.Stream, "-netdev stream"). Published ports are
// sockets passt binds on the host (-t/-u), forwarded to the guest.
//
// # Process
//
// passt runs in the foreground (-f) as a child of paddockd started like a
// VMM (vmm.Spawn): no capability, no_new_privs, its own session, stdin on
// /dev/null, born in the VM's cgroup when the caller has one, and it
// outlives paddockd. It sandboxes itself further (user, mount, IPC, UTS
// namespaces, an empty root, seccomp) but stays in the daemon's network
// namespace and pid namespace. passt refuses to run as root without
// CAP_SETUID (it wants to switch to "nobody"), so Start refuses a root
// daemon up front: user mode is for an unprivileged paddockd.
//
// Files under Spec.RunDir: passt.sock (the guest's frames), passt.log
// (passt's own log, capped by passt at 1 MiB) and passt.out (its stdout and
// stderr: start-up failures).
//
// # Identity
//
// The handle (Process) is JSON; after a daemon restart Probe tells whether
// its passt still runs (pid, start time, boot id and argv, from /proc, as
// for a VMM). Before any signal, the process must also be provably this
// daemon's: it runs as the daemon's uid and either its cgroup lies in the
// handle's cgroup or it is the very process serving the socket at the
// handle's path as this daemon sees it (SO_PEERCRED of a connection to that
// socket names its pid; a connection passt discards while QEMU is attached).
// A process failing either check is never signalled.
//
// # Start order
//
// QEMU 7.2 connects to the socket once, at start, and never reconnects:
// start passt first (Start returns once the socket is bound, which passt
// does after binding every published port), then the VMM; stop the VMM,
// then passt.
package passt

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/netspec"
)

// DefaultBinary is passt's binary, looked up in $PATH.
const DefaultBinary = "passt"

// Package is the Debian package that ships passt.
const Package = "passt"

// File names under Spec.RunDir.
const (
	SocketName = "passt.sock"
	LogName    = "passt.log"
	OutName    = "passt.out"
)

// startTimeout bounds Start when its ctx has no deadline.
const startTimeout = 20 * time.Second

// proveTimeout bounds the connection that proves a passt serves a socket.
const proveTimeout = 2 * time.Second

// Protocols of a Port.
const (
	TCP = "tcp"
	UDP = "udp"
)

// Errors (each also in an errdefs class).
var (
	// ErrInvalidSpec: the Spec cannot be started as given.
	ErrInvalidSpec = errdefs.New(errdefs.ErrInvalidArgument, "passt: invalid spec")
	// ErrPortInUse: a published host port cannot be bound.
	ErrPortInUse = errdefs.New(errdefs.ErrAlreadyExists, "passt: host port in use")
	// ErrNotOurs: a live process matches the handle but is not provably
	// this daemon's; it was not signalled.
	ErrNotOurs = errdefs.New(errdefs.ErrFailedPrecondition, "passt: process not provably this daemon's")
)

func portProto(p netspec.PortMapping) string { return cmp.Or(p.Proto, TCP) }

// hostAddr is the host side of p as "IP:PORT" (IP 0.0.0.0 when unset).
func hostAddr(p netspec.PortMapping) string {
	ip := p.HostIP
	if !ip.IsValid() {
		ip = netip.IPv4Unspecified()
	}
	return netip.AddrPortFrom(ip, p.HostPort).String()
}

// portSpec is passt's -t/-u value for p: [HOSTIP/]HOSTPORT:GUESTPORT.
func portSpec(p netspec.PortMapping) string {
	s := fmt.Sprintf("%d:%d", p.HostPort, p.GuestPort)
	if p.HostIP.IsValid() {
		s = p.HostIP.String() + "/" + s
	}
	return s
}

func portFlag(p netspec.PortMapping) string {
	if portProto(p) == UDP {
		return "-u"
	}
	return "-t"
}

// Spec is one VM's passt.
type Spec struct {
	// VMID names the VM in errors.
	VMID string
	// Binary is passt's binary (DefaultBinary in $PATH).
	Binary string
	// RunDir holds the socket and logs (created 0700 if missing).
	RunDir string
	// Addr is the guest's address and prefix length, Gateway its default
	// gateway: what the guest configures statically (paddock.ip,
	// paddock.gw). IPv4 only.
	Addr    netip.Prefix
	Gateway netip.Addr
	// DNS servers passt announces over DHCP (the guest's resolv.conf comes
	// from the boot seed; the guest reaches them like any host).
	DNS []netip.Addr
	// Ports are the published ports.
	Ports []netspec.PortMapping
	// Cgroup is an existing cgroup directory (the VM's leaf) passt is born
	// in; "" runs it in the daemon's cgroup.
	Cgroup string
}

// Process is the handle of a running passt, JSON-serializable: persist it
// and hand it back after a restart.
type Process struct {
	VMID string `json:"vm_id,omitempty"`
	PID  int    `json:"pid"`
	// StartTime is /proc/PID/stat field 22, BootID the kernel's boot id at
	// start, Cmdline passt's argv: with PID, what Probe compares.
	StartTime uint64   `json:"start_time"`
	BootID    string   `json:"boot_id,omitempty"`
	Cmdline   []string `json:"cmdline"`
	// Socket is where QEMU connects (vmm.Stream.Socket).
	Socket string `json:"socket"`
	RunDir string `json:"run_dir"`
	// Cgroup is the cgroup passt was born in ("" for none).
	Cgroup string `json:"cgroup,omitempty"`
}

func (p *Process) ident() vmm.Ident {
	return vmm.Ident{PID: p.PID, StartTime: p.StartTime, BootID: p.BootID, Cmdline: p.Cmdline}
}

func (s *Spec) validate() error {
	if s.RunDir == "" || !filepath.IsAbs(s.RunDir) {
		return fmt.Errorf("%w: run directory %q must be an absolute path", ErrInvalidSpec, s.RunDir)
	}
	if !s.Addr.IsValid() || !s.Addr.Addr().Is4() || s.Addr.Bits() < 1 || s.Addr.Bits() > 30 {
		return fmt.Errorf("%w: guest address %v: an IPv4 address with a prefix length of 1-30", ErrInvalidSpec, s.Addr)
	}
	if !s.Gateway.Is4() || !s.Addr.Masked().Contains(s.Gateway) || s.Gateway == s.Addr.Addr() {
		return fmt.Errorf("%w: gateway %v: an IPv4 address in %v other than the guest's", ErrInvalidSpec, s.Gateway, s.Addr.Masked())
	}
	for _, d := range s.DNS {
		if !d.Is4() {
			return fmt.Errorf("%w: DNS server %v: user-mode networking is IPv4 only", ErrInvalidSpec, d)
		}
	}
	seen := map[string]netspec.PortMapping{}
	for _, p := range s.Ports {
		if p.Proto != "" && p.Proto != TCP && p.Proto != UDP {
			return fmt.Errorf("%w: port %s: protocol %q (tcp or udp)", ErrInvalidSpec, p, p.Proto)
		}
		if p.HostPort == 0 || p.GuestPort == 0 {
			return fmt.Errorf("%w: port %s: ports are 1-65535", ErrInvalidSpec, p)
		}
		if p.HostIP.IsValid() && !p.HostIP.Is4() {
			return fmt.Errorf("%w: port %s: user-mode networking is IPv4 only", ErrInvalidSpec, p)
		}
		// one host port per protocol: an address-less mapping takes it on
		// every address
		for k, q := range seen {
			if q.HostPort == p.HostPort && portProto(q) == portProto(p) && (!q.HostIP.IsValid() || !p.HostIP.IsValid() || q.HostIP == p.HostIP) {
				return fmt.Errorf("%w: ports %s and %s both publish host port %d/%s", ErrInvalidSpec, k, p, p.HostPort, portProto(p))
			}
		}
		seen[p.String()] = p
	}
	return nil
}

// Args returns passt's argv (binary name first) for s: foreground, the
// socket and log under RunDir, IPv4 only, the guest's address, prefix and
// gateway, --no-map-gw (the gateway address is not the host: a guest
// cannot reach the host's loopback through it), DNS, and one -t/-u per
// published port.
func Args(s Spec) ([]string, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	a := []string{DefaultBinary, "-f", "-4",
		"-s", filepath.Join(s.RunDir, SocketName),
		"-l", filepath.Join(s.RunDir, LogName),
		"-a", s.Addr.Addr().String(), "-n", strconv.Itoa(s.Addr.Bits()), "-g", s.Gateway.String(),
		"--no-map-gw"}
	for _, d := range s.DNS {
		a = append(a, "-D", d.String())
	}
	for _, p := range s.Ports {
		a = append(a, portFlag(p), portSpec(p))
	}
	return a, nil
}

// Check reports whether passt can be started: its binary is found. The
// error, in errdefs.ErrUnavailable, names the binary and its package.
func Check(binary string) error {
	bin := cmp.Or(binary, DefaultBinary)
	if err := vmm.LookBinary(bin); err != nil {
		return errdefs.Newf(errdefs.ErrUnavailable, "user-mode networking needs passt: binary %q: %v (install the Debian package %q)", bin, err, Package)
	}
	return nil
}

// Start launches passt for s and returns once its socket is bound (every
// published port is bound by then). On error nothing is left behind: no
// process, no socket. A published port that cannot be bound is
// ErrPortInUse naming it.
func Start(ctx context.Context, s Spec) (*Process, error) {
	argv, err := Args(s)
	if err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		return nil, errdefs.New(errdefs.ErrFailedPrecondition,
			"user-mode networking: passt runs with no capability and refuses to run as root; run paddockd as an unprivileged user, or use the bridge network")
	}
	if err := Check(s.Binary); err != nil {
		return nil, err
	}
	bin, _ := exec.LookPath(cmp.Or(s.Binary, DefaultBinary))
	if err := bindable(s.Ports); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(s.RunDir, 0o700); err != nil {
		return nil, fmt.Errorf("passt: %w", err)
	}
	p := &Process{VMID: s.VMID, Socket: filepath.Join(s.RunDir, SocketName), RunDir: s.RunDir, Cgroup: s.Cgroup}
	// a dead passt's socket would look ready
	if err := removeSocket(p.Socket); err != nil {
		return nil, err
	}
	out := filepath.Join(s.RunDir, OutName)
	id, err := vmm.Spawn(vmm.Command{Path: bin, Args: argv, Log: out, Cgroup: s.Cgroup})
	if err != nil {
		return nil, fmt.Errorf("passt: %w", err)
	}
	p.PID, p.StartTime, p.BootID, p.Cmdline = id.PID, id.StartTime, id.BootID, id.Cmdline
	if err := waitReady(ctx, p); err != nil {
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		// our unreaped child: the pid is provably this passt
		kerr := p.ident().Kill(kctx, nil)
		_ = removeSocket(p.Socket)
		return nil, errors.Join(startError(s, err, out), kerr)
	}
	return p, nil
}

// waitReady waits for p's socket, failing when passt exits or ctx (or
// startTimeout) ends.
func waitReady(ctx context.Context, p *Process) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, startTimeout)
		defer cancel()
	}
	for {
		if fi, err := os.Lstat(p.Socket); err == nil && fi.Mode().Type() == fs.ModeSocket {
			return nil
		}
		if st, err := p.ident().Probe(); err != nil {
			return err
		} else if st != vmm.StateRunning {
			ex, _ := p.ident().Wait(ctx)
			return fmt.Errorf("passt exited at start (%s)", ex)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("passt did not bind %s: %w", p.Socket, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// bindFailure is passt's message for a port it cannot bind.
var bindFailure = regexp.MustCompile(`Failed to bind any port for '-([tu]) ([^']*)'`)

// startError explains a failed start from passt's own output.
func startError(s Spec, err error, outPath string) error {
	out, _ := readTail(outPath, 4096)
	if m := bindFailure.FindStringSubmatch(out); m != nil {
		for _, p := range s.Ports {
			if portFlag(p) == "-"+m[1] && portSpec(p) == m[2] {
				return fmt.Errorf("%w: %s: passt cannot bind host port %s (in use, or a privileged port)", ErrPortInUse, p, hostAddr(p))
			}
		}
	}
	if strings.Contains(out, "No external routable interface for IPv4") {
		return errdefs.Newf(errdefs.ErrUnavailable, "passt: the host has no interface with an IPv4 default route (%v)", err)
	}
	if out = strings.TrimSpace(out); out != "" {
		return fmt.Errorf("passt: %w (passt.out: %s)", err, out)
	}
	return fmt.Errorf("passt: %w", err)
}

// readTail returns the last max bytes of path, without passt's noise about
// a missing syslog.
func readTail(path string, max int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		if _, err := f.Seek(-max, 2); err != nil {
			return "", err
		}
	}
	b := make([]byte, max)
	n, _ := f.Read(b)
	var keep []string
	for _, l := range strings.Split(string(b[:n]), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "Failed to send") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "; "), nil
}

// bindable checks each published port by binding it (and letting go),
// so that a taken port is refused naming it, before passt is started. A
// privileged port is refused naming the sysctl.
func bindable(ports []netspec.PortMapping) error {
	for _, p := range ports {
		var err error
		if portProto(p) == UDP {
			var c net.PacketConn
			if c, err = net.ListenPacket("udp4", hostAddr(p)); err == nil {
				c.Close()
			}
		} else {
			var l net.Listener
			if l, err = net.Listen("tcp4", hostAddr(p)); err == nil {
				l.Close()
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, unix.EADDRINUSE):
			return fmt.Errorf("%w: %s: host port %s is already in use", ErrPortInUse, p, hostAddr(p))
		case errors.Is(err, unix.EACCES):
			return errdefs.Newf(errdefs.ErrPermissionDenied, "port %s: host port %d is privileged (below net.ipv4.ip_unprivileged_port_start) and passt has no CAP_NET_BIND_SERVICE", p, p.HostPort)
		case errors.Is(err, unix.EADDRNOTAVAIL):
			return fmt.Errorf("%w: port %s: the host has no address %v", ErrInvalidSpec, p, p.HostIP)
		default:
			return fmt.Errorf("passt: port %s: %w", p, err)
		}
	}
	return nil
}

// removeSocket removes path when it is a socket; nothing else is passt's to
// remove. A path that is not there is no error.
func removeSocket(path string) error {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != fs.ModeSocket {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("passt: %w", err)
	}
	return nil
}

// Probe reports whether p's passt is alive and still p's (/proc only: pid,
// start time, boot id, argv). A live pid that is another process is not
// running.
func Probe(p *Process) (bool, error) {
	if p == nil {
		return false, fmt.Errorf("%w: no handle", ErrInvalidSpec)
	}
	st, err := p.ident().Probe()
	return st == vmm.StateRunning, err
}

// Wait blocks until p's passt has exited or ctx ends. The status is known
// (Exit.Known) when this process started it.
func Wait(ctx context.Context, p *Process) (vmm.Exit, error) {
	if p == nil {
		return vmm.Exit{}, fmt.Errorf("%w: no handle", ErrInvalidSpec)
	}
	return p.ident().Wait(ctx)
}

// Stop SIGKILLs p's passt (it keeps no state worth a graceful end) once it
// is identified and proven this daemon's, waits for it to go, and removes
// its socket. A passt that is gone, or a pid that is another process now,
// is success and nothing is signalled; a matching process that is not
// provably this daemon's is ErrNotOurs and is left alone. A handle without
// a pid (intent persisted, crash before the pid was) stops every passt
// serving p.Socket that is provably this daemon's. Idempotent.
func Stop(ctx context.Context, p *Process) error {
	if p == nil || p.Socket == "" || !filepath.IsAbs(p.Socket) {
		return fmt.Errorf("%w: a handle needs an absolute socket path", ErrInvalidSpec)
	}
	targets := []*Process{p}
	if p.PID == 0 {
		found, err := findBySocket(p.Socket)
		if err != nil {
			return err
		}
		targets = targets[:0]
		for _, id := range found {
			targets = append(targets, &Process{PID: id.PID, StartTime: id.StartTime, BootID: id.BootID, Cmdline: id.Cmdline,
				Socket: p.Socket, Cgroup: p.Cgroup})
		}
	}
	for _, q := range targets {
		if err := q.ident().Kill(ctx, func() error { return prove(q) }); err != nil {
			return fmt.Errorf("passt of %s: %w", cmp.Or(p.VMID, p.Socket), err)
		}
	}
	// a passt still serving the socket (not ours, or a new one) keeps it
	if live, err := findBySocket(p.Socket); err != nil {
		return err
	} else if len(live) > 0 {
		return nil
	}
	return removeSocket(p.Socket)
}

// prove returns nil when q's live process is provably this daemon's (see
// the package documentation), else ErrNotOurs saying why.
func prove(q *Process) error {
	o := vmm.Owner{UID: os.Geteuid(), Cgroup: q.Cgroup}
	ours, why := o.JudgePID(q.PID, func() (bool, string) { return servesSocket(q.PID, q.Socket) })
	if !ours {
		return fmt.Errorf("%w: pid %d: %s", ErrNotOurs, q.PID, why)
	}
	return nil
}

// servesSocket reports whether pid is the process listening on the UNIX
// socket at path as this process sees it: a connection's SO_PEERCRED names
// the listener.
func servesSocket(pid int, path string) (bool, string) {
	c, err := net.DialTimeout("unix", path, proveTimeout)
	if err != nil {
		return false, fmt.Sprintf("its socket %s does not answer here: %v", path, err)
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return false, err.Error()
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return false, err.Error()
	}
	if cerr != nil {
		return false, fmt.Sprintf("SO_PEERCRED on %s: %v", path, cerr)
	}
	if int(cred.Pid) != pid {
		return false, fmt.Sprintf("the socket %s here is served by pid %d, not by it", path, cred.Pid)
	}
	return true, fmt.Sprintf("it serves the socket %s this daemon sees", path)
}

// isPasst reports whether argv is a passt command line (as Args builds
// them), and returns its socket.
func isPasst(argv []string) (socket string, ok bool) {
	if len(argv) < 3 || filepath.Base(argv[0]) != DefaultBinary {
		return "", false
	}
	i := slices.Index(argv, "-s")
	if i < 0 || i+1 >= len(argv) {
		return "", false
	}
	return argv[i+1], true
}

func findBySocket(path string) ([]vmm.Ident, error) {
	return vmm.Scan(func(argv []string) bool {
		s, ok := isPasst(argv)
		return ok && s == path
	})
}

// Found is a passt found in /proc, with the verdict on whose it is.
type Found struct {
	*Process
	// Ours: provably o's; only those may be stopped. Why says how that was
	// decided.
	Ours bool
	Why  string
}

// Find lists the live passt processes whose socket lies under o.RunRoot,
// each judged for o (its uid, and its cgroup in o.Cgroup or the socket it
// serves): the orphan sweep after a crash. Each Process has PID, StartTime,
// BootID, Cmdline, Socket, RunDir (the socket's directory) and Cgroup
// (o.Cgroup): enough for Stop.
func Find(o vmm.Owner) ([]Found, error) {
	root := filepath.Clean(o.RunRoot) + string(filepath.Separator)
	ids, err := vmm.Scan(func(argv []string) bool {
		s, ok := isPasst(argv)
		return ok && o.RunRoot != "" && strings.HasPrefix(filepath.Clean(s), root)
	})
	if err != nil {
		return nil, err
	}
	var out []Found
	for _, id := range ids {
		sock, _ := isPasst(id.Cmdline)
		// RunRoot/<vm id>/passt.sock
		p := &Process{VMID: filepath.Base(filepath.Dir(sock)), PID: id.PID, StartTime: id.StartTime, BootID: id.BootID, Cmdline: id.Cmdline, Socket: sock, RunDir: filepath.Dir(sock), Cgroup: o.Cgroup}
		ours, why := o.JudgePID(id.PID, func() (bool, string) { return servesSocket(id.PID, sock) })
		out = append(out, Found{Process: p, Ours: ours, Why: why})
	}
	return out, nil
}

// Runner runs passt processes of one binary: the daemon's handle on this
// package (the VM actors' Passt).
type Runner struct {
	// Binary is passt's binary (DefaultBinary in $PATH when empty).
	Binary string
}

// Start is Start with r's binary.
func (r Runner) Start(ctx context.Context, s Spec) (*Process, error) {
	s.Binary = cmp.Or(s.Binary, r.Binary)
	return Start(ctx, s)
}

// Probe is Probe.
func (Runner) Probe(p *Process) (bool, error) { return Probe(p) }

// Stop is Stop.
func (Runner) Stop(ctx context.Context, p *Process) error { return Stop(ctx, p) }
