package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/host/cgroup"
)

func TestParseStat(t *testing.T) {
	tail := " 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4242 20 21 22\n"
	for _, tc := range []struct {
		name, in string
		state    byte
		ppid     int
		start    uint64
		bad      bool
	}{
		{"plain", "123 (qemu-system-x86) S" + tail, 'S', 1, 4242, false},
		{"comm with spaces and parens", "123 (a) b (c)) Z" + tail, 'Z', 1, 4242, false},
		{"no paren", "123 qemu S" + tail, 0, 0, 0, true},
		{"truncated", "123 (x) S 1 2 3", 0, 0, 0, true},
		{"bad starttime", "123 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 x 20\n", 0, 0, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := parseStat([]byte(tc.in))
			if (err != nil) != tc.bad {
				t.Fatalf("err %v", err)
			}
			if !tc.bad && (st.State != tc.state || st.PPID != tc.ppid || st.StartTime != tc.start) {
				t.Fatalf("got %+v", st)
			}
		})
	}
}

func TestSplitCmdline(t *testing.T) {
	for in, want := range map[string][]string{
		"":                        nil,
		"qemu\x00-name\x00x\x00":  {"qemu", "-name", "x"},
		"a\x00\x00b\x00":          {"a", "", "b"},
		"no-trailing-nul\x00last": {"no-trailing-nul", "last"},
	} {
		got := splitCmdline([]byte(in))
		if strings.Join(got, "|") != strings.Join(want, "|") || len(got) != len(want) {
			t.Errorf("%q: got %q want %q", in, got, want)
		}
	}
}

func TestTagOf(t *testing.T) {
	for _, tc := range []struct {
		argv       []string
		id, driver string
		ok         bool
	}{
		{[]string{"qemu-system-x86_64", "-name", "paddock-vm1", "-S"}, "vm1", "qemu", true},
		{[]string{"firecracker", "--api-sock", "/x", "--id", "paddock-abc-1"}, "abc-1", "firecracker", true},
		{[]string{"qemu", "-name", "web1"}, "", "", false},
		{[]string{"qemu", "-name"}, "", "", false},
		{[]string{"-name", "paddock-x"}, "", "", false}, // argv[0] is never a flag
		{[]string{"sleep", "paddock-vm1"}, "", "", false},
		{[]string{"qemu", "-name", "paddock-bad,id"}, "", "", false},
		{[]string{"qemu", "-name", "paddock-"}, "", "", false},
	} {
		id, driver, ok := TagOf(tc.argv)
		if id != tc.id || driver != tc.driver || ok != tc.ok {
			t.Errorf("%q: got %q %q %v", tc.argv, id, driver, ok)
		}
	}
}

func TestValidVMID(t *testing.T) {
	for id, ok := range map[string]bool{
		"0123456789abcdef01234567": true, "vm-1": true, "": false, "a b": false, "a,b": false,
		"a/b": false, "a.b": false, strings.Repeat("a", 56): true, strings.Repeat("a", 57): false,
	} {
		if err := ValidVMID(id); (err == nil) != ok {
			t.Errorf("%q: %v", id, err)
		}
	}
}

