package unixtest

import (
	"bufio"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// Each connection is served on its own (a held one does not block the
// next) and closed when its handler returns.
func TestListen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	Listen(t, path, func(c net.Conn) {
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Fprintf(c, "echo %s", line)
	})
	held, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	for i := range 3 {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "%d\n", i)
		sc := bufio.NewScanner(c)
		if !sc.Scan() || sc.Text() != fmt.Sprintf("echo %d", i) {
			t.Fatalf("connection %d: %q %v", i, sc.Text(), sc.Err())
		}
		if sc.Scan() || sc.Err() != nil {
			t.Fatalf("connection %d not closed after its handler returned: %q %v", i, sc.Text(), sc.Err())
		}
		c.Close()
	}
}
