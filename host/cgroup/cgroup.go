// Package cgroup gives each VMM its own cgroup (cgroup v2 only) below the
// cgroup that systemd delegated to paddockd (Delegate=yes in paddock.service),
// so that a VMM can be found, accounted and killed as a group, and outlives a
// paddockd restart (the unit uses KillMode=process).
//
// Layout, with <unit> the service's cgroup as /proc/self/cgroup reports it:
//
//	<unit>/                    delegated to paddockd (Delegated)
//	<unit>/supervisor/         paddockd itself (EnterLeaf: cgroup v2 allows
//	                           no processes in inner cgroups with controllers)
//	<unit>/paddock-<vm id>/    one VMM each (Create, AddPID, Remove, Find)
//
// A VMM's cgroup gets Limits (memory.max, cpu.max, pids.max: SetLimits) as
// far as EnableControllers could enable their controllers in the parent; its
// accounting (cpu.stat, memory.current) is read with ReadUsage.
//
// Every cgroup this package creates or removes is named with Prefix; Remove
// refuses (ErrNotOurs) any other name, so a wrong path from a corrupt handle
// cannot remove a cgroup paddock does not own.
//
// Only the unified (v2) hierarchy is used: mounted at /sys/fs/cgroup, or at
// /sys/fs/cgroup/unified on hybrid hosts, where it carries no resource
// controllers and the cgroup serves grouping, identity and group kill only.
//
// When there is no delegation (not under systemd, Delegate= missing, no write
// access, or the root cgroup) Delegated returns an error wrapping
// ErrNoDelegation; callers then run VMMs without a cgroup of their own.
package cgroup

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/errdefs"
)

// Prefix starts the name of every cgroup paddock creates for a VMM.
const Prefix = "paddock-"

// SupervisorLeaf is the leaf cgroup paddockd moves itself into (EnterLeaf).
const SupervisorLeaf = "supervisor"

// Errors.
var (
	// ErrNoDelegation: this process has no cgroup it may create children in.
	// The wrapping error says why.
	ErrNoDelegation = errdefs.New(errdefs.ErrUnavailable, "cgroup: no delegated cgroup")
	// ErrNotOurs: the cgroup's name does not start with Prefix.
	ErrNotOurs = errdefs.New(errdefs.ErrFailedPrecondition, "cgroup: not a paddock cgroup")
	// ErrNotEmpty: Remove without kill found processes in the cgroup.
	ErrNotEmpty = errdefs.New(errdefs.ErrFailedPrecondition, "cgroup: still has processes")
	// ErrNoCgroup2: no cgroup v2 hierarchy is mounted.
	ErrNoCgroup2 = errdefs.New(errdefs.ErrUnavailable, "cgroup: no cgroup2 mount")
)

// procRoot is /proc; tests point it elsewhere.
var procRoot = "/proc"

// Mountpoint returns where the cgroup v2 hierarchy is mounted (from
// /proc/self/mountinfo; /sys/fs/cgroup preferred over others such as
// /sys/fs/cgroup/unified) and the cgroup path mounted there ("/" unless a
// sub-tree is bind-mounted).
func Mountpoint() (dir, root string, err error) {
	b, err := os.ReadFile(filepath.Join(procRoot, "self/mountinfo"))
	if err != nil {
		return "", "", err
	}
	return parseMountinfo(b)
}

func parseMountinfo(b []byte) (dir, root string, err error) {
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 1 || qf[0] != "cgroup2" {
			continue
		}
		mnt := unescapeMount(pf[4])
		if dir == "" || mnt == "/sys/fs/cgroup" {
			dir, root = mnt, unescapeMount(pf[3])
		}
	}
	if dir == "" {
		return "", "", ErrNoCgroup2
	}
	return dir, root, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var out []byte
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				out = append(out, byte(n))
				i += 3
				continue
			}
		}
		out = append(out, s[i])
	}
	return string(out)
}

// pathOf returns the cgroup v2 path ("0::" line) of /proc/<pid>/cgroup;
// pid 0 means this process.
func pathOf(pid int) (string, error) {
	name := "self"
	if pid != 0 {
		name = strconv.Itoa(pid)
	}
	b, err := os.ReadFile(filepath.Join(procRoot, name, "cgroup"))
	if err != nil {
		return "", err
	}
	return parseProcCgroup(b)
}

func parseProcCgroup(b []byte) (string, error) {
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return strings.TrimSuffix(p, " (deleted)"), nil
		}
	}
	return "", ErrNoCgroup2
}

