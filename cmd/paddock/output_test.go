package main

import (
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/api"
)

func TestTermSafe(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"plain text, grüße", "plain text, grüße"},
		{"two\nlines\tand a tab", "two\nlines\tand a tab"},
		{"\x1b[31mred\x1b[0m", `\x1b[31mred\x1b[0m`},
		{"bell\a and CR\r", `bell\a and CR\r`},
		{"C1 \u009b2J", `C1 \u009b2J`},
		{"bidi \u202eevil", `bidi \u202eevil`},
		{"bad utf-8 \xff", `bad utf-8 \xff`},
	} {
		if got := termSafe(c.in); got != c.want {
			t.Errorf("termSafe(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// A workspace event names its workspace, escaped like everything else.
func TestEventLineWorkspace(t *testing.T) {
	got := eventLine(api.Event{Time: "T", Kind: api.EventWorkspaceCreated, Workspace: "proj\x1b[2J", WorkspaceID: "abc", Status: "ready"})
	if !strings.Contains(got, "workspace-created proj") || strings.Contains(got, "\x1b") || !strings.HasSuffix(got, " ready") {
		t.Fatalf("eventLine: %q", got)
	}
}
