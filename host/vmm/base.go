package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/host/cgroup"
)

// killWait bounds how long Kill waits for a SIGKILLed VMM to disappear when
// ctx has no earlier deadline.
const killWait = 10 * time.Second

// Base is the driver-independent half of a Driver (identity, launch, wait,
// kill, console copier, cleanup). Drivers embed it and add Name, Start,
// Stop and their own protocol. The zero value is ready to use.
type Base struct {
	mu        sync.Mutex
	followers map[string]*follower // by VM id
}

// Launch starts c as the VMM of p (p.VMID, p.Cgroup set; c.Args must carry
// Tag(p.VMID)) and fills p's PID, StartTime, BootID and Cmdline. It refuses
// with ErrAlreadyRunning when a tagged VMM of the VM is alive.
func (b *Base) Launch(p *Process, c Command) error {
	if id, _, ok := TagOf(c.Args); !ok || id != p.VMID {
		return fmt.Errorf("%w: argv does not carry the tag %s", ErrInvalidSpec, Tag(p.VMID))
	}
	if err := RefuseRunning(p.VMID); err != nil {
		return err
	}
	c.Cgroup = p.Cgroup
	pid, start, err := launch(c)
	if err != nil {
		return err
	}
	p.PID, p.StartTime, p.BootID = pid, start, BootID()
	p.Cmdline = append([]string(nil), c.Args...)
	return nil
}

// RefuseRunning returns ErrAlreadyRunning, naming the pid, when a live
// process carries vmID's tag. Drivers call it before their costlier Start
// steps; Launch checks again.
func RefuseRunning(vmID string) error {
	live, err := Find(vmID)
	if err != nil {
		return err
	}
	if len(live) > 0 {
		return fmt.Errorf("%w: pid %d carries %s", ErrAlreadyRunning, live[0].PID, Tag(vmID))
	}
	return nil
}

// PrepareRunDir makes p.RunDir (0700) and removes the sockets and FIFOs a
// dead VMM left at p.Sockets, before a driver launches p's VMM.
func PrepareRunDir(p *Process) error {
	if err := os.MkdirAll(p.RunDir, 0o700); err != nil {
		return fmt.Errorf("%s: %w", p.Driver, err)
	}
	for _, s := range p.Sockets {
		_ = removeEndpoint(s)
	}
	return nil
}

// removeEndpoint removes path when it is a socket or a FIFO: nothing else
// is ever a VMM's to remove. A path that is not there is no error.
func removeEndpoint(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil
	}
	if t := fi.Mode().Type(); t != os.ModeSocket && t != os.ModeNamedPipe {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// LogPath is the VMM's own log (its stdout and stderr) under runDir.
func LogPath(runDir string) string { return filepath.Join(runDir, "vmm.log") }

// StartVMM is the shared second half of a driver's Start, after
// PrepareRunDir: it creates p's cgroup under cgroupParent (when set) with limits,
// launches c as p's VMM with its output in LogPath(p.RunDir), then runs boot
// (the driver's "wait for the API, attach the console, start the guest")
// under ctx, bounded by readyTimeout when ctx has no deadline. On failure
// nothing is left behind: the VMM is killed and its sockets and cgroup are
// removed; a failed boot's error ends with the tail of the VMM's log.
func (b *Base) StartVMM(ctx context.Context, p *Process, cgroupParent string, limits cgroup.Limits, c Command, boot func(context.Context) error) error {
	if cgroupParent != "" {
		var err error
		if p.Cgroup, err = CreateCgroup(ctx, cgroupParent, p.VMID, limits); err != nil {
			_ = b.Cleanup(ctx, p)
			return err
		}
	}
	c.Log = LogPath(p.RunDir)
	if err := b.Launch(p, c); err != nil {
		_ = b.Cleanup(ctx, p)
		return err
	}
	bctx := ctx
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		bctx, cancel = context.WithTimeout(ctx, readyTimeout)
		defer cancel()
	}
	if err := boot(bctx); err != nil {
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), startKillWait)
		defer cancel()
		_ = b.Kill(kctx, p)
		return fmt.Errorf("%s: %w%s", p.Driver, err, logTail(c.Log))
	}
	return nil
}

// startKillWait bounds killing a VMM whose start failed.
const startKillWait = 15 * time.Second

// logTail returns the end of the VMM's own log for error messages.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return " (vmm.log: " + strings.TrimSpace(string(b)) + ")"
}

