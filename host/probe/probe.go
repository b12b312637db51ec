// Package probe decides, from outside a guest, what a listening TCP port
// speaks: TLS ("https"), plain HTTP ("http") or something else ("tcp").
//
// Classify makes at most two connections to the port:
//
//  1. A TLS ClientHello (crypto/tls, certificate not verified). A completed
//     handshake means https; so does a failed handshake whose first record
//     from the peer was a TLS ServerHello or a TLS alert (a server that
//     wants a client certificate, or supports no cipher we offer, still
//     speaks TLS).
//  2. Otherwise, on a new connection, "HEAD / HTTP/1.1" with Host and
//     "Connection: close". A reply that starts with "HTTP/" means http;
//     anything else, a close, or silence until the deadline means tcp.
//
// The peer is untrusted (it is a guest). Each step, dial included, is bounded
// by Options.Timeout and by the caller's context, and at most
// Options.MaxRead bytes are read from each connection. Strings taken from
// the peer (the HTTP status line, a banner) are truncated and stripped of
// control characters before they reach Result.Detail.
package probe

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"time"

	"github.com/paddock-vm/paddock/errdefs"
)

// Schemes reported in Result.Scheme.
const (
	SchemeHTTPS = "https"
	SchemeHTTP  = "http"
	SchemeTCP   = "tcp"
)

// Defaults for the zero fields of Options.
const (
	DefaultTimeout = time.Second
	DefaultMaxRead = 4 << 10
)

// maxDetail bounds the length of peer-supplied text in Result.Detail.
const maxDetail = 120

// ErrUnreachable is wrapped by Classify's error when the port cannot be
// connected to (refused, unreachable, or the dial timed out).
var ErrUnreachable = errdefs.New(errdefs.ErrUnavailable, "port unreachable")

// errReadLimit ends reading once Options.MaxRead bytes came from the peer.
var errReadLimit = errors.New("probe: read limit reached")

// Options bound a Classify call. The zero value uses the defaults.
type Options struct {
	// Timeout bounds each step (dial plus exchange); a Classify call
	// takes at most about twice as long. Zero means DefaultTimeout.
	Timeout time.Duration
	// MaxRead is the most bytes read from the peer on each connection.
	// Zero means DefaultMaxRead.
	MaxRead int
	// Dial opens the connections, e.g. from inside the network namespace
	// the guest's tap lives in. Nil means a net.Dialer. It is called with
	// network "tcp" and a context carrying the step's deadline.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.MaxRead <= 0 {
		o.MaxRead = DefaultMaxRead
	}
	if o.Dial == nil {
		var d net.Dialer
		o.Dial = d.DialContext
	}
	return o
}

// Result is what Classify found.
type Result struct {
	// Scheme is SchemeHTTPS, SchemeHTTP or SchemeTCP.
	Scheme string
	// URL is where a user can reach the port: "https://10.77.0.2:8443/",
	// "http://10.77.0.2:8080/" or "tcp://10.77.0.2:9000".
	URL string
	// Detail is a human-readable note: the TLS version, the HTTP status
	// line, or the first line a tcp service sent.
	Detail string
}

// Classify decides what the TCP port at addr speaks. It returns an error
// wrapping ErrUnreachable when the port cannot be connected to, and the
// context's error when ctx ends first; any other outcome is a Result.
func Classify(ctx context.Context, addr netip.AddrPort, opts Options) (Result, error) {
	if !addr.IsValid() || addr.Port() == 0 {
		return Result{}, fmt.Errorf("probe %v: invalid address", addr)
	}
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	opts = opts.withDefaults()

	detail, isTLS, err := tryTLS(ctx, addr, opts)
	if err != nil {
		return Result{}, err
	}
	if isTLS {
		return result(SchemeHTTPS, addr, detail), nil
	}
	detail, isHTTP, err := tryHTTP(ctx, addr, opts)
	if err != nil {
		return Result{}, err
	}
	if isHTTP {
		return result(SchemeHTTP, addr, detail), nil
	}
	return result(SchemeTCP, addr, detail), nil
}

func result(scheme string, addr netip.AddrPort, detail string) Result {
	u := url.URL{Scheme: scheme, Host: addr.String()}
	if scheme != SchemeTCP {
		u.Path = "/"
	}
	return Result{Scheme: scheme, URL: u.String(), Detail: detail}
}

// step is one bounded connection: dial, then exchange until close.
type step struct {
	conn *limitConn
	stop func() bool
	ctx  context.Context
	done context.CancelFunc
}