func TestNormalize(t *testing.T) {
	ok := Spec{VMID: "vm1", Kernel: "/k", RunDir: "/run/paddock/vm1", Disks: []Disk{{Path: "/d"}}}
	s, err := ok.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	if s.CPUs != 1 || s.MemoryMiB != 256 || s.Accel != AccelAuto || s.ConsoleLog != "/run/paddock/vm1/console.log" ||
		s.ConsoleLogMax != DefaultConsoleLogMax || s.ControlSocket != "/run/paddock/vm1/control.sock" ||
		s.VsockUDS != "/run/paddock/vm1/vsock.sock" || s.VsockCID != 3 || s.Disks[0].Format != FormatRaw {
		t.Fatalf("defaults: %+v", s)
	}
	if ok.Disks[0].Format != "" {
		t.Fatal("Normalize modified its receiver's disks")
	}
	for name, mut := range map[string]func(*Spec){
		"bad id":          func(s *Spec) { s.VMID = "a b" },
		"no kernel":       func(s *Spec) { s.Kernel = "" },
		"relative run":    func(s *Spec) { s.RunDir = "run" },
		"no run":          func(s *Spec) { s.RunDir = "" },
		"bad format":      func(s *Spec) { s.Disks = []Disk{{Path: "/d", Format: "vmdk"}} },
		"disk no path":    func(s *Spec) { s.Disks = []Disk{{}} },
		"bad accel":       func(s *Spec) { s.Accel = "hvf" },
		"negative cpus":   func(s *Spec) { s.CPUs = -1 },
		"negative memory": func(s *Spec) { s.MemoryMiB = -1 },
	} {
		s := ok
		s.Disks = append([]Disk(nil), ok.Disks...)
		mut(&s)
		if _, err := s.Normalize(); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestConsoleLogCap(t *testing.T) {
	for _, tc := range []struct {
		name   string
		max    int64
		writes []string
	}{
		{"small lines", 1024, repeatLines("line %03d of the console\n", 500)},
		{"one huge write", 1024, []string{strings.Repeat("x", 10000) + "END\n"}},
		{"mixed", 4096, append(repeatLines("boot message %d\n", 300), strings.Repeat("y", 5000), "tail\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "console.log")
			l, err := OpenConsoleLog(path, tc.max)
			if err != nil {
				t.Fatal(err)
			}
			var all strings.Builder
			for _, w := range tc.writes {
				if n, err := l.Write([]byte(w)); err != nil || n != len(w) {
					t.Fatalf("write: %d %v", n, err)
				}
				all.WriteString(w)
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Size() > tc.max {
					t.Fatalf("log is %d bytes, cap %d", fi.Size(), tc.max)
				}
			}
			l.Close()
			got, _ := os.ReadFile(path)
			if len(got) == 0 || !strings.HasSuffix(all.String(), string(got)) {
				t.Fatalf("log is not a suffix of what was written (%d bytes)", len(got))
			}
			if int64(len(got)) < tc.max/4 {
				t.Fatalf("log kept only %d bytes of cap %d", len(got), tc.max)
			}
			ents, _ := os.ReadDir(filepath.Dir(path))
			if len(ents) != 1 {
				t.Fatalf("temporary files left: %v", ents)
			}
			if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
				t.Fatalf("mode %v", fi.Mode())
			}
		})
	}
}

func TestConsoleLogReopenCompacts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	if err := os.WriteFile(path, []byte(strings.Repeat("old line\n", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := OpenConsoleLog(path, 2048)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if fi, _ := os.Stat(path); fi.Size() > 2048 {
		t.Fatalf("oversized log not compacted on open: %d", fi.Size())
	}
	if _, err := l.Write([]byte("new\n")); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(b), "old line\n") || !strings.HasSuffix(string(b), "old line\nnew\n") {
		t.Fatalf("content %q", b)
	}
}

func repeatLines(format string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf(format, i)
	}
	return out
}

func TestAPISocketOf(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		want string
	}{
		{[]string{"qemu", "-qmp", "unix:/run/paddock/vm1/qmp.sock,server=on,wait=off"}, "/run/paddock/vm1/qmp.sock"},
		{[]string{"qemu", "-qmp", "unix:/run/a,,b/qmp.sock,server=on"}, "/run/a,b/qmp.sock"},
		{[]string{"qemu", "-qmp", "unix:/x.sock"}, "/x.sock"},
		{[]string{"qemu", "-qmp", "tcp:localhost:4444"}, ""},
		{[]string{"firecracker", "--api-sock", "/run/paddock/vm1/fc.sock", "--id", "paddock-vm1"}, "/run/paddock/vm1/fc.sock"},
		{[]string{"qemu", "-name", "paddock-vm1"}, ""},
	} {
		if got := apiSocketOf(tc.argv); got != tc.want {
			t.Errorf("%q: %q, want %q", tc.argv, got, tc.want)
		}
	}
}

// TestCreateCgroupRollsBack: a VMM cgroup whose limits cannot be written
// is removed again, and the error says why.
func TestCreateCgroupRollsBack(t *testing.T) {
	parent := t.TempDir()
	if err := os.WriteFile(filepath.Join(parent, "cgroup.procs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// a plain directory, not cgroupfs: the new "cgroup" has no control files
	_, err := CreateCgroup(context.Background(), parent, "vm1", cgroup.Limits{CPUs: 1})
	if err == nil || !strings.Contains(err.Error(), filepath.Join(parent, Tag("vm1"))) {
		t.Fatalf("CreateCgroup = %v, want an error naming the cgroup", err)
	}
	if _, err := os.Stat(filepath.Join(parent, Tag("vm1"))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the failed cgroup was left: %v", err)
	}
}

// TestVMMArgv: a process still in its confining step is known by the argv
// it is about to exec.
func TestVMMArgv(t *testing.T) {
	q := []string{"qemu-system-x86_64", "-name", "paddock-a"}
	for _, tc := range []struct {
		argv, want []string
	}{
		{q, q},
		{append([]string{confineArg0, "/usr/bin/qemu-system-x86_64"}, q...), q},
		{[]string{confineArg0, "/usr/bin/x"}, []string{confineArg0, "/usr/bin/x"}}, // no argv to exec: not a confining step
		{[]string{"sh", "/usr/bin/qemu-system-x86_64", "qemu-system-x86_64"}, []string{"sh", "/usr/bin/qemu-system-x86_64", "qemu-system-x86_64"}},
		{nil, nil},
	} {
		if got := vmmArgv(tc.argv); !slices.Equal(got, tc.want) {
			t.Errorf("vmmArgv(%q) = %q, want %q", tc.argv, got, tc.want)
		}
	}
}
