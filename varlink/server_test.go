package varlink

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const testIface = `interface org.example.test
method Echo(s: string) -> (s: string, uid: int)
method Count(n: int) -> (i: int)
method Slow() -> ()
method ReadFD() -> (data: string, n: int)
method Who() -> (uid: int, gid: int, groups: []int)
method Abandon() -> ()
error Boom (why: string)
`

type rig struct {
	srv  *Server
	path string
	slow chan struct{}
	// slowBegan hears from each Slow call as it begins.
	slowBegan chan struct{}
	done      atomic.Bool
	// abandoned counts readers Abandon left behind that have ended.
	abandoned sync.WaitGroup
}

func newRig(t *testing.T, mod func(*Config)) *rig {
	t.Helper()
	r := &rig{path: filepath.Join(t.TempDir(), "s.sock"), slow: make(chan struct{}), slowBegan: make(chan struct{}, 8)}
	cfg := Config{
		Vendor: "v", Product: "p", Version: "1", URL: "u",
		Interfaces: map[string]string{"org.example.test": testIface},
		MaxMessage: 64 << 10, MessageTimeout: 300 * time.Millisecond,
		Methods: map[string]Handler{
			"org.example.test.Echo": func(_ context.Context, c *Call) error {
				var in struct {
					S string `json:"s"`
				}
				if err := c.Decode(&in); err != nil {
					return err
				}
				if in.S == "boom" {
					return NewError("org.example.test.Boom", map[string]string{"why": "asked"})
				}
				return c.Reply(map[string]any{"s": in.S, "uid": c.Peer.UID})
			},
			"org.example.test.Count": func(ctx context.Context, c *Call) error {
				var in struct {
					N int `json:"n"`
				}
				if err := c.Decode(&in); err != nil {
					return err
				}
				for i := 0; i < in.N; i++ {
					if err := c.Continue(map[string]int{"i": i}); err != nil {
						return err
					}
				}
				if in.N < 0 { // say it began, then stream until the client or shutdown ends it
					if err := c.Continue(map[string]int{"i": 0}); err != nil {
						return err
					}
					<-ctx.Done()
				}
				return c.Reply(map[string]int{"i": in.N})
			},
			"org.example.test.ReadFD": func(_ context.Context, c *Call) error {
				data := ""
				if len(c.FDs) > 0 {
					b := make([]byte, 64)
					n, _ := c.FDs[0].ReadAt(b, 0)
					data = string(b[:n])
				}
				return c.Reply(map[string]any{"data": data, "n": len(c.FDs)})
			},
			"org.example.test.Who": func(_ context.Context, c *Call) error {
				return c.Reply(map[string]any{"uid": c.Peer.UID, "gid": c.Peer.GID, "groups": c.Peer.Groups})
			},
			// Abandon leaves a reader on the passed descriptor behind, as a
			// handler's copy goroutine does when its call ends first.
			"org.example.test.Abandon": func(_ context.Context, c *Call) error {
				s, err := c.Socket(0, "input")
				if err != nil {
					return NewError("org.example.test.Boom", map[string]string{"why": err.Error()})
				}
				r.abandoned.Add(1)
				go func() {
					defer r.abandoned.Done()
					_, _ = s.Read(make([]byte, 1))
				}()
				return c.Reply(nil)
			},
			"org.example.test.Slow": func(_ context.Context, c *Call) error {
				r.slowBegan <- struct{}{}
				<-r.slow
				r.done.Store(true)
				return c.Reply(nil)
			},
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.srv = srv
	ln, err := net.Listen("unix", r.path)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		select {
		case <-r.slow:
		default:
			close(r.slow)
		}
		_ = srv.Shutdown(ctx)
	})
	return r
}

