package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"
)

// Spawner starts processes for exec (guest side).
type Spawner interface {
	Spawn(spec SpawnSpec) (Proc, error)
}

// Proc is a process started by a Spawner.
type Proc interface {
	PID() int
	// Stdin is nil unless requested; Stdout is the terminal with TTY;
	// Stderr is nil with TTY. Outputs are nil when redirected by the spec.
	Stdin() io.WriteCloser
	Stdout() io.ReadCloser
	Stderr() io.ReadCloser
	// Wait blocks until the process exited and returns its status.
	Wait() ExitStatus
	Signal(sig syscall.Signal) error
	Resize(rows, cols int) error
}

// ServerConfig configures the guest-side Server.
type ServerConfig struct {
	// AgentVersion is reported in hello.
	AgentVersion string
	// MaxFrame bounds frames from the host (DefaultMaxFrame).
	MaxFrame int
	// Hello returns the static part of the hello answer (phases, kit...).
	Hello func() HelloInfo
	// Health returns the health answer (Sessions and UptimeNS are filled in).
	Health func() Health
	// Stats and Ports answer the ops of the same name.
	Stats func() (Stats, error)
	Ports func() ([]Port, error)
	// Shutdown is called (in its own goroutine) after the reply to a
	// shutdown request has been written.
	Shutdown func(reboot bool)
	// Spawner runs exec requests.
	Spawner Spawner
	// Owner says who owns what extract unpacks into the guest directory
	// dir; nil leaves it the agent's own (tests).
	Owner func(dir string) (uid, gid int)
	// Freeze freezes (FIFREEZE) or thaws a mounted volume for a
	// consistent read from the host; nil refuses the ops.
	Freeze func(path string, frozen bool, timeout time.Duration) error
	// Identity applies an IdentityRequest (see there); nil refuses it.
	Identity func(IdentityRequest) (IdentityReply, error)
	// Uptime returns CLOCK_BOOTTIME in ns.
	Uptime func() int64
	// Logf logs (optional).
	Logf func(format string, args ...any)
	// MaxSessions bounds concurrent exec sessions per connection (64).
	MaxSessions int
}

// Listener yields transport connections (a net.Listener's conns qualify).
type Listener interface {
	Accept() (io.ReadWriteCloser, error)
	Close() error
}

// Server is the guest side of the protocol.
type Server struct {
	cfg      ServerConfig
	mu       sync.Mutex
	sessions int
}

// NewServer returns a server.
func NewServer(cfg ServerConfig) *Server {
	if cfg.MaxFrame <= 0 {
		cfg.MaxFrame = DefaultMaxFrame
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = 64
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Uptime == nil {
		start := time.Now()
		cfg.Uptime = func() int64 { return int64(time.Since(start)) }
	}
	return &Server{cfg: cfg}
}

// Serve accepts connections one after another until ctx ends or Accept
// fails. Connections are served concurrently.
func (s *Server) Serve(ctx context.Context, l Listener) error {
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		go func() {
			err := s.ServeConn(ctx, conn)
			if err != nil && !errors.Is(err, io.EOF) {
				s.cfg.Logf("agent: connection ended: %v", err)
			}
		}()
	}
}

type conn struct {
	s        *Server
	rw       io.ReadWriteCloser
	wmu      sync.Mutex
	mu       sync.Mutex
	hello    bool
	sessions map[uint32]*session
	closed   bool
	wg       sync.WaitGroup
	// epoch orders session output against session kills: senders of
	// stream messages hold it for reading, killSessions for writing, so no
	// stream message of a killed session follows the kill.
	epoch sync.RWMutex
}

// sendStream sends a message of session se unless it was killed.
func (c *conn) sendStream(se *session, m *Message) error {
	c.epoch.RLock()
	defer c.epoch.RUnlock()
	if se.dead {
		return io.ErrClosedPipe
	}
	return c.send(m)
}

type session struct {
	dead  bool // set under conn.epoch (write) when the session was killed
	id    uint32
	proc  Proc
	stdin *inbuf
	out   [3]*credit // by fd (1, 2)
}

// ServeConn serves one connection until it ends. Sessions still running
// when it ends have their process groups killed.
func (s *Server) ServeConn(ctx context.Context, rw io.ReadWriteCloser) error {
	c := &conn{s: s, rw: rw, sessions: map[uint32]*session{}}
	defer c.teardown()
	for {
		m, err := ReadMessage(rw, s.cfg.MaxFrame)
		if err != nil {
			return err
		}
		if err := c.handle(ctx, m); err != nil {
			return err
		}
	}
}

