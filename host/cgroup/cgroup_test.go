package cgroup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/internal/testenv"
)

func requireRoot(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t, "cgroupfs writes")
}

func TestParseMountinfo(t *testing.T) {
	const (
		v2      = "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"
		hybrid  = "30 24 0:26 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755\n31 30 0:27 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw\n32 30 0:28 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,name=systemd\n"
		both    = "31 30 0:27 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw\n35 24 0:30 / /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw\n"
		escaped = "40 24 0:30 /sub /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n"
		v1only  = "32 30 0:28 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,name=systemd\n"
	)
	for _, tc := range []struct {
		name, in, dir, root string
		err                 error
	}{
		{"unified", v2, "/sys/fs/cgroup", "/", nil},
		{"hybrid", hybrid, "/sys/fs/cgroup/unified", "/", nil},
		{"prefer /sys/fs/cgroup", both, "/sys/fs/cgroup", "/", nil},
		{"escaped, bind-mounted subtree", escaped, "/mnt/my cg", "/sub", nil},
		{"v1 only", v1only, "", "", ErrNoCgroup2},
		{"empty", "", "", "", ErrNoCgroup2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, root, err := parseMountinfo([]byte(tc.in))
			if !errors.Is(err, tc.err) || dir != tc.dir || root != tc.root {
				t.Fatalf("got %q %q %v, want %q %q %v", dir, root, err, tc.dir, tc.root, tc.err)
			}
		})
	}
}

func TestParseProcCgroup(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"0::/system.slice/paddock.service\n", "/system.slice/paddock.service"},
		{"9:name=systemd:/\n4:memory:/x\n0::/\n", "/"},
		{"0::/a/b (deleted)\n", "/a/b"},
	} {
		got, err := parseProcCgroup([]byte(tc.in))
		if err != nil || got != tc.want {
			t.Errorf("%q: got %q %v, want %q", tc.in, got, err, tc.want)
		}
	}
	if _, err := parseProcCgroup([]byte("4:memory:/x\n")); !errors.Is(err, ErrNoCgroup2) {
		t.Errorf("v1 only: %v", err)
	}
}

func TestJoin(t *testing.T) {
	for _, tc := range []struct{ mnt, root, p, want string }{
		{"/sys/fs/cgroup", "/", "/system.slice/paddock.service", "/sys/fs/cgroup/system.slice/paddock.service"},
		{"/sys/fs/cgroup/unified", "/", "/", "/sys/fs/cgroup/unified"},
		{"/mnt/cg", "/sub", "/sub/x", "/mnt/cg/x"},
		{"/mnt/cg", "/sub", "/subway", "/mnt/cg/subway"},
		{"/sys/fs/cgroup", "/", "/../../etc", "/sys/fs/cgroup/etc"},
	} {
		if got := join(tc.mnt, tc.root, tc.p); got != tc.want {
			t.Errorf("join(%q,%q,%q) = %q, want %q", tc.mnt, tc.root, tc.p, got, tc.want)
		}
	}
}

