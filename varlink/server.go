package varlink

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Handler serves one method. It must answer through the Call exactly once
// with Reply or Error (after any number of Continue for a "more" call), or
// return an error, which becomes an Internal-style reply by the server's
// ErrorMapper.
type Handler func(ctx context.Context, c *Call) error

// Call is one request in flight.
type Call struct {
	*Request
	Peer Peer
	// FDs are the descriptors the client passed with this call (SCM_RIGHTS).
	// They are closed when the handler returns; dup one to keep it. Read and
	// write a passed socket only through Socket: a plain Read may block a
	// thread for as long as the client likes.
	FDs     []*os.File
	conn    *conn
	replied bool
	// local receives the replies of a call made in-process (Invoke)
	// instead of conn.
	local func(*Reply) error
}

// send writes one reply to the client: the connection, or the in-process
// caller of Invoke.
func (c *Call) send(r *Reply) error {
	if c.local != nil {
		return c.local(r)
	}
	return c.conn.write(r)
}

// Decode unmarshals the parameters into v, refusing unknown fields. A failure
// is returned as an InvalidParameter varlink error naming the parameter.
func (c *Call) Decode(v any) error {
	pd := &paramDecoder{}
	if c.conn != nil {
		pd = &c.conn.params
	}
	if err := pd.decode(c.Parameters, v); err != nil {
		param := "parameters"
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			param = te.Field
		} else if s := err.Error(); strings.HasPrefix(s, "json: unknown field ") {
			param = strings.Trim(strings.TrimPrefix(s, "json: unknown field "), `"`)
		}
		return NewError(ErrInvalidParameter, map[string]any{"parameter": param, "message": fmt.Sprintf("invalid parameter %q: %v", param, err)})
	}
	return nil
}

// paramDecoder decodes a connection's call parameters with one Decoder,
// fed each call's parameters in turn: a Decoder a call (and its buffer) was
// most of the garbage a Get made. The calls of a connection run one at a
// time, and so do their decodes.
type paramDecoder struct {
	r      bytes.Reader
	dec    *json.Decoder
	offset int64 // the Decoder's input offset after the last call's parameters
}

func (p *paramDecoder) decode(b []byte, v any) error {
	p.r.Reset(b)
	if p.dec == nil {
		p.dec = json.NewDecoder(&p.r)
		p.dec.DisallowUnknownFields()
	}
	err := p.dec.Decode(v)
	if err != nil || p.r.Len() > 0 || p.dec.InputOffset() != p.offset+int64(len(b)) {
		// A failure, or bytes left over, would carry into the next call's
		// decode: start that afresh.
		p.dec, p.offset = nil, 0
		return err
	}
	p.offset += int64(len(b))
	return nil
}

// Reply sends the final answer.
func (c *Call) Reply(params any) error {
	c.replied = true
	if c.Oneway {
		return nil
	}
	return c.send(&Reply{Parameters: orEmpty(params)})
}

// ReplyJSON is Reply with parameters already encoded: a JSON object as
// json.Marshal makes it, sent as is (no second encoding per call).
func (c *Call) ReplyJSON(params json.RawMessage) error {
	c.replied = true
	if c.Oneway {
		return nil
	}
	if c.local != nil {
		return c.local(&Reply{Parameters: params})
	}
	return c.conn.writeJSON(params)
}

// Continue sends one of several answers to a "more" call.
func (c *Call) Continue(params any) error {
	if !c.More {
		return NewError(ErrExpectedMore, map[string]any{"message": c.Method + " streams: call it with more=true"})
	}
	return c.send(&Reply{Parameters: orEmpty(params), Continues: true})
}

// ReplyError sends a named error as the final answer.
func (c *Call) ReplyError(name string, params any) error {
	c.replied = true
	if c.Oneway {
		return nil
	}
	return c.send(&Reply{Parameters: orEmpty(params), Error: name})
}

func orEmpty(p any) any {
	if p == nil {
		return struct{}{}
	}
	return p
}

// NewError builds an *Error from a name and parameters.
func NewError(name string, params any) *Error {
	b, err := json.Marshal(orEmpty(params))
	if err != nil {
		b = []byte("{}")
	}
	return &Error{Name: name, Parameters: b}
}

