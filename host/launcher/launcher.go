// Package launcher starts paddock's VMMs (and their passt helpers) for
// paddockd from another process, `paddockd launcher`, which
// paddock-guests.service runs. The VMMs are then the launcher's children,
// born in cgroups below the launcher's own delegated cgroup, not
// paddockd's: `systemctl kill paddock` (every process of paddock.service)
// and a restart of paddockd leave them running, and paddockd re-adopts
// them by pid, start time and command line as it does after any restart.
//
// The protocol is one small JSON request and one answer per connection on
// a unix socket (<runtime dir>/launcher.sock, mode 0600), each bounded in
// size (MaxMessage) and time (ExchangeTimeout). Both sides check the
// other's uid with SO_PEERCRED: the launcher serves its own uid only, and
// paddockd talks only to a launcher of its own uid, whose cgroup is the one
// it announced. Requests: "hello" (the launcher's pid, unit and cgroup) and
// "launch" (a vmm.Command, whose cgroup names a child of the launcher's
// cgroup; answered with the pid and start time). The launcher starts what
// it is asked exactly as paddockd would in-process (vmm.LaunchHere: the
// same confining step, no capabilities, no_new_privs, its own session),
// reaps its children, and never signals any process. The uid is the
// boundary: whoever may connect could run those programs anyway.
//
// An upgrade replaces paddockd but leaves the launcher running (it holds
// the VMs), so requests and answers only ever gain fields: unknown fields
// are ignored, an unknown request is answered with an error.
package launcher

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/host/cgroup"
	"github.com/paddock-vm/paddock/host/vmm"
)

const (
	// SocketName is the launcher's socket in the runtime directory.
	SocketName = "launcher.sock"
	// MaxMessage bounds a request or an answer (a VMM's argv and
	// environment are a few KiB).
	MaxMessage = 256 << 10
	// ExchangeTimeout bounds one connection: dial, request, answer.
	ExchangeTimeout = 10 * time.Second
	// HelloTimeout bounds paddockd's hello at start-up.
	HelloTimeout = 3 * time.Second
	// maxConns bounds the connections served at once.
	maxConns = 16
	// Version is the protocol's version, said in the hello.
	Version = 1
)

// Ops.
const (
	OpHello  = "hello"
	OpLaunch = "launch"
)

// Request is what paddockd sends.
type Request struct {
	Op      string   `json:"op"`
	Command *Command `json:"command,omitempty"`
}

// Command is vmm.Command on the wire, with its cgroup relative to the
// launcher's.
type Command struct {
	Path string   `json:"path"`
	Args []string `json:"args"`
	Log  string   `json:"log"`
	// Cgroup is the name of a child of the launcher's delegated cgroup
	// (paddock-<vm id>, made by paddockd); "" for none.
	Cgroup string `json:"cgroup,omitempty"`
	// Env is the environment; null means vmm's default (only PATH).
	Env []string `json:"env"`
	// NoHugePages: see vmm.Command (a launcher that does not know it
	// starts the VMM with them: slower under TCG, nothing worse).
	NoHugePages bool `json:"no_huge_pages,omitempty"`
}

// Response is the launcher's answer.
type Response struct {
	// Error says why the request failed, for the user.
	Error string `json:"error,omitempty"`

	// hello
	Version int `json:"version,omitempty"`
	PID     int `json:"pid,omitempty"`
	// Unit is the launcher's systemd unit ("" when not one).
	Unit string `json:"unit,omitempty"`
	// Cgroup is the delegated cgroup VMM cgroups are made in ("" for
	// none: VMMs then run in the launcher's own cgroup); CgroupInfo says
	// so for paddock info.
	Cgroup     string `json:"cgroup,omitempty"`
	CgroupInfo string `json:"cgroup_info,omitempty"`

	// launch
	ChildPID  int    `json:"child_pid,omitempty"`
	StartTime uint64 `json:"start_time,omitempty"`
}

// Server is the launcher's side.
type Server struct {
	// Cgroup is the launcher's delegated cgroup ("" for none), CgroupInfo
	// what paddock info says of it, Unit its systemd unit.
	Cgroup, CgroupInfo, Unit string
	Log                      *slog.Logger
	// Launch starts a command; nil is vmm.LaunchHere.
	Launch func(vmm.Command) (int, uint64, error)
	// Timeout bounds a connection; 0 is ExchangeTimeout (tests shorten it).
	Timeout time.Duration
}

