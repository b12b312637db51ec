package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/varlink"
)

func (d *Daemon) exec(ctx context.Context, c *varlink.Call) error {
	var in api.ExecIn
	if err := c.Decode(&in); err != nil {
		return err
	}
	if len(in.Command) == 0 {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "command", Msg: "no command given"}
	}
	if len(c.FDs) != 3 {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "command", Msg: fmt.Sprintf("Exec needs stdin, stdout and stderr as three file descriptors, got %d", len(c.FDs))}
	}
	stdio, err := sockets(c, "stdin", "stdout", "stderr")
	if err != nil {
		return err
	}
	stdin, stdout, stderr := stdio[0], stdio[1], stdio[2]
	r, err := d.agent(ctx, c, in.VM)
	if err != nil {
		return err
	}
	d.actors.Touch(r.VM.ID, "exec")
	p, err := r.Agent.Exec(ctx, agent.ExecRequest{Argv: in.Command, Env: in.Env, Dir: in.Workdir, User: in.User, TTY: in.TTY, Rows: in.Rows, Cols: in.Cols, Stdin: true})
	if err != nil {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "command", Msg: fmt.Sprintf("exec in %s: %v", in.VM, err)}
	}
	// Every copy waits in the poller, never in a thread: a client that
	// keeps its sockets open and silent (or full) costs parked goroutines
	// until this call ends, and the call ends them all before it returns.
	var out, input sync.WaitGroup
	out.Add(2)
	go func() { defer out.Done(); _, _ = io.Copy(stdout, p.Stdout()) }()
	go func() { defer out.Done(); _, _ = io.Copy(stderr, p.Stderr()) }()
	input.Add(1)
	go func() {
		defer input.Done()
		// Stdin ends the session's input at EOF; a closed client ends it too.
		_, _ = io.Copy(processWriter{p}, stdin)
		_ = p.CloseStdin()
	}()
	st, err := p.Wait(ctx)
	if err != nil {
		if ctx.Err() != nil {
			kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = p.Signal(kctx, 9)
			cancel()
		}
	} else {
		// Output still buffered gets a moment to reach a reading client.
		waitTimeout(&out, 2*time.Second)
	}
	expire(stdin, stdout, stderr)
	// The copies now end at once on the client's side; the guest's side
	// (a wedged agent) is waited for a bounded time.
	if !waitTimeout(&input, 5*time.Second) || !waitTimeout(&out, 5*time.Second) {
		d.log.Warn("exec: a copy to or from the guest still runs after the call ended", "vm", r.VM.ID)
	}
	if err != nil {
		return fmt.Errorf("exec in %s: %w", in.VM, err)
	}
	return c.Reply(api.ExecOut{ExitCode: st.Code, Signal: st.Signal})
}

// sockets returns the call's descriptors as sockets, refusing any other
// kind with the stream named: only a socket can be read and written with
// no thread waiting on it whatever the client does to it (the paddock CLI
// relays the terminal, files and pipes through socket pairs).
func sockets(c *varlink.Call, names ...string) ([]*varlink.Socket, error) {
	out := make([]*varlink.Socket, len(names))
	for i, name := range names {
		s, err := c.Socket(i, name)
		if err != nil {
			return nil, &actors.Error{Kind: actors.ErrInvalidArgument, Field: name, Msg: err.Error()}
		}
		out[i] = s
	}
	return out, nil
}

// expire ends every wait on the sockets now.
func expire(ss ...interface{ SetDeadline(time.Time) error }) {
	past := time.Unix(1, 0)
	for _, s := range ss {
		_ = s.SetDeadline(past)
	}
}

type processWriter struct{ p *agent.Process }

func (w processWriter) Write(b []byte) (int, error) { return w.p.Write(b) }

// waitTimeout waits for wg at most d; false when it did not finish.
func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// logChunk bounds one Logs reply well under the client's message limit.
const logChunk = 256 << 10

func (d *Daemon) logs(ctx context.Context, c *varlink.Call) error {
	var in api.LogsIn
	if err := c.Decode(&in); err != nil {
		return err
	}
	vm, err := d.actors.GetVM(ctx, d.auth.caller(c.Peer), in.VM)
	if err != nil {
		return err
	}
	path := filepath.Join(d.config().StateDir, "vms", vm.ID, "console.log")
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		if !c.More {
			return c.Reply(api.LogsOut{})
		}
	} else if err != nil {
		return err
	} else {
		defer f.Close()
	}
	var off int64
	if f != nil {
		fi, _ := f.Stat()
		if in.Tail > 0 && fi.Size() > int64(in.Tail) {
			off = fi.Size() - int64(in.Tail)
		}
		if !c.More && fi.Size()-off > logChunk {
			off = fi.Size() - logChunk // a single reply carries the newest part
		}
	}
	buf := make([]byte, logChunk)
	for {
		if f != nil {
			n, _ := f.ReadAt(buf, off)
			if n > 0 {
				off += int64(n)
				if !c.More {
					return c.Reply(api.LogsOut{Data: string(buf[:n])})
				}
				if err := c.Continue(api.LogsOut{Data: string(buf[:n])}); err != nil {
					return err
				}
				continue
			}
			if fi, err := f.Stat(); err == nil && fi.Size() < off {
				off = 0 // capped and rotated: start over
			}
		}
		if !c.More {
			return c.Reply(api.LogsOut{})
		}
		select {
		case <-ctx.Done():
			return c.Reply(api.LogsOut{})
		case <-time.After(250 * time.Millisecond):
		}
		if f == nil {
			if f, err = os.Open(path); err == nil {
				defer f.Close()
			}
		}
	}
}