// Config describes a service.
type Config struct {
	Vendor, Product, Version, URL string
	// Interfaces maps interface name to its description text.
	Interfaces map[string]string
	// Methods maps "iface.Method" to its handler.
	Methods map[string]Handler
	// MaxMessage bounds one request in bytes; a longer one closes the connection.
	MaxMessage int
	// MaxConns bounds concurrent connections; more are refused at accept.
	MaxConns int
	// MaxConnsPerUID bounds the connections one caller who is not an admin
	// may hold; 0 means MaxConns.
	MaxConnsPerUID int
	// AdminReserve is how many of MaxConns only admins may take.
	AdminReserve int
	// IsAdmin says whether a peer counts as an admin for the limits above.
	IsAdmin func(Peer) bool
	// Refused builds the error sent to a connection refused at accept (the
	// cause wraps ErrConnLimit, ErrUserConnLimit or ErrPerUIDLimit) before it
	// is closed; the client reads it as the answer to its first call.
	Refused func(p Peer, cause error) *Error
	// IdleTimeout closes a connection that has no call in flight and sends
	// nothing for this long; 0 keeps idle connections open.
	IdleTimeout time.Duration
	// MessageTimeout bounds how long a started message may take to arrive.
	MessageTimeout time.Duration
	// WriteTimeout bounds one reply write to a client that does not read.
	WriteTimeout time.Duration
	// Inline names the methods that answer at once from memory, never
	// waiting on anything: they run on the connection's reading goroutine,
	// saving a handoff per call, and a hang-up does not cancel them.
	Inline map[string]bool
	// MapError turns a handler's Go error into a varlink error reply.
	MapError func(error) *Error
	Logger   *slog.Logger
}

// Server serves varlink on any number of listeners.
type Server struct {
	cfg      Config
	mu       sync.Mutex
	conns    map[*conn]struct{}
	lns      []net.Listener
	inflight sync.WaitGroup
	draining atomic.Bool
	streams  context.Context // canceled when shutdown begins: ends "more" calls
	stop     context.CancelFunc
	limits   *limits // under mu
	waiting  bool    // Shutdown waits on inflight: no new calls may start
	refusals refusalLog
}

// begin registers a call in flight; false once Shutdown has begun waiting.
func (s *Server) begin() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.waiting {
		return false
	}
	s.inflight.Add(1)
	return true
}