// Serve answers connections on ln until ctx ends, then closes ln.
func (s *Server) Serve(ctx context.Context, ln *net.UnixListener) error {
	if s.Log == nil {
		s.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	sem := make(chan struct{}, maxConns)
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// EMFILE and the like: wait a little rather than spin.
			s.Log.Warn("launcher: accept", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		select {
		case sem <- struct{}{}:
			go func() {
				defer func() { <-sem }()
				s.handle(c)
			}()
		default:
			s.Log.Warn("launcher: too many connections at once; one refused", "max", maxConns)
			c.Close()
		}
	}
}

func (s *Server) handle(c *net.UnixConn) {
	defer c.Close()
	timeout := s.Timeout
	if timeout == 0 {
		timeout = ExchangeTimeout
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	cred, err := PeerCred(c)
	if err != nil {
		s.Log.Warn("launcher: reading the caller's credentials", "err", err)
		return
	}
	if int(cred.Uid) != os.Geteuid() {
		s.Log.Warn("launcher: refused a caller of another uid", "uid", cred.Uid, "pid", cred.Pid)
		_ = writeMsg(c, Response{Error: fmt.Sprintf("the VMM launcher serves uid %d only, not %d", os.Geteuid(), cred.Uid)})
		return
	}
	var req Request
	if err := readMsg(c, &req); err != nil {
		s.Log.Warn("launcher: reading a request", "pid", cred.Pid, "err", err)
		_ = writeMsg(c, Response{Error: err.Error()})
		return
	}
	if err := writeMsg(c, s.answer(req, cred)); err != nil {
		s.Log.Warn("launcher: answering", "pid", cred.Pid, "op", req.Op, "err", err)
	}
}

func (s *Server) answer(req Request, cred *unix.Ucred) Response {
	switch req.Op {
	case OpHello:
		return Response{Version: Version, PID: os.Getpid(), Unit: s.Unit, Cgroup: s.Cgroup, CgroupInfo: s.CgroupInfo}
	case OpLaunch:
		c, err := s.command(req.Command)
		if err != nil {
			return Response{Error: err.Error()}
		}
		launch := s.Launch
		if launch == nil {
			launch = vmm.LaunchHere
		}
		pid, start, err := launch(c)
		if err != nil {
			s.Log.Warn("launcher: launch failed", "path", c.Path, "cgroup", c.Cgroup, "for_pid", cred.Pid, "err", err)
			return Response{Error: err.Error()}
		}
		s.Log.Info("launched", "pid", pid, "path", c.Path, "cgroup", c.Cgroup, "for_pid", cred.Pid)
		return Response{ChildPID: pid, StartTime: start}
	default:
		return Response{Error: fmt.Sprintf("unknown request %q", req.Op)}
	}
}

// command checks a launch request and maps it to a vmm.Command.
func (s *Server) command(c *Command) (vmm.Command, error) {
	switch {
	case c == nil:
		return vmm.Command{}, errors.New("launch: no command")
	case c.Path == "" || len(c.Args) == 0:
		return vmm.Command{}, errors.New("launch: empty path or argv")
	case !filepath.IsAbs(c.Log):
		return vmm.Command{}, fmt.Errorf("launch: the log %q is not an absolute path", c.Log)
	}
	out := vmm.Command{Path: c.Path, Args: c.Args, Log: c.Log, Env: c.Env, NoHugePages: c.NoHugePages}
	if c.Cgroup != "" {
		if s.Cgroup == "" {
			return vmm.Command{}, fmt.Errorf("launch: cgroup %s asked for, but the launcher has no delegated cgroup", c.Cgroup)
		}
		if err := cgroup.ValidName(c.Cgroup); err != nil {
			return vmm.Command{}, fmt.Errorf("launch: %w", err)
		}
		out.Cgroup = filepath.Join(s.Cgroup, c.Cgroup)
	}
	return out, nil
}

// PeerCred returns the credentials of c's peer (SO_PEERCRED).
func PeerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

// ErrTooLarge: a message exceeds MaxMessage.
var ErrTooLarge = fmt.Errorf("message larger than %d bytes", MaxMessage)

// readMsg reads one newline-terminated JSON message of at most MaxMessage
// bytes.
func readMsg(r io.Reader, v any) error {
	b, err := bufio.NewReader(io.LimitReader(r, MaxMessage+1)).ReadBytes('\n')
	if len(b) > MaxMessage {
		return ErrTooLarge
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("reading a message: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("malformed message: %w", err)
	}
	return nil
}

func writeMsg(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) >= MaxMessage {
		return ErrTooLarge
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// Client is paddockd's side: a launcher that answered its hello.
type Client struct {
	path  string
	hello Response
	// timeout bounds an exchange; 0 is ExchangeTimeout (tests shorten it).
	timeout time.Duration
}

func (c *Client) exchangeTimeout() time.Duration {
	if c.timeout == 0 {
		return ExchangeTimeout
	}
	return c.timeout
}

// Hello asks the launcher at path who it is, within ctx. It fails unless
// the launcher runs as this process's uid, in this PID namespace, and in
// the cgroup it names.
func Hello(ctx context.Context, path string) (*Client, error) {
	c := &Client{path: path}
	r, err := c.exchange(ctx, Request{Op: OpHello}, func(cred *unix.Ucred, r Response) error {
		if r.PID != int(cred.Pid) {
			return fmt.Errorf("it says it is pid %d, its socket says pid %d (another PID namespace?)", r.PID, cred.Pid)
		}
		if r.Cgroup != "" {
			if in, cg, err := cgroup.Within(int(cred.Pid), r.Cgroup); err != nil || !in {
				return fmt.Errorf("it says its cgroup is %s, but it is in %s (%v)", r.Cgroup, cg, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	c.hello = r
	return c, nil
}

// Cgroup is the launcher's delegated cgroup, where VMM cgroups are made
// ("" for none); CgroupInfo says so for paddock info.
func (c *Client) Cgroup() string     { return c.hello.Cgroup }
func (c *Client) CgroupInfo() string { return c.hello.CgroupInfo }

// Describe says which launcher answers now: "paddock-guests.service (pid
// N)", or why none does.
func (c *Client) Describe(ctx context.Context) string {
	name := c.hello.Unit
	if name == "" {
		name = "launcher"
	}
	now, err := Hello(ctx, c.path)
	if err != nil {
		return fmt.Sprintf("%s (not answering: %v)", name, err)
	}
	return fmt.Sprintf("%s (pid %d)", name, now.hello.PID)
}

// Launch starts cmd through the launcher (vmm.Launcher). cmd.Cgroup must
// be a child of the launcher's cgroup. The launcher that answers, maybe a
// restarted one, must still be in that cgroup.
func (c *Client) Launch(cmd vmm.Command) (int, uint64, error) {
	req := &Command{Path: cmd.Path, Args: cmd.Args, Log: cmd.Log, Env: cmd.Env, NoHugePages: cmd.NoHugePages}
	if cmd.Cgroup != "" {
		if c.hello.Cgroup == "" || filepath.Dir(cmd.Cgroup) != c.hello.Cgroup {
			return 0, 0, fmt.Errorf("vmm: cgroup %s is not below the VMM launcher's %q", cmd.Cgroup, c.hello.Cgroup)
		}
		req.Cgroup = filepath.Base(cmd.Cgroup)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.exchangeTimeout())
	defer cancel()
	r, err := c.exchange(ctx, Request{Op: OpLaunch, Command: req}, nil)
	if err != nil {
		return 0, 0, err
	}
	if r.ChildPID <= 0 || r.StartTime == 0 {
		return 0, 0, fmt.Errorf("vmm: the VMM launcher answered without a pid and start time")
	}
	return r.ChildPID, r.StartTime, nil
}

// exchange sends req on a new connection and reads the answer, all within
// ctx and ExchangeTimeout. It talks only to a launcher of this uid that, if
// this client knows its cgroup, runs in it; check (nil: none) vets the
// answer. A launcher that is restarting (no socket, refused) is retried
// until ctx ends.
func (c *Client) exchange(ctx context.Context, req Request, check func(*unix.Ucred, Response) error) (Response, error) {
	ctx, cancel := context.WithTimeout(ctx, c.exchangeTimeout())
	defer cancel()
	conn, err := c.dial(ctx)
	if err != nil {
		return Response{}, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	cred, err := PeerCred(conn)
	if err != nil {
		return Response{}, fmt.Errorf("VMM launcher %s: reading its credentials: %w", c.path, err)
	}
	if int(cred.Uid) != os.Geteuid() {
		return Response{}, fmt.Errorf("VMM launcher %s runs as uid %d, not this daemon's %d: not used", c.path, cred.Uid, os.Geteuid())
	}
	if cg := c.hello.Cgroup; cg != "" {
		if in, now, err := cgroup.Within(int(cred.Pid), cg); err != nil || !in {
			return Response{}, fmt.Errorf("VMM launcher %s (pid %d) is no longer in its cgroup %s but in %s (%v): not used", c.path, cred.Pid, cg, now, err)
		}
	}
	if err := writeMsg(conn, req); err != nil {
		return Response{}, fmt.Errorf("VMM launcher %s: %w", c.path, err)
	}
	var r Response
	if err := readMsg(conn, &r); err != nil {
		return Response{}, fmt.Errorf("VMM launcher %s: %w", c.path, err)
	}
	if r.Error != "" {
		return Response{}, fmt.Errorf("VMM launcher: %s", r.Error)
	}
	if check != nil {
		if err := check(cred, r); err != nil {
			return Response{}, fmt.Errorf("VMM launcher %s: %w: not used", c.path, err)
		}
	}
	return r, nil
}

// dial connects to the launcher, retrying while it is restarting (its
// socket missing or refusing) until ctx ends.
func (c *Client) dial(ctx context.Context) (*net.UnixConn, error) {
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", c.path)
		if err == nil {
			return conn.(*net.UnixConn), nil
		}
		restarting := errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
		if !restarting || c.hello.PID == 0 {
			// Before a first hello nothing is restarting: say so now.
			return nil, fmt.Errorf("VMM launcher %s: %w", c.path, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("VMM launcher %s does not answer: %w (%v)", c.path, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// UnitOf names the systemd unit whose cgroup dir is ("" when its name is
// not a service's).
func UnitOf(dir string) string {
	if b := filepath.Base(dir); strings.HasSuffix(b, ".service") {
		return b
	}
	return ""
}
