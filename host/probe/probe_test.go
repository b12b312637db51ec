package probe

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// listen starts a raw TCP server on 127.0.0.1 that hands every connection
// to serve, and stops it (and every open connection) when the test ends.
func listen(t *testing.T, serve func(net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { defer c.Close(); serve(c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return netip.MustParseAddrPort(ln.Addr().String())
}

func addrOf(t *testing.T, rawURL string) netip.AddrPort {
	t.Helper()
	host := strings.TrimPrefix(strings.TrimPrefix(rawURL, "https://"), "http://")
	return netip.MustParseAddrPort(host)
}

// quietLog keeps httptest servers' handshake-error logs out of test output.
var quietLog = log.New(io.Discard, "", 0)

// countingDial dials with a net.Dialer and counts, per connection, the bytes
// read from the socket underneath everything Classify does.
type countingDial struct {
	mu    sync.Mutex
	reads []*atomic.Int64
}

type countConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(int64(n))
	return n, err
}

func (d *countingDial) dial(ctx context.Context, network, address string) (net.Conn, error) {
	var nd net.Dialer
	c, err := nd.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	n := new(atomic.Int64)
	d.mu.Lock()
	d.reads = append(d.reads, n)
	d.mu.Unlock()
	return countConn{c, n}, nil
}

func (d *countingDial) counts() []int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []int64
	for _, n := range d.reads {
		out = append(out, n.Load())
	}
	return out
}

// garbage is 1 MiB of bytes that look like neither TLS nor HTTP and hold no
// newline, so only the read limit stops a reader.
var garbage = func() []byte {
	b := make([]byte, 1<<20)
	for i := range b {
		b[i] = byte(0x80 + i%0x7f)
	}
	return b
}()

func TestClassify(t *testing.T) {
	// The HTTP server records what the probe asked, to pin the request.
	type seen struct {
		method, host string
		close        bool
	}
	var (
		reqMu sync.Mutex
		reqs  []seen
	)
	httpSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqMu.Lock()
		reqs = append(reqs, seen{r.Method, r.Host, r.Close})
		reqMu.Unlock()
		w.WriteHeader(http.StatusTeapot)
	}))
	httpSrv.Config.ErrorLog = quietLog
	httpSrv.Start()
	t.Cleanup(httpSrv.Close)

	tlsSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	tlsSrv.Config.ErrorLog = quietLog
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)

	// A TLS 1.2 server that insists on a client certificate: the handshake
	// fails with an alert, yet the port speaks TLS.
	mtlsSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	mtlsSrv.Config.ErrorLog = quietLog
	mtlsSrv.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert, MaxVersion: tls.VersionTLS12}
	mtlsSrv.StartTLS()
	t.Cleanup(mtlsSrv.Close)

	banner := listen(t, func(c net.Conn) { io.WriteString(c, "hello from tcp\n") })
	silent := listen(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	junk := listen(t, func(c net.Conn) { c.Write(garbage); io.Copy(io.Discard, c) })
	// Answers every ClientHello with a bare fatal alert (handshake_failure).
	alert := listen(t, func(c net.Conn) {
		c.Write([]byte{21, 3, 3, 0, 2, 2, 40})
		io.Copy(io.Discard, c)
	})
	// Reads the request, then sends a status line and stalls, with no
	// newline: a reply that starts with "HTTP/" is enough.
	partialHTTP := listen(t, func(c net.Conn) {
		br := make([]byte, 1)
		c.Read(br)
		if br[0] == 22 { // a ClientHello: hang up, like a plain server
			return
		}
		io.WriteString(c, "HTTP/1.0 200 OK")
		io.Copy(io.Discard, c)
	})
	// Says "HTTP/" only as a greeting, not to the request: still not http
	// when the greeting is not at the start of the reply.
	notHTTP := listen(t, func(c net.Conn) { io.WriteString(c, "220 smtp ready HTTP/1.1\r\n") })

	const step = 300 * time.Millisecond
	tests := []struct {
		name       string
		addr       netip.AddrPort
		scheme     string
		url        string
		detail     string // substring
		minElapsed time.Duration
	}{
		{"https", addrOf(t, tlsSrv.URL), SchemeHTTPS, tlsSrv.URL + "/", "TLS 1.3", 0},
		{"https needing a client certificate", addrOf(t, mtlsSrv.URL), SchemeHTTPS, mtlsSrv.URL + "/", "TLS handshake failed", 0},
		{"tls alert", alert, SchemeHTTPS, "https://" + alert.String() + "/", "TLS handshake failed", 0},
		{"http", addrOf(t, httpSrv.URL), SchemeHTTP, httpSrv.URL + "/", "HTTP/1.1 418 I'm a teapot", 0},
		{"http status line without newline", partialHTTP, SchemeHTTP, "http://" + partialHTTP.String() + "/", "HTTP/1.0 200 OK", 0},
		{"tcp banner", banner, SchemeTCP, "tcp://" + banner.String(), "banner: hello from tcp", 0},
		{"tcp banner mentioning HTTP", notHTTP, SchemeTCP, "tcp://" + notHTTP.String(), "banner: 220 smtp ready", 0},
		// Silent: both steps wait out their deadline.
		{"tcp silent", silent, SchemeTCP, "tcp://" + silent.String(), "no response within", 2 * step},
		{"tcp 1 MiB garbage", junk, SchemeTCP, "tcp://" + junk.String(), "banner: ", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var cd countingDial
			start := time.Now()
			res, err := Classify(t.Context(), tc.addr, Options{Timeout: step, Dial: cd.dial})
			elapsed := time.Since(start)
			if err != nil {
				t.Fatalf("Classify: %v", err)
			}
			if res.Scheme != tc.scheme || res.URL != tc.url || !strings.Contains(res.Detail, tc.detail) {
				t.Errorf("got %+v, want scheme %q url %q detail containing %q", res, tc.scheme, tc.url, tc.detail)
			}
			if elapsed < tc.minElapsed || elapsed > 2*step+time.Second {
				t.Errorf("took %v, want between %v and %v", elapsed, tc.minElapsed, 2*step+time.Second)
			}
			counts := cd.counts()
			wantConns := 2
			if tc.scheme == SchemeHTTPS {
				wantConns = 1
			}
			if len(counts) != wantConns {
				t.Errorf("%d connections, want %d", len(counts), wantConns)
			}
			for i, n := range counts {
				if n > DefaultMaxRead {
					t.Errorf("connection %d read %d bytes, more than %d", i, n, DefaultMaxRead)
				}
			}
			if len(res.Detail) > len("TLS handshake failed: ")+maxDetail {
				t.Errorf("detail is %d bytes long", len(res.Detail))
			}
		})
	}

	reqMu.Lock()
	defer reqMu.Unlock()
	want := seen{http.MethodHead, addrOf(t, httpSrv.URL).String(), true}
	if len(reqs) != 1 || reqs[0] != want {
		t.Errorf("HTTP server saw %+v, want exactly %+v", reqs, want)
	}
}

