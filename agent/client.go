package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ClientOptions bound what the host accepts from a guest. Zero values take
// the defaults noted.
type ClientOptions struct {
	// MaxFrame is the largest frame accepted from the guest (DefaultMaxFrame).
	MaxFrame int
	// HelloTimeout bounds the hello exchange in NewClient when ctx has no
	// deadline (30 s).
	HelloTimeout time.Duration
	// RequestTimeout bounds each request whose ctx has no deadline (10 s).
	RequestTimeout time.Duration
	// FrameTimeout bounds reading a frame's body once its header arrived,
	// when the connection supports read deadlines (10 s).
	FrameTimeout time.Duration
	// MaxStreams bounds concurrent exec sessions (64).
	MaxStreams int
	// ClientName is sent in hello.
	ClientName string
}

func (o *ClientOptions) fill() {
	if o.MaxFrame <= 0 {
		o.MaxFrame = DefaultMaxFrame
	}
	if o.HelloTimeout <= 0 {
		o.HelloTimeout = 30 * time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 10 * time.Second
	}
	if o.FrameTimeout <= 0 {
		o.FrameTimeout = 10 * time.Second
	}
	if o.MaxStreams <= 0 {
		o.MaxStreams = 64
	}
	if o.ClientName == "" {
		o.ClientName = "paddock"
	}
}

// ErrClosed is returned for requests on a closed client.
var ErrClosed = errors.New("agent: connection closed")

// ProtocolError reports a guest that broke the protocol; the client closes
// the connection when it sees one.
type ProtocolError struct{ Err error }

func (e *ProtocolError) Error() string { return "agent: protocol violation by guest: " + e.Err.Error() }
func (e *ProtocolError) Unwrap() error { return e.Err }

// Client is the host side of one agent connection. Every byte from the guest
// is untrusted: frames are bounded by MaxFrame, every request has a
// deadline, exec output is bounded by flow control, and anything unexpected
// closes the connection with a ProtocolError.
type Client struct {
	conn io.ReadWriteCloser
	opts ClientOptions
	info HelloInfo

	wmu sync.Mutex // serializes frame writes

	mu         sync.Mutex
	pending    map[uint64]chan *Message
	nextID     uint64
	streams    map[uint32]*Process
	nextStream uint32
	err        error
	done       chan struct{}
}

type deadliner interface{ SetReadDeadline(time.Time) error }

// NewClient runs the hello exchange on conn and returns a client. conn is
// closed when NewClient fails or the client is closed.
func NewClient(ctx context.Context, conn io.ReadWriteCloser, opts *ClientOptions) (*Client, error) {
	var o ClientOptions
	if opts != nil {
		o = *opts
	}
	o.fill()
	c := &Client{conn: conn, opts: o, pending: map[uint64]chan *Message{}, streams: map[uint32]*Process{}, done: make(chan struct{})}
	go c.readLoop()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.HelloTimeout)
		defer cancel()
	}
	var info HelloInfo
	if err := c.call(ctx, OpHello, HelloRequest{Protocol: ProtocolVersion, Client: o.ClientName}, &info); err != nil {
		c.Close()
		return nil, fmt.Errorf("agent: hello: %w", err)
	}
	if info.Protocol != ProtocolVersion {
		c.Close()
		return nil, fmt.Errorf("agent: guest speaks protocol %d, host %d", info.Protocol, ProtocolVersion)
	}
	c.info = info
	return c, nil
}

// Hello returns the guest's hello answer.
func (c *Client) Hello() HelloInfo { return c.info }

// Done is closed when the connection ends.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended (nil while it is up).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection.
func (c *Client) Close() error {
	c.fail(ErrClosed)
	return nil
}

func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	streams := c.streams
	c.streams = map[uint32]*Process{}
	close(c.done)
	c.mu.Unlock()
	_ = c.conn.Close()
	for _, p := range streams {
		p.fail(err)
	}
}

func (c *Client) readLoop() {
	dl, _ := c.conn.(deadliner)
	r := &firstByteReader{r: c.conn}
	for {
		if dl != nil {
			_ = dl.SetReadDeadline(time.Time{})
		}
		r.started = func() {
			if dl != nil {
				_ = dl.SetReadDeadline(time.Now().Add(c.opts.FrameTimeout))
			}
		}
		payload, err := ReadFrame(r, c.opts.MaxFrame)
		if err != nil {
			switch {
			case errors.Is(err, ErrFrameTooLarge), errors.Is(err, ErrMalformed):
				c.fail(&ProtocolError{err})
			case errors.Is(err, os.ErrDeadlineExceeded):
				c.fail(fmt.Errorf("agent: guest stalled in the middle of a frame for %v: %w", c.opts.FrameTimeout, err))
			case errors.Is(err, io.EOF):
				c.fail(fmt.Errorf("agent: guest closed the connection: %w", io.EOF))
			default:
				c.fail(fmt.Errorf("agent: reading from guest: %w", err))
			}
			return
		}
		m, err := DecodeMessage(payload)
		if err != nil {
			c.fail(&ProtocolError{err})
			return
		}
		if err := c.dispatch(m); err != nil {
			c.fail(&ProtocolError{err})
			return
		}
	}
}

