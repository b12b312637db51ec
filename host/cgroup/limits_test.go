package cgroup

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// writeFiles fills dir with control files (name → content); a content of
// "<dir>" makes a directory instead, which no write can replace.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		var err error
		if content == "<dir>" {
			err = os.Mkdir(p, 0o755)
		} else {
			err = os.WriteFile(p, []byte(content), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestSetLimits(t *testing.T) {
	all := map[string]string{"memory.max": "max\n", "cpu.max": "max 100000\n", "pids.max": "max\n"}
	full := Limits{MemoryMax: 768 << 20, CPUs: 2, PIDsMax: 258}
	for _, tc := range []struct {
		name    string
		files   map[string]string // present besides cgroup.procs
		limits  Limits
		want    map[string]string // file contents afterwards
		skipped []string
		errSays string // "" for success
	}{
		{"every controller", all, full,
			map[string]string{"memory.max": "805306368", "cpu.max": "200000 100000", "pids.max": "258"}, nil, ""},
		{"zero limits write nothing", all, Limits{},
			map[string]string{"memory.max": "max\n", "cpu.max": "max 100000\n", "pids.max": "max\n"}, nil, ""},
		{"only cpu set", all, Limits{CPUs: 1},
			map[string]string{"memory.max": "max\n", "cpu.max": "100000 100000", "pids.max": "max\n"}, nil, ""},
		{"hybrid host: no controller files", map[string]string{"cpu.stat": "usage_usec 0\n"}, full,
			map[string]string{"cpu.stat": "usage_usec 0\n"}, []string{"memory.max", "cpu.max", "pids.max"}, ""},
		{"only pids enabled", map[string]string{"pids.max": "max\n"}, full,
			map[string]string{"pids.max": "258"}, []string{"memory.max", "cpu.max"}, ""},
		{"write fails: error names the file", map[string]string{"memory.max": "max\n", "cpu.max": "<dir>"}, full,
			map[string]string{"memory.max": "805306368"}, nil, "cpu.max"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fakeCgroupDir(t, filepath.Join(t.TempDir(), "paddock-vm1"))
			writeFiles(t, dir, tc.files)
			skipped, err := SetLimits(dir, tc.limits)
			if tc.errSays == "" && err != nil || tc.errSays != "" && (err == nil || !strings.Contains(err.Error(), filepath.Join(dir, tc.errSays))) {
				t.Fatalf("err = %v, want one naming %q", err, tc.errSays)
			}
			if !slices.Equal(skipped, tc.skipped) {
				t.Errorf("skipped %q, want %q", skipped, tc.skipped)
			}
			for name, want := range tc.want {
				if got, _ := os.ReadFile(filepath.Join(dir, name)); string(got) != want {
					t.Errorf("%s = %q, want %q", name, got, want)
				}
			}
			for _, name := range []string{"memory.max", "cpu.max", "pids.max"} {
				if _, listed := tc.files[name]; listed {
					continue
				}
				if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s was created: %v", name, err)
				}
			}
		})
	}
	if _, err := SetLimits(filepath.Join(t.TempDir(), "paddock-x"), full); err == nil || !strings.Contains(err.Error(), "not a cgroup directory") {
		t.Errorf("SetLimits on a non-cgroup: %v", err)
	}
}

func TestEnableControllers(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		controllers, subtree string
		enabled, missing     []string
		written              string // subtree_control afterwards
	}{
		{"all offered", "cpuset cpu io memory hugetlb pids\n", "", []string{"cpu", "memory", "pids"}, nil, "+cpu +memory +pids"},
		{"some enabled already", "cpu memory pids\n", "memory\n", []string{"cpu", "memory", "pids"}, nil, "+cpu +pids"},
		{"all enabled already", "cpu memory pids\n", "cpu memory pids\n", []string{"cpu", "memory", "pids"}, nil, "cpu memory pids\n"},
		{"hybrid host", "hugetlb\n", "", nil, []string{"cpu", "memory", "pids"}, ""},
		{"nothing", "", "", nil, []string{"cpu", "memory", "pids"}, ""},
		{"memory missing", "cpu pids\n", "", []string{"cpu", "pids"}, []string{"memory"}, "+cpu +pids"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fakeCgroupDir(t, filepath.Join(t.TempDir(), "paddock.service"))
			writeFiles(t, dir, map[string]string{"cgroup.controllers": tc.controllers, "cgroup.subtree_control": tc.subtree})
			enabled, missing, err := EnableControllers(dir)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(enabled, tc.enabled) || !slices.Equal(missing, tc.missing) {
				t.Errorf("enabled %q missing %q, want %q %q", enabled, missing, tc.enabled, tc.missing)
			}
			if got, _ := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control")); string(got) != tc.written {
				t.Errorf("cgroup.subtree_control = %q, want %q", got, tc.written)
			}
		})
	}
	if _, _, err := EnableControllers(t.TempDir()); err == nil || !strings.Contains(err.Error(), "cgroup.controllers") {
		t.Errorf("EnableControllers without cgroup.controllers: %v", err)
	}
}