// TestClassifyReadLimit sends 1 MiB of garbage and checks that each
// connection reads exactly MaxRead bytes from the socket, no more.
func TestClassifyReadLimit(t *testing.T) {
	junk := listen(t, func(c net.Conn) { c.Write(garbage); io.Copy(io.Discard, c) })
	for _, max := range []int{7, 100, 1000} {
		var cd countingDial
		res, err := Classify(t.Context(), junk, Options{Timeout: time.Second, MaxRead: max, Dial: cd.dial})
		if err != nil {
			t.Fatal(err)
		}
		if res.Scheme != SchemeTCP {
			t.Errorf("MaxRead %d: scheme %q, want tcp", max, res.Scheme)
		}
		counts := cd.counts()
		if len(counts) != 2 {
			t.Fatalf("MaxRead %d: %d connections, want 2", max, len(counts))
		}
		// The TLS client gives up after one record header; the HTTP step
		// reads until its buffer is full.
		if counts[0] > int64(max) || counts[1] != int64(max) {
			t.Errorf("MaxRead %d: read %v bytes per connection", max, counts)
		}
		if want := "banner: " + clean(garbage[:min(max, maxDetail)]); res.Detail != want {
			t.Errorf("MaxRead %d: detail %q, want %q", max, res.Detail, want)
		}
	}
}

func TestClassifyUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	res, err := Classify(t.Context(), addr, Options{})
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Classify(closed port) = %+v, %v; want ErrUnreachable", res, err)
	}

	// A port that vanishes between the two steps is unreachable too.
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln2.Close() })
	go func() {
		c, err := ln2.Accept()
		if err != nil {
			return
		}
		ln2.Close() // before c's close ends step 1
		c.Close()
	}()
	_, err = Classify(t.Context(), netip.MustParseAddrPort(ln2.Addr().String()), Options{Timeout: time.Second})
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Classify(port gone after step 1) = %v; want ErrUnreachable", err)
	}

	if _, err := Classify(t.Context(), netip.AddrPort{}, Options{}); err == nil {
		t.Error("Classify(invalid address) succeeded")
	}
}