// NewServer checks cfg and returns a server.
func NewServer(cfg Config) (*Server, error) {
	if cfg.MaxMessage <= 0 {
		cfg.MaxMessage = 1 << 20
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 256
	}
	if cfg.MessageTimeout <= 0 {
		cfg.MessageTimeout = 10 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.IsAdmin == nil {
		cfg.IsAdmin = func(Peer) bool { return false }
	}
	if cfg.Refused == nil {
		cfg.Refused = func(_ Peer, cause error) *Error {
			return NewError(ErrPermissionDenied, map[string]any{"message": "connection refused: " + cause.Error()})
		}
	}
	if cfg.MapError == nil {
		cfg.MapError = func(err error) *Error {
			var ve *Error
			if errors.As(err, &ve) {
				return ve
			}
			return NewError("org.varlink.service.Internal", map[string]any{"message": err.Error()})
		}
	}
	for name := range cfg.Interfaces {
		if !ValidInterfaceName(name) {
			return nil, fmt.Errorf("varlink: bad interface name %q", name)
		}
	}
	for m := range cfg.Methods {
		if !methodRE.MatchString(m) || len(m) > 255 {
			return nil, fmt.Errorf("varlink: bad method name %q", m)
		}
		iface, _ := SplitMethod(m)
		if _, ok := cfg.Interfaces[iface]; !ok {
			return nil, fmt.Errorf("varlink: method %s of undeclared interface %s", m, iface)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{cfg: cfg, conns: map[*conn]struct{}{}, streams: ctx, stop: cancel,
		limits: newLimits(cfg.MaxConns, cfg.MaxConnsPerUID, cfg.AdminReserve)}, nil
}

// Serve accepts connections on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.draining.Load() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.cfg.Logger.Warn("accept failed, retrying", "err", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		delay = 0
		s.admit(nc)
	}
}

// admit counts a new connection against the limits and serves it, or
// tells the client why not and closes it. It never waits on the client.
func (s *Server) admit(nc net.Conn) {
	peer, err := PeerOf(nc)
	if err != nil {
		s.cfg.Logger.Warn("refusing connection", "err", err)
		_ = nc.Close()
		return
	}
	admin := s.cfg.IsAdmin(peer)
	c := &conn{srv: s, nc: nc, peer: peer, admin: admin}
	c.touch()
	s.mu.Lock()
	if s.draining.Load() {
		s.mu.Unlock()
		_ = nc.Close()
		return
	}
	if err := s.limits.admit(peer.UID, admin); err != nil {
		s.mu.Unlock()
		s.refusals.note(s.cfg.Logger, peer, err)
		ve := s.cfg.Refused(peer, err)
		b, _ := json.Marshal(&Reply{Parameters: ve.Parameters, Error: ve.Name})
		// A fresh socket's send buffer is empty: this write does not wait.
		_ = nc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		_, _ = nc.Write(append(b, 0))
		_ = nc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	go c.serve()
}

// refusalLog logs refused connections without letting a flood of them
// flood the log: the first, then at most one a minute with a count.
type refusalLog struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (r *refusalLog) note(log *slog.Logger, p Peer, cause error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.last) < time.Minute {
		r.suppressed++
		return
	}
	log.Warn("refusing a connection", "uid", p.UID, "pid", p.PID, "err", cause, "refused_since_last_report", r.suppressed)
	r.last, r.suppressed = time.Now(), 0
}

// Shutdown stops accepting, ends streaming calls, waits for the other calls
// in flight until ctx is done, then closes every connection.
func (s *Server) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	s.mu.Lock()
	for _, ln := range s.lns {
		_ = ln.Close()
	}
	s.mu.Unlock()
	s.stop()
	s.closeIdle()
	s.mu.Lock()
	s.waiting = true
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.inflight.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("shutdown: calls still in flight: %w", ctx.Err())
	}
	s.mu.Lock()
	for c := range s.conns {
		_ = c.nc.Close()
	}
	s.mu.Unlock()
	return err
}

func (s *Server) closeIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if !c.busy.Load() {
			_ = c.nc.Close()
		}
	}
}

type conn struct {
	srv   *Server
	nc    net.Conn
	peer  Peer
	admin bool
	fdr   *fdReader
	// params decodes the calls' parameters (Call.Decode).
	params paramDecoder
	wmu    sync.Mutex
	busy   atomic.Bool
	// active is when the connection last began or ended a call (Unix ns).
	active atomic.Int64
}

func (c *conn) touch() { c.active.Store(time.Now().UnixNano()) }

func (c *conn) write(r *Reply) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode reply: %w", err)
	}
	return c.send(append(b, 0))
}

// writeJSON sends a final reply whose parameters are encoded already, as
// write would have encoded it.
func (c *conn) writeJSON(params json.RawMessage) error {
	const head, tail = `{"parameters":`, "}\x00"
	bp := replyBufs.Get().(*[]byte)
	defer replyBufs.Put(bp)
	*bp = append(append(append((*bp)[:0], head...), params...), tail...)
	return c.send(*bp)
}

// replyBufs are writeJSON's buffers: a write is done with its buffer when it
// returns, so a reply costs no garbage.
var replyBufs = sync.Pool{New: func() any { return new([]byte) }}

// send writes one whole message: one write, so a reply never leaves in
// pieces.
func (c *conn) send(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout))
	_, err := c.nc.Write(b)
	return err
}

