package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/internal/testenv"
	"github.com/paddock-vm/paddock/internal/testwait"
	"github.com/paddock-vm/paddock/internal/unixtest"
)

// socketpair returns two connected stream sockets that support deadlines.
func socketpair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "sp")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := mk(fds[0]), mk(fds[1])
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

type testGuest struct {
	srv      *Server
	shutdown chan bool
	freezes  chan freezeCall
	// owned records the directories extract asked an owner for.
	ownedMu sync.Mutex
	owned   []string
}

func startGuest(t *testing.T, conn io.ReadWriteCloser) *testGuest {
	t.Helper()
	g := &testGuest{shutdown: make(chan bool, 1), freezes: make(chan freezeCall, 8)}
	g.srv = NewServer(ServerConfig{
		AgentVersion: "test",
		Hello: func() HelloInfo {
			return HelloInfo{Kit: "k", Phases: []Phase{{Name: "modules", StartNS: 1, EndNS: 5}}}
		},
		Health:   func() Health { return Health{Status: "ok", Main: MainState{State: "none"}} },
		Stats:    ReadStats,
		Ports:    ListPorts,
		Shutdown: func(reboot bool) { g.shutdown <- reboot },
		Freeze: func(path string, frozen bool, timeout time.Duration) error {
			if path != "/workspace" {
				return fmt.Errorf("%s is not a volume the agent mounted", path)
			}
			g.freezes <- freezeCall{path, frozen, timeout}
			return nil
		},
		Spawner: &LocalSpawner{Reaper: NewReaper(false)},
		Owner: func(dir string) (int, int) {
			g.ownedMu.Lock()
			defer g.ownedMu.Unlock()
			g.owned = append(g.owned, dir)
			return os.Getuid(), os.Getgid()
		},
		Logf: t.Logf,
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.srv.ServeConn(context.Background(), conn)
	}()
	t.Cleanup(func() {
		conn.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("server did not stop")
		}
	})
	return g
}

