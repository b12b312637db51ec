package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/paddock-vm/paddock/api"
)

// sessionBus starts a private dbus-daemon for the benchmark's paddockd and
// returns its address ("" when dbus-daemon is not installed) and a stop.
func sessionBus(dir string) (string, func(), error) {
	bin, err := exec.LookPath("dbus-daemon")
	if err != nil {
		return "", func() {}, nil
	}
	addr := "unix:path=" + filepath.Join(dir, "bus")
	cmd := exec.Command(bin, "--session", "--nofork", "--nopidfile", "--nosyslog", "--address="+addr, "--print-address=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		stop()
		return "", nil, fmt.Errorf("dbus-daemon printed no address: %w", err)
	}
	return strings.TrimSpace(line), stop, nil
}

// dbusBench measures how long after a change the D-Bus front-end tells a
// subscriber (PropertiesChanged), against the varlink Events stream telling
// of the same change: both are fed by the Events actor.
func dbusBench(c *api.Client, sock, addr, vm string, n int) error {
	conn, err := dbus.Connect(addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	sigs := make(chan *dbus.Signal, 256)
	conn.Signal(sigs)
	if err := conn.Object("org.paddock1", "/org/paddock1").Call("org.paddock1.Manager.Subscribe", 0).Err; err != nil {
		return fmt.Errorf("subscribing: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ec, err := api.Dial(ctx, sock)
	if err != nil {
		return err
	}
	defer ec.Close()
	events := make(chan api.Event, 256)
	ready := make(chan struct{})
	go func() {
		first := true
		_ = ec.Events(ctx, vm, func(e api.Event) error {
			if first {
				first = false
				close(ready)
			}
			events <- e
			return nil
		})
	}()
	// The stream's first event arrives once a change happens: prime it.
	prime := 4
	if _, err := c.Set(ctx, api.SetIn{VM: vm, CPUs: &prime}); err != nil {
		return err
	}
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("no varlink event within 10 s")
	}
	drain := func() {
		for {
			select {
			case <-events:
			case <-sigs:
			case <-time.After(100 * time.Millisecond):
				return
			}
		}
	}
	drain()
	var vl, db []time.Duration
	for i := range n {
		cpus := 2 + i%2
		t0 := time.Now()
		if _, err := c.Set(ctx, api.SetIn{VM: vm, CPUs: &cpus}); err != nil {
			return err
		}
		var seq uint64
		select {
		case e := <-events:
			vl, seq = append(vl, time.Since(t0)), e.Seq
		case <-time.After(10 * time.Second):
			return fmt.Errorf("no varlink event for change %d", i)
		}
		for got := false; !got; {
			select {
			case s := <-sigs:
				if s.Name != "org.freedesktop.DBus.Properties.PropertiesChanged" || len(s.Body) < 2 {
					continue
				}
				props, _ := s.Body[1].(map[string]dbus.Variant)
				if v, ok := props["LastEventSeq"].Value().(uint64); ok && v == seq {
					db, got = append(db, time.Since(t0)), true
				}
			case <-time.After(10 * time.Second):
				return fmt.Errorf("no PropertiesChanged for event %d", seq)
			}
		}
	}
	fmt.Printf("D-Bus PropertiesChanged after a Set          p50 %v  p99 %v  = %.2fx / %.2fx the varlink event (p50 %v, p99 %v; n=%d)\n",
		pct(db, 50), pct(db, 99), ratio(pct(db, 50), pct(vl, 50)), ratio(pct(db, 99), pct(vl, 99)), pct(vl, 50), pct(vl, 99), n)
	return nil
}

// withBus adds the session bus to the daemon's environment and config.
func withBus(cmd *exec.Cmd, addr string) {
	if addr != "" {
		cmd.Env = append(os.Environ(), "DBUS_SESSION_BUS_ADDRESS="+addr)
	}
}