func (c *conn) teardown() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.killSessions()
	_ = c.rw.Close()
	c.wg.Wait()
}

// killSessions kills every exec session's process group; their runSession
// goroutines finish on their own (output is drained and discarded).
func (c *conn) killSessions() {
	c.epoch.Lock()
	c.mu.Lock()
	sessions := c.sessions
	c.sessions = map[uint32]*session{}
	c.mu.Unlock()
	for _, se := range sessions {
		se.dead = true
	}
	c.epoch.Unlock()
	for _, se := range sessions {
		_ = se.proc.Signal(syscall.SIGKILL)
		se.stdin.fail(io.ErrClosedPipe)
		for _, cr := range se.out {
			if cr != nil {
				cr.close()
			}
		}
	}
}

func (c *conn) send(m *Message) error {
	buf, err := EncodeFrame(m, c.s.cfg.MaxFrame)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err = c.rw.Write(buf)
	return err
}

func (c *conn) reply(id uint64, body any, err error) {
	m := &Message{T: TypeResponse, ID: id}
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			e = &Error{Code: CodeFailed, Message: err.Error()}
		}
		m.Err = e
	} else {
		raw, merr := json.Marshal(body)
		if merr != nil {
			m.Err = &Error{Code: CodeFailed, Message: merr.Error()}
		} else {
			m.Body = raw
		}
	}
	if err := c.send(m); err != nil {
		c.s.cfg.Logf("agent: reply %d: %v", id, err)
	}
}

func badRequest(format string, args ...any) error {
	return &Error{Code: CodeBadRequest, Message: fmt.Sprintf(format, args...)}
}

// unsupported answers an op the server's config does not provide.
func unsupported(op string) error {
	return &Error{Code: CodeUnknownOp, Message: op + " not supported"}
}

// noStream answers a request for a stream that is not (or no longer) open.
func noStream(id uint32) error {
	return &Error{Code: CodeNotFound, Message: fmt.Sprintf("no stream %d", id)}
}

func (c *conn) handle(ctx context.Context, m *Message) error {
	switch m.T {
	case TypeRequest:
		c.mu.Lock()
		hello := c.hello
		c.mu.Unlock()
		if m.Op == OpHello {
			var req HelloRequest
			if err := json.Unmarshal(m.Body, &req); err != nil {
				c.reply(m.ID, nil, badRequest("hello: %v", err))
				return nil
			}
			if req.Protocol != ProtocolVersion {
				c.reply(m.ID, nil, &Error{Code: CodeVersion, Message: fmt.Sprintf("guest speaks protocol %d, host %d", ProtocolVersion, req.Protocol)})
				return nil
			}
			var info HelloInfo
			if c.s.cfg.Hello != nil {
				info = c.s.cfg.Hello()
			}
			info.Protocol = ProtocolVersion
			info.AgentVersion = c.s.cfg.AgentVersion
			info.UptimeNS = c.s.cfg.Uptime()
			c.mu.Lock()
			again := c.hello
			c.hello = true
			c.mu.Unlock()
			if again {
				// A new host on a transport that spans reconnections
				// (virtio-serial): the old host's sessions are orphaned.
				c.killSessions()
			}
			c.reply(m.ID, info, nil)
			return nil
		}
		if !hello {
			c.reply(m.ID, nil, badRequest("%s before hello", m.Op))
			return nil
		}
		if m.Op == OpExec || m.Op == OpArchive || m.Op == OpExtract { // synchronous: the stream must exist before its input arrives
			c.exec(m)
			return nil
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.request(ctx, m)
		}()
		return nil
	case TypeInput:
		se := c.session(m.Stream)
		if se == nil {
			return nil // finished sessions may still get input in flight
		}
		if err := se.stdin.push(m.Data, m.EOF); err != nil {
			return fmt.Errorf("stream %d stdin: %w", m.Stream, err)
		}
		return nil
	case TypeWindow:
		se := c.session(m.Stream)
		if se == nil {
			return nil
		}
		if m.Fd != 1 && m.Fd != 2 {
			return fmt.Errorf("stream %d: window for fd %d", m.Stream, m.Fd)
		}
		se.out[m.Fd].add(m.N)
		return nil
	default:
		return fmt.Errorf("unexpected %q message from host", m.T)
	}
}

func (c *conn) session(id uint32) *session {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sessions[id]
}