// fakeCgroupDir makes a directory that looks like a cgroup (has cgroup.procs).
func fakeCgroupDir(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestCheckDelegated(t *testing.T) {
	mnt := t.TempDir()
	unit := fakeCgroupDir(t, filepath.Join(mnt, "system.slice", "paddock.service"))
	leaf := fakeCgroupDir(t, filepath.Join(unit, SupervisorLeaf))
	for _, tc := range []struct {
		name, dir string
		euid      int
		want      string
		err       error
	}{
		{"unprivileged, writable unit cgroup", unit, 1000, unit, nil},
		{"supervisor leaf maps to its parent", leaf, 1000, unit, nil},
		{"root cgroup", mnt, 1000, "", ErrNoDelegation},
		{"missing (not writable)", filepath.Join(mnt, "gone.service"), 1000, "", ErrNoDelegation},
		// tmpfs here: no delegate xattr, so root is not delegated
		{"root without delegate mark", unit, 0, "", ErrNoDelegation},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := checkDelegated(tc.dir, mnt, tc.euid)
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Fatalf("got %q %v, want %q %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestValidName(t *testing.T) {
	for name, ok := range map[string]bool{
		"paddock-vm1": true, "paddock-": false, "vm1": false, "paddock-a/b": false,
		"supervisor": false, "system.slice": false,
	} {
		if err := ValidName(name); (err == nil) != ok {
			t.Errorf("%q: %v", name, err)
		}
	}
}

// TestRemoveRefusesForeign: Remove and Kill never touch a cgroup without
// paddock's prefix, even an existing one.
func TestRemoveRefusesForeign(t *testing.T) {
	dir := fakeCgroupDir(t, filepath.Join(t.TempDir(), "user.slice"))
	ctx := context.Background()
	if err := Remove(ctx, dir, true); !errors.Is(err, ErrNotOurs) {
		t.Fatalf("Remove: %v", err)
	}
	if err := Kill(ctx, dir); !errors.Is(err, ErrNotOurs) {
		t.Fatalf("Kill: %v", err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("foreign dir removed: %v", err)
	}
	if _, err := Create(filepath.Dir(dir), "user.slice"); !errors.Is(err, ErrNotOurs) {
		t.Fatalf("Create: %v", err)
	}
}

// testHierarchy creates <cgroup2 mount>/pdktest-<pid>-<n>.service as a stand-in
// for a systemd unit cgroup, marked delegated or not, and removes it (and
// kills what is left in it) at cleanup.
func testHierarchy(t *testing.T, delegated bool) string {
	t.Helper()
	requireRoot(t)
	mnt, _, err := Mountpoint()
	if err != nil {
		testenv.SkipBecause(t, fmt.Sprintf("no cgroup2: %v", err))
	}
	dir := filepath.Join(mnt, fmt.Sprintf("pdktest-%d-%d.service", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("creating a test cgroup: %v", err)
	}
	t.Cleanup(func() {
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				pids, _ := Procs(p)
				for _, pid := range pids {
					_ = unix.Kill(pid, unix.SIGKILL)
				}
			}
			return nil
		})
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := removeTree(dir)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("cleanup: removing %s: %v", dir, err)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	if delegated {
		if err := unix.Setxattr(dir, "trusted.delegate", []byte("1"), 0); err != nil {
			t.Fatalf("marking %s delegated: %v", dir, err)
		}
	}
	return dir
}

// startSleep starts a sleep(1) the test owns; it is killed at cleanup.
func startSleep(t *testing.T, attr *syscall.SysProcAttr) *exec.Cmd {
	t.Helper()
	return startProc(t, attr, "sleep", "300")
}

// startProc starts argv; it is killed at cleanup.
func startProc(t *testing.T, attr *syscall.SysProcAttr, argv ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	return cmd
}

func TestCreateAddKillRemove(t *testing.T) {
	unit := testHierarchy(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir, err := Create(unit, "paddock-vm1")
	if err != nil {
		t.Fatal(err)
	}
	if again, err := Create(unit, "paddock-vm1"); err != nil || again != dir {
		t.Fatalf("Create is not idempotent: %q %v", again, err)
	}
	if _, err := Create(filepath.Join(unit, "nope"), "paddock-x"); err == nil {
		t.Fatal("Create under a non-cgroup parent succeeded")
	}
	// a foreign sibling that Find must not list
	if err := os.Mkdir(filepath.Join(unit, "other"), 0o755); err != nil {
		t.Fatal(err)
	}
	s1 := startSleep(t, nil)
	if err := AddPID(dir, s1.Process.Pid); err != nil {
		t.Fatal(err)
	}
	// born in the cgroup: clone3(CLONE_INTO_CGROUP)
	f, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	s2 := startSleep(t, &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())})
	f.Close()
	for _, pid := range []int{s1.Process.Pid, s2.Process.Pid} {
		if got, err := Of(pid); err != nil || got != dir {
			t.Fatalf("Of(%d) = %q %v, want %q", pid, got, err, dir)
		}
	}
	pids, err := Procs(dir)
	if err != nil || len(pids) != 2 {
		t.Fatalf("Procs: %v %v", pids, err)
	}
	found, err := Find(unit)
	if err != nil || len(found) != 1 || found[0] != dir {
		t.Fatalf("Find: %v %v", found, err)
	}
	if pop, err := Populated(dir); err != nil || !pop {
		t.Fatalf("Populated: %v %v", pop, err)
	}
	if err := Remove(ctx, dir, false); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("Remove without kill of a populated cgroup: %v", err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatal("populated cgroup removed")
	}
	if err := unix.Kill(s1.Process.Pid, 0); err != nil {
		t.Fatal("Remove without kill killed a process")
	}
	// a nested child cgroup goes too
	if _, err := Create(dir, "paddock-nested"); err != nil {
		t.Fatal(err)
	}
	if err := Remove(ctx, dir, true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("cgroup still there: %v", err)
	}
	for _, c := range []*exec.Cmd{s1, s2} {
		deadline := time.Now().Add(5 * time.Second)
		for unix.Kill(c.Process.Pid, 0) == nil && !isZombie(c.Process.Pid) {
			if time.Now().After(deadline) {
				t.Fatalf("pid %d survived Remove(kill)", c.Process.Pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err := Remove(ctx, dir, true); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	if err := Kill(ctx, dir); err != nil {
		t.Fatalf("Kill of a removed cgroup: %v", err)
	}
	if pids, err := Procs(dir); err != nil || len(pids) != 0 {
		t.Fatalf("Procs of a removed cgroup: %v %v", pids, err)
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && len(b) > i+2 && b[i+2] == 'Z'
}

// helperEnv runs the test binary as a stand-in daemon in another cgroup.
const helperEnv = "PADDOCK_CGROUP_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(helper())
	}
	os.Exit(m.Run())
}

// helper waits for a line on stdin (its parent moved it into the test
// cgroup meanwhile), then reports Delegated, EnterLeaf and Delegated again.
func helper() int {
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		fmt.Println("ERR stdin", err)
		return 1
	}
	d, err := Delegated()
	if err != nil {
		fmt.Println("NODELEGATION", err)
		return 0
	}
	fmt.Println("DELEGATED", d)
	leaf, err := EnterLeaf(d)
	if err != nil {
		fmt.Println("ERR enterleaf", err)
		return 1
	}
	own, _ := Of(0)
	fmt.Println("LEAF", leaf, own)
	d2, err := Delegated()
	fmt.Println("AGAIN", d2, err)
	return 0
}

// TestDelegation runs a stand-in daemon inside a test cgroup, once marked
// delegated the way systemd marks Delegate=yes cgroups and once not.
func TestDelegation(t *testing.T) {
	for _, delegated := range []bool{true, false} {
		t.Run(fmt.Sprintf("delegated=%v", delegated), func(t *testing.T) {
			unit := testHierarchy(t, delegated)
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), helperEnv+"=1")
			in, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			var out strings.Builder
			cmd.Stdout = &out
			cmd.Stderr = &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waited := false
			t.Cleanup(func() {
				if !waited {
					_ = cmd.Process.Kill()
					_ = cmd.Wait()
				}
			})
			if err := AddPID(unit, cmd.Process.Pid); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintln(in, "go")
			err = cmd.Wait()
			waited = true
			if err != nil {
				t.Fatalf("helper: %v\n%s", err, out.String())
			}
			got := out.String()
			if delegated {
				want := fmt.Sprintf("DELEGATED %s\nLEAF %s %s\nAGAIN %s <nil>\n", unit, filepath.Join(unit, SupervisorLeaf), filepath.Join(unit, SupervisorLeaf), unit)
				if got != want {
					t.Fatalf("helper said\n%s\nwant\n%s", got, want)
				}
			} else if !strings.HasPrefix(got, "NODELEGATION "+ErrNoDelegation.Error()) || !strings.Contains(got, "did not mark delegated") {
				t.Fatalf("helper said %q", got)
			}
		})
	}
}

// TestDelegatedHere: a process in the root cgroup (as tests run outside a
// service) has no delegation.
func TestDelegatedHere(t *testing.T) {
	own, err := Of(0)
	if err != nil {
		testenv.SkipBecause(t, fmt.Sprintf("no cgroup2: %v", err))
	}
	mnt, _, _ := Mountpoint()
	if own != mnt {
		t.Skipf("test runs in %s, not the root cgroup", own)
	}
	if _, err := Delegated(); !errors.Is(err, ErrNoDelegation) {
		t.Fatalf("Delegated in the root cgroup: %v", err)
	}
}
