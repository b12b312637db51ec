package cgroup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// LimitControllers are the controllers a VMM's Limits need, as
// cgroup.controllers names them.
var LimitControllers = []string{"cpu", "memory", "pids"}

// cpuPeriod is the cpu.max period (the kernel's default, 100ms).
const cpuPeriod = 100000

// Limits bound one VMM's cgroup. A zero field sets nothing.
type Limits struct {
	// MemoryMax is memory.max in bytes: the guest's memory plus the VMM's
	// own (QEMU's heap, TCG's translation cache, I/O buffers).
	MemoryMax int64 `json:"memory_max,omitempty"`
	// CPUs is cpu.max in whole CPUs: "<CPUs*100000> 100000".
	CPUs int `json:"cpus,omitempty"`
	// PIDsMax is pids.max: the VMM's threads (one per vCPU, I/O workers).
	PIDsMax int `json:"pids_max,omitempty"`
}

// files returns the control files and values l writes, in a fixed order.
func (l Limits) files() [][2]string {
	var out [][2]string
	if l.MemoryMax > 0 {
		out = append(out, [2]string{"memory.max", strconv.FormatInt(l.MemoryMax, 10)})
	}
	if l.CPUs > 0 {
		out = append(out, [2]string{"cpu.max", fmt.Sprintf("%d %d", l.CPUs*cpuPeriod, cpuPeriod)})
	}
	if l.PIDsMax > 0 {
		out = append(out, [2]string{"pids.max", strconv.Itoa(l.PIDsMax)})
	}
	return out
}

// SetLimits writes l into cgroup dir. A limit whose control file does not
// exist (its controller is not enabled in the parent's
// cgroup.subtree_control, as on a hybrid host whose v2 hierarchy has no
// controllers) is skipped and named in skipped; a write that fails is an
// error naming the file.
func SetLimits(dir string, l Limits) (skipped []string, err error) {
	if err := isCgroupDir(dir); err != nil {
		return nil, err
	}
	for _, f := range l.files() {
		p := filepath.Join(dir, f[0])
		err := writeControl(p, f[1])
		if errors.Is(err, os.ErrNotExist) {
			skipped = append(skipped, f[0])
			continue
		}
		if err != nil {
			return skipped, fmt.Errorf("cgroup: writing %q to %s: %w", f[1], p, err)
		}
	}
	return skipped, nil
}

// EnableControllers enables in parent's cgroup.subtree_control those of
// LimitControllers that its cgroup.controllers offers, so that its child
// cgroups get their limit files. It returns the controllers enabled (now
// or before) and those parent does not offer. Parent must hold no
// processes (cgroup v2's "no internal processes" rule: paddockd moves into
// its SupervisorLeaf first).
func EnableControllers(parent string) (enabled, missing []string, err error) {
	avail, err := readWords(filepath.Join(parent, "cgroup.controllers"))
	if err != nil {
		return nil, nil, fmt.Errorf("cgroup: %w", err)
	}
	on, err := readWords(filepath.Join(parent, "cgroup.subtree_control"))
	if err != nil {
		return nil, nil, fmt.Errorf("cgroup: %w", err)
	}
	var add []string
	for _, c := range LimitControllers {
		switch {
		case on[c]:
			enabled = append(enabled, c)
		case avail[c]:
			add = append(add, "+"+c)
			enabled = append(enabled, c)
		default:
			missing = append(missing, c)
		}
	}
	if len(add) > 0 {
		p := filepath.Join(parent, "cgroup.subtree_control")
		if err := writeControl(p, strings.Join(add, " ")); err != nil {
			return nil, nil, fmt.Errorf("cgroup: writing %q to %s: %w", strings.Join(add, " "), p, err)
		}
	}
	return enabled, missing, nil
}

// writeControl writes value to the control file p, which must exist (it is
// never created: a missing file means a controller is not enabled).
func writeControl(p, value string) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// readWords reads a space-separated list file (cgroup.controllers).
func readWords(path string) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, w := range strings.Fields(string(b)) {
		out[w] = true
	}
	return out, nil
}

// Usage is what a cgroup's accounting files say. A figure whose file is
// absent or unreadable is not Have: the caller falls back to another source.
type Usage struct {
	// CPUUsec is cpu.stat's usage_usec: CPU time of every task the cgroup
	// has had (cpu.stat exists on cgroup v2 even without the cpu
	// controller).
	CPUUsec uint64
	HaveCPU bool
	// Memory is memory.current in bytes (memory controller only): all the
	// cgroup's memory, page cache and kernel memory included.
	Memory     int64
	HaveMemory bool
}

// ReadUsage reads cpu.stat and memory.current of cgroup dir.
func ReadUsage(dir string) Usage {
	var u Usage
	if b, err := readBounded(filepath.Join(dir, "cpu.stat")); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "usage_usec "); ok {
				if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
					u.CPUUsec, u.HaveCPU = n, true
				}
				break
			}
		}
	}
	if b, err := readBounded(filepath.Join(dir, "memory.current")); err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && n >= 0 {
			u.Memory, u.HaveMemory = n, true
		}
	}
	return u
}

// readBounded reads a small control file (at most 64 KiB).
func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 64<<10))
}
