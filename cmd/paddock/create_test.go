package main

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

// createArgs parses args as run does and returns the request.
func createArgs(t *testing.T, args ...string) (api.CreateIn, error) {
	t.Helper()
	var f vmFlags
	cmd := &cobra.Command{Use: "run"}
	f.register(cmd)
	if err := cmd.Flags().Parse(args); err != nil {
		t.Fatal(err)
	}
	return f.createIn(cmd, cmd.Flags().Args())
}

func TestCreateArgs(t *testing.T) {
	str := func(s string) *string { return &s }
	list := func(s ...string) *[]string { return &s }
	cases := []struct {
		name string
		args []string
		want api.RunIn
		err  string // a usage error naming this
	}{
		{"image's command", []string{"x", "--image", "i"}, api.RunIn{}, ""},
		{"command after --", []string{"--image", "busybox", "--name", "x", "--", "sleep", "1000"}, api.RunIn{Cmd: list("sleep", "1000")}, ""},
		{"name and command", []string{"x", "--image", "i", "--", "sh", "-c", "echo hi"}, api.RunIn{Cmd: list("sh", "-c", "echo hi")}, ""},
		{"flags after --", []string{"x", "--image", "i", "--", "ls", "--all"}, api.RunIn{Cmd: list("ls", "--all")}, ""},
		{"entrypoint, workdir, user, kernel", []string{"x", "--image", "i", "--entrypoint", "/bin/sh", "-w", "/tmp", "-u", "1000:1000", "--kernel", "debian"},
			api.RunIn{Entrypoint: list("/bin/sh"), Workdir: str("/tmp"), User: str("1000:1000"), Kernel: str("debian")}, ""},
		{"entrypoint as a JSON list", []string{"x", "--image", "i", "--entrypoint", `["/bin/sh","-c"]`, "--", "echo hi"},
			api.RunIn{Entrypoint: list("/bin/sh", "-c"), Cmd: list("echo hi")}, ""},
		{"empty entrypoint", []string{"x", "--image", "i", "--entrypoint", ""}, api.RunIn{Entrypoint: &[]string{}}, ""},
		{"command without --", []string{"x", "--image", "i", "sleep", "1000"}, api.RunIn{}, `unexpected argument "sleep"`},
		{"broken JSON entrypoint", []string{"x", "--image", "i", "--entrypoint", `["a"`}, api.RunIn{}, "not a JSON list"},
		{"bad pull policy", []string{"x", "--image", "i", "--pull", "sometimes"}, api.RunIn{}, `--pull "sometimes"`},
		{"no image", []string{"x"}, api.RunIn{}, "needs a NAME and --image"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in, err := createArgs(t, tc.args...)
			if tc.err != "" {
				var ue usageError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want a usage error naming %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if in.Name != "x" || !reflect.DeepEqual(in.RunIn, tc.want) {
				t.Fatalf("got %q %+v, want x %+v", in.Name, in.RunIn, tc.want)
			}
		})
	}
}

func TestStoredIDIsNotPulled(t *testing.T) {
	for ref, stored := range map[string]bool{"sha256:0123456789ab": true, "0123456789ab": true, "abcdef": true, "busybox": false, "127.0.0.1:5000/app:1": false, "abc": false} {
		if storedID.MatchString(ref) != stored {
			t.Errorf("%s: stored id %v, want %v", ref, !stored, stored)
		}
	}
}