func (c *conn) serve() {
	defer func() {
		_ = c.nc.Close()
		if c.fdr != nil {
			closeAll(c.fdr.take())
		}
		c.srv.mu.Lock()
		delete(c.srv.conns, c)
		c.srv.limits.release(c.peer.UID, c.admin)
		c.srv.mu.Unlock()
	}()
	log := c.srv.cfg.Logger
	peer := c.peer
	// Ended when the client hangs up: a call that waits (a stream, a start)
	// is not left running for nobody.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var src io.Reader = c.nc
	if uc, ok := c.nc.(*net.UnixConn); ok {
		c.fdr = newFDReader(uc)
		src = c.fdr
	}
	br := bufio.NewReaderSize(src, 4096)
	// This goroutine reads. A call that may wait runs apart, so that a
	// hang-up read meanwhile cancels it; an inline call (Config.Inline)
	// runs here, with no handoff between goroutines. Calls on a connection
	// still run one at a time, in order: the next waits for the last.
	var apart chan bool // the result of the call running apart, if any
	wait := func() bool {
		if apart == nil {
			return true
		}
		ok := <-apart
		apart = nil
		return ok
	}
	for {
		b, err := c.readMessage(br)
		if err != nil {
			if errors.Is(err, errIdle) {
				log.Debug("closing an idle connection", "uid", peer.UID, "pid", peer.PID, "idle", c.srv.cfg.IdleTimeout)
			} else if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				log.Info("closing connection", "uid", peer.UID, "pid", peer.PID, "err", err)
			}
			cancel()
			wait()
			return
		}
		if !wait() || c.srv.draining.Load() {
			return
		}
		req, err := decodeRequest(b, c.srv.cfg.Methods)
		if err != nil {
			log.Info("closing connection", "uid", peer.UID, "pid", peer.PID, "err", err)
			return
		}
		if !req.More && c.srv.cfg.Inline[req.Method] {
			if !c.dispatch(ctx, peer, req) || c.srv.draining.Load() {
				return
			}
			continue
		}
		apart = make(chan bool, 1)
		go func(done chan<- bool) {
			ok := c.dispatch(ctx, peer, req)
			if !ok || c.srv.draining.Load() {
				// Wakes the read above, which then ends the connection.
				_ = c.nc.Close()
			}
			done <- ok
		}(apart)
	}
}

var errIdle = errors.New("connection idle")

// readMessage reads one NUL-terminated message. The wait for its first byte
// lasts while a call is in flight, or up to IdleTimeout after the last one
// began or ended; once started, the message must arrive within
// MessageTimeout and within MaxMessage bytes.
func (c *conn) readMessage(br *bufio.Reader) ([]byte, error) {
	if err := c.awaitMessage(br); err != nil {
		return nil, err
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(c.srv.cfg.MessageTimeout))
	var buf []byte
	for {
		chunk, err := br.ReadSlice(0)
		buf = append(buf, chunk...)
		if len(buf) > c.srv.cfg.MaxMessage+1 {
			return nil, fmt.Errorf("%w: message larger than %d bytes", ErrProtocol, c.srv.cfg.MaxMessage)
		}
		if err == nil {
			return buf[:len(buf)-1], nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) && len(buf) > 0 {
				return nil, fmt.Errorf("%w: connection closed mid-message", ErrProtocol)
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil, fmt.Errorf("%w: message not completed within %s", ErrProtocol, c.srv.cfg.MessageTimeout)
			}
			return nil, err
		}
	}
}

// awaitMessage waits for the first byte of the next message; errIdle when
// none comes within IdleTimeout of the last call while no call is in flight.
func (c *conn) awaitMessage(br *bufio.Reader) error {
	idle := c.srv.cfg.IdleTimeout
	for {
		deadline := time.Time{}
		if idle > 0 {
			deadline = time.Unix(0, c.active.Load()).Add(idle)
			if c.busy.Load() {
				// A call in flight keeps the connection; look again later.
				deadline = time.Now().Add(idle)
			}
		}
		_ = c.nc.SetReadDeadline(deadline)
		_, err := br.Peek(1)
		if err == nil {
			return nil
		}
		var ne net.Error
		if idle <= 0 || !errors.As(err, &ne) || !ne.Timeout() {
			return err
		}
		if !c.busy.Load() && time.Since(time.Unix(0, c.active.Load())) >= idle {
			return errIdle
		}
	}
}

