// Command hostile is the misbehaving API client of e2e/users_api_test.go,
// run as an unprivileged uid (setpriv) against a real paddockd. Each mode
// prints one JSON line of figures on stdout and, where it holds something,
// keeps holding it until its stdin closes, then prints a second line.
//
//	hostile hold  -socket S -n N          open N connections, each with an event stream in flight
//	hostile idle  -socket S -n N -wait D  open N connections, call once, then leave them idle
//	hostile exec  -socket S -vm V -n N -parallel P
//	                                      N Exec calls whose sockets are kept open and silent
//	hostile pipes -socket S -vm V         one Exec call passing pipes instead of sockets
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/varlink"
)

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: hostile hold|idle|exec|pipes [flags]"))
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	socket := fs.String("socket", "", "paddockd's API socket")
	n := fs.Int("n", 1, "connections or calls")
	vm := fs.String("vm", "", "the VM to exec in")
	parallel := fs.Int("parallel", 4, "connections making calls at once")
	wait := fs.Duration("wait", time.Minute, "longest wait for the daemon to close idle connections")
	_ = fs.Parse(os.Args[2:])
	switch os.Args[1] {
	case "hold":
		hold(*socket, *n)
	case "idle":
		idle(*socket, *n, *wait)
	case "exec":
		abandonExecs(*socket, *vm, *n, *parallel)
	case "pipes":
		pipes(*socket, *vm)
	default:
		fail(fmt.Errorf("unknown mode %q", os.Args[1]))
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "hostile:", err)
	os.Exit(2)
}

