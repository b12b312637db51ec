package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/api"
)

// feed runs reports through a progress printer on a fake clock: each
// report comes at its offset from the start.
func feed(tty bool, reports []timed) string {
	var buf bytes.Buffer
	t0 := time.Unix(1700000000, 0)
	now := t0
	p := &progress{w: &buf, tty: tty, width: 200, now: func() time.Time { return now }}
	for _, r := range reports {
		now = t0.Add(r.at)
		p.show(r.p)
	}
	p.finish()
	return buf.String()
}

type timed struct {
	at time.Duration
	p  api.ImportProgress
}

const (
	d1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	d2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

// A pull of two layers of 10 MiB and 1 MiB at 1 MiB/s, then a build.
var pull = []timed{
	{0, api.ImportProgress{Phase: "resolve"}},
	{0, api.ImportProgress{Phase: "layers", Layer: 1, Layers: 2, Digest: d1, LayerSize: 10 << 20, Total: 11 << 20}},
	{4 * time.Second, api.ImportProgress{Phase: "layers", Layer: 1, Layers: 2, Digest: d1, LayerBytes: 4 << 20, LayerSize: 10 << 20, Bytes: 4 << 20, Total: 11 << 20}},
	{6 * time.Second, api.ImportProgress{Phase: "layers", Layer: 1, Layers: 2, Digest: d1, LayerBytes: 6 << 20, LayerSize: 10 << 20, Bytes: 6 << 20, Total: 11 << 20}},
	{10 * time.Second, api.ImportProgress{Phase: "layers", Layer: 2, Layers: 2, Digest: d2, LayerSize: 1 << 20, Bytes: 10 << 20, Total: 11 << 20}},
	{11 * time.Second, api.ImportProgress{Phase: "build", Layers: 2, Bytes: 11 << 20, Total: 11 << 20, BuildSize: 20 << 20}},
	{13 * time.Second, api.ImportProgress{Phase: "build", Layers: 2, Bytes: 11 << 20, Total: 11 << 20, Built: 10 << 20, BuildSize: 20 << 20}},
	{15 * time.Second, api.ImportProgress{Phase: "store", Layers: 2, Bytes: 11 << 20, Total: 11 << 20, Built: 21 << 20, BuildSize: 21 << 20}},
	{15 * time.Second, api.ImportProgress{Phase: "done", Layers: 2, Bytes: 11 << 20, Total: 11 << 20, Built: 21 << 20, BuildSize: 21 << 20}},
}

func TestProgressPlain(t *testing.T) {
	got := feed(false, pull)
	want := []string{
		"layer 1/2 111111111111: 10.0 MiB",
		"layer 1/2 111111111111: [==============>         ] 6.0 MiB / 10.0 MiB  1.0 MiB/s  ETA 4s", // 5 s after the first line
		"layer 1/2 111111111111: done, 10.0 MiB in 10s (1.0 MiB/s)",
		"layer 2/2 222222222222: 1.0 MiB",
		"layer 2/2 222222222222: done, 1.0 MiB in 1s (1.0 MiB/s)",
		"build: about 20.0 MiB",
		"build: done, 21.0 MiB in 4s (5.2 MiB/s)",
	}
	if lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n"); strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	if strings.Contains(got, "\033") || strings.Contains(got, "\r") {
		t.Fatalf("terminal controls in plain output: %q", got)
	}
}

func TestProgressTerminal(t *testing.T) {
	got := feed(true, pull[:4])
	// The last frame: layer 1 at 6 of 10 MiB after 6 s, layer 2 not begun.
	frames := strings.Split(got, "\033[2A")
	last := frames[len(frames)-1]
	for _, w := range []string{
		"\r\033[Klayer 1/2 111111111111  [==============>         ] 6.0 MiB / 10.0 MiB  1.0 MiB/s  ETA 4s\n",
		"\r\033[Klayer 2/2 waiting\n",
	} {
		if !strings.Contains(last, w) {
			t.Fatalf("last frame lacks %q:\n%q", w, last)
		}
	}
	end := feed(true, pull)
	frames = strings.Split(end, "\033[3A")
	last = frames[len(frames)-1]
	for _, w := range []string{"layer 1/2 111111111111  done  10.0 MiB\n", "layer 2/2 222222222222  done  1.0 MiB\n", "build  done  21.0 MiB\n"} {
		if !strings.Contains(last, w) {
			t.Fatalf("final frame lacks %q:\n%q", w, last)
		}
	}
}

// A hostile source's text never reaches the terminal as controls, and a
// line never outgrows the terminal (a wrapped line would break redraws).
func TestProgressEscapesAndFits(t *testing.T) {
	evil := "sha256:\033[2J\033]0;pwned\a"
	for _, tty := range []bool{false, true} {
		var buf bytes.Buffer
		p := &progress{w: &buf, tty: tty, width: 40, now: time.Now}
		p.show(api.ImportProgress{Phase: "\033[31mresolve"})
		p.show(api.ImportProgress{Phase: "layers", Layer: 1, Layers: 1, Digest: evil, LayerSize: 1 << 30})
		p.finish()
		out := buf.String()
		for _, bad := range []string{"\033[2J", "\033]0", "\a", "\033[31m"} {
			if strings.Contains(out, bad) {
				t.Fatalf("tty=%v: %q reached the output: %q", tty, bad, out)
			}
		}
		if tty {
			for _, l := range strings.Split(out, "\n") {
				l = strings.TrimPrefix(l[strings.LastIndex(l, "\r")+1:], "\033[K")
				if len([]rune(l)) > 39 {
					t.Fatalf("line of %d columns on a 40-column terminal: %q", len([]rune(l)), l)
				}
			}
		}
	}
}