func (c *conn) request(_ context.Context, m *Message) {
	cfg := &c.s.cfg
	switch m.Op {
	case OpPing:
		c.reply(m.ID, Pong{UptimeNS: cfg.Uptime()}, nil)
	case OpHealth:
		var h Health
		if cfg.Health != nil {
			h = cfg.Health()
		} else {
			h.Status = "ok"
		}
		h.UptimeNS = cfg.Uptime()
		h.TimeNS = time.Now().UnixNano()
		h.RootWritable = rootWritable()
		c.s.mu.Lock()
		h.Sessions = c.s.sessions
		c.s.mu.Unlock()
		c.reply(m.ID, h, nil)
	case OpStats:
		if cfg.Stats == nil {
			c.reply(m.ID, nil, unsupported("stats"))
			return
		}
		st, err := cfg.Stats()
		st.UptimeNS = cfg.Uptime()
		c.reply(m.ID, st, err)
	case OpFreeze, OpThaw:
		var req FreezeRequest
		if err := json.Unmarshal(m.Body, &req); err != nil || req.Path == "" {
			c.reply(m.ID, nil, badRequest("%s: bad request", m.Op))
			return
		}
		if cfg.Freeze == nil {
			c.reply(m.ID, nil, unsupported(m.Op))
			return
		}
		if err := cfg.Freeze(req.Path, m.Op == OpFreeze, time.Duration(req.TimeoutMS)*time.Millisecond); err != nil {
			c.reply(m.ID, nil, badRequest("%s: %v", m.Op, err))
			return
		}
		c.reply(m.ID, struct{}{}, nil)
	case OpIdentity:
		var req IdentityRequest
		if err := json.Unmarshal(m.Body, &req); err != nil {
			c.reply(m.ID, nil, badRequest("identity: bad request"))
			return
		}
		if cfg.Identity == nil {
			c.reply(m.ID, nil, unsupported(m.Op))
			return
		}
		r, err := cfg.Identity(req)
		if err != nil {
			c.reply(m.ID, nil, &Error{Code: CodeFailed, Message: "identity: " + err.Error()})
			return
		}
		c.reply(m.ID, r, nil)
	case OpPorts:
		if cfg.Ports == nil {
			c.reply(m.ID, nil, unsupported("ports"))
			return
		}
		ps, err := cfg.Ports()
		c.reply(m.ID, PortsReply{Ports: ps}, err)
	case OpSignal:
		var req SignalRequest
		if err := json.Unmarshal(m.Body, &req); err != nil || req.Signal <= 0 || req.Signal > 64 {
			c.reply(m.ID, nil, badRequest("signal: bad request"))
			return
		}
		se := c.session(req.Stream)
		if se == nil {
			c.reply(m.ID, nil, noStream(req.Stream))
			return
		}
		c.reply(m.ID, struct{}{}, se.proc.Signal(syscall.Signal(req.Signal)))
	case OpResize:
		var req ResizeRequest
		if err := json.Unmarshal(m.Body, &req); err != nil || req.Rows <= 0 || req.Cols <= 0 || req.Rows > 10000 || req.Cols > 10000 {
			c.reply(m.ID, nil, badRequest("resize: bad request"))
			return
		}
		se := c.session(req.Stream)
		if se == nil {
			c.reply(m.ID, nil, noStream(req.Stream))
			return
		}
		c.reply(m.ID, struct{}{}, se.proc.Resize(req.Rows, req.Cols))
	case OpShutdown:
		var req ShutdownRequest
		_ = json.Unmarshal(m.Body, &req)
		if cfg.Shutdown == nil {
			c.reply(m.ID, nil, unsupported("shutdown"))
			return
		}
		c.reply(m.ID, struct{}{}, nil)
		go cfg.Shutdown(req.Reboot)
	default:
		c.reply(m.ID, nil, &Error{Code: CodeUnknownOp, Message: fmt.Sprintf("unknown op %q", truncate([]byte(m.Op), 32))})
	}
}

