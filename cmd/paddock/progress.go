package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/config"
)

// progressPrinter draws a bar on a terminal and plain lines elsewhere.
type progressPrinter struct {
	w     io.Writer
	tty   bool
	phase string
}

func (p *progressPrinter) show(pr api.ImportProgress) {
	if !p.tty {
		if pr.Phase != p.phase || pr.Phase == "layers" && pr.Layer > 0 {
			line := pr.Phase
			if pr.Phase == "layers" {
				line = fmt.Sprintf("layer %d/%d, %s read", pr.Layer, pr.Layers, config.FormatSize(pr.Bytes))
			}
			fmt.Fprintln(p.w, line)
		}
		p.phase = pr.Phase
		return
	}
	const width = 30
	fill := 0
	if pr.Layers > 0 {
		fill = width * max(pr.Layer-1, 0) / pr.Layers
		if pr.Phase != "layers" && pr.Phase != "resolve" {
			fill = width
		}
	}
	bar := strings.Repeat("=", fill) + strings.Repeat(" ", width-fill)
	fmt.Fprintf(p.w, "\r\033[K[%s] %-7s layer %d/%d  %s", bar, pr.Phase, pr.Layer, pr.Layers, humanBytes(pr.Bytes))
	p.phase = pr.Phase
}

func (p *progressPrinter) done() {
	if p.tty && p.phase != "" {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
