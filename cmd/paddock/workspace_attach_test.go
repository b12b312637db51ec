package main

import (
	"testing"

	"github.com/paddock-vm/paddock/api"
)

func TestParseWorkspace(t *testing.T) {
	for in, want := range map[string]api.WorkspaceMount{
		"proj":             {Workspace: "proj"},
		"proj:ro":          {Workspace: "proj", ReadOnly: true},
		"proj:rw":          {Workspace: "proj"},
		"proj:/src":        {Workspace: "proj", Path: "/src"},
		"proj:/src/a:ro":   {Workspace: "proj", Path: "/src/a", ReadOnly: true},
		"0123456789ab:/ro": {Workspace: "0123456789ab", Path: "/ro"},
	} {
		got, err := parseWorkspace(in)
		if err != nil || got != want {
			t.Errorf("%s: %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", ":/src", "proj:src", "proj:/a:/b", "proj:/a:ro:ro"} {
		if _, err := parseWorkspace(bad); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}
