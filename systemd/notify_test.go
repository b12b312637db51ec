package systemd

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

type received struct {
	pid  int
	text string
	fds  []int
}

// notifyListener binds a unixgram socket with SO_PASSCRED at addr (a path,
// or "@name" for the abstract namespace) and returns a receive function.
func notifyListener(t *testing.T, addr string) func() received {
	t.Helper()
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(s) })
	if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		t.Fatal(err)
	}
	name := addr
	if strings.HasPrefix(addr, "@") {
		// Bind the abstract name explicitly (leading NUL), independent of
		// the '@' convention the code under test relies on.
		name = "\x00" + addr[1:]
	}
	if err := unix.Bind(s, &unix.SockaddrUnix{Name: name}); err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval((2 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return func() received {
		t.Helper()
		buf := make([]byte, 4096)
		oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(4*8))
		n, oobn, _, _, err := unix.Recvmsg(s, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err != nil {
			t.Fatalf("no notification received: %v", err)
		}
		r := received{text: string(buf[:n])}
		cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			t.Fatal(err)
		}
		for i := range cmsgs {
			if c, err := unix.ParseUnixCredentials(&cmsgs[i]); err == nil {
				r.pid = int(c.Pid)
			} else if fds, err := unix.ParseUnixRights(&cmsgs[i]); err == nil {
				r.fds = append(r.fds, fds...)
			}
		}
		for _, fd := range r.fds {
			t.Cleanup(func() { unix.Close(fd) })
		}
		return r
	}
}

func TestNotifyMessages(t *testing.T) {
	for _, sock := range []struct {
		name string
		addr func(t *testing.T) string
	}{
		{"path", func(t *testing.T) string { return filepath.Join(t.TempDir(), "notify") }},
		{"abstract", func(t *testing.T) string {
			return fmt.Sprintf("@paddock-notify-test-%d-%d", os.Getpid(), time.Now().UnixNano())
		}},
	} {
		t.Run(sock.name, func(t *testing.T) {
			addr := sock.addr(t)
			recv := notifyListener(t, addr)
			t.Setenv("NOTIFY_SOCKET", addr)
			n := NewNotifier()
			if !n.Enabled() {
				t.Fatal("Enabled() = false with NOTIFY_SOCKET set")
			}
			if _, ok := os.LookupEnv("NOTIFY_SOCKET"); ok {
				t.Error("NOTIFY_SOCKET still in the environment after NewNotifier")
			}

			for _, tc := range []struct {
				name string
				send func() error
				want string
			}{
				{"ready", func() error { return n.Ready("serving 3 VMs") }, "READY=1\nSTATUS=serving 3 VMs"},
				{"ready status newline cannot inject", func() error { return n.Ready("a\nSTOPPING=1") }, "READY=1\nSTATUS=a STOPPING=1"},
				{"ready without status", func() error { return n.Ready("") }, "READY=1"},
				{"status", func() error { return n.Status("reconciling 2/5") }, "STATUS=reconciling 2/5"},
				{"status newline cannot inject", func() error { return n.Status("a\nREADY=1") }, "STATUS=a READY=1"},
				{"stopping", n.Stopping, "STOPPING=1"},
				{"watchdog", n.Watchdog, "WATCHDOG=1"},
				{"extend timeout", func() error { return n.ExtendTimeout(90 * time.Second) }, "EXTEND_TIMEOUT_USEC=90000000"},
				{"fdstore remove", func() error { return n.FDStoreRemove("vm-abc") }, "FDSTOREREMOVE=1\nFDNAME=vm-abc"},
			} {
				if err := tc.send(); err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				r := recv()
				if r.text != tc.want {
					t.Errorf("%s: got %q, want %q", tc.name, r.text, tc.want)
				}
				if r.pid != os.Getpid() {
					t.Errorf("%s: sender pid %d, want %d", tc.name, r.pid, os.Getpid())
				}
				if len(r.fds) != 0 {
					t.Errorf("%s: got %d fds, want none", tc.name, len(r.fds))
				}
			}
		})
	}
}

func TestNotifyReloadingMonotonic(t *testing.T) {
	addr := filepath.Join(t.TempDir(), "notify")
	recv := notifyListener(t, addr)
	t.Setenv("NOTIFY_SOCKET", addr)
	n := NewNotifier()

	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	before := ts.Sec*1e6 + ts.Nsec/1e3
	if err := n.Reloading(); err != nil {
		t.Fatal(err)
	}
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	after := ts.Sec*1e6 + ts.Nsec/1e3

	text := recv().text
	rest, ok := strings.CutPrefix(text, "RELOADING=1\nMONOTONIC_USEC=")
	if !ok {
		t.Fatalf("got %q, want RELOADING=1\\nMONOTONIC_USEC=<n>", text)
	}
	usec, err := strconv.ParseInt(rest, 10, 64)
	if err != nil {
		t.Fatalf("MONOTONIC_USEC=%q: %v", rest, err)
	}
	if usec < before || usec > after {
		t.Errorf("MONOTONIC_USEC=%d not within [%d, %d] (CLOCK_MONOTONIC)", usec, before, after)
	}
}

