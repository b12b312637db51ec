package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/host/cgroup"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// unitCgroup makes a stand-in for the cgroup systemd gives paddock.service
// (<cgroup2 mount>/pdke2e-<pid>-<n>.service), marked delegated the way
// systemd marks Delegate=yes cgroups or not, and a way to start paddockd
// born in it. At cleanup (after the daemon's own) whatever is left in it
// is killed and it is removed with everything below.
func unitCgroup(t *testing.T, delegated bool) (string, func(*exec.Cmd)) {
	t.Helper()
	testenv.RequireRoot(t, "cgroupfs writes")
	mnt, _, err := cgroup.Mountpoint()
	testenv.Require(t, err == nil, fmt.Sprintf("no cgroup2 hierarchy: %v", err))
	dir := filepath.Join(mnt, fmt.Sprintf("pdke2e-%d-%d.service", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeCgroupTree(t, dir) })
	if delegated {
		if err := unix.Setxattr(dir, "trusted.delegate", []byte("1"), 0); err != nil {
			t.Fatalf("marking %s delegated: %v", dir, err)
		}
	}
	f, err := cgroup.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return dir, func(c *exec.Cmd) {
		c.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	}
}

// removeCgroupTree kills what is left below dir and removes it, depth
// first; anything it had to kill is a leak the test reports.
func removeCgroupTree(t *testing.T, dir string) {
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
			pids, _ := cgroup.Procs(p)
			for _, pid := range pids {
				t.Errorf("cleanup: pid %d left in %s", pid, p)
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
		return nil
	})
	slices.Reverse(dirs)
	deadline := time.Now().Add(10 * time.Second)
	for _, d := range dirs {
		for {
			err := unix.Rmdir(d)
			if err == nil || errors.Is(err, unix.ENOENT) {
				break
			}
			if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
				t.Errorf("cleanup: removing %s: %v", d, err)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// Defect 7 (issue 9): paddockd in a cgroup that is not delegated runs VMMs
// without cgroups, says why once at info level, and `paddock info` shows it.
func TestVMMCgroupNotDelegated(t *testing.T) {
	dir, bornIn := unitCgroup(t, false)
	e := newEnv(t, "\n[vm]\nrun = \"on\"\nnetwork = \"none\"\ndisk_backend = \"copy\"\n")
	p := e.daemon(t, bornIn)
	why := "running as root in " + dir + ", which systemd did not mark delegated"
	p.waitLog(t, "VMMs run without cgroups of their own", why)
	if n := strings.Count(p.stderr.String(), "without cgroups of their own"); n != 1 {
		t.Errorf("said %d times, want once", n)
	}
	if own, err := cgroup.Of(p.cmd.Process.Pid); err != nil || own != dir {
		t.Errorf("paddockd moved to %q (%v) without delegation", own, err)
	}
	info := e.cli(t, nil, "info").ok(t, "info")
	t.Logf("paddock info:\n%s", info)
	if !strings.Contains(unpad(info), "cgroup: none: "+why) {
		t.Errorf("paddock info lacks the reason")
	}
	p.signal(t, syscall.SIGTERM)
	p.wait(t, 30*time.Second)
}

// Defect 7 (issue 9): paddockd in a delegated cgroup moves into
// <unit>/supervisor and runs each VMM in <unit>/paddock-<vm id>, with the
// VM's limits as far as the unit's controllers allow (a hybrid host's
// cgroup v2 hierarchy offers none: each is skipped and said so once);
// stats read the VMM's cgroup; a stop removes it.
func TestVMMCgroupDelegated(t *testing.T) {
	testenv.BootsVM(t)
	unit, bornIn := unitCgroup(t, true)
	e, p, _, ref := vmEnvImage(t, "\n[vm]\nrun = \"on\"\nstart_timeout = \"90s\"\nstop_timeout = \"10s\"\nvmm_memory_overhead = \"192MiB\"\nvmm_pids_max = 200\n", bornIn)
	p.waitLog(t, "VMMs get cgroups of their own", unit)
	if own, err := cgroup.Of(p.cmd.Process.Pid); err != nil || own != filepath.Join(unit, cgroup.SupervisorLeaf) {
		t.Fatalf("paddockd in %q (%v), want its supervisor leaf", own, err)
	}
	offered, _ := os.ReadFile(filepath.Join(unit, "cgroup.controllers"))
	enabled, _ := os.ReadFile(filepath.Join(unit, "cgroup.subtree_control"))
	var missing []string
	for _, c := range cgroup.LimitControllers {
		on := slices.Contains(strings.Fields(string(enabled)), c)
		if on != slices.Contains(strings.Fields(string(offered)), c) {
			t.Errorf("controller %s: offered %q, enabled %q", c, offered, enabled)
		}
		if !on {
			missing = append(missing, c)
		}
	}
	wantInfo := "cgroup: " + unit
	if len(missing) > 0 {
		wantInfo += " (no " + strings.Join(missing, ", ") + " controller"
		p.waitLog(t, "VMM cgroups go without the limits", strings.Join(missing, ","))
	}
	info := e.cli(t, nil, "info").ok(t, "info")
	t.Logf("paddock info:\n%s", info)
	if !strings.Contains(unpad(info), wantInfo) {
		t.Errorf("paddock info lacks %q", wantInfo)
	}

	e.cli(t, nil, "run", "--image", ref, "--name", "web", "--cpus", "2", "--memory", "256MiB").ok(t, "run")
	vm := inspectVM(t, e, "web")
	procs, err := vmm.Find(vm.ID)
	if err != nil || len(procs) != 1 {
		t.Fatalf("VMM of %s: %v %v", vm.ID, procs, err)
	}
	cg := filepath.Join(unit, vmm.Tag(vm.ID))
	if own, err := cgroup.Of(procs[0].PID); err != nil || own != cg {
		t.Fatalf("VMM in %q (%v), want %s", own, err, cg)
	}
	for _, l := range []struct{ controller, file, want string }{
		{"memory", "memory.max", fmt.Sprint((256 + 192) << 20)},
		{"cpu", "cpu.max", "200000 100000"},
		{"pids", "pids.max", "202"},
	} {
		got, err := os.ReadFile(filepath.Join(cg, l.file))
		if slices.Contains(missing, l.controller) {
			if !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s exists (%v) without the %s controller", l.file, err, l.controller)
			}
			continue
		}
		if err != nil || strings.TrimSpace(string(got)) != l.want {
			t.Errorf("%s = %q (%v), want %q", l.file, got, err, l.want)
		}
	}
	st := statsOf(t, e, "web")
	after := cgroup.ReadUsage(cg)
	if !after.HaveCPU || st.Host.CPUSeconds <= 0 || st.Host.CPUSeconds > float64(after.CPUUsec)/1e6 {
		t.Errorf("stats cpu_seconds %v; the cgroup's usage_usec read after it %+v", st.Host.CPUSeconds, after)
	}
	if st.Host.RSS <= 0 {
		t.Errorf("stats rss %d", st.Host.RSS)
	}

	e.cli(t, nil, "stop", "web").ok(t, "stop")
	if _, err := os.Stat(cg); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("VMM cgroup left after stop: %v", err)
	}
	e.cli(t, nil, "rm", "web").ok(t, "rm")
	p.signal(t, syscall.SIGTERM)
	p.wait(t, 30*time.Second)
	if left, _ := cgroup.Find(unit); len(left) != 0 {
		t.Errorf("VMM cgroups left: %v", left)
	}
}

// unpad drops the padding after each label of paddock info's fields (its
// width follows the longest label), so tests match "label: value".
func unpad(info string) string {
	return regexp.MustCompile(`(?m)^([^:\n]+:) +`).ReplaceAllString(info, "$1 ")
}