// WaitReady calls ready until it succeeds, p's VMM exits, or ctx ends;
// what names the awaited endpoint in errors. Every wait in it is bounded by
// ctx (a ctx without a deadline gets readyTimeout): a VMM that neither
// answers nor exits fails the start instead of holding it.
func (b *Base) WaitReady(ctx context.Context, p *Process, what string, ready func(context.Context) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, readyTimeout)
		defer cancel()
	}
	for {
		err := ready(ctx)
		if err == nil {
			return nil
		}
		if s, _ := identify(p); s != StateRunning {
			ex, _ := waitGone(ctx, p)
			return fmt.Errorf("the VMM exited at start (%s)", ex)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not answer: %w (%v)", what, ctx.Err(), err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// readyTimeout bounds WaitReady when its ctx has no deadline.
const readyTimeout = 30 * time.Second

// Probe reports whether p's VMM is alive and p's (/proc only).
func (b *Base) Probe(p *Process) (State, error) { return identify(p) }

// AttachConsole starts copying p's console into its capped log, unless a
// copier for this VMM runs already. It returns once connected.
func (b *Base) AttachConsole(ctx context.Context, p *Process) error {
	if p.ConsoleSocket == "" || p.ConsoleLog == "" {
		return nil
	}
	running := func(f *follower) bool {
		select {
		case <-f.done:
			return false
		default:
			return f.pid == p.PID && f.start == p.StartTime
		}
	}
	b.mu.Lock()
	old := b.followers[p.VMID]
	b.mu.Unlock()
	if old != nil {
		if running(old) {
			return nil
		}
		old.stop()
	}
	f, err := follow(ctx, p) // connects: not under b.mu
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if cur := b.followers[p.VMID]; cur != nil && cur != old && running(cur) {
		go f.stop() // a concurrent AttachConsole won
		return nil
	}
	if b.followers == nil {
		b.followers = map[string]*follower{}
	}
	b.followers[p.VMID] = f
	return nil
}

// detachConsole stops the console copier of vmID, if any.
func (b *Base) detachConsole(vmID string) {
	b.mu.Lock()
	f := b.followers[vmID]
	delete(b.followers, vmID)
	b.mu.Unlock()
	if f != nil {
		f.stop()
	}
}

// Adopt re-attaches to a running VMM after a daemon restart (console
// copier). ErrNotRunning when p's VMM is gone or not p's.
func (b *Base) Adopt(ctx context.Context, p *Process) error {
	if err := b.RequireRunning(p); err != nil {
		return err
	}
	return b.AttachConsole(ctx, p)
}

// RequireRunning returns nil when p's VMM is alive and p's, else
// ErrNotRunning saying what became of the pid (or why /proc could not tell).
func (b *Base) RequireRunning(p *Process) error {
	s, err := identify(p)
	if err != nil {
		return err
	}
	if s != StateRunning {
		return fmt.Errorf("%w: pid %d is %s", ErrNotRunning, p.PID, s)
	}
	return nil
}

// Close stops every console copier; VMMs are left running (daemon
// shutdown: the next daemon re-adopts them).
func (b *Base) Close() error {
	b.mu.Lock()
	fs := b.followers
	b.followers = nil
	b.mu.Unlock()
	for _, f := range fs {
		f.stop()
	}
	return nil
}

// Wait blocks until p's VMM has exited or ctx ends. The status is known
// (Exit.Known) when this process started the VMM.
func (b *Base) Wait(ctx context.Context, p *Process) (Exit, error) {
	if err := checkHandle(p); err != nil {
		return Exit{}, err
	}
	return waitGone(ctx, p)
}

// Kill SIGKILLs p's VMM (through a pidfd, after proving identity), waits for
// it to go, and removes its sockets and cgroup. A VMM that is gone, or a pid
// that is no longer p's, is success and nothing is signalled. A handle
// without a pid (intent persisted, crash before the pid was) kills every
// process carrying the VM's tag instead.
func (b *Base) Kill(ctx context.Context, p *Process) error {
	if p != nil && p.PID == 0 && ValidVMID(p.VMID) == nil {
		found, err := Find(p.VMID)
		if err != nil {
			return err
		}
		for _, q := range found {
			if err := b.kill(ctx, q); err != nil {
				return err
			}
		}
		return b.Cleanup(ctx, p)
	}
	if err := b.kill(ctx, p); err != nil {
		return err
	}
	return b.Cleanup(ctx, p)
}

func (b *Base) kill(ctx context.Context, p *Process) error {
	if err := checkHandle(p); err != nil {
		return err
	}
	if err := p.ident().Kill(ctx, nil); err != nil {
		return fmt.Errorf("vmm: %w", err)
	}
	return nil
}

// StopStep is one graceful step of StopWith: Do asks the VMM or guest to end,
// then StopWith waits up to Wait for the VMM to exit.
type StopStep struct {
	Name string
	Do   func(ctx context.Context) error
	Wait time.Duration
}

// StopWith runs steps in order until p's VMM exits, SIGKILLs it when none
// worked, then cleans up. A step whose Do fails is skipped (its error is
// returned only when the VMM had to be killed, for the log). A VMM that is
// gone or not p's is success.
func (b *Base) StopWith(ctx context.Context, p *Process, steps ...StopStep) error {
	fd, s, err := openIdentified(p)
	if err != nil {
		return err
	}
	if s != StateRunning {
		return b.Cleanup(ctx, p)
	}
	defer fd.close()
	var stepErrs []error
	for _, st := range steps {
		if err := st.Do(ctx); err != nil {
			stepErrs = append(stepErrs, fmt.Errorf("%s: %w", st.Name, err))
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, st.Wait)
		err := fd.wait(wctx)
		cancel()
		if err == nil {
			return b.Cleanup(ctx, p)
		}
		if ctx.Err() != nil {
			break
		}
	}
	if err := fd.signal(unix.SIGKILL); err != nil {
		return fmt.Errorf("vmm: kill pid %d: %w", p.PID, err)
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killWait)
	defer cancel()
	if err := fd.wait(wctx); err != nil {
		return fmt.Errorf("vmm: pid %d did not exit after SIGKILL: %w", p.PID, err)
	}
	if err := b.Cleanup(ctx, p); err != nil {
		return err
	}
	if len(stepErrs) > 0 {
		return fmt.Errorf("vmm: stopped by SIGKILL after graceful steps failed: %w", errors.Join(stepErrs...))
	}
	return nil
}

// Cleanup releases what a gone VMM leaves behind: its console copier, its
// sockets and FIFOs (nothing else is removed) and its cgroup (only one named
// Tag(p.VMID)). It does nothing while another live process carries the VM's
// tag (that VMM owns these paths now). Idempotent.
func (b *Base) Cleanup(ctx context.Context, p *Process) error {
	if p == nil || ValidVMID(p.VMID) != nil {
		return fmt.Errorf("%w: no valid VM id", ErrInvalidHandle)
	}
	b.detachConsole(p.VMID)
	if live, err := Find(p.VMID); err != nil {
		return err
	} else if len(live) > 0 {
		return nil
	}
	var errs []error
	for _, s := range p.Sockets {
		if err := removeEndpoint(s); err != nil {
			errs = append(errs, err)
		}
	}
	if p.Cgroup != "" {
		if filepath.Base(p.Cgroup) != Tag(p.VMID) {
			errs = append(errs, fmt.Errorf("%w: cgroup %s is not %s", ErrInvalidHandle, p.Cgroup, Tag(p.VMID)))
		} else {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killWait)
			err := cgroup.Remove(cctx, p.Cgroup, true)
			cancel()
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// CreateCgroup makes the VMM's cgroup <parent>/paddock-<vm id> and writes
// l into it. A limit whose controller parent does not offer is skipped (a
// hybrid host's cgroup v2 hierarchy has none: paddockd says so once at
// start-up); a limit that cannot be written removes the cgroup again and
// fails, naming the file.
func CreateCgroup(ctx context.Context, parent, vmID string, l cgroup.Limits) (string, error) {
	dir, err := cgroup.Create(parent, Tag(vmID))
	if err != nil {
		return "", err
	}
	if _, err := cgroup.SetLimits(dir, l); err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killWait)
		defer cancel()
		if rerr := cgroup.Remove(rctx, dir, false); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return "", err
	}
	return dir, nil
}

// DialAgent connects to the guest agent of p, waiting for the socket to
// appear (until ctx ends). For Firecracker it performs the hybrid vsock
// handshake to agent.DefaultVsockPort.
func DialAgent(ctx context.Context, p *Process) (net.Conn, error) {
	var dial func(ctx context.Context) (net.Conn, error)
	switch p.ControlKind {
	case ControlHybridVsock:
		dial = func(ctx context.Context) (net.Conn, error) {
			return agent.DialHybridVsock(ctx, p.ControlSocket, agent.DefaultVsockPort)
		}
	case ControlVirtioSerial, "":
		dial = func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", p.ControlSocket)
		}
	default:
		return nil, fmt.Errorf("%w: control kind %q", ErrInvalidHandle, p.ControlKind)
	}
	return retryWhileRunning(ctx, p, "agent socket "+p.ControlSocket, 10*time.Millisecond, dial)
}

// retryWhileRunning calls try every interval until it succeeds. It gives up
// with ErrNotRunning once p's VMM is gone (its endpoint will never answer),
// or when ctx ends; what names the endpoint in both errors.
func retryWhileRunning[T any](ctx context.Context, p *Process, what string, interval time.Duration, try func(context.Context) (T, error)) (T, error) {
	var zero T
	for {
		v, err := try(ctx)
		if err == nil {
			return v, nil
		}
		if s, _ := identify(p); s != StateRunning {
			return zero, fmt.Errorf("%w: %s: %v", ErrNotRunning, what, err)
		}
		select {
		case <-ctx.Done():
			return zero, fmt.Errorf("vmm: %s: %w (%v)", what, ctx.Err(), err)
		case <-time.After(interval):
		}
	}
}

// Console attaches to the serial console of a VM whose console this Base
// follows: its output from now on, and a writer to its input. Call detach
// when done. ErrNotRunning when no console is followed for vmID.
func (b *Base) Console(vmID string) (out <-chan []byte, in io.Writer, detach func(), err error) {
	b.mu.Lock()
	f := b.followers[vmID]
	b.mu.Unlock()
	if f == nil {
		return nil, nil, nil, fmt.Errorf("%w: no console attached for %s", ErrNotRunning, vmID)
	}
	out, in, detach = f.attach()
	return out, in, detach, nil
}
