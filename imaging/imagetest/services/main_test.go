package main

import (
	"bufio"
	"crypto/tls"
	"debug/elf"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/host/probe"
)

// TestServices builds the program as a test image would (CGO_ENABLED=0),
// runs it on loopback, probes its three ports, makes HTTPS vanish and come
// back with SIGUSR1/SIGUSR2, and stops it with SIGTERM.
func TestServices(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "services")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("binary is dynamically linked")
		}
	}
	f.Close()

	cmd := exec.Command(bin, "-http", "127.0.0.1:0", "-https", "127.0.0.1:0", "-tcp", "127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	drain := func() {
		for l := range lines {
			t.Log(l)
		}
	}
	t.Cleanup(func() { cmd.Process.Kill(); drain() })

	listening := regexp.MustCompile(`^services: (\w+) listening on (\S+)$`)
	waitListen := func(want string) netip.AddrPort {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("exited before %s listened", want)
				}
				t.Log(l)
				if m := listening.FindStringSubmatch(l); m != nil && m[1] == want {
					return netip.MustParseAddrPort(m[2])
				}
			case <-timeout:
				t.Fatalf("%s never listened", want)
			}
		}
	}
	addrs := map[string]netip.AddrPort{}
	for range 3 {
		select {
		case l := <-lines:
			t.Log(l)
			if m := listening.FindStringSubmatch(l); m != nil {
				addrs[m[1]] = netip.MustParseAddrPort(m[2])
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("listeners so far: %v", addrs)
		}
	}

	classify := func(name, scheme string) {
		t.Helper()
		res, err := probe.Classify(t.Context(), addrs[name], probe.Options{})
		if err != nil || res.Scheme != scheme {
			t.Fatalf("%s: Classify = %+v, %v; want scheme %s", name, res, err, scheme)
		}
	}
	classify("http", probe.SchemeHTTP)
	classify("https", probe.SchemeHTTPS)
	classify("tcp", probe.SchemeTCP)

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
	get := func(url string) string {
		t.Helper()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if got := get("http://" + addrs["http"].String() + "/"); got != "hello from http\n" {
		t.Errorf("http body %q", got)
	}
	if got := get("https://" + addrs["https"].String() + "/x"); got != "hello from https\n" {
		t.Errorf("https body %q", got)
	}
	c, err := net.DialTimeout("tcp", addrs["tcp"].String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	c.Close()
	if string(b) != "hello from tcp\n" || err != nil {
		t.Errorf("tcp read %q, %v", b, err)
	}

	// SIGUSR1: HTTPS is gone, the others stay.
	cmd.Process.Signal(syscall.SIGUSR1)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := probe.Classify(t.Context(), addrs["https"], probe.Options{})
		if errors.Is(err, probe.ErrUnreachable) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("https still reachable after SIGUSR1: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	classify("http", probe.SchemeHTTP)

	// SIGUSR2: back on the same port.
	cmd.Process.Signal(syscall.SIGUSR2)
	if got := waitListen("https"); got != addrs["https"] {
		t.Fatalf("https reopened on %v, want %v", got, addrs["https"])
	}
	classify("https", probe.SchemeHTTPS)

	cmd.Process.Signal(syscall.SIGTERM)
	drain()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
}
