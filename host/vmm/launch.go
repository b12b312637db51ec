package vmm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/paddock-vm/paddock/host/cgroup"
)

// Command is a VMM process to launch.
type Command struct {
	// Path is the binary; looked up in $PATH when it has no '/'.
	Path string
	// Args is the full argv (Args[0] is the program name); it must carry
	// the VM's tag.
	Args []string
	// Log receives stdout and stderr (created or truncated, mode 0600).
	Log string
	// Cgroup is the cgroup directory the process is born in ("" for none).
	Cgroup string
	// Env is the environment; nil means only PATH (paddockd's own
	// environment, with NOTIFY_SOCKET and LISTEN_FDS, is never inherited).
	Env []string
	// NoHugePages starts the process without transparent huge pages (a
	// TCG guest's VMM: see noHugePagesArg).
	NoHugePages bool
}

// defaultEnv is the environment of a VMM when Command.Env is nil.
var defaultEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// child is a VMM this process started; its reaper goroutine records how it
// ended.
type child struct {
	pid    int
	start  uint64
	args   []string
	boot   string // boot id at launch
	done   chan struct{}
	exit   Exit
	exited time.Time
}

// children records the VMMs this process started, so that Wait can report
// their exit status; records of children that exited more than
// childRetention ago are dropped at the next launch.
var children sync.Map // pid → *child

const childRetention = 10 * time.Minute

// lookupChild finds the child p describes (pid, start time and argv).
func lookupChild(p Ident) *child {
	v, ok := children.Load(p.PID)
	if !ok {
		return nil
	}
	c := v.(*child)
	if c.start != p.StartTime || !slices.Equal(c.args, p.Cmdline) || p.BootID != "" && c.boot != "" && p.BootID != c.boot {
		return nil
	}
	return c
}

func pruneChildren() {
	children.Range(func(k, v any) bool {
		c := v.(*child)
		select {
		case <-c.done:
			if time.Since(c.exited) > childRetention {
				children.CompareAndDelete(k, c)
			}
		default:
		}
		return true
	})
}

// Launcher starts c like LaunchHere and returns its pid and start time. A
// launcher process (host/launcher) does it for paddockd under systemd, so
// that the VMMs live in its unit's cgroup, not paddockd's.
type Launcher func(c Command) (pid int, start uint64, err error)

// launchVia is how this process starts VMMs and their helpers: LaunchHere
// unless UseLauncher said otherwise.
var launchVia atomic.Pointer[Launcher]

// UseLauncher makes every later VMM and helper start through l; nil
// returns to LaunchHere. Such processes are not this process's children:
// they are proved and watched like re-adopted ones (/proc, pidfd), and
// their exit status is not known.
func UseLauncher(l Launcher) {
	if l == nil {
		launchVia.Store(nil)
		return
	}
	launchVia.Store(&l)
}

func launch(c Command) (int, uint64, error) {
	if l := launchVia.Load(); l != nil {
		return (*l)(c)
	}
	return LaunchHere(c)
}

// Spawn starts c like a VMM (see LaunchHere) for a helper process of a VM that
// carries no VMM tag (passt): confined, in its own session, born in
// c.Cgroup when set, outliving paddockd. The Ident it returns proves the
// process later (Ident.Probe, Ident.Kill, Ident.Wait).
func Spawn(c Command) (Ident, error) {
	pid, start, err := launch(c)
	if err != nil {
		return Ident{}, err
	}
	return Ident{PID: pid, StartTime: start, BootID: BootID(), Cmdline: append([]string(nil), c.Args...)}, nil
}

// LaunchHere starts c in its own session (setsid), stdin on /dev/null, stdout
// and stderr in c.Log, without a parent-death signal, without capabilities
// and with no_new_privs (Confine), born in c.Cgroup when set (clone3
// CLONE_INTO_CGROUP, falling back to moving it right after start). A
// goroutine reaps it while this process lives.
func LaunchHere(c Command) (pid int, start uint64, err error) {
	if len(c.Args) == 0 {
		return 0, 0, fmt.Errorf("%w: empty argv", ErrInvalidSpec)
	}
	path, err := exec.LookPath(c.Path)
	if err != nil {
		return 0, 0, fmt.Errorf("vmm: %w", err)
	}
	logf, err := os.OpenFile(c.Log, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return 0, 0, fmt.Errorf("vmm: %w", err)
	}
	defer logf.Close()
	env := c.Env
	if env == nil {
		env = defaultEnv
	}
	mk := func(cgfd int) *exec.Cmd {
		cmd := &exec.Cmd{Path: path, Args: c.Args, Env: env, Stdout: logf, Stderr: logf}
		Confine(cmd, c.NoHugePages) // no capabilities, no_new_privs
		// Setsid: own session and process group, no controlling tty; no
		// Pdeathsig: the VMM must outlive paddockd.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if cgfd >= 0 {
			cmd.SysProcAttr.UseCgroupFD = true
			cmd.SysProcAttr.CgroupFD = cgfd
		}
		return cmd
	}
	var cmd *exec.Cmd
	if c.Cgroup != "" {
		f, err := cgroup.OpenDir(c.Cgroup)
		if err != nil {
			return 0, 0, err
		}
		cmd = mk(int(f.Fd()))
		err = cmd.Start()
		f.Close()
		if err != nil && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.EACCES) {
			// clone3/CLONE_INTO_CGROUP unavailable (old kernel, seccomp):
			// start normally and move the process right after
			cmd = mk(-1)
			if err = cmd.Start(); err == nil {
				if err = cgroup.AddPID(c.Cgroup, cmd.Process.Pid); err != nil {
					_ = cmd.Process.Kill()
					_ = cmd.Wait()
					return 0, 0, err
				}
			}
		}
		if err != nil {
			return 0, 0, fmt.Errorf("vmm: starting %s: %w", path, err)
		}
	} else {
		cmd = mk(-1)
		if err := cmd.Start(); err != nil {
			return 0, 0, fmt.Errorf("vmm: starting %s: %w", path, err)
		}
	}
	pid = cmd.Process.Pid
	// Not reaped yet (nobody waits before the goroutine below), so the
	// pid cannot have been reused: its stat is the child's, zombie or not.
	start, err = StartTimeOf(pid)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return 0, 0, fmt.Errorf("vmm: reading start time of pid %d: %w", pid, err)
	}
	pruneChildren()
	ch := &child{pid: pid, start: start, args: append([]string(nil), c.Args...), boot: BootID(), done: make(chan struct{})}
	children.Store(pid, ch)
	go func() {
		_ = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
			ch.exit = Exit{Known: true, Code: ws.ExitStatus()}
			if ws.Signaled() {
				ch.exit.Signal = int(ws.Signal())
			}
		}
		ch.exited = time.Now()
		close(ch.done)
	}()
	return pid, start, nil
}

// LookBinary finds bin (in $PATH, or at the path given) and, when it
// cannot, says only why: the lookup's own text repeats the path, which the
// caller names in its own words.
func LookBinary(bin string) error {
	_, err := exec.LookPath(bin)
	if err == nil {
		return nil
	}
	var ee *exec.Error
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	} else if errors.As(err, &ee) {
		return ee.Err
	}
	return err
}
