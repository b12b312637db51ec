package e2e

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/internal/testenv"
)

const (
	daemonUID  = 61000
	socketGID  = 61050 // the "paddock" group: may connect
	adminGID   = 61100 // the admin group
	aliceUID   = 61001
	bobUID     = 61002
	carolUID   = 61003 // member of the admin group
	outsideUID = 61009 // not in the socket group
)

func chownTree(t *testing.T, root string, uid, gid int) {
	t.Helper()
	err := filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// capLine returns a line of /proc/PID/status, e.g. "CapEff".
func capLine(t *testing.T, pid int, key string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, key+":") {
			return strings.TrimSpace(strings.TrimPrefix(l, key+":"))
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return ""
}

// Acceptance: the daemon runs as a non-root uid with no capabilities; two
// unprivileged uids each see only their own VMs; the admin sees all; a VM
// of another user is not found, as one that does not exist (issue 10).
func TestUnprivilegedDaemonAndOwnership(t *testing.T) {
	testenv.RequireRoot(t, "runs the daemon and clients as other uids")
	setpriv := testenv.RequireTool(t, "setpriv", "util-linux")
	e := newEnv(t, fmt.Sprintf("[api]\nsocket_group = \"%d\"\nadmin_group = \"%d\"\n", socketGID, adminGID))
	for _, d := range []string{"run", "cache"} {
		if err := os.MkdirAll(filepath.Join(e.dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	chownTree(t, e.dir, daemonUID, daemonUID)

	p := e.daemon(t, func(c *exec.Cmd) {
		c.Path = setpriv
		c.Args = append([]string{setpriv, fmt.Sprintf("--reuid=%d", daemonUID), fmt.Sprintf("--regid=%d", daemonUID),
			fmt.Sprintf("--groups=%d", socketGID), "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"},
			bin("paddockd"), "--config", e.cfg)
		c.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent"}
	})
	pid := p.cmd.Process.Pid // setpriv execs paddockd in place
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) != "paddockd" {
		t.Fatalf("process %d is %q, not paddockd", pid, comm)
	}
	for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} {
		if v := capLine(t, pid, k); strings.Trim(v, "0") != "" {
			t.Fatalf("paddockd %s = %s, want none", k, v)
		}
	}
	if uid := capLine(t, pid, "Uid"); !strings.HasPrefix(uid, fmt.Sprint(daemonUID)) {
		t.Fatalf("paddockd Uid: %s", uid)
	}
	fi, err := os.Stat(e.socket)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o660 || st.Gid != socketGID || st.Uid != daemonUID {
		t.Fatalf("socket %v uid %d gid %d, want 0660 %d:%d", fi.Mode(), st.Uid, st.Gid, daemonUID, socketGID)
	}

	as := func(uid, gid int) *syscall.Credential {
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	}
	alice, bob, carol := as(aliceUID, socketGID), as(bobUID, socketGID), as(carolUID, adminGID)
	// carol connects through the socket's group too.
	carol.Groups = []uint32{socketGID}

	e.cli(t, alice, "create", "alice-vm", "--image", "alpine").ok(t, "alice create")
	e.cli(t, bob, "create", "bob-vm", "--image", "alpine").ok(t, "bob create")
	e.cli(t, nil, "create", "root-vm", "--image", "alpine").ok(t, "root create")

	names := func(cred *syscall.Credential) []string {
		var vms []api.VM
		out := e.cli(t, cred, "ls", "--json").ok(t, "ls")
		if err := json.Unmarshal([]byte(out), &vms); err != nil {
			t.Fatal(err)
		}
		var n []string
		for _, vm := range vms {
			n = append(n, vm.Name)
		}
		return n
	}
	for _, tc := range []struct {
		who  string
		cred *syscall.Credential
		want string
	}{
		{"alice", alice, "alice-vm"},
		{"bob", bob, "bob-vm"},
		{"root", nil, "alice-vm,bob-vm,root-vm"},
		{"carol (admin group)", carol, "alice-vm,bob-vm,root-vm"},
	} {
		if got := strings.Join(names(tc.cred), ","); got != tc.want {
			t.Errorf("%s sees %q, want %q", tc.who, got, tc.want)
		}
	}
	for _, args := range [][]string{{"inspect", "bob-vm"}, {"start", "bob-vm"}, {"rm", "bob-vm"}, {"set", "bob-vm", "--cpus", "2"}} {
		r := e.cli(t, alice, args...)
		if r.code != 1 || !strings.Contains(r.stderr, "VMNotFound") || !strings.Contains(r.stderr, "bob-vm") {
			t.Errorf("alice %v on bob's VM: %+v", args, r)
		}
	}
	// The owner and the admins may act.
	e.cli(t, bob, "set", "bob-vm", "--cpus", "2").ok(t, "bob set")
	e.cli(t, carol, "set", "bob-vm", "--cpus", "3").ok(t, "carol set")
	var vm api.VM
	if err := json.Unmarshal([]byte(e.cli(t, nil, "inspect", "alice-vm", "--json").ok(t, "root inspect")), &vm); err != nil || vm.OwnerUID != aliceUID {
		t.Fatalf("owner of alice-vm: %+v %v", vm, err)
	}
	// Someone outside the socket's group cannot even connect.
	r := e.cli(t, as(outsideUID, outsideUID), "ls")
	if r.code != 1 || !strings.Contains(r.stderr, "permission denied") {
		t.Fatalf("outsider: %+v", r)
	}
	// Files the daemon wrote belong to its own uid.
	var st2 syscall.Stat_t
	if err := syscall.Stat(filepath.Join(e.state, "vms", vm.ID, "vm.json"), &st2); err != nil || st2.Uid != daemonUID {
		t.Fatalf("vm.json owner: %d %v", st2.Uid, err)
	}
	// The unprivileged daemon imports an image from a file only alice can
	// read: she opens it, the daemon reads through the passed descriptor.
	privDir, err := os.MkdirTemp("", "pdk-alice-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(privDir) })
	priv := filepath.Join(privDir, "alice-root.tar")
	if err := os.WriteFile(priv, imagetest.LayerTar(t, imagetest.Entry{Name: "./", Type: tar.TypeDir},
		imagetest.Entry{Name: "./sbin/", Type: tar.TypeDir}, imagetest.Entry{Name: "./sbin/su-ish", Body: "x", Mode: 0o4755}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(priv, aliceUID, socketGID); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(privDir, 0o755); err != nil {
		t.Fatal(err)
	}
	out := e.cli(t, alice, "image", "import", priv, "--name", "alice-img:1").ok(t, "alice import")
	if !strings.Contains(out, "imported") {
		t.Fatalf("alice import: %s", out)
	}
	if r := e.cli(t, bob, "image", "import", priv, "--name", "bob-steals:1"); r.code != 1 || !strings.Contains(r.stderr, "permission denied") {
		t.Fatalf("bob imported alice's private file: %+v", r)
	}
	if r := e.cli(t, bob, "image", "rm", "alice-img:1"); r.code != 1 || !strings.Contains(r.stderr, "ImageNotFound") {
		t.Fatalf("bob removed alice's image: %+v", r)
	}
	e.cli(t, alice, "create", "alice-vm2", "--image", "alice-img:1").ok(t, "alice create from her image")

	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 15e9); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}