// firstByteReader calls started once the first byte of a frame arrived, so
// that a deadline covers the rest of the frame but not the idle wait.
type firstByteReader struct {
	r       io.Reader
	started func()
}

func (f *firstByteReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if n > 0 && f.started != nil {
		f.started()
		f.started = nil
	}
	return n, err
}

func (c *Client) dispatch(m *Message) error {
	switch m.T {
	case TypeResponse:
		c.mu.Lock()
		ch, ok := c.pending[m.ID]
		delete(c.pending, m.ID)
		issued := m.ID <= c.nextID
		c.mu.Unlock()
		if !ok {
			if issued { // a late reply to a request that timed out
				return nil
			}
			return fmt.Errorf("response to request %d that was never sent", m.ID)
		}
		ch <- m
		return nil
	case TypeOutput, TypeExit, TypeWindow:
		c.mu.Lock()
		p, ok := c.streams[m.Stream]
		known := m.Stream <= c.nextStream
		c.mu.Unlock()
		if !ok {
			if known { // stream already finished or abandoned
				return nil
			}
			return fmt.Errorf("%s message for unknown stream %d", m.T, m.Stream)
		}
		return p.handle(m)
	default:
		return fmt.Errorf("unexpected %q message from guest", m.T)
	}
}

func (c *Client) send(m *Message) error {
	buf, err := EncodeFrame(m, DefaultMaxFrame)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	select {
	case <-c.done:
		return c.Err()
	default:
	}
	if _, err := c.conn.Write(buf); err != nil {
		c.fail(fmt.Errorf("agent: writing to guest: %w", err))
		return err
	}
	return nil
}

// call sends a request and decodes the reply into out (unless nil).
func (c *Client) call(ctx context.Context, op string, body, out any) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.opts.RequestTimeout)
		defer cancel()
	}
	raw, err := json.Marshal(body)
	if err != nil {
		return err
	}
	ch := make(chan *Message, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}
	start := time.Now()
	if err := c.send(&Message{T: TypeRequest, ID: id, Op: op, Body: raw}); err != nil {
		forget()
		return err
	}
	select {
	case m := <-ch:
		if m.Err != nil {
			m.Err.Message = guestText(m.Err.Message, maxGuestError)
			return m.Err
		}
		if out != nil {
			if err := json.Unmarshal(m.Body, out); err != nil {
				err = &ProtocolError{fmt.Errorf("%s reply: %w", op, err)}
				c.fail(err)
				return err
			}
		}
		return nil
	case <-c.done:
		forget()
		return c.Err()
	case <-ctx.Done():
		forget()
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("agent: %s: no reply from guest within %v: %w", op, time.Since(start).Round(time.Millisecond), ctx.Err())
		}
		return ctx.Err()
	}
}

// Ping measures a round trip.
func (c *Client) Ping(ctx context.Context) (Pong, error) {
	var p Pong
	err := c.call(ctx, OpPing, struct{}{}, &p)
	return p, err
}

// Health asks for the guest's health.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	err := c.call(ctx, OpHealth, struct{}{}, &h)
	return h, err
}

// Stats asks for resource usage.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	var s Stats
	err := c.call(ctx, OpStats, struct{}{}, &s)
	return s, err
}

// Ports lists the guest's listening sockets.
func (c *Client) Ports(ctx context.Context) ([]Port, error) {
	var r PortsReply
	err := c.call(ctx, OpPorts, struct{}{}, &r)
	return r.Ports, err
}

// Shutdown asks the guest to stop everything and power off (or reboot). It
// returns once the guest acknowledged; the VMM exits shortly after.
func (c *Client) Shutdown(ctx context.Context, reboot bool) error {
	return c.call(ctx, OpShutdown, ShutdownRequest{Reboot: reboot}, nil)
}

// Process is an exec session.
type Process struct {
	c      *Client
	id     uint32
	PID    int
	tty    bool
	stdin  *credit
	stdout *inbuf
	stderr *inbuf
	exited chan struct{}
	status ExitStatus
	err    error
	mu     sync.Mutex
	inEOF  bool
}