// agent returns a VM's agent connection, waiting a while for one that is
// (re)connecting: right after a daemon restart the re-adopted VMs' agents
// reconnect in the background.
func (d *Daemon) agent(ctx context.Context, c *varlink.Call, ref string) (*actors.AgentResult, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := d.actors.Agent(ctx, d.auth.caller(c.Peer), ref)
		if err == nil || !errors.Is(err, actors.ErrAgentUnavailable) || time.Now().After(deadline) {
			return r, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// detachKey ends a console session (Ctrl-], as telnet and virsh use).
const detachKey = 0x1d

func (d *Daemon) console(ctx context.Context, c *varlink.Call) error {
	var in api.VMRef
	if err := c.Decode(&in); err != nil {
		return err
	}
	if len(c.FDs) != 2 {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "vm", Msg: fmt.Sprintf("Console needs stdin and stdout as two file descriptors, got %d", len(c.FDs))}
	}
	stdio, err := sockets(c, "stdin", "stdout")
	if err != nil {
		return err
	}
	stdin, stdout := stdio[0], stdio[1]
	vm, err := d.actors.GetVM(ctx, d.auth.caller(c.Peer), in.VM)
	if err != nil {
		return err
	}
	host := d.actors.Host()
	if host == nil || vm.Status != "running" {
		return &actors.Error{Kind: actors.ErrInvalidState, VM: in.VM, Status: vm.Status, Msg: fmt.Sprintf("VM %s is %s, not running", in.VM, vm.Status)}
	}
	con, ok := host.VMM.(consoler)
	if !ok {
		return &actors.Error{Kind: actors.ErrInvalidState, VM: in.VM, Msg: fmt.Sprintf("the %s driver offers no console", host.VMM.Name())}
	}
	out, input, detach, err := con.Console(vm.ID)
	if err != nil {
		return err
	}
	defer detach()
	d.actors.Touch(vm.ID, "console")
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := stdin.Read(buf)
			if n > 0 {
				chunk := buf[:n]
				if i := indexByte(chunk, detachKey); i >= 0 {
					_, _ = input.Write(chunk[:i])
					return
				}
				if _, err := input.Write(chunk); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	// The input reader ends before the call does, whichever way it ends
	// (a console that takes no input holds it a bounded time).
	defer func() {
		expire(stdin, stdout)
		t := time.NewTimer(5 * time.Second)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			d.log.Warn("console: the input copy still runs after the call ended", "vm", vm.ID)
		}
	}()
	// A client that stops reading blocks the writes below in the poller
	// only: its hanging up (or the daemon's shutdown) ends the call, and
	// the varlink server then expires the wait.
	for {
		select {
		case b := <-out:
			if _, err := stdout.Write(b); err != nil {
				return c.Reply(nil)
			}
		case <-done:
			return c.Reply(nil)
		case <-ctx.Done():
			return nil
		}
	}
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

func (d *Daemon) stats(ctx context.Context, c *varlink.Call) error {
	var in api.StatsIn
	if err := c.Decode(&in); err != nil {
		return err
	}
	caller := d.auth.caller(c.Peer)
	id := ""
	if in.VM != "" {
		vm, err := d.actors.GetVM(ctx, caller, in.VM)
		if err != nil {
			return err
		}
		if vm.Status != "running" {
			return &actors.Error{Kind: actors.ErrInvalidState, VM: in.VM, Status: vm.Status, Msg: fmt.Sprintf("VM %s is %s, not running", in.VM, vm.Status)}
		}
		id = vm.ID
		if !in.Passive {
			d.actors.Touch(id, "stats requested")
		}
	}
	for {
		st, err := d.actors.GetStats(ctx, caller, id)
		if err != nil {
			return err
		}
		if st == nil {
			st = []api.VMStats{}
		}
		if !c.More {
			return c.Reply(api.StatsOut{Stats: st})
		}
		if err := c.Continue(api.StatsOut{Stats: st}); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return c.Reply(api.StatsOut{Stats: []api.VMStats{}})
		case <-time.After(d.config().Stats.Interval.Duration):
		}
	}
}

// consoler is what a driver offers when it follows consoles (vmm.Base).
type consoler interface {
	Console(vmID string) (<-chan []byte, io.Writer, func(), error)
}