// exec opens a stream: a process for exec, the agent's own archiver or
// extractor for archive and extract.
func (c *conn) exec(m *Message) {
	var req struct {
		Stream uint32 `json:"s"`
	}
	if err := json.Unmarshal(m.Body, &req); err != nil || req.Stream == 0 {
		c.reply(m.ID, nil, badRequest("%s: no stream id", m.Op))
		return
	}
	start, err := c.starter(m)
	if err != nil {
		c.reply(m.ID, nil, err)
		return
	}
	c.mu.Lock()
	if _, dup := c.sessions[req.Stream]; dup || c.closed {
		c.mu.Unlock()
		c.reply(m.ID, nil, badRequest("%s: stream %d already in use", m.Op, req.Stream))
		return
	}
	if len(c.sessions) >= c.s.cfg.MaxSessions {
		c.mu.Unlock()
		c.reply(m.ID, nil, &Error{Code: CodeBusy, Message: "too many exec sessions"})
		return
	}
	c.mu.Unlock()
	proc, err := start()
	if err != nil {
		c.reply(m.ID, nil, err)
		return
	}
	se := &session{id: req.Stream, proc: proc}
	se.stdin = newInbuf(StreamWindow, func(n int) {
		_ = c.sendStream(se, &Message{T: TypeWindow, Stream: se.id, Fd: 0, N: n})
	})
	se.out[1] = newCredit(StreamWindow)
	se.out[2] = newCredit(StreamWindow)
	c.mu.Lock()
	c.sessions[se.id] = se
	c.mu.Unlock()
	c.s.mu.Lock()
	c.s.sessions++
	c.s.mu.Unlock()
	c.reply(m.ID, ExecReply{PID: proc.PID()}, nil)

	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.runSession(se)
	}()
}

func (c *conn) runSession(se *session) {
	var pumps sync.WaitGroup
	if w := se.proc.Stdin(); w != nil {
		go func() {
			_, _ = io.Copy(w, se.stdin)
			w.Close()
		}()
	}
	pump := func(fd int, r io.ReadCloser) {
		defer pumps.Done()
		defer r.Close()
		buf := make([]byte, MaxChunk)
		live := true
		for {
			n, err := r.Read(buf)
			data := buf[:n]
			for live && len(data) > 0 {
				k, ok := se.out[fd].take(len(data))
				if !ok {
					live = false // connection gone: drain and discard
					break
				}
				if c.sendStream(se, &Message{T: TypeOutput, Stream: se.id, Fd: fd, Data: data[:k]}) != nil {
					live = false
				}
				data = data[k:]
			}
			if err != nil {
				if live {
					_ = c.sendStream(se, &Message{T: TypeOutput, Stream: se.id, Fd: fd, EOF: true})
				}
				return
			}
		}
	}
	outs := []io.ReadCloser{nil, se.proc.Stdout(), se.proc.Stderr()}
	for fd := 1; fd <= 2; fd++ {
		if outs[fd] != nil {
			pumps.Add(1)
			go pump(fd, outs[fd])
		} else {
			_ = c.sendStream(se, &Message{T: TypeOutput, Stream: se.id, Fd: fd, EOF: true})
		}
	}
	st := se.proc.Wait()
	// A background child may hold the output pipes open; after a grace
	// period close them so the session can end.
	drained := make(chan struct{})
	go func() { pumps.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(time.Second):
		for _, r := range outs {
			if r != nil {
				r.Close()
			}
		}
		<-drained
	}
	c.mu.Lock()
	delete(c.sessions, se.id)
	c.mu.Unlock()
	c.s.mu.Lock()
	c.s.sessions--
	c.s.mu.Unlock()
	se.stdin.fail(io.ErrClosedPipe)
	raw, _ := json.Marshal(st)
	_ = c.sendStream(se, &Message{T: TypeExit, Stream: se.id, Body: raw})
}

// starter checks a stream-opening request and returns what starts it.
func (c *conn) starter(m *Message) (func() (Proc, error), error) {
	switch m.Op {
	case OpArchive:
		var req ArchiveRequest
		if err := json.Unmarshal(m.Body, &req); err != nil {
			return nil, badRequest("archive: %v", err)
		}
		return func() (Proc, error) { return startArchive(req) }, nil
	case OpExtract:
		var req ExtractRequest
		if err := json.Unmarshal(m.Body, &req); err != nil {
			return nil, badRequest("extract: %v", err)
		}
		return func() (Proc, error) { return startExtract(req, c.s.cfg.Owner) }, nil
	}
	var req ExecRequest
	if err := json.Unmarshal(m.Body, &req); err != nil {
		return nil, badRequest("exec: %v", err)
	}
	if len(req.Argv) == 0 {
		return nil, badRequest("exec: empty argv")
	}
	if c.s.cfg.Spawner == nil {
		return nil, unsupported("exec")
	}
	return func() (Proc, error) {
		return c.s.cfg.Spawner.Spawn(SpawnSpec{
			Argv: req.Argv, Env: req.Env, Dir: req.Dir, User: req.User,
			TTY: req.TTY, Rows: req.Rows, Cols: req.Cols, Stdin: req.Stdin,
		})
	}, nil
}
