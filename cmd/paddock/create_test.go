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

// createCase parses args; with wantErr set it checks for a usage error
// naming it and returns false, else it returns what was parsed.
func createCase(t *testing.T, args []string, wantErr string) (api.CreateIn, bool) {
	t.Helper()
	in, err := createArgs(t, args...)
	if wantErr != "" {
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("err = %v, want a usage error naming %q", err, wantErr)
		}
		return in, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return in, true
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
			if in, ok := createCase(t, tc.args, tc.err); ok && (in.Name != "x" || !reflect.DeepEqual(in.RunIn, tc.want)) {
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

func TestNetArgs(t *testing.T) {
	ports := func(p ...api.PortMapping) *[]api.PortMapping { return &p }
	str := func(s string) *string { return &s }
	cases := []struct {
		name string
		args []string
		want api.NetIn
		err  string // a usage error naming this
	}{
		{"none", []string{"x", "--image", "i"}, api.NetIn{}, ""},
		{"one", []string{"x", "--image", "i", "-p", "8080:80"}, api.NetIn{Ports: ports(api.PortMapping{HostPort: 8080, GuestPort: 80, Proto: "tcp"})}, ""},
		{"repeated, address and udp", []string{"x", "--image", "i", "-p", "127.0.0.1:8080:80", "--publish", "5353:53/udp"},
			api.NetIn{Ports: ports(api.PortMapping{HostIP: "127.0.0.1", HostPort: 8080, GuestPort: 80, Proto: "tcp"}, api.PortMapping{HostPort: 5353, GuestPort: 53, Proto: "udp"})}, ""},
		{"every address written out", []string{"x", "--image", "i", "-p", "0.0.0.0:8080:80"}, api.NetIn{Ports: ports(api.PortMapping{HostPort: 8080, GuestPort: 80, Proto: "tcp"})}, ""},
		{"network", []string{"x", "--image", "i", "--network", "shared:web"}, api.NetIn{Network: str("shared:web")}, ""},
		{"default network", []string{"x", "--image", "i", "--network", ""}, api.NetIn{Network: str("")}, ""},
		{"port out of range", []string{"x", "--image", "i", "-p", "70000:80"}, api.NetIn{}, `-p: port mapping "70000:80": HOSTPORT 70000 is out of range`},
		{"malformed", []string{"x", "--image", "i", "-p", "8080"}, api.NetIn{}, `port mapping "8080": missing GUESTPORT`},
		{"bad proto", []string{"x", "--image", "i", "-p", "8080:80/icmp"}, api.NetIn{}, `protocol "icmp"`},
		{"bad network", []string{"x", "--image", "i", "--network", "host"}, api.NetIn{}, `--network: network "host" is not bridge, user or shared:GROUP`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if in, ok := createCase(t, tc.args, tc.err); ok && !reflect.DeepEqual(in.NetIn, tc.want) {
				t.Fatalf("got %+v, want %+v", in.NetIn, tc.want)
			}
		})
	}
}

// ports lists each published mapping, with the guest's listener on its
// port, and then the listeners nothing publishes; URLs name the host's
// address, or the mapping's.
func TestPortEntries(t *testing.T) {
	published := []api.PortMapping{
		{HostPort: 8080, GuestPort: 80, Proto: "tcp"},
		{HostIP: "127.0.0.1", HostPort: 8443, GuestPort: 443, Proto: "tcp"},
		{HostPort: 5353, GuestPort: 53, Proto: "udp"},
		{HostPort: 9000, GuestPort: 9000, Proto: "tcp"},
	}
	found := []api.Port{
		{Proto: "tcp", Port: 80, Scheme: "http", URL: "http://10.77.0.2:80/", Process: "web", PID: 7},
		{Proto: "tcp", Port: 443, Scheme: "https", URL: "https://10.77.0.2:443/"},
		{Proto: "tcp", Port: 22, Scheme: "tcp", URL: "tcp://10.77.0.2:22"},
	}
	got := portEntries(published, found, func() string { return "192.0.2.10" })
	want := [][]string{
		{"0.0.0.0:8080/tcp", "80/tcp", "http", "http://192.0.2.10:8080/", "web (pid 7)"},
		{"127.0.0.1:8443/tcp", "443/tcp", "https", "https://127.0.0.1:8443/", "-"},
		{"0.0.0.0:5353/udp", "53/udp", "-", "udp://192.0.2.10:5353", "-"},
		{"0.0.0.0:9000/tcp", "9000/tcp", "-", "tcp://192.0.2.10:9000", "-"},
		{"-", "22/tcp", "tcp", "tcp://10.77.0.2:22", "-"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if row := portRow(got[i]); !reflect.DeepEqual(row, want[i]) {
			t.Errorf("row %d = %q, want %q", i, row, want[i])
		}
	}
	if got[0].Published == nil || got[4].Published != nil || got[0].Process != "web" {
		t.Errorf("entries: %+v", got)
	}
}
