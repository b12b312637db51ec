package vmm

import (
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

	"golang.org/x/sys/unix"
)

// procRoot is /proc; tests may point it elsewhere.
var procRoot = "/proc"

// procStat is what paddock reads from /proc/PID/stat.
type procStat struct {
	State     byte
	PPID      int
	StartTime uint64
}

// parseStat parses /proc/PID/stat. The command name (field 2) is in
// parentheses and may itself contain spaces and parentheses, so fields are
// counted from the last ')'.
func parseStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("vmm: malformed /proc stat (no ')')")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), f[1] field 4 (ppid), f[19] field 22 (starttime)
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("vmm: malformed /proc stat (%d fields after comm)", len(f))
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return procStat{}, fmt.Errorf("vmm: malformed /proc stat ppid %q", f[1])
	}
	st, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("vmm: malformed /proc stat starttime %q", f[19])
	}
	return procStat{State: f[0][0], PPID: ppid, StartTime: st}, nil
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

func readCmdline(pid int) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return nil, err
	}
	return splitCmdline(b), nil
}

func splitCmdline(b []byte) []string {
	b = bytes.TrimSuffix(b, []byte{0})
	if len(b) == 0 {
		return nil
	}
	return strings.Split(string(b), "\x00")
}

// StartTimeOf returns /proc/PID/stat field 22 of a live process.
func StartTimeOf(pid int) (uint64, error) {
	st, err := readStat(pid)
	if err != nil {
		return 0, err
	}
	return st.StartTime, nil
}

// BootID returns the kernel's boot id, "" when it cannot be read.
func BootID() string {
	b, err := os.ReadFile(filepath.Join(procRoot, "sys/kernel/random/boot_id"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// gone reports whether err from reading /proc/PID means no such process.
func gone(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH)
}

func checkHandle(p *Process) error {
	if p == nil || p.PID <= 0 || p.StartTime == 0 || len(p.Cmdline) == 0 {
		return fmt.Errorf("%w: needs pid, start time and cmdline", ErrInvalidHandle)
	}
	if err := ValidVMID(p.VMID); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidHandle, err)
	}
	if id, _, ok := TagOf(p.Cmdline); !ok || id != p.VMID {
		return fmt.Errorf("%w: cmdline does not carry the tag %s", ErrInvalidHandle, Tag(p.VMID))
	}
	return nil
}

// Ident is what proves that a live pid is still the process a handle
// describes: its pid, start time, the boot id at launch and its argv.
// Spawn returns one; a driver's Process carries the same facts.
type Ident struct {
	PID       int
	StartTime uint64
	BootID    string
	Cmdline   []string
}

func (p *Process) ident() Ident {
	return Ident{PID: p.PID, StartTime: p.StartTime, BootID: p.BootID, Cmdline: p.Cmdline}
}

func (id Ident) check() error {
	if id.PID <= 0 || id.StartTime == 0 || len(id.Cmdline) == 0 {
		return fmt.Errorf("%w: needs pid, start time and cmdline", ErrInvalidHandle)
	}
	return nil
}

// identify compares the live process p.PID with the handle (start time,
// boot id, argv with the tag). Callers hold a pidfd opened before calling
// it when they mean to signal.
func identify(p *Process) (State, error) {
	if err := checkHandle(p); err != nil {
		return StateExited, err
	}
	return p.ident().state()
}

// Probe reports whether id's process is alive and still the one id
// describes (/proc only): StateNotOurs for a live pid that is another
// process, which must never be signalled.
func (id Ident) Probe() (State, error) {
	if err := id.check(); err != nil {
		return StateExited, err
	}
	return id.state()
}