// Exec starts a process in the guest. Read its output with Stdout and
// Stderr (each is flow-controlled: an unread stream stalls that process
// only), feed it with Stdin when req.Stdin is set, and collect its status
// with Wait.
func (c *Client) Exec(ctx context.Context, req ExecRequest) (*Process, error) {
	if len(req.Argv) == 0 {
		return nil, errors.New("agent: exec: empty argv")
	}
	return c.open(ctx, OpExec, fmt.Sprintf("exec %q", req.Argv[0]), req.TTY, func(s uint32) any {
		return struct {
			ExecRequest
			Stream uint32 `json:"s"`
		}{req, s}
	})
}

// Archive starts a tar stream of a guest path (see ArchiveRequest): read
// it from Stdout, then Wait; the stream is complete only when Wait
// reports neither an error nor a status with Error.
func (c *Client) Archive(ctx context.Context, req ArchiveRequest) (*Process, error) {
	return c.open(ctx, OpArchive, "archive "+req.Path, false, func(s uint32) any { req.Stream = s; return req })
}

// Extract starts unpacking a tar stream into the guest (see
// ExtractRequest): Write it, CloseStdin, then Wait.
func (c *Client) Extract(ctx context.Context, req ExtractRequest) (*Process, error) {
	return c.open(ctx, OpExtract, "extract into "+req.Path, false, func(s uint32) any { req.Stream = s; return req })
}

// open opens a stream (what names it in errors) with the request
// body(stream id).
func (c *Client) open(ctx context.Context, op, what string, tty bool, body func(uint32) any) (*Process, error) {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	if len(c.streams) >= c.opts.MaxStreams {
		c.mu.Unlock()
		return nil, fmt.Errorf("agent: %s: %d sessions already open", what, len(c.streams))
	}
	c.nextStream++
	p := &Process{c: c, id: c.nextStream, tty: tty, stdin: newCredit(StreamWindow), exited: make(chan struct{})}
	grant := func(fd int) func(int) {
		return func(n int) { _ = c.send(&Message{T: TypeWindow, Stream: p.id, Fd: fd, N: n}) }
	}
	p.stdout = newInbuf(StreamWindow, grant(1))
	p.stderr = newInbuf(StreamWindow, grant(2))
	if tty {
		_ = p.stderr.push(nil, true)
	}
	c.streams[p.id] = p
	c.mu.Unlock()

	var rep ExecReply
	if err := c.call(ctx, op, body(p.id), &rep); err != nil {
		c.mu.Lock()
		delete(c.streams, p.id)
		c.mu.Unlock()
		p.fail(err)
		return nil, fmt.Errorf("agent: %s: %w", what, err)
	}
	p.PID = rep.PID
	return p, nil
}

func (p *Process) handle(m *Message) error {
	switch m.T {
	case TypeOutput:
		b := p.stdout
		if m.Fd == 2 {
			b = p.stderr
		}
		if err := b.push(m.Data, m.EOF); err != nil {
			return fmt.Errorf("stream %d fd %d: %w", p.id, m.Fd, err)
		}
	case TypeWindow:
		if m.Fd != 0 {
			return fmt.Errorf("stream %d: window for fd %d", p.id, m.Fd)
		}
		p.stdin.add(m.N)
	case TypeExit:
		var st ExitStatus
		if err := json.Unmarshal(m.Body, &st); err != nil {
			return fmt.Errorf("stream %d exit: %w", p.id, err)
		}
		st.Error = guestText(st.Error, maxGuestError)
		p.mu.Lock()
		select {
		case <-p.exited:
			p.mu.Unlock()
			return fmt.Errorf("stream %d: second exit message", p.id)
		default:
		}
		p.status = st
		close(p.exited)
		p.mu.Unlock()
		p.stdin.close()
		// Output that has not ended by now never will.
		p.stdout.fail(io.ErrUnexpectedEOF)
		p.stderr.fail(io.ErrUnexpectedEOF)
		p.c.mu.Lock()
		delete(p.c.streams, p.id)
		p.c.mu.Unlock()
	}
	return nil
}

func (p *Process) fail(err error) {
	p.mu.Lock()
	select {
	case <-p.exited:
	default:
		p.err = err
		close(p.exited)
	}
	p.mu.Unlock()
	p.stdin.close()
	p.stdout.fail(err)
	p.stderr.fail(err)
}

// Stdout returns the process's standard output (the terminal with TTY).
func (p *Process) Stdout() io.Reader { return p.stdout }

// Stderr returns the process's standard error (empty with TTY).
func (p *Process) Stderr() io.Reader { return p.stderr }

