package varlink

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Client is one connection to a varlink service. Calls on it are serialized.
type Client struct {
	nc         net.Conn
	br         *bufio.Reader
	buf        []byte // recv's, kept between calls (they are serialized)
	wbuf       bytes.Buffer
	enc        *json.Encoder // writes to wbuf
	MaxMessage int
}

// Dial connects to a UNIX socket path.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	return &Client{nc: nc, br: bufio.NewReaderSize(nc, 64<<10), MaxMessage: 64 << 20}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.nc.Close() }

// Call sends method with params and decodes the single reply into out (may
// be nil). A varlink error reply is returned as *Error.
func (c *Client) Call(ctx context.Context, method string, params, out any) error {
	return c.CallFDs(ctx, method, params, out, nil)
}

// CallFDs is Call passing open files along (SCM_RIGHTS).
func (c *Client) CallFDs(ctx context.Context, method string, params, out any, files []*os.File) error {
	if err := c.send(ctx, method, params, false, files); err != nil {
		return c.refusal(ctx, err)
	}
	r, err := c.recv(ctx)
	if err != nil {
		return err
	}
	return decodeReply(r, out)
}

// Stream sends a "more" call and hands each reply's parameters to fn until
// the service sends the last one, fn returns an error, or ctx ends.
func (c *Client) Stream(ctx context.Context, method string, params any, fn func(json.RawMessage) error) error {
	return c.StreamFDs(ctx, method, params, nil, fn)
}

// StreamFDs is Stream passing open files along (SCM_RIGHTS).
func (c *Client) StreamFDs(ctx context.Context, method string, params any, files []*os.File, fn func(json.RawMessage) error) error {
	if err := c.send(ctx, method, params, true, files); err != nil {
		return c.refusal(ctx, err)
	}
	for {
		r, err := c.recv(ctx)
		if err != nil {
			return err
		}
		if err := decodeReply(r, nil); err != nil {
			return err
		}
		// fn may keep what it is given; the buffer is the next reply's.
		if err := fn(bytes.Clone(r.Parameters)); err != nil {
			return err
		}
		if !r.Continues {
			return nil
		}
	}
}

type wireReply struct {
	Parameters borrowed `json:"parameters"`
	Continues  bool     `json:"continues"`
	Error      string   `json:"error"`
}

// borrowed is a reply's parameters left in the client's read buffer, not
// copied: good until the next recv.
type borrowed []byte

// UnmarshalJSON keeps b, a slice of the message being decoded.
func (p *borrowed) UnmarshalJSON(b []byte) error {
	*p = b
	return nil
}

func decodeReply(r *wireReply, out any) error {
	if r.Error != "" {
		return &Error{Name: r.Error, Parameters: bytes.Clone(r.Parameters)}
	}
	if out == nil || len(r.Parameters) == 0 {
		return nil
	}
	if err := json.Unmarshal(r.Parameters, out); err != nil {
		return fmt.Errorf("decode reply: %w", err)
	}
	return nil
}

func (c *Client) send(ctx context.Context, method string, params any, more bool, files []*os.File) error {
	req := struct {
		Method     string `json:"method"`
		Parameters any    `json:"parameters,omitempty"`
		More       bool   `json:"more,omitempty"`
	}{method, params, more}
	// Encoded into the client's own buffer (as json.Marshal would, but
	// with no garbage per call), the Encoder's newline made the NUL.
	c.wbuf.Reset()
	if c.enc == nil {
		c.enc = json.NewEncoder(&c.wbuf)
	}
	defer func() {
		if c.wbuf.Cap() > 64<<10 { // a large request's buffer is not kept
			c.wbuf, c.enc = bytes.Buffer{}, nil
		}
	}()
	if err := c.enc.Encode(req); err != nil {
		return fmt.Errorf("encode %s: %w", method, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.nc.SetWriteDeadline(dl)
	} else {
		_ = c.nc.SetWriteDeadline(time.Time{})
	}
	b := c.wbuf.Bytes()
	b[len(b)-1] = 0
	var err error
	if len(files) == 0 {
		_, err = c.nc.Write(b)
		return err
	}
	uc, ok := c.nc.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("passing files needs a UNIX socket")
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	_, _, err = uc.WriteMsgUnix(b, unix.UnixRights(fds...), nil)
	return err
}

// refusal turns a failed send into the error the service sent before it
// closed the connection (a service refusing a connection at accept says
// why first), or returns the send's own error.
func (c *Client) refusal(ctx context.Context, sendErr error) error {
	ctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if r, err := c.recv(ctx); err == nil && r.Error != "" {
		return decodeReply(r, nil)
	}
	return sendErr
}

func (c *Client) recv(ctx context.Context) (*wireReply, error) {
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { _ = c.nc.SetReadDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.nc.SetReadDeadline(dl)
	} else {
		_ = c.nc.SetReadDeadline(time.Time{})
	}
	// The reply is decoded (its parameters copied) before the next call, so
	// one buffer serves them all; a large one is not kept.
	buf := c.buf[:0]
	defer func() {
		if cap(buf) <= 64<<10 {
			c.buf = buf
		}
	}()
	for {
		chunk, err := c.br.ReadSlice(0)
		buf = append(buf, chunk...)
		if len(buf) > c.MaxMessage {
			return nil, fmt.Errorf("reply larger than %d bytes", c.MaxMessage)
		}
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("connection closed by the service: %w", io.ErrUnexpectedEOF)
		}
		return nil, err
	}
	var r wireReply
	if err := json.Unmarshal(buf[:len(buf)-1], &r); err != nil {
		return nil, fmt.Errorf("malformed reply: %w", err)
	}
	return &r, nil
}