func (id Ident) state() (State, error) {
	// A child this process launched and has not reaped yet is provably
	// ours (its pid cannot be reused before the reaper's wait), whatever
	// /proc shows: right after fork its argv is still paddockd's.
	if c := lookupChild(id); c != nil {
		select {
		case <-c.done:
			return StateExited, nil
		default:
		}
		// Not reaped yet, so the pid is still the child's: a zombie (or a
		// pid gone from /proc) has exited, anything else runs.
		st, err := readStat(id.PID)
		if gone(err) || err == nil && (st.State == 'Z' || st.State == 'X') {
			return StateExited, nil
		}
		return StateRunning, nil
	}
	st, err := readStat(id.PID)
	if gone(err) {
		return StateExited, nil
	}
	if err != nil {
		return StateExited, fmt.Errorf("vmm: probing pid %d: %w", id.PID, err)
	}
	if st.StartTime != id.StartTime {
		return StateNotOurs, nil
	}
	if id.BootID != "" {
		if b := BootID(); b != "" && b != id.BootID {
			return StateNotOurs, nil
		}
	}
	if st.State == 'Z' || st.State == 'X' {
		return StateExited, nil
	}
	argv, err := readCmdline(id.PID)
	if gone(err) {
		return StateExited, nil
	}
	if err != nil {
		return StateExited, fmt.Errorf("vmm: probing pid %d: %w", id.PID, err)
	}
	if len(argv) == 0 {
		// pid and start time are the handle's (unique within a boot), and
		// the argv is gone: the process is exiting (its mm released)
		return StateExited, nil
	}
	if !slices.Equal(argv, id.Cmdline) && !slices.Equal(vmmArgv(argv), id.Cmdline) {
		return StateNotOurs, nil
	}
	return StateRunning, nil
}

// vmmArgv returns the argv a process will run as: the VMM's own while it is
// still in its confining step (see Confine), else argv itself.
func vmmArgv(argv []string) []string {
	if len(argv) >= 3 && argv[0] == confineArg0 {
		return argv[2:]
	}
	return argv
}

// pidfd is an open pidfd of a process identified as p's VMM.
type pidfd int

// openIdentified opens a pidfd for p.PID, then identifies the process. The
// pidfd is returned only with StateRunning; it then refers to p's VMM for
// good (a pidfd never follows a reused pid).
func openIdentified(p *Process) (pidfd, State, error) {
	if err := checkHandle(p); err != nil {
		return -1, StateExited, err
	}
	return p.ident().open()
}

func (id Ident) open() (pidfd, State, error) {
	fd, err := unix.PidfdOpen(id.PID, 0)
	if errors.Is(err, unix.ESRCH) {
		return -1, StateExited, nil
	}
	if err != nil {
		return -1, StateExited, fmt.Errorf("vmm: pidfd_open %d: %w", id.PID, err)
	}
	s, err := id.state()
	if err != nil || s != StateRunning {
		unix.Close(fd)
		return -1, s, err
	}
	return pidfd(fd), s, nil
}

// Kill SIGKILLs id's process through a pidfd opened before identifying it,
// after prove (nil: no further proof) has said it may be killed, and waits
// for it to go (bounded by ctx and killWait). A process that is gone, or a
// pid that is another process now, is success: nothing is signalled. An
// error from prove is returned and nothing is signalled.
func (id Ident) Kill(ctx context.Context, prove func() error) error {
	if err := id.check(); err != nil {
		return err
	}
	fd, s, err := id.open()
	if err != nil || s != StateRunning {
		return err
	}
	defer fd.close()
	if prove != nil {
		if err := prove(); err != nil {
			return err
		}
	}
	if err := fd.signal(unix.SIGKILL); err != nil {
		return fmt.Errorf("kill pid %d: %w", id.PID, err)
	}
	wctx, cancel := context.WithTimeout(ctx, killWait)
	defer cancel()
	if err := fd.wait(wctx); err != nil {
		return fmt.Errorf("pid %d did not exit after SIGKILL: %w", id.PID, err)
	}
	// A child of this process is gone only once reaped: until then it
	// stays a zombie in /proc, and callers may check that nothing is left.
	if c := lookupChild(id); c != nil {
		select {
		case <-c.done:
		case <-wctx.Done():
			return fmt.Errorf("pid %d exited but was not reaped: %w", id.PID, wctx.Err())
		}
	}
	return nil
}

// Wait blocks until id's process is no longer running or ctx ends. The
// status is known (Exit.Known) when this process spawned it.
func (id Ident) Wait(ctx context.Context) (Exit, error) {
	if err := id.check(); err != nil {
		return Exit{}, err
	}
	return id.waitGone(ctx)
}

func (fd pidfd) close() { unix.Close(int(fd)) }

// signal sends sig through the pidfd; an exited process is not an error.
func (fd pidfd) signal(sig unix.Signal) error {
	err := unix.PidfdSendSignal(int(fd), sig, nil, 0)
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	return nil
}