// Write sends stdin data (the process must have been started with Stdin).
func (p *Process) Write(b []byte) (int, error) {
	p.mu.Lock()
	if p.inEOF {
		p.mu.Unlock()
		return 0, errors.New("agent: write after CloseStdin")
	}
	p.mu.Unlock()
	written := 0
	for len(b) > 0 {
		n, ok := p.stdin.take(min(len(b), MaxChunk))
		if !ok {
			if written == 0 {
				return 0, io.ErrClosedPipe
			}
			return written, io.ErrClosedPipe
		}
		if err := p.c.send(&Message{T: TypeInput, Stream: p.id, Data: b[:n]}); err != nil {
			return written, err
		}
		written += n
		b = b[n:]
	}
	return written, nil
}

// CloseStdin signals end of input.
func (p *Process) CloseStdin() error {
	p.mu.Lock()
	if p.inEOF {
		p.mu.Unlock()
		return nil
	}
	p.inEOF = true
	p.mu.Unlock()
	return p.c.send(&Message{T: TypeInput, Stream: p.id, EOF: true})
}

// Signal sends sig to the process (its process group).
func (p *Process) Signal(ctx context.Context, sig syscall.Signal) error {
	return p.c.call(ctx, OpSignal, SignalRequest{Stream: p.id, Signal: int(sig)}, nil)
}

// Resize sets the terminal size of a TTY session.
func (p *Process) Resize(ctx context.Context, rows, cols int) error {
	return p.c.call(ctx, OpResize, ResizeRequest{Stream: p.id, Rows: rows, Cols: cols}, nil)
}

// Wait waits for the process to exit (or the connection to fail).
func (p *Process) Wait(ctx context.Context) (ExitStatus, error) {
	select {
	case <-p.exited:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.status, p.err
	case <-ctx.Done():
		return ExitStatus{}, ctx.Err()
	}
}

// RunResult is what Run collects.
type RunResult struct {
	Status ExitStatus
	Stdout []byte
	Stderr []byte
	// Truncated reports output beyond the limit was dropped.
	Truncated bool
}

// Run executes req, feeds it stdin (if not nil), and collects up to limit
// bytes of each output stream (1 MiB when limit <= 0).
func (c *Client) Run(ctx context.Context, req ExecRequest, stdin io.Reader, limit int) (*RunResult, error) {
	if limit <= 0 {
		limit = 1 << 20
	}
	req.Stdin = stdin != nil
	p, err := c.Exec(ctx, req)
	if err != nil {
		return nil, err
	}
	res := &RunResult{}
	var wg sync.WaitGroup
	var trunc [2]bool
	collect := func(r io.Reader, dst *bytes.Buffer, truncated *bool) {
		defer wg.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				room := limit - dst.Len()
				if n > room {
					n = room
					*truncated = true
				}
				dst.Write(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}
	var out, errb bytes.Buffer
	wg.Add(2)
	go collect(p.Stdout(), &out, &trunc[0])
	go collect(p.Stderr(), &errb, &trunc[1])
	if stdin != nil {
		go func() {
			_, _ = io.Copy(p, stdin)
			_ = p.CloseStdin()
		}()
	}
	st, err := p.Wait(ctx)
	if err != nil {
		return nil, err
	}
	wg.Wait()
	res.Status, res.Stdout, res.Stderr = st, out.Bytes(), errb.Bytes()
	res.Truncated = trunc[0] || trunc[1]
	return res, nil
}

// maxGuestError bounds the error text a guest reports for a stream.
const maxGuestError = 1024

// guestText makes text from the guest fit to show: at most max bytes,
// control characters replaced.
func guestText(s string, max int) string {
	if len(s) > max {
		s = s[:max] + "…"
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
}

// Freeze freezes the guest's file system mounted at path (one of its
// workspaces) until Thaw, or until timeout passes (MaxFreeze at most).
func (c *Client) Freeze(ctx context.Context, path string, timeout time.Duration) error {
	return c.call(ctx, OpFreeze, FreezeRequest{Path: path, TimeoutMS: timeout.Milliseconds()}, nil)
}

// Identity gives a guest resumed from a template its own identity (see
// IdentityRequest); the reply's phases are bounded and their names kept
// short by the caller.
func (c *Client) Identity(ctx context.Context, req IdentityRequest) (IdentityReply, error) {
	var r IdentityReply
	err := c.call(ctx, OpIdentity, req, &r)
	if len(r.Phases) > 16 {
		r.Phases = r.Phases[:16]
	}
	return r, err
}

// Thaw ends a Freeze of path.
func (c *Client) Thaw(ctx context.Context, path string) error {
	return c.call(ctx, OpThaw, FreezeRequest{Path: path}, nil)
}
