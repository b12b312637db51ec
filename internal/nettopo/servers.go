//go:build linux

package nettopo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// MaxBytes bounds GET /bytes?n=N.
const MaxBytes = 4 << 30

// HTTPServer is the uplink's web server:
//
//	GET /ip         the client's address as the server saw it, and a newline
//	GET /bytes?n=N  N zero bytes (N <= MaxBytes), with Content-Length
//	POST /sink      reads the body and answers its length in bytes
//
// It records the address of every request it serves (Seen).
type HTTPServer struct {
	srv  *http.Server
	done chan struct{}

	mu   sync.Mutex
	seen []netip.Addr
}

// StartHTTP serves on addr inside n.
func StartHTTP(n *Netns, addr netip.AddrPort) (*HTTPServer, error) {
	ln, err := n.Listen("tcp", addr.String())
	if err != nil {
		return nil, err
	}
	s := &HTTPServer{done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ip", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, s.record(r).String())
	})
	mux.HandleFunc("GET /bytes", func(w http.ResponseWriter, r *http.Request) {
		s.record(r)
		size, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || size < 0 || size > MaxBytes {
			http.Error(w, fmt.Sprintf("n=%q: want a byte count from 0 to %d", r.URL.Query().Get("n"), int64(MaxBytes)), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = io.CopyN(w, zeros{}, size)
	})
	mux.HandleFunc("POST /sink", func(w http.ResponseWriter, r *http.Request) {
		s.record(r)
		got, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintln(w, got)
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

func (s *HTTPServer) record(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	a := ap.Addr().Unmap()
	s.mu.Lock()
	s.seen = append(s.seen, a)
	s.mu.Unlock()
	return a
}

// Seen returns the client address of every request served so far.
func (s *HTTPServer) Seen() []netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]netip.Addr(nil), s.seen...)
}

// Close stops the server and its connections and waits for it. Nil-safe.
func (s *HTTPServer) Close() error {
	if s == nil {
		return nil
	}
	err := s.srv.Close()
	<-s.done
	return err
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// Result is one TCP transfer as its receiving end saw it: from the first
// byte to the sender's end of stream.
type Result struct {
	Peer    netip.AddrPort
	Bytes   int64
	Elapsed time.Duration
}

// BytesPerSec is the transfer's throughput; 0 for an empty transfer.
func (r Result) BytesPerSec() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Bytes) / r.Elapsed.Seconds()
}

func (r Result) String() string {
	return fmt.Sprintf("%d bytes in %v = %.1f MB/s", r.Bytes, r.Elapsed.Round(time.Microsecond), r.BytesPerSec()/1e6)
}

// Receive reads c to its end and times it from the first byte. ctx bounds
// the whole transfer (c is closed when it ends first).
func Receive(ctx context.Context, c net.Conn) (Result, error) {
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var res Result
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		res.Peer = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	buf := make([]byte, 256<<10)
	var first time.Time
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if res.Bytes == 0 {
				first = time.Now()
			}
			res.Bytes += int64(n)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if ctx.Err() != nil {
				err = fmt.Errorf("%w (after %d bytes)", ctx.Err(), res.Bytes)
			}
			return res, fmt.Errorf("receiving from %s: %w", res.Peer, err)
		}
	}
	if res.Bytes > 0 {
		res.Elapsed = time.Since(first)
	}
	return res, nil
}

// Send writes n zero bytes to c, ends its half of the stream and waits for
// the receiver to close its own, so that Send returns once every byte is in.
func Send(ctx context.Context, c net.Conn, n int64) error {
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := io.CopyN(c, zeros{}, n); err != nil {
		return fmt.Errorf("sending to %s: %w", c.RemoteAddr(), err)
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil {
			return err
		}
	}
	if _, err := io.Copy(io.Discard, io.LimitReader(c, 1<<20)); err != nil {
		return fmt.Errorf("waiting for %s to finish: %w", c.RemoteAddr(), err)
	}
	return nil
}

// Sink accepts TCP connections and receives each to its end (Receive); the
// results come out of Next in order of completion. A connection is closed
// once received, so a sender like `dd ... | nc HOST PORT` ends.
type Sink struct {
	ln      net.Listener
	results chan sinkResult
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

type sinkResult struct {
	res Result
	err error
}

// sinkTimeout bounds one transfer into the sink.
const sinkTimeout = 10 * time.Minute

// StartSink listens on addr inside n.
func StartSink(n *Netns, addr netip.AddrPort) (*Sink, error) {
	ln, err := n.Listen("tcp", addr.String())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Sink{ln: ln, results: make(chan sinkResult, 64), ctx: ctx, cancel: cancel}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *Sink) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			ctx, cancel := context.WithTimeout(s.ctx, sinkTimeout)
			defer cancel()
			res, err := Receive(ctx, c)
			select {
			case s.results <- sinkResult{res, err}:
			default: // nobody reads this many results: drop, never block
			}
		}()
	}
}

// Next waits for the next finished transfer.
func (s *Sink) Next(ctx context.Context) (Result, error) {
	select {
	case r := <-s.results:
		return r.res, r.err
	case <-ctx.Done():
		return Result{}, fmt.Errorf("waiting for a transfer into the sink: %w", ctx.Err())
	}
}

// Close stops accepting, ends transfers in flight and waits for them.
// Nil-safe.
func (s *Sink) Close() error {
	if s == nil {
		return nil
	}
	err := s.ln.Close()
	s.cancel()
	s.wg.Wait()
	return err
}
