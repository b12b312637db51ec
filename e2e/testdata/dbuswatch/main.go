// Command dbuswatch is the D-Bus signal listener of e2e/dbus_test.go, run
// as an unprivileged uid against a private bus: it calls
// org.paddock1.Manager.Subscribe, prints {"ready":true}, then one JSON line
// per signal it receives ({"path","name","body"}) until its stdin closes.
//
//	dbuswatch -address unix:path=/tmp/x/bus
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/godbus/dbus/v5"
)

func main() {
	address := flag.String("address", "", "the bus address")
	flag.Parse()
	conn, err := dbus.Connect(*address)
	if err != nil {
		fail(err)
	}
	defer conn.Close()
	ch := make(chan *dbus.Signal, 1024)
	conn.Signal(ch)
	if err := conn.Object("org.paddock1", "/org/paddock1").Call("org.paddock1.Manager.Subscribe", 0).Err; err != nil {
		fail(err)
	}
	enc := json.NewEncoder(os.Stdout)
	_ = enc.Encode(map[string]any{"ready": true, "name": conn.Names()[0]})
	done := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(done) }()
	for {
		select {
		case <-done:
			return
		case s := <-ch:
			if s.Sender == "org.freedesktop.DBus" {
				continue
			}
			_ = enc.Encode(map[string]any{"path": s.Path, "name": s.Name, "body": plain(s.Body)})
		}
	}
}

// plain drops variants, so the values print as JSON.
func plain(v any) any {
	switch x := v.(type) {
	case dbus.Variant:
		return plain(x.Value())
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = plain(e)
		}
		return out
	case map[string]dbus.Variant:
		out := map[string]any{}
		for k, e := range x {
			out[k] = plain(e)
		}
		return out
	case map[string]map[string]dbus.Variant:
		out := map[string]any{}
		for k, e := range x {
			out[k] = plain(e)
		}
		return out
	}
	return v
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "dbuswatch:", err)
	os.Exit(1)
}
