package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// socat sends raw NUL-terminated JSON: a varlink client that shares no code
// with paddock.
func socat(t *testing.T, path, in string) []map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testenv.RequireTool(t, "socat", "socat"), "-t2", "-", "UNIX-CONNECT:"+path)
	cmd.Stdin = strings.NewReader(in)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("socat: %v", err)
	}
	var replies []map[string]any
	for _, part := range bytes.Split(out, []byte{0}) {
		if len(part) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(part, &m); err != nil {
			t.Fatalf("reply %q: %v", part, err)
		}
		replies = append(replies, m)
	}
	return replies
}

func TestIndependentVarlinkClient(t *testing.T) {
	e := newEnv(t, "")
	e.daemon(t, nil)
	r := socat(t, e.socket,
		`{"method":"org.varlink.service.GetInfo"}`+"\x00"+
			`{"method":"org.varlink.service.GetInterfaceDescription","parameters":{"interface":"io.paddock.v1"}}`+"\x00"+
			`{"method":"io.paddock.v1.Create","parameters":{"name":"raw1","image":"alpine","memory":268435456}}`+"\x00"+
			`{"method":"io.paddock.v1.Get","parameters":{"vm":"raw1"}}`+"\x00"+
			`{"method":"io.paddock.v1.Get","parameters":{"vm":"nope"}}`+"\x00"+
			`{"method":"io.paddock.v1.Create","parameters":{"name":"raw2","image":"alpine","cpus":"two"}}`+"\x00"+
			`{"method":"io.paddock.v1.Frob"}`+"\x00")
	if len(r) != 7 {
		t.Fatalf("got %d replies: %v", len(r), r)
	}
	ifaces := r[0]["parameters"].(map[string]any)["interfaces"].([]any)
	if len(ifaces) != 2 || ifaces[1] != "io.paddock.v1" {
		t.Fatalf("GetInfo: %v", r[0])
	}
	if d := r[1]["parameters"].(map[string]any)["description"]; d != api.Description {
		t.Fatalf("GetInterfaceDescription served %q", d)
	}
	vm := r[3]["parameters"].(map[string]any)["vm"].(map[string]any)
	if vm["name"] != "raw1" || vm["spec"].(map[string]any)["memory"] != float64(256<<20) {
		t.Fatalf("Get: %v", r[3])
	}
	for i, want := range map[int]string{4: "io.paddock.v1.VMNotFound", 5: "org.varlink.service.InvalidParameter", 6: "org.varlink.service.MethodNotFound"} {
		if r[i]["error"] != want {
			t.Errorf("reply %d: %v, want error %s", i, r[i], want)
		}
	}
	if msg, _ := r[4]["parameters"].(map[string]any)["message"].(string); !strings.Contains(msg, `"nope"`) {
		t.Errorf("VMNotFound does not name the culprit: %v", r[4])
	}
}

// Malformed, oversized and hanging clients get closed; the daemon and every
// other client carry on.
func TestHostileClientsAgainstDaemon(t *testing.T) {
	e := newEnv(t, "")
	p := e.daemon(t, nil)
	good := e.client(t)
	hang, err := net.Dial("unix", e.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer hang.Close()
	if _, err := hang.Write([]byte(`{"method":"io.paddock.v1.Li`)); err != nil {
		t.Fatal(err)
	}
	for name, payload := range map[string][]byte{
		"malformed": []byte("{{{\x00"),
		"oversize":  append([]byte(`{"method":"io.paddock.v1.Get","parameters":{"vm":"`+strings.Repeat("a", 2<<20)+`"}}`), 0),
		"binary":    {0xff, 0xfe, 0x00},
	} {
		c, err := net.Dial("unix", e.socket)
		if err != nil {
			t.Fatal(err)
		}
		go c.Write(payload)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 4096)
		n, rerr := c.Read(buf)
		c.Close()
		if rerr == nil && n > 0 && !strings.Contains(string(buf[:n]), `"error"`) {
			t.Errorf("%s: served %q", name, buf[:n])
		}
		if ne, ok := rerr.(net.Error); ok && ne.Timeout() {
			t.Errorf("%s: connection left open", name)
		}
	}
	if _, err := good.Create(context.Background(), api.CreateIn{Name: "survivor", Image: "alpine"}); err != nil {
		t.Fatalf("good client after hostile ones: %v", err)
	}
	select {
	case <-p.done:
		t.Fatal("daemon died")
	default:
	}
}