// dispatch runs one call; false means the connection must close.
func (c *conn) dispatch(ctx context.Context, peer Peer, req *Request) bool {
	if !c.srv.begin() {
		return false
	}
	c.busy.Store(true)
	c.touch()
	defer func() {
		c.touch()
		c.busy.Store(false)
		c.srv.inflight.Done()
	}()
	if req.Upgrade {
		_ = c.write(&Reply{Parameters: map[string]any{"method": req.Method}, Error: ErrMethodNotImplemented})
		return false
	}
	call := &Call{Request: req, Peer: peer, conn: c}
	if c.fdr != nil {
		call.FDs = c.fdr.take()
		// Closing wakes any Socket wait still on them.
		defer closeAll(call.FDs)
	}
	if len(call.FDs) > 0 {
		// However the call ends, nothing keeps waiting on the client's files.
		defer context.AfterFunc(ctx, func() { expire(call.FDs) })()
	}
	if req.More {
		var stop context.CancelFunc
		ctx, stop = context.WithCancel(ctx)
		defer stop()
		go func() {
			select {
			case <-c.srv.streams.Done():
				stop()
			case <-ctx.Done():
			}
		}()
	}
	h, errName, errParams := c.srv.lookup(req.Method)
	if h == nil {
		return call.ReplyError(errName, errParams) == nil
	}
	herr := c.srv.run(ctx, h, call)
	if herr != nil && !call.replied {
		ve := c.srv.cfg.MapError(herr)
		if err := call.ReplyError(ve.Name, ve.Parameters); err != nil {
			return false
		}
	} else if herr == nil && !call.replied {
		if err := call.Reply(nil); err != nil {
			return false
		}
	} else if herr != nil {
		// The reply was already (partly) sent; a write error ends the connection.
		return !isConnErr(herr)
	}
	return true
}

func isConnErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, net.ErrClosed) || errors.Is(err, unix.EPIPE)
}

func (s *Server) lookup(method string) (Handler, string, any) {
	iface, member := SplitMethod(method)
	if iface == "org.varlink.service" {
		switch member {
		case "GetInfo":
			return s.getInfo, "", nil
		case "GetInterfaceDescription":
			return s.getDescription, "", nil
		}
		return nil, ErrMethodNotFound, map[string]any{"method": method}
	}
	if _, ok := s.cfg.Interfaces[iface]; !ok {
		return nil, ErrInterfaceNotFound, map[string]any{"interface": iface}
	}
	h, ok := s.cfg.Methods[method]
	if !ok {
		return nil, ErrMethodNotFound, map[string]any{"method": member}
	}
	return h, "", nil
}

func (s *Server) getInfo(_ context.Context, c *Call) error {
	ifaces := []string{"org.varlink.service"}
	for name := range s.cfg.Interfaces {
		ifaces = append(ifaces, name)
	}
	sort.Strings(ifaces[1:])
	return c.Reply(map[string]any{"vendor": s.cfg.Vendor, "product": s.cfg.Product, "version": s.cfg.Version, "url": s.cfg.URL, "interfaces": ifaces})
}

// ServiceDescription is the description of org.varlink.service itself.
const ServiceDescription = `# The Varlink Service Interface is provided by every varlink service.
interface org.varlink.service

method GetInfo() -> (vendor: string, product: string, version: string, url: string, interfaces: []string)
method GetInterfaceDescription(interface: string) -> (description: string)

error InterfaceNotFound (interface: string)
error MethodNotFound (method: string)
error MethodNotImplemented (method: string)
error InvalidParameter (parameter: string)
error PermissionDenied ()
error ExpectedMore ()
`

func (s *Server) getDescription(_ context.Context, c *Call) error {
	var p struct {
		Interface string `json:"interface"`
	}
	if err := c.Decode(&p); err != nil {
		return err
	}
	if p.Interface == "org.varlink.service" {
		return c.Reply(map[string]string{"description": ServiceDescription})
	}
	d, ok := s.cfg.Interfaces[p.Interface]
	if !ok {
		return c.ReplyError(ErrInterfaceNotFound, map[string]string{"interface": p.Interface})
	}
	return c.Reply(map[string]string{"description": d})
}

// run calls h, turning a panic into an error of the call (logged with its
// stack): one faulty handler must not take down every VM's API.
func (s *Server) run(ctx context.Context, h Handler, call *Call) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.cfg.Logger.Error("a call's handler panicked", "method", call.Method, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = fmt.Errorf("internal error in %s (the daemon's log has the details)", call.Method)
		}
	}()
	return h(ctx, call)
}