func TestReadUsage(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  Usage
	}{
		{"both", map[string]string{"cpu.stat": "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n", "memory.current": "52428800\n"},
			Usage{CPUUsec: 1234567, HaveCPU: true, Memory: 52428800, HaveMemory: true}},
		{"no memory controller", map[string]string{"cpu.stat": "usage_usec 42\nuser_usec 40\nsystem_usec 2\nnr_periods 0\n"},
			Usage{CPUUsec: 42, HaveCPU: true}},
		{"neither", nil, Usage{}},
		{"garbage", map[string]string{"cpu.stat": "user_usec 5\n", "memory.current": "lots\n"}, Usage{}},
		{"negative memory", map[string]string{"memory.current": "-1\n"}, Usage{}},
		{"zero is a figure", map[string]string{"cpu.stat": "usage_usec 0\n", "memory.current": "0\n"},
			Usage{HaveCPU: true, HaveMemory: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fakeCgroupDir(t, filepath.Join(t.TempDir(), "paddock-vm1"))
			writeFiles(t, dir, tc.files)
			if got := ReadUsage(dir); got != tc.want {
				t.Errorf("ReadUsage = %+v, want %+v", got, tc.want)
			}
		})
	}
	if got := ReadUsage(filepath.Join(t.TempDir(), "gone")); got != (Usage{}) {
		t.Errorf("ReadUsage of a missing cgroup = %+v", got)
	}
}

// TestLimitsReal sets limits on a real cgroup below a test-owned parent:
// what the parent's controllers allow is written, the rest is skipped (on
// a hybrid host, whose cgroup v2 hierarchy has no controllers, all three),
// and a process born in it is accounted in cpu.stat.
func TestLimitsReal(t *testing.T) {
	parent := testHierarchy(t, true)
	enabled, missing, err := EnableControllers(parent)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("controllers enabled %q, not offered %q", enabled, missing)
	dir, err := Create(parent, "paddock-limits")
	if err != nil {
		t.Fatal(err)
	}
	l := Limits{MemoryMax: 320 << 20, CPUs: 1, PIDsMax: 257}
	skipped, err := SetLimits(dir, l)
	if err != nil {
		t.Fatal(err)
	}
	checkLimits(t, dir, l, enabled, skipped)
	f, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	// sh burns a little CPU in its loop so usage_usec cannot stay 0
	s := startCmd(t, f, "sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 300")
	f.Close()
	if got, err := Of(s.Process.Pid); err != nil || got != dir {
		t.Fatalf("Of = %q %v, want %q", got, err, dir)
	}
	waitUsage(t, dir)
	u := ReadUsage(dir)
	if slices.Contains(enabled, "memory") != u.HaveMemory {
		t.Errorf("memory.current read %v with the memory controller enabled %v", u.HaveMemory, slices.Contains(enabled, "memory"))
	}
}

// checkLimits asserts that each limit was written when its controller is
// enabled in the parent and skipped (its file absent) when not.
func checkLimits(t *testing.T, dir string, l Limits, enabled, skipped []string) {
	t.Helper()
	for _, c := range []struct{ controller, file, want string }{
		{"memory", "memory.max", strconv.FormatInt(l.MemoryMax, 10)},
		{"cpu", "cpu.max", strconv.Itoa(l.CPUs*100000) + " 100000"},
		{"pids", "pids.max", strconv.Itoa(l.PIDsMax)},
	} {
		b, err := os.ReadFile(filepath.Join(dir, c.file))
		if slices.Contains(enabled, c.controller) {
			if err != nil || strings.TrimSpace(string(b)) != c.want {
				t.Errorf("%s = %q (%v), want %q", c.file, b, err, c.want)
			}
			if slices.Contains(skipped, c.file) {
				t.Errorf("%s reported skipped with %s enabled", c.file, c.controller)
			}
			continue
		}
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists (%v) though the parent offers no %s controller", c.file, err, c.controller)
		}
		if !slices.Contains(skipped, c.file) {
			t.Errorf("%s not reported skipped (skipped: %q)", c.file, skipped)
		}
	}
}

// startCmd starts argv born in the cgroup f (OpenDir); it is killed at
// cleanup.
func startCmd(t *testing.T, f *os.File, argv ...string) *exec.Cmd {
	t.Helper()
	return startProc(t, &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}, argv...)
}

// waitUsage waits until cgroup dir's cpu.stat shows CPU time.
func waitUsage(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		u := ReadUsage(dir)
		if u.HaveCPU && u.CPUUsec > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("cpu.stat of %s shows no usage_usec: %+v", dir, u)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