func (r *rig) client(t *testing.T) *Client {
	t.Helper()
	c, err := Dial(context.Background(), r.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// raw sends bytes and returns everything the server answers until it closes
// or goes quiet.
func (r *rig) raw(t *testing.T, b []byte) (string, bool) {
	t.Helper()
	nc, err := net.Dial("unix", r.path)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	go nc.Write(b)
	_ = nc.SetReadDeadline(time.Now().Add(2 * time.Second))
	var sb strings.Builder
	br := bufio.NewReader(nc)
	for {
		s, err := br.ReadString(0)
		sb.WriteString(s)
		if err != nil {
			var ne net.Error
			closed := !(errors.As(err, &ne) && ne.Timeout())
			return sb.String(), closed
		}
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestCallsAndErrors(t *testing.T) {
	r := newRig(t, nil)
	c := r.client(t)
	var out struct {
		S   string `json:"s"`
		UID int    `json:"uid"`
	}
	if err := c.Call(ctx(t), "org.example.test.Echo", map[string]string{"s": "hi"}, &out); err != nil || out.S != "hi" || out.UID != os.Getuid() {
		t.Fatalf("echo: %+v %v", out, err)
	}
	cases := []struct {
		method string
		params any
		want   string
		param  string
	}{
		{"org.example.test.Echo", map[string]string{"s": "boom"}, "org.example.test.Boom", "asked"},
		{"org.example.test.Nope", nil, ErrMethodNotFound, "Nope"},
		{"org.example.other.Echo", nil, ErrInterfaceNotFound, "org.example.other"},
		{"org.example.test.Echo", map[string]any{"s": 5}, ErrInvalidParameter, `"s"`},
		{"org.example.test.Echo", map[string]any{"x": "y"}, ErrInvalidParameter, `"x"`},
		{"org.varlink.service.GetInterfaceDescription", map[string]string{"interface": "no.such"}, ErrInterfaceNotFound, "no.such"},
	}
	for _, tc := range cases {
		err := c.Call(ctx(t), tc.method, tc.params, nil)
		var ve *Error
		if !errors.As(err, &ve) || ve.Name != tc.want || !strings.Contains(string(ve.Parameters), tc.param) {
			t.Errorf("%s: err = %v, want %s naming %s", tc.method, err, tc.want, tc.param)
		}
	}
	// The same connection still works after errors.
	if err := c.Call(ctx(t), "org.example.test.Echo", map[string]string{"s": "again"}, &out); err != nil || out.S != "again" {
		t.Fatalf("after errors: %v", err)
	}
}

// An inline call pipelined behind one that waits still runs after it, and
// the replies come in the order of the calls.
func TestInlineCallsKeepOrder(t *testing.T) {
	r := newRig(t, func(c *Config) { c.Inline = map[string]bool{"org.example.test.Echo": true} })
	nc, err := net.Dial("unix", r.path)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Write([]byte(`{"method":"org.example.test.Slow"}` + "\x00" + `{"method":"org.example.test.Echo","parameters":{"s":"after"}}` + "\x00")); err != nil {
		t.Fatal(err)
	}
	<-r.slowBegan
	close(r.slow)
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(nc)
	var got []string
	for range 2 {
		b, err := br.ReadBytes(0)
		if err != nil {
			t.Fatalf("replies so far %q: %v", got, err)
		}
		got = append(got, string(b[:len(b)-1]))
	}
	if got[0] != `{"parameters":{}}` || !strings.Contains(got[1], `"s":"after"`) {
		t.Fatalf("replies %q: want Slow's, then Echo's", got)
	}
	if !r.done.Load() {
		t.Fatal("Echo answered before Slow ended")
	}
	// Inline calls answer errors as any call does, and keep the connection.
	c := r.client(t)
	var ve *Error
	if err := c.Call(ctx(t), "org.example.test.Echo", map[string]any{"x": "y"}, nil); !errors.As(err, &ve) || ve.Name != ErrInvalidParameter {
		t.Fatalf("inline error: %v", err)
	}
	if err := c.Call(ctx(t), "org.example.test.Echo", map[string]string{"s": "again"}, nil); err != nil {
		t.Fatalf("after an inline error: %v", err)
	}
}

func TestServiceInterface(t *testing.T) {
	r := newRig(t, nil)
	c := r.client(t)
	var info struct {
		Vendor     string   `json:"vendor"`
		Interfaces []string `json:"interfaces"`
	}
	if err := c.Call(ctx(t), "org.varlink.service.GetInfo", nil, &info); err != nil {
		t.Fatal(err)
	}
	if info.Vendor != "v" || strings.Join(info.Interfaces, ",") != "org.varlink.service,org.example.test" {
		t.Fatalf("info %+v", info)
	}
	var d struct {
		Description string `json:"description"`
	}
	if err := c.Call(ctx(t), "org.varlink.service.GetInterfaceDescription", map[string]string{"interface": "org.example.test"}, &d); err != nil || d.Description != testIface {
		t.Fatalf("description %q %v", d.Description, err)
	}
}

func TestStreaming(t *testing.T) {
	r := newRig(t, nil)
	c := r.client(t)
	var got []int
	err := c.Stream(ctx(t), "org.example.test.Count", map[string]int{"n": 3}, func(raw json.RawMessage) error {
		var v struct {
			I int `json:"i"`
		}
		if err := json.Unmarshal(raw, &v); err != nil {
			return err
		}
		got = append(got, v.I)
		return nil
	})
	if err != nil || len(got) != 4 || got[3] != 3 {
		t.Fatalf("stream %v %v", got, err)
	}
	// Continue without more is refused.
	err = c.Call(ctx(t), "org.example.test.Count", map[string]int{"n": 1}, nil)
	var ve *Error
	if !errors.As(err, &ve) || ve.Name != ErrExpectedMore {
		t.Fatalf("no more: %v", err)
	}
}

func TestHostileClientsDoNotHurtOthers(t *testing.T) {
	r := newRig(t, nil)
	good := r.client(t)
	// A client that hangs mid-message is cut off after MessageTimeout.
	hang, err := net.Dial("unix", r.path)
	if err != nil {
		t.Fatal(err)
	}
	defer hang.Close()
	hang.Write([]byte(`{"method":"org.example.te`))
	cases := []struct {
		name string
		in   []byte
	}{
		{"malformed JSON", []byte("{not json\x00")},
		{"not an object", []byte("[1,2]\x00")},
		{"bad method name", []byte(`{"method":"nodots"}` + "\x00")},
		{"parameters not an object", []byte(`{"method":"org.example.test.Echo","parameters":[1]}` + "\x00")},
		{"oversize", append([]byte(`{"method":"org.example.test.Echo","parameters":{"s":"`+strings.Repeat("a", 70<<10)), '"', '}', '}', 0)},
		{"oversize without NUL", []byte(strings.Repeat("x", 200<<10))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, closed := r.raw(t, tc.in)
			if !closed {
				t.Fatalf("connection left open, got %q", out)
			}
			if strings.Contains(out, `"parameters":{"s"`) {
				t.Fatalf("served a bad request: %q", out)
			}
		})
	}
	_ = hang.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := hang.Read(make([]byte, 1)); err == nil {
		t.Fatal("hanging client was not disconnected")
	}
	var out struct{ S string }
	if err := good.Call(ctx(t), "org.example.test.Echo", map[string]string{"s": "still here"}, &out); err != nil || out.S != "still here" {
		t.Fatalf("good client after hostile ones: %v", err)
	}
}

func TestShutdownFinishesInFlightAndEndsStreams(t *testing.T) {
	r := newRig(t, nil)
	slowC, streamC := r.client(t), r.client(t)
	slowErr := make(chan error, 1)
	go func() { slowErr <- slowC.Call(context.Background(), "org.example.test.Slow", nil, nil) }()
	streamErr := make(chan error, 1)
	began := make(chan struct{}, 1)
	go func() {
		streamErr <- streamC.Stream(context.Background(), "org.example.test.Count", map[string]int{"n": -1}, func(json.RawMessage) error {
			select {
			case began <- struct{}{}:
			default:
			}
			return nil
		})
	}()
	<-began
	<-r.slowBegan
	shut := make(chan error, 1)
	go func() {
		c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- r.srv.Shutdown(c)
	}()
	select {
	case err := <-streamErr:
		if err != nil {
			t.Fatalf("stream did not end cleanly: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("stream not ended by shutdown")
	}
	// New connections are refused while the slow call still runs.
	time.Sleep(50 * time.Millisecond)
	if c, err := net.Dial("unix", r.path); err == nil {
		c.Close()
		t.Fatal("accepting during shutdown")
	}
	close(r.slow)
	if err := <-slowErr; err != nil || !r.done.Load() {
		t.Fatalf("in-flight call: %v", err)
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
}

// Connections beyond a limit are refused with an error that says which
// limit, and the client reads it as the answer to its call.
func TestConnectionLimits(t *testing.T) {
	cases := []struct {
		name  string
		mod   func(*Config)
		admin bool
		want  error
	}{
		{"total", func(c *Config) { c.MaxConns = 1 }, false, ErrConnLimit},
		{"per uid", func(c *Config) { c.MaxConns, c.MaxConnsPerUID = 8, 1 }, false, ErrPerUIDLimit},
		{"users' share", func(c *Config) { c.MaxConns, c.AdminReserve = 2, 1 }, false, ErrUserConnLimit},
		{"admins use the reserve", func(c *Config) { c.MaxConns, c.MaxConnsPerUID, c.AdminReserve = 2, 1, 1 }, true, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, func(c *Config) {
				tc.mod(c)
				c.IsAdmin = func(Peer) bool { return tc.admin }
				c.Refused = func(p Peer, cause error) *Error {
					return NewError("org.example.test.Boom", map[string]any{"why": cause.Error(), "uid": p.UID})
				}
			})
			first := r.client(t)
			if err := first.Call(ctx(t), "org.example.test.Echo", map[string]string{"s": "a"}, nil); err != nil {
				t.Fatal(err)
			}
			second := r.client(t)
			err := second.Call(ctx(t), "org.example.test.Echo", map[string]string{"s": "b"}, nil)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("second connection refused: %v", err)
				}
				return
			}
			var ve *Error
			if !errors.As(err, &ve) || ve.Name != "org.example.test.Boom" || !strings.Contains(ve.Error(), tc.want.Error()) {
				t.Fatalf("second connection: %v, want the refusal naming %q", err, tc.want)
			}
			// The slot comes back when the first connection goes.
			first.Close()
			deadline := time.Now().Add(5 * time.Second)
			for {
				third := r.client(t)
				err := third.Call(ctx(t), "org.example.test.Echo", map[string]string{"s": "c"}, nil)
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("slot not given back: %v", err)
				}
				third.Close()
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// An idle connection is closed after IdleTimeout; one with a call in
// flight is not, however long the call lasts.
func TestIdleTimeout(t *testing.T) {
	r := newRig(t, func(c *Config) { c.IdleTimeout = 200 * time.Millisecond })
	idle := r.client(t)
	if err := idle.Call(ctx(t), "org.example.test.Echo", map[string]string{"s": "a"}, nil); err != nil {
		t.Fatal(err)
	}
	streaming := r.client(t)
	got := make(chan int, 64)
	streamErr := make(chan error, 1)
	go func() {
		streamErr <- streaming.Stream(context.Background(), "org.example.test.Count", map[string]int{"n": -1}, func(raw json.RawMessage) error {
			got <- 1
			return nil
		})
	}()
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("stream did not begin")
	}
	// The idle one is closed by the service: its next call fails.
	_ = idle.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := idle.nc.Read(make([]byte, 1)); err == nil {
		t.Fatalf("idle connection still open (read %d bytes)", n)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("idle connection not closed within 5s of a 200ms idle timeout")
	}
	// The streaming one outlived the idle one's timeout several times
	// over and still serves; a new idle connection has its own clock.
	select {
	case err := <-streamErr:
		t.Fatalf("stream ended: %v", err)
	default:
	}
	fresh := r.client(t)
	if err := fresh.Call(ctx(t), "org.example.test.Echo", map[string]string{"s": "b"}, nil); err != nil {
		t.Fatal(err)
	}
}

// The peer's supplementary groups come with the connection (SO_PEERGROUPS).
func TestPeerGroups(t *testing.T) {
	r := newRig(t, nil)
	var out struct {
		UID, GID int
		Groups   []int
	}
	if err := r.client(t).Call(ctx(t), "org.example.test.Who", nil, &out); err != nil {
		t.Fatal(err)
	}
	want, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	if out.UID != os.Getuid() || out.GID != os.Getegid() || fmt.Sprint(out.Groups) != fmt.Sprint(want) {
		t.Fatalf("peer %+v, want uid %d gid %d groups %v", out, os.Getuid(), os.Getegid(), want)
	}
	p := Peer{GID: 5, Groups: []uint32{7, 9}}
	for gid, in := range map[uint32]bool{5: true, 7: true, 9: true, 6: false, 0: false} {
		if p.InGroup(gid) != in {
			t.Errorf("InGroup(%d) = %v", gid, !in)
		}
	}
}

// A reader a handler leaves on a client's socket ends with the call,
// though the client keeps its end open and silent and, sharing the passed
// end's file description, switches it back to blocking mode behind the
// service's back; the client's description gets its blocking mode back.
// A pipe is refused, naming the descriptor and what it is.
func TestPassedSocketsDoNotOutliveTheCall(t *testing.T) {
	r := newRig(t, nil)
	c := r.client(t)
	const calls = 50
	var keep []*os.File
	defer func() {
		for _, f := range keep {
			f.Close()
		}
	}()
	for range calls {
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		passed := os.NewFile(uintptr(sp[0]), "passed")
		keep = append(keep, passed, os.NewFile(uintptr(sp[1]), "kept")) // both ends stay open, nothing is ever written
		if err := c.CallFDs(ctx(t), "org.example.test.Abandon", nil, nil, []*os.File{passed}); err != nil {
			t.Fatal(err)
		}
		fl, err := unix.FcntlInt(uintptr(sp[0]), unix.F_GETFL, 0)
		if err != nil || fl&unix.O_NONBLOCK != 0 {
			t.Fatalf("the client's socket left non-blocking: flags %#x %v", fl, err)
		}
		// Hostile: blocking mode on the shared description while the
		// service's reader may still be about to read.
		if err := unix.SetNonblock(sp[0], false); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() { r.abandoned.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("readers left on %d silent sockets still wait after their calls ended", calls)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	err = c.CallFDs(ctx(t), "org.example.test.Abandon", nil, nil, []*os.File{pr})
	if err == nil || !strings.Contains(err.Error(), "input must be passed as a stream socket") || !strings.Contains(err.Error(), "pipe") {
		t.Fatalf("a pipe: %v", err)
	}
}

// A method the table names is checked once, at NewServer (calls then skip
// the match), so a malformed one is refused there.
func TestNewServerRefusesBadMethodNames(t *testing.T) {
	for _, m := range []string{"org.example.test.echo", "org.example.test.", "Org.example.test.Echo"} {
		_, err := NewServer(Config{Interfaces: map[string]string{"org.example.test": testIface},
			Methods: map[string]Handler{m: func(context.Context, *Call) error { return nil }}})
		if err == nil {
			t.Errorf("NewServer accepted method %q", m)
		}
	}
}

// One Decoder serves a connection's calls in turn: a failure or bytes left
// over never reach the next call's parameters.
func TestParamDecoderCarriesNothingOver(t *testing.T) {
	var p paramDecoder
	type in struct {
		S string `json:"s"`
	}
	for i, tc := range []struct {
		params string
		want   string
		fails  bool
	}{
		{`{"s":"a"}`, "a", false},
		{`{"s":5}`, "", true},
		{`{"s":"b"}`, "b", false},
		{`{"x":1}`, "", true},
		{`{"s":"c"}  `, "c", false},
		{`{"s":"d"}`, "d", false},
		{`{"s":`, "", true},
		{`{"s":"e"}`, "e", false},
	} {
		var v in
		err := p.decode([]byte(tc.params), &v)
		if (err != nil) != tc.fails || !tc.fails && v.S != tc.want {
			t.Fatalf("call %d %s: %+v %v", i, tc.params, v, err)
		}
	}
}
