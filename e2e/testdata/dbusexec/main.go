// Command dbusexec is the file-descriptor client of e2e/dbus_test.go: it
// calls org.paddock1.VM.Exec (or OpenConsole with -console) on a VM object
// with socket pairs it made, feeds its own stdin to the command, and prints
// one JSON line: what came back on stdout and stderr and the JobDone that
// ended the job.
//
//	dbusexec -address unix:path=/tmp/x/bus -vm /org/paddock1/vm/ID -- cat
//	dbusexec -address ... -vm ... -console -until MARK
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"
)

func main() {
	address := flag.String("address", "", "the bus address")
	vm := flag.String("vm", "", "the VM's object path")
	console := flag.Bool("console", false, "OpenConsole instead of Exec")
	until := flag.String("until", "", "with -console: detach once the output holds this")
	flag.Parse()
	conn, err := dbus.Connect(*address)
	if err != nil {
		fail(err)
	}
	defer conn.Close()
	sigs := make(chan *dbus.Signal, 64)
	conn.Signal(sigs)
	if err := conn.AddMatchSignal(dbus.WithMatchInterface("org.paddock1.Manager"), dbus.WithMatchMember("JobDone")); err != nil {
		fail(err)
	}
	n := 3
	if *console {
		n = 2
	}
	ours, theirs := make([]*os.File, n), make([]dbus.UnixFD, n)
	for i := range n {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			fail(err)
		}
		ours[i], theirs[i] = os.NewFile(uintptr(fds[0]), "ours"), dbus.UnixFD(fds[1])
	}
	obj := conn.Object("org.paddock1", dbus.ObjectPath(*vm))
	var call *dbus.Call
	if *console {
		call = obj.Call("org.paddock1.VM.OpenConsole", 0, theirs[0], theirs[1])
	} else {
		call = obj.Call("org.paddock1.VM.Exec", 0, flag.Args(), map[string]dbus.Variant{}, theirs[0], theirs[1], theirs[2])
	}
	for _, fd := range theirs {
		_ = unix.Close(int(fd))
	}
	if call.Err != nil {
		fail(call.Err)
	}
	var job dbus.ObjectPath
	if err := call.Store(&job); err != nil {
		fail(err)
	}
	var wg sync.WaitGroup
	var stdout, stderr bytes.Buffer
	var mu sync.Mutex
	read := func(f *os.File, into *bytes.Buffer) {
		defer wg.Done()
		buf := make([]byte, 4096)
		for {
			n, err := f.Read(buf)
			mu.Lock()
			into.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}
	wg.Add(1)
	go read(ours[1], &stdout)
	if *console {
		// Detach (Ctrl-]) once the marker came through.
		go func() {
			for {
				mu.Lock()
				seen := strings.Contains(stdout.String(), *until)
				mu.Unlock()
				if seen {
					_, _ = ours[0].Write([]byte{0x1d})
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
	} else {
		wg.Add(1)
		go read(ours[2], &stderr)
		go func() {
			_, _ = io.Copy(ours[0], os.Stdin)
			_ = unix.Shutdown(int(ours[0].Fd()), unix.SHUT_WR)
		}()
	}
	deadline := time.After(3 * time.Minute)
	for {
		select {
		case s := <-sigs:
			if s.Name != "org.paddock1.Manager.JobDone" || len(s.Body) < 7 || s.Body[1] != job {
				continue
			}
			if !*console {
				wg.Wait()
			}
			mu.Lock()
			_ = json.NewEncoder(os.Stdout).Encode(map[string]any{"job": job, "stdout": stdout.String(), "stderr": stderr.String(),
				"result": s.Body[4], "error": s.Body[5], "message": s.Body[6]})
			mu.Unlock()
			return
		case <-deadline:
			fail(fmt.Errorf("no JobDone for %s", job))
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "dbusexec:", err)
	os.Exit(1)
}
