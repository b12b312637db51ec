// Package unixtest serves UNIX sockets in tests and in the stand-in
// processes test binaries run (fake VMMs, fake guests): listen, accept until
// the listener closes, one goroutine per connection.
package unixtest

import (
	"net"
	"testing"
)

// Serve accepts connections on l until l is closed, calling handle for each
// in its own goroutine and closing the connection when handle returns. It
// returns at once.
func Serve(l net.Listener, handle func(net.Conn)) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// Listen serves the UNIX socket path with handle (see Serve) until t ends.
func Listen(t testing.TB, path string, handle func(net.Conn)) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	Serve(l, handle)
}
