package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/mdlayher/vsock"
)

// DefaultVsockPort is the vsock port paddock-agent listens on.
const DefaultVsockPort = 1024

// maxHybridReply bounds the "OK <port>\n" line of Firecracker's hybrid vsock.
const maxHybridReply = 32

// DialHybridVsock connects to guest port through Firecracker's hybrid vsock:
// it dials the VM's vsock UNIX socket, writes "CONNECT <port>\n" and expects
// "OK <hostport>\n" (read byte by byte, at most 32 bytes, within ctx's
// deadline or 5 s). The returned conn carries the guest stream.
func DialHybridVsock(ctx context.Context, udsPath string, port uint32) (net.Conn, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", udsPath)
	if err != nil {
		return nil, fmt.Errorf("agent: hybrid vsock: %w", err)
	}
	dl, _ := ctx.Deadline()
	_ = conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := hybridHandshake(conn, port); err != nil {
		conn.Close()
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

func hybridHandshake(rw io.ReadWriter, port uint32) error {
	if _, err := fmt.Fprintf(rw, "CONNECT %d\n", port); err != nil {
		return fmt.Errorf("agent: hybrid vsock: sending CONNECT: %w", err)
	}
	var line []byte
	b := make([]byte, 1)
	for {
		if _, err := io.ReadFull(rw, b); err != nil {
			return fmt.Errorf("agent: hybrid vsock: reading reply to CONNECT %d (got %q): %w", port, line, err)
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
		if len(line) > maxHybridReply {
			return fmt.Errorf("agent: hybrid vsock: reply to CONNECT %d longer than %d bytes: %q", port, maxHybridReply, line)
		}
	}
	rest, ok := bytes.CutPrefix(line, []byte("OK "))
	if !ok {
		return fmt.Errorf("agent: hybrid vsock: CONNECT %d refused: %q", port, line)
	}
	if _, err := strconv.ParseUint(string(rest), 10, 32); err != nil {
		return fmt.Errorf("agent: hybrid vsock: malformed reply %q", line)
	}
	return nil
}

// DialVsock connects to a guest's AF_VSOCK port through the host kernel
// (vhost-vsock).
func DialVsock(ctx context.Context, cid, port uint32) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := vsock.Dial(cid, port, nil)
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("agent: vsock dial %d:%d: %w", cid, port, r.err)
		}
		return r.c, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// ListenVsock listens on an AF_VSOCK port (guest side).
func ListenVsock(port uint32) (Listener, error) {
	l, err := vsock.Listen(port, nil)
	if err != nil {
		return nil, fmt.Errorf("agent: vsock listen %d: %w", port, err)
	}
	return NetListener(l), nil
}

// NetListener adapts a net.Listener.
func NetListener(l net.Listener) Listener { return netListener{l} }

type netListener struct{ l net.Listener }

func (n netListener) Accept() (io.ReadWriteCloser, error) { return n.l.Accept() }
func (n netListener) Close() error                        { return n.l.Close() }