// Of returns the cgroup v2 directory (under the mountpoint) of process pid;
// pid 0 is this process.
func Of(pid int) (string, error) {
	mnt, root, err := Mountpoint()
	if err != nil {
		return "", err
	}
	p, err := pathOf(pid)
	if err != nil {
		return "", err
	}
	return join(mnt, root, p), nil
}

// Within reports whether process pid's cgroup lies below dir (a directory
// under the mountpoint), and returns that cgroup's directory. A cgroup that
// /proc shows outside this process's cgroup namespace (a path with "..")
// lies within nothing.
func Within(pid int, dir string) (bool, string, error) {
	mnt, root, err := Mountpoint()
	if err != nil {
		return false, "", err
	}
	p, err := pathOf(pid)
	if err != nil {
		return false, "", err
	}
	if slices.Contains(strings.Split(p, "/"), "..") {
		return false, p, nil
	}
	cg := join(mnt, root, p)
	return strings.HasPrefix(cg, filepath.Clean(dir)+string(filepath.Separator)), cg, nil
}

// join maps cgroup path p (as /proc/PID/cgroup shows it) to a directory
// under mountpoint mnt, where the cgroup root is mounted.
func join(mnt, root, p string) string {
	if root != "/" && root != "" {
		if rel, ok := strings.CutPrefix(p, root); ok && (rel == "" || rel[0] == '/') {
			p = rel
		}
	}
	return filepath.Join(mnt, filepath.Clean("/"+p))
}

// Delegated returns the cgroup directory delegated to this process: its own
// cgroup (or the parent of its SupervisorLeaf after EnterLeaf). It fails with
// an error wrapping ErrNoDelegation when the process is in the root cgroup,
// may not write to its cgroup, or runs as root in a cgroup systemd did not
// mark delegated (xattr trusted.delegate or user.delegate, systemd ≥ 251).
func Delegated() (string, error) {
	mnt, root, err := Mountpoint()
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoDelegation, err)
	}
	p, err := pathOf(0)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoDelegation, err)
	}
	return checkDelegated(join(mnt, root, p), mnt, os.Geteuid())
}

func checkDelegated(dir, mnt string, euid int) (string, error) {
	if filepath.Base(dir) == SupervisorLeaf {
		dir = filepath.Dir(dir)
	}
	if filepath.Clean(dir) == filepath.Clean(mnt) {
		return "", fmt.Errorf("%w: in the root cgroup of %s (not started by a service manager with Delegate=yes)", ErrNoDelegation, mnt)
	}
	for _, f := range []string{dir, filepath.Join(dir, "cgroup.procs")} {
		if err := unix.Access(f, unix.W_OK); err != nil {
			return "", fmt.Errorf("%w: %s not writable: %v", ErrNoDelegation, f, err)
		}
	}
	if euid == 0 && !markedDelegated(dir) {
		return "", fmt.Errorf("%w: running as root in %s, which systemd did not mark delegated (no trusted.delegate/user.delegate xattr)", ErrNoDelegation, dir)
	}
	return dir, nil
}

func markedDelegated(dir string) bool {
	for _, attr := range []string{"trusted.delegate", "user.delegate"} {
		buf := make([]byte, 8)
		n, err := unix.Getxattr(dir, attr, buf)
		if err == nil && string(buf[:n]) == "1" {
			return true
		}
	}
	return false
}

// EnterLeaf moves this process into <delegated>/SupervisorLeaf (created if
// needed) so that VMM cgroups can be siblings of it, and returns that leaf.
func EnterLeaf(delegated string) (string, error) {
	leaf := filepath.Join(delegated, SupervisorLeaf)
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("cgroup: %w", err)
	}
	if err := AddPID(leaf, os.Getpid()); err != nil {
		return "", err
	}
	return leaf, nil
}

// ValidName reports whether name can name a paddock cgroup: Prefix, then at
// least one more character, no '/', not "." or "..".
func ValidName(name string) error {
	if !strings.HasPrefix(name, Prefix) || len(name) == len(Prefix) || len(name) > 255 ||
		strings.ContainsAny(name, "/\x00\n") {
		return fmt.Errorf("%w: invalid name %q", ErrNotOurs, name)
	}
	return nil
}

func isCgroupDir(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err != nil {
		return fmt.Errorf("cgroup: %s is not a cgroup directory: %w", dir, err)
	}
	return nil
}