// TestClassifyContext checks that a cancelled or expiring context ends the
// call at once, even when the step timeout is long.
func TestClassifyContext(t *testing.T) {
	silent := listen(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	opts := Options{Timeout: 30 * time.Second}

	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := Classify(ctx, silent, opts)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want context.DeadlineExceeded", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("took %v", d)
		}
	})
	for _, after := range []time.Duration{50 * time.Millisecond, 0} {
		t.Run(fmt.Sprintf("cancel after %v", after), func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			if after == 0 {
				cancel()
			} else {
				time.AfterFunc(after, cancel)
			}
			start := time.Now()
			_, err := Classify(ctx, silent, opts)
			if !errors.Is(err, context.Canceled) {
				t.Errorf("err = %v, want context.Canceled", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
	// Cancelled during the HTTP step: after the TLS step gave up on a
	// plain HTTP server that never answers HEAD.
	t.Run("cancel in http step", func(t *testing.T) {
		var n atomic.Int32
		stall := listen(t, func(c net.Conn) {
			if n.Add(1) == 1 {
				return // step 1: hang up on the ClientHello
			}
			io.Copy(io.Discard, c)
		})
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		time.AfterFunc(300*time.Millisecond, cancel)
		start := time.Now()
		_, err := Classify(ctx, stall, opts)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("took %v", d)
		}
		if n.Load() != 2 {
			t.Errorf("%d connections, want 2", n.Load())
		}
	})
}

func TestOptionsDefaults(t *testing.T) {
	o := Options{}.withDefaults()
	if o.Timeout != time.Second || o.MaxRead != 4096 || o.Dial == nil {
		t.Errorf("defaults: %+v", o)
	}
	o = Options{Timeout: time.Minute, MaxRead: 9}.withDefaults()
	if o.Timeout != time.Minute || o.MaxRead != 9 {
		t.Errorf("explicit options changed: %+v", o)
	}
}

func TestResultURL(t *testing.T) {
	for _, tc := range []struct {
		scheme, addr, want string
	}{
		{SchemeHTTPS, "10.77.0.2:8443", "https://10.77.0.2:8443/"},
		{SchemeHTTP, "10.77.0.2:8080", "http://10.77.0.2:8080/"},
		{SchemeTCP, "10.77.0.2:9000", "tcp://10.77.0.2:9000"},
		{SchemeHTTP, "[fd00::2]:80", "http://[fd00::2]:80/"},
	} {
		if got := result(tc.scheme, netip.MustParseAddrPort(tc.addr), "").URL; got != tc.want {
			t.Errorf("URL(%s, %s) = %q, want %q", tc.scheme, tc.addr, got, tc.want)
		}
	}
}

func TestTLSRecord(t *testing.T) {
	for _, tc := range []struct {
		head []byte
		want bool
	}{
		{[]byte{22, 3, 3, 0, 90, 2}, true},  // ServerHello
		{[]byte{22, 3, 1, 0, 90, 2}, true},  // TLS 1.0 ServerHello
		{[]byte{21, 3, 3, 0, 2, 2}, true},   // alert
		{[]byte{22, 3, 3, 0, 90, 1}, false}, // a ClientHello echoed back
		{[]byte{21, 3, 3, 0, 9, 2}, false},  // alert of the wrong length
		{[]byte{22, 3, 9, 0, 90, 2}, false}, // unknown version
		{[]byte{23, 3, 3, 0, 90, 2}, false}, // application data first
		{[]byte("HTTP/1"), false},
		{[]byte{22, 3, 3}, false}, // short
	} {
		c := &limitConn{}
		c.nhead = copy(c.head[:], tc.head)
		if got := c.tlsRecord(); got != tc.want {
			t.Errorf("tlsRecord(% x) = %v, want %v", tc.head, got, tc.want)
		}
	}
}

func TestClean(t *testing.T) {
	if got := clean([]byte("a\x1b[31mb\r\n\xffc")); got != "a.[31mb...c" {
		t.Errorf("clean = %q", got)
	}
	if got := clean(bytes.Repeat([]byte("x"), 1000)); len(got) != maxDetail {
		t.Errorf("clean kept %d bytes", len(got))
	}
}
