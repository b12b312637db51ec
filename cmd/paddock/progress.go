package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/api"
)

// progress shows an import's advance as docker and podman do: on a
// terminal, a line per layer and one for the build, redrawn in place with
// bytes, rate and time left; elsewhere, one plain line per step and a line
// every few seconds while a step goes on. Everything from the daemon is
// escaped: layer digests and phases come from the image's source.
type progress struct {
	w     io.Writer
	tty   bool
	width int // terminal columns; lines are cut to fit so redraws stay in place
	now   func() time.Time

	phase  string
	layers []*meter // by layer number - 1; nil until seen
	build  meter
	drawn  int       // lines on screen (terminal)
	drawAt time.Time // last redraw (terminal)
}

// meter follows one stream of bytes: a layer's blob, or the disk image.
type meter struct {
	label        string
	bytes, size  int64
	start, last  time.Time // first report, last plain line
	done, shown  bool      // finished; its end printed (plain)
	startedBytes int64     // bytes at the first report: the rate counts from there
}

// How often a terminal is redrawn, and how often a plain line repeats a
// step that goes on.
const (
	redrawEvery = 100 * time.Millisecond
	plainEvery  = 5 * time.Second
)

func newProgress(w io.Writer) *progress {
	p := &progress{w: w, tty: isTTY(w), now: time.Now, width: 80}
	if f, ok := w.(*os.File); ok && p.tty {
		if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 0 {
			p.width = int(ws.Col)
		}
	}
	return p
}

// show takes one report.
func (p *progress) show(r api.ImportProgress) {
	now := p.now()
	phase := termField(r.Phase)
	if r.Layers > len(p.layers) && r.Layers <= 10000 {
		p.layers = append(p.layers, make([]*meter, r.Layers-len(p.layers))...)
	}
	if phase == "layers" && r.Layer >= 1 && r.Layer <= len(p.layers) {
		p.finishLayers(r.Layer-1, now)
		m := p.layers[r.Layer-1]
		if m == nil {
			// A rootfs tar's layer has no digest until it is read.
			label := strings.TrimSpace(fmt.Sprintf("layer %d/%d %s", r.Layer, r.Layers, termField(shortDigest(r.Digest))))
			m = &meter{label: label, start: now, startedBytes: r.LayerBytes}
			p.layers[r.Layer-1] = m
			p.plainf(m, now, "%s: %s", m.label, sizeText(r.LayerSize))
		}
		m.bytes, m.size = r.LayerBytes, r.LayerSize
		p.plainProgress(m, now)
	} else if phase != "layers" {
		p.finishLayers(len(p.layers), now)
	}
	if phase == "build" {
		if p.build.start.IsZero() {
			p.build = meter{label: "build", start: now, startedBytes: r.Built}
			p.plainf(&p.build, now, "build: about %s", sizeText(r.BuildSize))
		}
		p.build.bytes, p.build.size = r.Built, r.BuildSize
		p.plainProgress(&p.build, now)
	}
	if (phase == "store" || phase == "done") && !p.build.start.IsZero() && !p.build.done {
		p.build.bytes, p.build.size = r.Built, r.Built
		p.end(&p.build, now)
	}
	changed := phase != p.phase
	p.phase = phase
	if p.tty && (changed || now.Sub(p.drawAt) >= redrawEvery) {
		p.draw(now)
	}
}

// finishLayers marks the layers before n read: a later one has begun, or
// the layers are behind.
func (p *progress) finishLayers(n int, now time.Time) {
	for _, m := range p.layers[:n] {
		if m != nil && !m.done {
			if m.size > 0 {
				m.bytes = m.size
			}
			p.end(m, now)
		}
	}
}

func (p *progress) end(m *meter, now time.Time) {
	m.done = true
	if !p.tty && !m.shown {
		m.shown = true
		fmt.Fprintf(p.w, "%s: done, %s in %s%s\n", m.label, humanBytes(m.bytes), round(now.Sub(m.start)), rateText(m, now, " (%s)"))
	}
}

// plainf prints a line when not on a terminal.
func (p *progress) plainf(m *meter, now time.Time, format string, args ...any) {
	if !p.tty {
		m.last = now
		fmt.Fprintf(p.w, format+"\n", args...)
	}
}

func (p *progress) plainProgress(m *meter, now time.Time) {
	if !p.tty && !m.done && now.Sub(m.last) >= plainEvery {
		p.plainf(m, now, "%s: %s", m.label, m.text(now))
	}
}

// draw redraws every line in place.
func (p *progress) draw(now time.Time) {
	var lines []string
	for i, m := range p.layers {
		if m == nil {
			lines = append(lines, fmt.Sprintf("layer %d/%d waiting", i+1, len(p.layers)))
			continue
		}
		lines = append(lines, m.label+"  "+m.text(now))
	}
	switch {
	case !p.build.start.IsZero():
		lines = append(lines, "build  "+p.build.text(now))
	case len(lines) == 0 && p.phase == "resolve":
		lines = append(lines, "resolving")
	}
	var b strings.Builder
	if p.drawn > 0 {
		fmt.Fprintf(&b, "\033[%dA", p.drawn)
	}
	for _, l := range lines {
		b.WriteString("\r\033[K" + cut(l, p.width-1) + "\n")
	}
	p.drawn, p.drawAt = len(lines), now
	_, _ = io.WriteString(p.w, b.String())
}

// finish draws the final state on a terminal.
func (p *progress) finish() {
	if p.tty && p.drawn > 0 {
		p.draw(p.now())
	}
}

// text is a meter's state: a bar, bytes of size, rate and time left.
func (m *meter) text(now time.Time) string {
	if m.done {
		return "done  " + humanBytes(m.bytes)
	}
	if m.size <= 0 {
		return humanBytes(m.bytes) + rateText(m, now, "  %s")
	}
	const width = 24
	frac := min(float64(m.bytes)/float64(m.size), 1)
	fill := int(frac * width)
	bar := strings.Repeat("=", fill)
	if fill < width {
		bar += ">" + strings.Repeat(" ", width-fill-1)
	}
	s := fmt.Sprintf("[%s] %s / %s", bar, humanBytes(m.bytes), humanBytes(m.size)) + rateText(m, now, "  %s")
	if r := m.rate(now); r > 0 {
		s += "  ETA " + round(time.Duration(float64(m.size-m.bytes)/r*float64(time.Second))).String()
	}
	return s
}

// rate is bytes per second since the meter's first report; 0 until it
// means something.
func (m *meter) rate(now time.Time) float64 {
	d := now.Sub(m.start).Seconds()
	if d < 0.2 || m.bytes <= m.startedBytes {
		return 0
	}
	return float64(m.bytes-m.startedBytes) / d
}

func rateText(m *meter, now time.Time, format string) string {
	if r := m.rate(now); r > 0 {
		return fmt.Sprintf(format, humanBytes(int64(r))+"/s")
	}
	return ""
}

func sizeText(n int64) string {
	if n <= 0 {
		return "size unknown"
	}
	return humanBytes(n)
}

func round(d time.Duration) time.Duration {
	if d < 10*time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}

// cut shortens s to n runes.
func cut(s string, n int) string {
	r := []rune(s)
	if n < 1 || len(r) <= n {
		return s
	}
	return string(r[:n])
}