// Create makes the cgroup parent/name (name starts with Prefix) and returns
// its directory. An existing one is returned as is (idempotent).
func Create(parent, name string) (string, error) {
	if err := ValidName(name); err != nil {
		return "", err
	}
	if err := isCgroupDir(parent); err != nil {
		return "", err
	}
	dir := filepath.Join(parent, name)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("cgroup: %w", err)
	}
	return dir, nil
}

// AddPID moves process pid (all its threads) into the cgroup dir.
func AddPID(dir string, pid int) error {
	if pid <= 0 {
		return fmt.Errorf("cgroup: invalid pid %d", pid)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return fmt.Errorf("cgroup: moving pid %d into %s: %w", pid, dir, err)
	}
	return nil
}

// Procs lists the processes in cgroup dir (not in its children). A cgroup
// that does not exist has none.
func Procs(dir string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	var pids []int
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if pid, err := strconv.Atoi(strings.TrimSpace(sc.Text())); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Populated reports whether cgroup dir or any descendant has a process
// (cgroup.events "populated").
func Populated(dir string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("cgroup: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "populated "); ok {
			return strings.TrimSpace(v) == "1", nil
		}
	}
	return false, fmt.Errorf("cgroup: no populated key in %s/cgroup.events", dir)
}

// Kill SIGKILLs every process in cgroup dir and its descendants (cgroup.kill,
// Linux ≥ 5.14; otherwise each listed pid, repeatedly) and waits until the
// cgroup is empty or ctx ends. A cgroup that does not exist is empty.
func Kill(ctx context.Context, dir string) error {
	if err := ValidName(filepath.Base(dir)); err != nil {
		return err
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	useKillFile := true
	for {
		pop, err := Populated(dir)
		if err != nil {
			return err
		}
		if !pop {
			return nil
		}
		if useKillFile {
			err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
			if errors.Is(err, os.ErrNotExist) {
				useKillFile = false
			} else if err != nil && !errors.Is(err, syscall.ENODEV) {
				return fmt.Errorf("cgroup: kill %s: %w", dir, err)
			}
		}
		if !useKillFile {
			_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
				if err != nil || !d.IsDir() {
					return nil
				}
				pids, _ := Procs(p)
				for _, pid := range pids {
					_ = unix.Kill(pid, unix.SIGKILL)
				}
				return nil
			})
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cgroup: %s still populated: %w", dir, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Remove deletes cgroup dir (its name must start with Prefix) and its
// descendants. A cgroup that does not exist is removed (idempotent). With
// kill it first kills every process in it; without, a populated cgroup is
// left alone and ErrNotEmpty returned.
func Remove(ctx context.Context, dir string, kill bool) error {
	if err := ValidName(filepath.Base(dir)); err != nil {
		return err
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if kill {
		if err := Kill(ctx, dir); err != nil {
			return err
		}
	} else if pop, err := Populated(dir); err != nil {
		return err
	} else if pop {
		return fmt.Errorf("%w: %s", ErrNotEmpty, dir)
	}
	for {
		err := removeTree(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		// The kernel drops an exited process from the cgroup shortly after
		// it reports the cgroup unpopulated; retry EBUSY briefly.
		if !errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("cgroup: removing %s: %w", dir, err)
		}
		if pop, _ := Populated(dir); pop && !kill {
			return fmt.Errorf("%w: %s", ErrNotEmpty, dir)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cgroup: removing %s: %w (%v)", dir, err, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// removeTree rmdirs dir's child cgroups depth first, then dir (cgroupfs
// directories hold only control files, which rmdir ignores).
func removeTree(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.IsDir() {
			if err := removeTree(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	return syscall.Rmdir(dir)
}

// Find lists the child cgroups of parent whose name starts with Prefix
// (paddock's VMM cgroups, for the orphan sweep), as full directories.
func Find(parent string) ([]string, error) {
	ents, err := os.ReadDir(parent)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && ValidName(e.Name()) == nil {
			out = append(out, filepath.Join(parent, e.Name()))
		}
	}
	return out, nil
}

// OpenDir opens cgroup dir for clone3(CLONE_INTO_CGROUP) (Go's
// syscall.SysProcAttr.UseCgroupFD/CgroupFD): a child started that way is
// born in the cgroup. The caller closes the file after starting the child.
func OpenDir(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("cgroup: open %s: %w", dir, err)
	}
	return os.NewFile(uintptr(fd), dir), nil
}