// wait blocks until the process exits (the pidfd becomes readable) or ctx
// ends, polling in slices so that ctx is honoured.
func (fd pidfd) wait(ctx context.Context) error {
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 100)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("vmm: poll pidfd: %w", err)
		}
		if n > 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// Find scans /proc for live processes whose command line carries a paddock
// tag: of VM vmID, or of any VM when vmID is "". The handles it returns have
// Driver, VMID, PID, StartTime, BootID, Cmdline, and APISocket and RunDir
// when the command line names its API socket; they are enough for Probe and
// Kill (the orphan sweep after a crash between launching a VMM and
// persisting its handle). Processes of other users that /proc hides are not
// found. A tag does not say whose VMM it is: before acting on a VMM it has
// no handle for, a daemon asks its Owner (Owner.Find).
func Find(vmID string) ([]*Process, error) {
	ids, err := Scan(func(argv []string) bool {
		id, _, ok := TagOf(argv)
		return ok && (vmID == "" || id == vmID)
	})
	if err != nil {
		return nil, err
	}
	out := make([]*Process, 0, len(ids))
	for _, q := range ids {
		id, driver, _ := TagOf(q.Cmdline)
		p := &Process{Driver: driver, VMID: id, PID: q.PID, StartTime: q.StartTime, BootID: q.BootID, Cmdline: q.Cmdline}
		if p.APISocket = apiSocketOf(q.Cmdline); p.APISocket != "" {
			p.RunDir = filepath.Dir(p.APISocket)
		}
		out = append(out, p)
	}
	return out, nil
}

// Scan lists the live processes (zombies excluded) whose argv match
// accepts: the program's own argv, also while it is still in its confining
// step. Processes of other users that /proc hides are not seen. What Scan
// finds is a candidate, not proof of whose it is (see Owner).
func Scan(match func(argv []string) bool) ([]Ident, error) {
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, fmt.Errorf("vmm: %w", err)
	}
	boot := BootID()
	var out []Ident
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		argv, err := readCmdline(pid)
		if err != nil || len(argv) == 0 {
			continue
		}
		argv = vmmArgv(argv)
		if !match(argv) {
			continue
		}
		st, err := readStat(pid)
		if err != nil || st.State == 'Z' || st.State == 'X' {
			continue
		}
		out = append(out, Ident{PID: pid, StartTime: st.StartTime, BootID: boot, Cmdline: argv})
	}
	return out, nil
}

// apiSocketOf finds the API socket on a VMM command line: QEMU's
// "-qmp unix:PATH,..." (QEMU's ",," escape undone) or Firecracker's
// "--api-sock PATH".
func apiSocketOf(argv []string) string {
	for i := 1; i+1 < len(argv); i++ {
		switch argv[i] {
		case "--api-sock":
			return argv[i+1]
		case "-qmp":
			v, ok := strings.CutPrefix(argv[i+1], "unix:")
			if !ok {
				continue
			}
			var b strings.Builder
			for j := 0; j < len(v); j++ {
				if v[j] == ',' {
					if j+1 < len(v) && v[j+1] == ',' {
						b.WriteByte(',')
						j++
						continue
					}
					break
				}
				b.WriteByte(v[j])
			}
			return b.String()
		}
	}
	return ""
}

// waitGone waits until p's VMM is no longer running: through the child
// table for a child (it is reaped there), through a pidfd otherwise.
func waitGone(ctx context.Context, p *Process) (Exit, error) {
	if err := checkHandle(p); err != nil {
		return Exit{}, err
	}
	return p.ident().waitGone(ctx)
}

func (id Ident) waitGone(ctx context.Context) (Exit, error) {
	s, err := id.state()
	if err != nil || s == StateNotOurs {
		return Exit{}, err
	}
	if c := lookupChild(id); c != nil {
		select {
		case <-c.done:
			return c.exit, nil
		case <-ctx.Done():
			return Exit{}, ctx.Err()
		}
	}
	if s == StateExited {
		return Exit{}, nil
	}
	fd, s, err := id.open()
	if err != nil || s != StateRunning {
		return Exit{}, err
	}
	defer fd.close()
	if err := fd.wait(ctx); err != nil {
		return Exit{}, err
	}
	return Exit{}, nil
}