func report(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

// untilStdinCloses is how the test says "let go".
func untilStdinCloses() { _, _ = io.Copy(io.Discard, os.Stdin) }

// hold opens n connections, each answering one call and then holding an
// Events stream, which counts as a call in flight, so no idle timeout
// applies. Refusals are counted, with the first one's text.
func hold(socket string, n int) {
	var held []*rawConn
	refused, refusal := 0, ""
	for range n {
		c, err := dialRaw(socket)
		if err != nil {
			fail(err)
		}
		if err := c.call("org.varlink.service.GetInfo", false); err != nil {
			refused++
			if refusal == "" {
				refusal = err.Error()
			}
			c.Close()
			continue
		}
		if err := c.send("io.paddock.v1.Events", true); err != nil {
			fail(err)
		}
		held = append(held, c)
	}
	report(map[string]any{"held": len(held), "refused": refused, "refusal": refusal})
	untilStdinCloses()
	open := 0
	for _, c := range held {
		if c.open() {
			open++
		}
	}
	report(map[string]any{"still_open": open})
}

// idle opens n connections, makes one call on each and leaves them idle,
// then waits (at most wait) for the daemon to close them.
func idle(socket string, n int, wait time.Duration) {
	var conns []*rawConn
	for range n {
		c, err := dialRaw(socket)
		if err != nil {
			fail(err)
		}
		if err := c.call("org.varlink.service.GetInfo", false); err != nil {
			fail(err)
		}
		conns = append(conns, c)
	}
	start := time.Now()
	closed := 0
	deadline := start.Add(wait)
	for _, c := range conns {
		_ = c.nc.SetReadDeadline(deadline)
		if _, err := c.nc.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
			closed++
		}
	}
	report(map[string]any{"opened": n, "closed_by_daemon": closed, "seconds": time.Since(start).Seconds()})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// abandonExecs makes n Exec calls over parallel connections. Each call
// passes fresh socket pairs and abandons them: stdin is never written nor
// closed, stdout and stderr are never read, and the client keeps its own
// copy of the stdin end it passed and switches it to blocking mode, which
// would make any daemon read on it block a thread. Everything is held
// until stdin closes.
func abandonExecs(socket, vm string, n, parallel int) {
	var (
		mu       sync.Mutex
		kept     []*os.File
		ok, errs int
		firstErr string
	)
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl, err := api.Dial(context.Background(), socket)
			if err != nil {
				fail(err)
			}
			defer cl.Close()
			for range jobs {
				files, keep := socketTriple()
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				_, err := cl.Exec(ctx, api.ExecIn{VM: vm, Command: []string{"true"}}, files[0], files[1], files[2])
				cancel()
				// The passed stdout and stderr ends go, as a client's would;
				// the stdin end stays, in blocking mode.
				_ = files[1].Close()
				_ = files[2].Close()
				_ = unix.SetNonblock(int(files[0].Fd()), false)
				mu.Lock()
				kept = append(kept, keep...)
				kept = append(kept, files[0])
				if err != nil {
					errs++
					if firstErr == "" {
						firstErr = err.Error()
					}
				} else {
					ok++
				}
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	report(map[string]any{"calls": n, "ok": ok, "errors": errs, "first_error": firstErr, "fds_held": len(kept), "seconds": time.Since(start).Seconds()})
	untilStdinCloses()
	for _, f := range kept {
		_ = f.Close()
	}
	report(map[string]any{"released": len(kept)})
}

// socketTriple returns the three ends to pass and the three to keep.
func socketTriple() ([]*os.File, []*os.File) {
	var pass, keep []*os.File
	for _, name := range []string{"stdin", "stdout", "stderr"} {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			fail(err)
		}
		pass = append(pass, os.NewFile(uintptr(fds[0]), name))
		keep = append(keep, os.NewFile(uintptr(fds[1]), name+"-kept"))
	}
	return pass, keep
}

// pipes passes pipes, the kind a daemon cannot stop a client from making it
// block on, and reports the daemon's answer.
func pipes(socket, vm string) {
	cl, err := api.Dial(context.Background(), socket)
	if err != nil {
		fail(err)
	}
	defer cl.Close()
	var files, keep []*os.File
	for range 3 {
		r, w, err := os.Pipe()
		if err != nil {
			fail(err)
		}
		files, keep = append(files, r), append(keep, w)
	}
	files[1], keep[1] = keep[1], files[1] // stdout and stderr: the write ends go
	files[2], keep[2] = keep[2], files[2]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = cl.Exec(ctx, api.ExecIn{VM: vm, Command: []string{"true"}}, files[0], files[1], files[2])
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	report(map[string]any{"error": msg})
}

// rawConn is a varlink connection that can leave a "more" call unread.
type rawConn struct {
	nc net.Conn
}

func dialRaw(socket string) (*rawConn, error) {
	nc, err := net.Dial("unix", socket)
	if err != nil {
		return nil, err
	}
	return &rawConn{nc: nc}, nil
}

func (c *rawConn) Close() { _ = c.nc.Close() }

func (c *rawConn) send(method string, more bool) error {
	b, _ := json.Marshal(map[string]any{"method": method, "more": more})
	_ = c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := c.nc.Write(append(b, 0))
	return err
}

// call sends method and reads its reply; a varlink error reply (such as a
// refusal sent before the daemon closed the connection) is returned.
func (c *rawConn) call(method string, more bool) error {
	sendErr := c.send(method, more)
	_ = c.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	var msg []byte
	b := make([]byte, 4096)
	for {
		n, err := c.nc.Read(b)
		msg = append(msg, b[:n]...)
		if i := indexNUL(msg); i >= 0 {
			msg = msg[:i]
			break
		}
		if err != nil {
			if sendErr != nil {
				return sendErr
			}
			return err
		}
	}
	var r struct {
		Error      string          `json:"error"`
		Parameters json.RawMessage `json:"parameters"`
	}
	if err := json.Unmarshal(msg, &r); err != nil {
		return err
	}
	if r.Error != "" {
		return &varlink.Error{Name: r.Error, Parameters: r.Parameters}
	}
	return nil
}

func indexNUL(b []byte) int {
	for i, x := range b {
		if x == 0 {
			return i
		}
	}
	return -1
}

// open reports whether the daemon still keeps the connection: nothing to
// read within a moment (a stream with no events) and no end of file.
func (c *rawConn) open() bool {
	_ = c.nc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	for {
		_, err := c.nc.Read(make([]byte, 4096))
		if err != nil {
			return isTimeout(err)
		}
	}
}
