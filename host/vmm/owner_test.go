package vmm

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/internal/testenv"
	"github.com/paddock-vm/paddock/internal/testwait"
)

func TestJudgeOwner(t *testing.T) {
	o := Owner{UID: 1000, RunRoot: "/run/paddock/vms", Cgroup: "/sys/fs/cgroup/paddock.service"}
	sock := "/run/paddock/vms/a/qmp.sock"
	mine := fileID{dev: 0x19, ino: 42, socket: true}
	base := ownerFacts{uids: []int{1000, 1000}, socket: sock, underRoot: true, here: mine, there: mine}
	for _, tc := range []struct {
		name string
		mod  func(f *ownerFacts)
		ours bool
		why  string
	}{
		{"same uid, the very socket", func(*ownerFacts) {}, true, "this daemon's very file (0:25:42)"},
		{"another mount namespace's socket at the same path", func(f *ownerFacts) { f.there.dev = 0x2a }, false, "another file (0:42:42) than this daemon's (0:25:42)"},
		{"same device, another inode", func(f *ownerFacts) { f.there.ino = 43 }, false, "another file"},
		{"another uid", func(f *ownerFacts) { f.uids = []int{1001, 1001} }, false, "runs as uid [1001 1001], this daemon as 1000"},
		{"effective uid differs", func(f *ownerFacts) { f.uids = []int{1000, 0} }, false, "runs as uid [1000 0]"},
		{"another uid, even in our cgroup", func(f *ownerFacts) { f.uids, f.inCgroup = []int{0, 0}, true }, false, "runs as uid"},
		{"uid unreadable", func(f *ownerFacts) { f.uids, f.uidErr = nil, os.ErrNotExist }, false, "uid cannot be read"},
		{"in our cgroup, socket gone", func(f *ownerFacts) {
			f.inCgroup, f.cgroup, f.ownerCgroup, f.hereErr = true, o.Cgroup+"/paddock-a", o.Cgroup, os.ErrNotExist
		}, true, "cgroup /sys/fs/cgroup/paddock.service/paddock-a lies in this daemon's /sys/fs/cgroup/paddock.service"},
		{"no API socket", func(f *ownerFacts) { f.socket, f.underRoot = "", false }, false, "names no API socket"},
		{"socket elsewhere", func(f *ownerFacts) { f.socket, f.underRoot = "/tmp/x/qmp.sock", false }, false, "not under this daemon's /run/paddock/vms"},
		{"not here", func(f *ownerFacts) { f.hereErr = os.ErrNotExist }, false, "not in this daemon's view"},
		{"not there", func(f *ownerFacts) { f.thereErr = os.ErrPermission }, false, "cannot be seen in its own mount namespace"},
		{"a regular file, not a socket", func(f *ownerFacts) { f.here.socket, f.there.socket = false, false }, false, "not a socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := base
			tc.mod(&f)
			ours, why := o.judge(f)
			if ours != tc.ours || !strings.Contains(why, tc.why) {
				t.Fatalf("judge = %v %q, want %v and %q", ours, why, tc.ours, tc.why)
			}
		})
	}
}

// TestOwnerAcrossMountNamespaces: two "daemons" with the same runtime
// directory path, one of them in a mount namespace of its own with a
// private tmpfs there. Each fake VMM serves its API socket at the same
// path; only the one whose socket is this view's file is ours. A VMM of
// another uid is never ours.
func TestOwnerAcrossMountNamespaces(t *testing.T) {
	testenv.RequireRoot(t, "mount namespace, another uid")
	unshare := testenv.RequireTool(t, "unshare", "util-linux")
	root, err := os.MkdirTemp("", "pdk-own-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	os.Chmod(root, 0o755)

	start := func(dir string, mod func(*exec.Cmd)) (*Process, func()) {
		t.Helper()
		id := testID()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		c := fakeCommand(id, filepath.Join(dir, "vmm.log"), "FAKE_CONSOLE="+filepath.Join(dir, "qmp.sock"))
		cmd := exec.Command(c.Path, c.Args[1:]...)
		cmd.Env = c.Env
		if mod != nil {
			mod(cmd)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		var p *Process
		testwait.For(t, "the fake VMM up with its tag", 10*time.Second, func() bool {
			found, _ := Find(id)
			if len(found) == 1 {
				p = found[0]
			}
			return p != nil
		})
		return p, func() { _ = cmd.Process.Kill(); <-done }
	}

	// "Our" VMM: this mount namespace, socket under root/vms/a.
	ours, stop := start(filepath.Join(root, "vms", "a"), nil)
	defer stop()
	testwait.For(t, "our fake VMM's socket", 10*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(root, "vms", "a", "qmp.sock"))
		return err == nil
	})
	// The other daemon's VMM: its own mount namespace with a private tmpfs
	// at root/vms, socket at the same path root/vms/b/qmp.sock; this view
	// has a socket of its own there too (the lookalike).
	vms := filepath.Join(root, "vms")
	theirs, stop2 := start(filepath.Join(root, "vms", "b"), func(c *exec.Cmd) {
		script := `mount -t tmpfs tmpfs "$0" && mkdir "$0/b" && exec "$@"`
		c.Args = append([]string{"unshare", "-m", "--propagation", "private", "sh", "-c", script, vms}, c.Args...)
		c.Path = unshare
	})
	defer stop2()
	look, err := net.Listen("unix", filepath.Join(root, "vms", "b", "qmp.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer look.Close()
	testwait.For(t, "their fake VMM's socket in their namespace", 10*time.Second, func() bool {
		argv, _ := readCmdline(theirs.PID) // the fake itself, past unshare and sh
		_, err := os.Lstat(fmt.Sprintf("/proc/%d/root%s/b/qmp.sock", theirs.PID, vms))
		return len(argv) > 0 && argv[0] == os.Args[0] && err == nil
	})
	// A VMM of another uid, its socket under root/vms/c.
	cdir := filepath.Join(root, "vms", "c")
	other, stop3 := start(cdir, func(c *exec.Cmd) {
		// the test binary is not readable by that uid: a shell carries the tag
		c.Path = "/bin/sh"
		c.Args = append([]string{"sh", "-c", "sleep 60; :"}, c.Args[1:]...)
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 61020, Gid: 61020}}
	})
	defer stop3()

	found, err := Owner{UID: os.Geteuid(), RunRoot: vms}.Find()
	if err != nil {
		t.Fatal(err)
	}
	verdict := map[int]Found{}
	for _, f := range found {
		verdict[f.PID] = f
		t.Logf("pid %d %s: ours=%v (%s)", f.PID, f.VMID, f.Ours, f.Why)
	}
	for _, c := range []struct {
		name string
		p    *Process
		ours bool
		why  string
	}{
		{"same namespace", ours, true, "very file"},
		{"another mount namespace, same path", theirs, false, "another file"},
		{"another uid", other, false, "runs as uid [61020 61020]"},
	} {
		f, ok := verdict[c.p.PID]
		if !ok {
			t.Errorf("%s: pid %d not listed", c.name, c.p.PID)
			continue
		}
		if f.Ours != c.ours || !strings.Contains(f.Why, c.why) {
			t.Errorf("%s: ours=%v (%s), want %v and %q", c.name, f.Ours, f.Why, c.ours, c.why)
		}
	}
}
