package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// The snapshot, restore, clone and resize commands check their arguments
// before they dial the daemon: each mistake is a usage error saying what
// was wrong.
func TestWorkspaceLayerCommandArgs(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"workspace", "snapshot", "proj"}, "a workspace and a snapshot name"},
		{[]string{"workspace", "restore", "proj", "s1", "s2"}, "a workspace and a snapshot name"},
		{[]string{"workspace", "clone", "proj"}, "a source workspace and a new name"},
		{[]string{"workspace", "resize", "proj"}, "a workspace and a size"},
		{[]string{"workspace", "resize", "proj", "lots"}, "lots"},
		{[]string{"workspace", "clone", "proj", "p2", "--snap", "s1"}, "unknown flag"},
	} {
		var out, errOut bytes.Buffer
		if code := run(append([]string{"--socket", sock}, c.args...), &out, &errOut); code != exitUsage || !strings.Contains(errOut.String(), c.want) {
			t.Errorf("%v: exit %d, %q; want a usage error with %q", c.args, code, errOut.String(), c.want)
		}
	}
}