func newPair(t *testing.T) (*Client, *testGuest) {
	t.Helper()
	h, g := socketpair(t)
	guest := startGuest(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := NewClient(ctx, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, guest
}

func ctx5(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestHelloPingHealthStats(t *testing.T) {
	c, _ := newPair(t)
	h := c.Hello()
	if h.Protocol != ProtocolVersion || h.AgentVersion != "test" || h.Kit != "k" || len(h.Phases) != 1 || h.Phases[0].Duration() != 4 {
		t.Fatalf("hello = %+v", h)
	}
	ctx := ctx5(t)
	if _, err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	hl, err := c.Health(ctx)
	if err != nil || hl.Status != "ok" {
		t.Fatalf("health %+v %v", hl, err)
	}
	st, err := c.Stats(ctx)
	if err != nil || st.MemTotal == 0 || len(st.CPU) == 0 || st.Procs == 0 {
		t.Fatalf("stats %+v %v", st, err)
	}
}

func TestPorts(t *testing.T) {
	c, _ := newPair(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	ports, err := c.Ports(ctx5(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ports {
		if p.Port == port && p.Proto == "tcp" && p.Addr == "127.0.0.1" {
			if p.PID != os.Getpid() {
				t.Errorf("port %d owned by %d, want %d", port, p.PID, os.Getpid())
			}
			return
		}
	}
	t.Fatalf("listener on %d not in %+v", port, ports)
}

func TestExec(t *testing.T) {
	c, _ := newPair(t)
	ctx := ctx5(t)
	r, err := c.Run(ctx, ExecRequest{Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}}, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Stdout) != "out\n" || string(r.Stderr) != "err\n" || r.Status.Code != 3 {
		t.Fatalf("run = %q %q %v", r.Stdout, r.Stderr, r.Status)
	}
	// stdin piped through, larger than a window
	in := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	r, err = c.Run(ctx, ExecRequest{Argv: []string{"cat"}}, bytes.NewReader(in), 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.Stdout, in) || r.Status.Code != 0 {
		t.Fatalf("cat returned %d bytes, status %v", len(r.Stdout), r.Status)
	}
	// env, dir
	r, err = c.Run(ctx, ExecRequest{Argv: []string{"sh", "-c", "echo $FOO; pwd"}, Env: []string{"FOO=bar"}, Dir: "/tmp"}, nil, 0)
	if err != nil || string(r.Stdout) != "bar\n/tmp\n" {
		t.Fatalf("env/dir: %q %v", r.Stdout, err)
	}
	// not found
	if _, err := c.Exec(ctx, ExecRequest{Argv: []string{"/nonexistent/x"}}); err == nil || !strings.Contains(err.Error(), "not_found") {
		t.Fatalf("exec of missing file: %v", err)
	}
}

func TestExecSignal(t *testing.T) {
	c, _ := newPair(t)
	ctx := ctx5(t)
	p, err := c.Exec(ctx, ExecRequest{Argv: []string{"sleep", "30"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(ctx, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait(ctx)
	if err != nil || st.Signal != int(syscall.SIGTERM) || st.Code != -1 {
		t.Fatalf("status %v %v", st, err)
	}
}

func TestExecTTY(t *testing.T) {
	if _, err := os.Stat("/dev/ptmx"); err != nil {
		testenv.SkipBecause(t, "no /dev/ptmx")
	}
	c, _ := newPair(t)
	ctx := ctx5(t)
	p, err := c.Exec(ctx, ExecRequest{Argv: []string{"sh", "-c", "test -t 0 && test -t 1 && stty size"}, TTY: true, Rows: 33, Cols: 77})
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(p.Stdout())
	st, err := p.Wait(ctx)
	if err != nil || st.Code != 0 || !strings.Contains(string(out), "33 77") {
		t.Fatalf("tty: %q %v %v", out, st, err)
	}
}

func TestExecConcurrent(t *testing.T) {
	c, _ := newPair(t)
	ctx := ctx5(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r, err := c.Run(ctx, ExecRequest{Argv: []string{"sh", "-c", fmt.Sprintf("head -c 300000 /dev/zero; echo %d >&2", i)}}, nil, 0)
			if err != nil {
				errs <- err
				return
			}
			if len(r.Stdout) != 300000 || string(r.Stderr) != fmt.Sprintf("%d\n", i) {
				errs <- fmt.Errorf("session %d: %d bytes, stderr %q", i, len(r.Stdout), r.Stderr)
			}
		}(i)
	}
	// A slow reader on one session must not stall the others.
	p, err := c.Exec(ctx, ExecRequest{Argv: []string{"head", "-c", "2000000", "/dev/zero"}})
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if _, err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, p.Stdout())
	if st, err := p.Wait(ctx); err != nil || n != 2000000 || st.Code != 0 {
		t.Fatalf("slow session: %d bytes, %v %v", n, st, err)
	}
}

func TestShutdown(t *testing.T) {
	c, g := newPair(t)
	if err := c.Shutdown(ctx5(t), false); err != nil {
		t.Fatal(err)
	}
	if reboot := testwait.Recv(t, "the shutdown callback", 5*time.Second, g.shutdown); reboot {
		t.Fatal("reboot requested")
	}
}

func TestRequestBeforeHello(t *testing.T) {
	h, g := socketpair(t)
	startGuest(t, g)
	if err := WriteFrame(h, &Message{T: TypeRequest, ID: 1, Op: OpPing}, DefaultMaxFrame); err != nil {
		t.Fatal(err)
	}
	m, err := ReadMessage(h, DefaultMaxFrame)
	if err != nil || m.Err == nil || m.Err.Code != CodeBadRequest {
		t.Fatalf("%+v %v", m, err)
	}
}

// fakeGuest answers the hello, then runs misbehave on the raw connection.
func fakeGuest(t *testing.T, conn net.Conn, misbehave func(conn net.Conn, req *Message)) {
	go func() {
		for {
			m, err := ReadMessage(conn, DefaultMaxFrame)
			if err != nil {
				return
			}
			if m.Op == OpHello {
				body := fmt.Sprintf(`{"protocol":%d,"agent_version":"fake"}`, ProtocolVersion)
				_ = WriteFrame(conn, &Message{T: TypeResponse, ID: m.ID, Body: []byte(body)}, DefaultMaxFrame)
				continue
			}
			misbehave(conn, m)
		}
	}()
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func TestMisbehavingGuest(t *testing.T) {
	cases := []struct {
		name string
		act  func(conn net.Conn, req *Message)
		want string
	}{
		{"garbage", func(conn net.Conn, _ *Message) {
			_, _ = conn.Write([]byte("\x00\x00\x00\x05hello, I am not JSON"))
		}, "malformed frame"},
		{"100MiB frame header", func(conn net.Conn, _ *Message) {
			_, _ = conn.Write(binary.BigEndian.AppendUint32(nil, 100<<20))
			_, _ = conn.Write(bytes.Repeat([]byte("A"), 64<<10))
		}, "announces 104857600 bytes, limit is 1048576"},
		{"text instead of frames", func(conn net.Conn, _ *Message) {
			_, _ = conn.Write([]byte("Welcome to the guest!\n"))
		}, "frame too large"},
		{"silence", func(net.Conn, *Message) {}, "no reply from guest within"},
		{"reply to unsent id", func(conn net.Conn, req *Message) {
			_ = WriteFrame(conn, &Message{T: TypeResponse, ID: req.ID + 1000, Body: []byte(`{}`)}, DefaultMaxFrame)
		}, "never sent"},
		{"output for unknown stream", func(conn net.Conn, req *Message) {
			_ = WriteFrame(conn, &Message{T: TypeOutput, Stream: 99, Fd: 1, Data: []byte("x")}, DefaultMaxFrame)
		}, "unknown stream"},
		{"request from guest", func(conn net.Conn, req *Message) {
			_ = WriteFrame(conn, &Message{T: TypeRequest, ID: 1, Op: "ping"}, DefaultMaxFrame)
		}, `unexpected "req"`},
		{"wrong reply type", func(conn net.Conn, req *Message) {
			_ = WriteFrame(conn, &Message{T: TypeResponse, ID: req.ID, Body: []byte(`"a string"`)}, DefaultMaxFrame)
		}, "protocol violation"},
		{"slow frame body", func(conn net.Conn, req *Message) {
			_, _ = conn.Write([]byte{0, 0, 0, 100, '{'})
		}, "stalled in the middle of a frame"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, g := socketpair(t)
			fakeGuest(t, g, tc.act)
			before := heapInUse()
			c, err := NewClient(ctx5(t), h, &ClientOptions{FrameTimeout: 300 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err = c.Stats(ctx)
			if err == nil {
				t.Fatal("no error")
			}
			if el := time.Since(start); el > 2*time.Second {
				t.Errorf("took %v", el)
			}
			if !strings.Contains(err.Error(), tc.want) && !strings.Contains(fmt.Sprint(c.Err()), tc.want) {
				t.Fatalf("err = %v (conn: %v), want %q", err, c.Err(), tc.want)
			}
			if grown := int64(heapInUse()) - int64(before); grown > 8<<20 {
				t.Errorf("heap grew by %d bytes", grown)
			}
			t.Logf("error: %v", err)
		})
	}
}

func TestOutputOverWindow(t *testing.T) {
	h, g := socketpair(t)
	fakeGuest(t, g, func(conn net.Conn, req *Message) {
		if req.Op != OpExec {
			return
		}
		var body struct {
			Stream uint32 `json:"s"`
		}
		_ = json.Unmarshal(req.Body, &body)
		_ = WriteFrame(conn, &Message{T: TypeResponse, ID: req.ID, Body: []byte(`{"pid":7}`)}, DefaultMaxFrame)
		chunk := bytes.Repeat([]byte("x"), MaxChunk)
		for i := 0; i < StreamWindow/MaxChunk+2; i++ {
			if WriteFrame(conn, &Message{T: TypeOutput, Stream: body.Stream, Fd: 1, Data: chunk}, DefaultMaxFrame) != nil {
				return
			}
		}
	})
	c, err := NewClient(ctx5(t), h, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p, err := c.Exec(ctx5(t), ExecRequest{Argv: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	testwait.Recv(t, "the client to reject a guest exceeding its window", 5*time.Second, c.Done())
	if !strings.Contains(c.Err().Error(), "window") {
		t.Fatalf("err = %v", c.Err())
	}
	if _, err := p.Wait(ctx5(t)); err == nil {
		t.Fatal("wait succeeded")
	}
}

func TestHelloVersionMismatch(t *testing.T) {
	h, g := socketpair(t)
	go func() {
		m, err := ReadMessage(g, DefaultMaxFrame)
		if err != nil {
			return
		}
		_ = WriteFrame(g, &Message{T: TypeResponse, ID: m.ID, Body: []byte(`{"protocol":99}`)}, DefaultMaxFrame)
	}()
	_, err := NewClient(ctx5(t), h, nil)
	if err == nil || !strings.Contains(err.Error(), "protocol 99") {
		t.Fatalf("err = %v", err)
	}
}

func TestHelloTimeout(t *testing.T) {
	h, _ := socketpair(t)
	start := time.Now()
	_, err := NewClient(context.Background(), h, &ClientOptions{HelloTimeout: 200 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "no reply from guest") || time.Since(start) > 2*time.Second {
		t.Fatalf("err = %v after %v", err, time.Since(start))
	}
}

func TestHybridVsock(t *testing.T) {
	dir := t.TempDir()
	serve := func(name string, reply func(c net.Conn, line string)) string {
		path := filepath.Join(dir, name)
		unixtest.Listen(t, path, func(c net.Conn) {
			buf := make([]byte, 64)
			n, _ := c.Read(buf)
			reply(c, string(buf[:n]))
		})
		return path
	}
	ok := serve("ok.sock", func(c net.Conn, line string) {
		if line != "CONNECT 1024\n" {
			_, _ = c.Write([]byte("ERR\n"))
			return
		}
		_, _ = c.Write([]byte("OK 1073741824\nPAYLOAD"))
		time.Sleep(100 * time.Millisecond)
	})
	conn, err := DialHybridVsock(context.Background(), ok, 1024)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 7)
	if _, err := io.ReadFull(conn, b); err != nil || string(b) != "PAYLOAD" {
		t.Fatalf("after handshake read %q %v", b, err)
	}
	conn.Close()

	cases := map[string]struct {
		reply func(c net.Conn, line string)
		want  string
	}{
		"refused":  {func(c net.Conn, _ string) { _, _ = c.Write([]byte("NO\n")) }, "refused"},
		"too long": {func(c net.Conn, _ string) { _, _ = c.Write(bytes.Repeat([]byte("O"), 1000)) }, "longer than 32"},
		"bad port": {func(c net.Conn, _ string) { _, _ = c.Write([]byte("OK x\n")) }, "malformed"},
		"silence":  {func(c net.Conn, _ string) { time.Sleep(2 * time.Second) }, "timeout"},
		"closed":   {func(c net.Conn, _ string) {}, "EOF"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			path := serve(strings.ReplaceAll(name, " ", "_")+".sock", tc.reply)
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			_, err := DialHybridVsock(ctx, path, 1024)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := DialHybridVsock(context.Background(), filepath.Join(dir, "missing.sock"), 1); err == nil {
		t.Fatal("dial of a missing socket succeeded")
	}
}

func TestVsockIntegration(t *testing.T) {
	// AF_VSOCK needs vhost-vsock (host) or a virtio-vsock device (guest).
	if _, err := os.Stat("/dev/vhost-vsock"); err != nil {
		testenv.SkipBecause(t, testenv.NoVhostVsock+" on this host (/dev/vhost-vsock: no vhost-vsock in this kernel): the vsock transport is covered by the hybrid vsock unit test only")
	}
	l, err := ListenVsock(DefaultVsockPort + 17)
	if err != nil {
		testenv.SkipBecause(t, fmt.Sprintf("%s usable here: vsock listen: %v", testenv.NoVhostVsock, err))
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			startGuest(t, c)
		}
	}()
	conn, err := DialVsock(ctx5(t), 1, DefaultVsockPort+17) // VMADDR_CID_LOCAL
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(ctx5(t), conn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Ping(ctx5(t)); err != nil {
		t.Fatal(err)
	}
}

func TestLookupUser(t *testing.T) {
	root := t.TempDir()
	_ = os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	_ = os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n"), 0o644)
	_ = os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\napp:x:1001:\nwheel:x:10:app,other\n"), 0o644)
	cases := []struct {
		spec string
		want Cred
		err  bool
	}{
		{"", Cred{Home: "/root"}, false},
		{"app", Cred{UID: 1000, GID: 1001, Groups: []uint32{1001, 10}, Home: "/home/app"}, false},
		{"1000", Cred{UID: 1000, GID: 1001, Groups: []uint32{1001, 10}, Home: "/home/app"}, false},
		{"app:wheel", Cred{UID: 1000, GID: 10, Groups: []uint32{10}, Home: "/home/app"}, false},
		{"4242:4343", Cred{UID: 4242, GID: 4343, Groups: []uint32{4343}, Home: "/"}, false},
		{"nobody", Cred{}, true},
		{"app:nogroup", Cred{}, true},
	}
	for _, c := range cases {
		got, err := LookupUser(root, c.spec)
		if (err != nil) != c.err {
			t.Errorf("%q: err %v", c.spec, err)
			continue
		}
		if !c.err && fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%q: got %+v want %+v", c.spec, got, c.want)
		}
	}
}

func TestParseProcAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:1F90":                         "127.0.0.1:8080",
		"00000000:0050":                         "0.0.0.0:80",
		"00000000000000000000000001000000:0016": "::1:22",
	} {
		ip, port, err := parseProcAddr(in)
		if err != nil || fmt.Sprintf("%s:%d", ip, port) != want {
			t.Errorf("%s: %s:%d %v, want %s", in, ip, port, err, want)
		}
	}
	if _, _, err := parseProcAddr("zz"); err == nil {
		t.Error("garbage accepted")
	}
}

func TestClientClosedErrors(t *testing.T) {
	c, _ := newPair(t)
	c.Close()
	if _, err := c.Ping(ctx5(t)); !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v", err)
	}

}

// TestReHello: on transports that span host reconnections (virtio-serial)
// a second hello starts a new session: the old host's exec sessions are
// killed and none of their messages reach the new host.
func TestReHello(t *testing.T) {
	h, g := socketpair(t)
	startGuest(t, g)
	hello := func(id uint64) {
		t.Helper()
		body := fmt.Sprintf(`{"protocol":%d}`, ProtocolVersion)
		if err := WriteFrame(h, &Message{T: TypeRequest, ID: id, Op: OpHello, Body: []byte(body)}, DefaultMaxFrame); err != nil {
			t.Fatal(err)
		}
	}
	_ = h.SetReadDeadline(time.Now().Add(5 * time.Second))
	hello(1)
	if m, err := ReadMessage(h, DefaultMaxFrame); err != nil || m.ID != 1 || m.Err != nil {
		t.Fatalf("hello: %+v %v", m, err)
	}
	if err := WriteFrame(h, &Message{T: TypeRequest, ID: 2, Op: OpExec, Body: []byte(`{"argv":["sh","-c","echo started; exec sleep 30"],"s":1}`)}, DefaultMaxFrame); err != nil {
		t.Fatal(err)
	}
	// wait for the exec reply and its first output
	for seen := 0; seen < 2; {
		m, err := ReadMessage(h, DefaultMaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		if (m.T == TypeResponse && m.ID == 2) || (m.T == TypeOutput && len(m.Data) > 0) {
			seen++
		}
	}
	hello(3)
	for {
		m, err := ReadMessage(h, DefaultMaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		if m.T == TypeResponse && m.ID == 3 {
			break
		}
	}
	if err := WriteFrame(h, &Message{T: TypeRequest, ID: 4, Op: OpPing, Body: []byte(`{}`)}, DefaultMaxFrame); err != nil {
		t.Fatal(err)
	}
	_ = h.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
	for {
		m, err := ReadMessage(h, DefaultMaxFrame)
		if err != nil {
			break // quiet after the ping reply: good
		}
		if m.Stream != 0 {
			t.Fatalf("message of the old session after the new hello: %+v", m)
		}
	}
}

func TestMountStatsOf(t *testing.T) {
	dir := t.TempDir()
	paths := []string{dir, filepath.Join(dir, "missing")}
	for range MaxMountStats + 4 {
		paths = append(paths, dir)
	}
	got := MountStatsOf(paths)
	if len(got) != MaxMountStats-1 {
		t.Fatalf("%d figures for %d paths (one missing, at most %d read)", len(got), len(paths), MaxMountStats)
	}
	if got[0].Path != dir || got[0].Total == 0 || got[0].Free > got[0].Total {
		t.Errorf("figures of %s: %+v", dir, got[0])
	}
}

// An exec that names no user runs as the spawner's default (the VM's
// entrypoint user); one that names a user runs as that user.
func TestExecDefaultUser(t *testing.T) {
	testenv.RequireRoot(t, "switching users")
	sp := &LocalSpawner{Reaper: NewReaper(false), DefaultUser: "65534:65533"}
	for _, tc := range []struct{ user, want string }{{"", "65534 65533\n"}, {"0:0", "0 0\n"}, {"123", "123 123\n"}} {
		p, err := sp.Spawn(SpawnSpec{Argv: []string{"sh", "-c", "echo $(id -u) $(id -g)"}, User: tc.user})
		if err != nil {
			t.Fatal(err)
		}
		out, _ := io.ReadAll(p.Stdout())
		if st := p.Wait(); string(out) != tc.want || st.Code != 0 {
			t.Errorf("user %q: %q %+v, want %q", tc.user, out, st, tc.want)
		}
	}
}

type freezeCall struct {
	path    string
	frozen  bool
	timeout time.Duration
}

// The freeze and thaw ops reach the configured freezer with their path and
// timeout; a freezer that refuses is a bad request naming why.
func TestFreezeOps(t *testing.T) {
	c, g := newPair(t)
	ctx := ctx5(t)
	if err := c.Freeze(ctx, "/workspace", 90*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := <-g.freezes; got != (freezeCall{"/workspace", true, 90 * time.Second}) {
		t.Errorf("freeze: %+v", got)
	}
	if err := c.Thaw(ctx, "/workspace"); err != nil {
		t.Fatal(err)
	}
	if got := <-g.freezes; got.frozen || got.path != "/workspace" {
		t.Errorf("thaw: %+v", got)
	}
	if err := c.Freeze(ctx, "/", time.Second); err == nil || !strings.Contains(err.Error(), "not a volume the agent mounted") {
		t.Errorf("freeze of /: %v", err)
	}
}

// Freezer refuses what it was not told it may freeze, before any ioctl.
func TestFreezerAllowed(t *testing.T) {
	f := &Freezer{Allowed: func(p string) bool { return p == "/workspace" }}
	if err := f.Set("/", true, time.Second); err == nil || !strings.Contains(err.Error(), "not a volume") {
		t.Errorf("freeze of /: %v", err)
	}
	if err := (&Freezer{}).Set("/workspace", true, time.Second); err == nil {
		t.Error("a freezer with no Allowed froze something")
	}
}
