package varlink

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const testIface = `interface org.example.test
method Echo(s: string) -> (s: string, uid: int)
method Count(n: int) -> (i: int)
method Slow() -> ()
method ReadFD() -> (data: string, n: int)
error Boom (why: string)
`

type rig struct {
	srv  *Server
	path string
	slow chan struct{}
	done atomic.Bool
}

func newRig(t *testing.T, mod func(*Config)) *rig {
	t.Helper()
	r := &rig{path: filepath.Join(t.TempDir(), "s.sock"), slow: make(chan struct{})}
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
				if in.N < 0 { // stream until the client or shutdown ends it
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
			"org.example.test.Slow": func(_ context.Context, c *Call) error {
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
	go func() {
		streamErr <- streamC.Stream(context.Background(), "org.example.test.Count", map[string]int{"n": -1}, func(json.RawMessage) error { return nil })
	}()
	time.Sleep(100 * time.Millisecond)
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

func TestConnectionLimit(t *testing.T) {
	r := newRig(t, func(c *Config) { c.MaxConns = 1 })
	first := r.client(t)
	if err := first.Call(ctx(t), "org.example.test.Echo", map[string]string{"s": "a"}, nil); err != nil {
		t.Fatal(err)
	}
	second := r.client(t)
	if err := second.Call(ctx(t), "org.example.test.Echo", map[string]string{"s": "b"}, nil); err == nil {
		t.Fatal("second connection served beyond the limit")
	}
}

func TestDecodeRequest(t *testing.T) {
	cases := []struct {
		in string
		ok bool
	}{
		{`{"method":"a.b.C"}`, true},
		{`{"method":"a.b.C","parameters":{"x":1},"more":true}`, true},
		{`{"method":"a.b.C","parameters":null}`, true},
		{`{"method":"a.b.c"}`, false},
		{`{"method":"C"}`, false},
		{`{"method":"a.b.C","parameters":"x"}`, false},
		{`{"method":"a.b.C","more":true,"oneway":true}`, false},
		{`{"method":"a.b.C"} {"method":"a.b.C"}`, false},
		{`{"method":"a.b.C"`, false},
		{``, false},
	}
	for _, tc := range cases {
		_, err := DecodeRequest([]byte(tc.in))
		if (err == nil) != tc.ok {
			t.Errorf("DecodeRequest(%s) err = %v, want ok=%v", tc.in, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrProtocol) {
			t.Errorf("error %v is not ErrProtocol", err)
		}
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"method":"io.paddock.v1.Get","parameters":{"vm":"web1"}}`,
		`{"method":"io.paddock.v1.Events","more":true}`,
		`{"method":"org.varlink.service.GetInfo"}`,
		`{"method":"a.b.C","parameters":{"x":[1,{"y":null}]},"oneway":true}`,
		`{"method":"\u0000.x.Y"}`, `[]`, `null`, `{"parameters":{}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRequest(b)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error not ErrProtocol: %v", err)
			}
			return
		}
		if !methodRE.MatchString(r.Method) || len(r.Parameters) == 0 || r.Parameters[0] != '{' && strings.TrimSpace(string(r.Parameters))[0] != '{' {
			t.Fatalf("accepted a bad request: %+v", r)
		}
		if r.More && r.Oneway {
			t.Fatal("accepted more+oneway")
		}
	})
}

func TestPassingFiles(t *testing.T) {
	r := newRig(t, nil)
	c := r.client(t)
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("secret of the caller"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out struct {
		Data string `json:"data"`
		N    int    `json:"n"`
	}
	if err := c.CallFDs(ctx(t), "org.example.test.ReadFD", nil, &out, []*os.File{f}); err != nil || out.Data != "secret of the caller" || out.N != 1 {
		t.Fatalf("fd call: %+v %v", out, err)
	}
	// Descriptors belong to the call that carried them, not the next one.
	if err := c.Call(ctx(t), "org.example.test.ReadFD", nil, &out); err != nil || out.N != 0 {
		t.Fatalf("next call saw %d fds: %v", out.N, err)
	}
	// More descriptors than allowed close the connection.
	many := make([]*os.File, MaxFDs+4)
	for i := range many {
		many[i] = f
	}
	if err := c.CallFDs(ctx(t), "org.example.test.ReadFD", nil, &out, many); err == nil {
		t.Fatalf("call with %d fds served: %+v", len(many), out)
	}
}