func TestNotifyFDStore(t *testing.T) {
	addr := filepath.Join(t.TempDir(), "notify")
	recv := notifyListener(t, addr)
	t.Setenv("NOTIFY_SOCKET", addr)
	n := NewNotifier()

	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	if err := n.FDStore("vm-0123", pr); err != nil {
		t.Fatal(err)
	}
	r := recv()
	if want := "FDSTORE=1\nFDNAME=vm-0123"; r.text != want {
		t.Errorf("got %q, want %q", r.text, want)
	}
	if r.pid != os.Getpid() {
		t.Errorf("sender pid %d, want %d", r.pid, os.Getpid())
	}
	if len(r.fds) != 1 {
		t.Fatalf("got %d fds, want 1", len(r.fds))
	}
	// The received descriptor is the same pipe: what we write arrives there.
	if _, err := pw.Write([]byte("state")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(os.NewFile(uintptr(r.fds[0]), "received"), got); err != nil {
		t.Fatal(err)
	}
	if string(got) != "state" {
		t.Errorf("read %q from the received fd, want %q", got, "state")
	}
	// The caller keeps its own descriptor.
	if _, err := pr.Stat(); err != nil {
		t.Errorf("FDStore closed the caller's file: %v", err)
	}

	for _, bad := range []string{"", "a:b", "new\nline", strings.Repeat("x", 256)} {
		if err := n.FDStore(bad, pr); err == nil {
			t.Errorf("FDStore(%q) accepted an invalid name", bad)
		}
	}
}

func TestNotifyUnsetIsNoop(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	os.Unsetenv("NOTIFY_SOCKET")
	n := NewNotifier()
	if n.Enabled() {
		t.Fatal("Enabled() = true without NOTIFY_SOCKET")
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	for name, err := range map[string]error{
		"Ready": n.Ready("x"), "Status": n.Status("x"), "Reloading": n.Reloading(),
		"Stopping": n.Stopping(), "Watchdog": n.Watchdog(), "FDStore": n.FDStore("x", pr),
	} {
		if err != nil {
			t.Errorf("%s without NOTIFY_SOCKET: %v", name, err)
		}
	}
	var nilN *Notifier
	if err := nilN.Ready("x"); err != nil {
		t.Errorf("nil Notifier: %v", err)
	}
}

func TestNotifyDeadSocketErrors(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody"))
	if err := NewNotifier().Ready("x"); err == nil {
		t.Fatal("Ready to a socket nobody bound: want an error")
	}
}

func TestNotifyConcurrent(t *testing.T) {
	addr := filepath.Join(t.TempDir(), "notify")
	recv := notifyListener(t, addr)
	t.Setenv("NOTIFY_SOCKET", addr)
	n := NewNotifier()
	const workers = 8
	errs := make(chan error, workers)
	for i := range workers {
		go func() { errs <- n.Status(fmt.Sprintf("w%d", i)) }()
	}
	seen := map[string]bool{}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		seen[recv().text] = true
	}
	for i := range workers {
		if !seen[fmt.Sprintf("STATUS=w%d", i)] {
			t.Errorf("missing STATUS=w%d in %v", i, seen)
		}
	}
}

func TestWatchdogInterval(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		name       string
		usec, pid  string // "-" = unset
		want       time.Duration
		wantOK     bool
		wantErrSet bool
	}{
		{"unset", "-", "-", 0, false, false},
		{"30s for us", "30000000", self, 30 * time.Second, true, false},
		{"no pid means us", "5000000", "-", 5 * time.Second, true, false},
		{"other pid", "30000000", "1", 0, false, false},
		{"zero", "0", self, 0, false, true},
		{"garbage", "abc", self, 0, false, true},
		{"garbage pid", "1000", "x", 0, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range map[string]string{"WATCHDOG_USEC": tc.usec, "WATCHDOG_PID": tc.pid} {
				t.Setenv(k, v)
				if v == "-" {
					os.Unsetenv(k)
				}
			}
			n := NewNotifier()
			got, ok := n.WatchdogInterval()
			if got != tc.want || ok != tc.wantOK {
				t.Errorf("WatchdogInterval() = %v, %v; want %v, %v", got, ok, tc.want, tc.wantOK)
			}
			if (n.WatchdogError() != nil) != tc.wantErrSet {
				t.Errorf("WatchdogError() = %v, want error: %v", n.WatchdogError(), tc.wantErrSet)
			}
			for _, k := range []string{"WATCHDOG_USEC", "WATCHDOG_PID"} {
				if _, set := os.LookupEnv(k); set {
					t.Errorf("%s still set after NewNotifier", k)
				}
			}
		})
	}
}