// dial opens a connection for one step. The connection's deadline is the
// step's, and it is moved into the past when ctx ends, so a blocked read or
// write returns at once.
func dial(ctx context.Context, addr netip.AddrPort, opts Options) (*step, error) {
	sctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	c, err := opts.Dial(sctx, "tcp", addr.String())
	if err != nil {
		cancel()
		if err := ctxErr(ctx); err != nil {
			return nil, fmt.Errorf("probe %v: %w", addr, err)
		}
		return nil, fmt.Errorf("probe %v: %w: %w", addr, ErrUnreachable, err)
	}
	dl, _ := sctx.Deadline()
	if err := c.SetDeadline(dl); err != nil {
		c.Close()
		cancel()
		return nil, fmt.Errorf("probe %v: %w", addr, err)
	}
	s := &step{conn: &limitConn{Conn: c, left: opts.MaxRead}, ctx: sctx, done: cancel}
	s.stop = context.AfterFunc(sctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	return s, nil
}

// ctxErr is ctx.Err(), or context.DeadlineExceeded once ctx's deadline has
// passed: a connection deadline set from it may fire before ctx's own timer.
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}

func (s *step) close() {
	s.stop()
	s.done()
	s.conn.Close()
}

// tryTLS is step 1: a TLS handshake. It reports whether the peer speaks TLS
// and the TLS version (or the handshake failure) as detail.
func tryTLS(ctx context.Context, addr netip.AddrPort, opts Options) (detail string, ok bool, err error) {
	s, err := dial(ctx, addr, opts)
	if err != nil {
		return "", false, err
	}
	defer s.close()
	tc := tls.Client(s.conn, &tls.Config{
		InsecureSkipVerify: true, // a probe: any certificate will do
		MinVersion:         tls.VersionTLS10,
	})
	herr := tc.HandshakeContext(s.ctx)
	if err := ctxErr(ctx); err != nil {
		return "", false, fmt.Errorf("probe %v: %w", addr, err)
	}
	if herr == nil {
		return tls.VersionName(tc.ConnectionState().Version), true, nil
	}
	if !s.conn.tlsRecord() {
		return "", false, nil
	}
	return "TLS handshake failed: " + clean([]byte(herr.Error())), true, nil
}

// tryHTTP is step 2: an HTTP/1.1 HEAD request. It reports whether the reply
// is HTTP and, as detail, the status line or what the peer sent instead.
func tryHTTP(ctx context.Context, addr netip.AddrPort, opts Options) (detail string, ok bool, err error) {
	s, err := dial(ctx, addr, opts)
	if err != nil {
		return "", false, err
	}
	defer s.close()
	req := "HEAD / HTTP/1.1\r\nHost: " + netip.AddrPortFrom(addr.Addr().WithZone(""), addr.Port()).String() +
		"\r\nUser-Agent: paddock-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
	// A failed write is not final: a service that writes a banner and
	// closes may reset the connection before the request is sent, and
	// its banner can still be read.
	_, _ = io.WriteString(s.conn, req)

	buf := make([]byte, opts.MaxRead)
	n := 0
	var rerr error
	for n < len(buf) && bytes.IndexByte(buf[:n], '\n') < 0 {
		var m int
		m, rerr = s.conn.Read(buf[n:])
		n += m
		if rerr != nil {
			break
		}
	}
	if err := ctxErr(ctx); err != nil {
		return "", false, fmt.Errorf("probe %v: %w", addr, err)
	}
	got := buf[:n]
	if i := bytes.IndexByte(got, '\n'); i >= 0 {
		got = got[:i]
	}
	got = bytes.TrimSuffix(got, []byte("\r"))
	switch {
	case bytes.HasPrefix(got, []byte("HTTP/")):
		return clean(got), true, nil
	case len(got) > 0:
		return "banner: " + clean(got), false, nil
	case n > 0:
		return "sent an empty line", false, nil
	case errors.Is(rerr, os.ErrDeadlineExceeded):
		return fmt.Sprintf("no response within %v", opts.Timeout), false, nil
	default:
		return "closed without data", false, nil
	}
}

// limitConn lets at most left bytes be read from the peer and keeps the
// first bytes read, to recognise a TLS record after a failed handshake.
type limitConn struct {
	net.Conn
	left  int
	head  [6]byte
	nhead int
}

func (c *limitConn) Read(b []byte) (int, error) {
	if c.left <= 0 {
		return 0, errReadLimit
	}
	if len(b) > c.left {
		b = b[:c.left]
	}
	n, err := c.Conn.Read(b)
	c.left -= n
	c.nhead += copy(c.head[c.nhead:], b[:n])
	return n, err
}

// tlsRecord reports whether the peer's first bytes are a TLS record header
// opening a ServerHello or a plaintext alert.
func (c *limitConn) tlsRecord() bool {
	h := c.head[:c.nhead]
	if len(h) < 5 || h[1] != 3 || h[2] > 4 {
		return false
	}
	length := int(h[3])<<8 | int(h[4])
	switch h[0] {
	case 21: // alert: level and description
		return length == 2
	case 22: // handshake: the first message must be a ServerHello
		return length > 0 && length <= 1<<14 && (len(h) < 6 || h[5] == 2)
	}
	return false
}

// clean makes peer-supplied bytes safe to show: printable ASCII only,
// at most maxDetail bytes.
func clean(b []byte) string {
	if len(b) > maxDetail {
		b = b[:maxDetail]
	}
	out := make([]byte, len(b))
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			c = '.'
		}
		out[i] = c
	}
	return string(out)
}
