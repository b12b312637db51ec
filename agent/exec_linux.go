package agent

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Reaper starts processes and collects their exit statuses. As PID 1 (or a
// subreaper) it must reap every child, including orphans reparented to it,
// so it runs a single wait4(-1) loop and hands statuses to the waiters;
// os/exec's Wait must not be used alongside it.
type Reaper struct {
	all       bool
	mu        sync.Mutex
	waiters   map[int]chan unix.WaitStatus
	unclaimed map[int]unix.WaitStatus
}

// NewReaper returns a reaper. With reapAll it reaps every child of the
// process (use as PID 1); otherwise it waits for each started pid only.
func NewReaper(reapAll bool) *Reaper {
	r := &Reaper{all: reapAll, waiters: map[int]chan unix.WaitStatus{}, unclaimed: map[int]unix.WaitStatus{}}
	if reapAll {
		go r.loop()
	}
	return r
}

func (r *Reaper) loop() {
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, unix.SIGCHLD)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if err == unix.EINTR {
				continue
			}
			if pid <= 0 || err != nil {
				break
			}
			r.dispatch(pid, ws)
		}
		select {
		case <-ch:
		case <-t.C:
		}
	}
}

func (r *Reaper) dispatch(pid int, ws unix.WaitStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if w, ok := r.waiters[pid]; ok {
		delete(r.waiters, pid)
		w <- ws
		return
	}
	// An orphan reparented to PID 1: nobody waits for it. Keep a bounded
	// record in case a Start racing with us registers it later.
	if len(r.unclaimed) < 1024 {
		r.unclaimed[pid] = ws
	}
}

// Start forks and execs argv0 (an absolute path) and returns the pid and a
// channel that delivers its wait status once.
func (r *Reaper) Start(argv0 string, argv []string, attr *syscall.ProcAttr) (int, <-chan unix.WaitStatus, error) {
	done := make(chan unix.WaitStatus, 1)
	r.mu.Lock() // the reap loop cannot dispatch this pid before it is registered
	pid, err := syscall.ForkExec(argv0, argv, attr)
	if err != nil {
		r.mu.Unlock()
		return 0, nil, err
	}
	if ws, ok := r.unclaimed[pid]; ok { // pid reuse of a stale record: it is not ours
		delete(r.unclaimed, pid)
		_ = ws
	}
	if r.all {
		r.waiters[pid] = done
	}
	r.mu.Unlock()
	if !r.all {
		go func() {
			var ws unix.WaitStatus
			for {
				_, err := unix.Wait4(pid, &ws, 0, nil)
				if err != unix.EINTR {
					break
				}
			}
			done <- ws
		}()
	}
	return pid, done, nil
}

// HasChildren reports whether any child process (including orphans adopted
// by PID 1) is left.
func (r *Reaper) HasChildren() bool {
	var info unix.Siginfo
	err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	return err != unix.ECHILD
}

// StatusOf converts a wait status.
func StatusOf(ws unix.WaitStatus) ExitStatus {
	if ws.Signaled() {
		return ExitStatus{Code: -1, Signal: int(ws.Signal())}
	}
	return ExitStatus{Code: ws.ExitStatus()}
}

// SpawnSpec describes a process to start.
type SpawnSpec struct {
	Argv []string
	// Env KEY=VALUE; empty means the spawner's default environment.
	Env  []string
	Dir  string
	User string
	TTY  bool
	Rows int
	Cols int
	// Stdin requests a stdin pipe (else /dev/null).
	Stdin bool
	// Output, when set, receives stdout and stderr directly (no pipes).
	Output *os.File
}

// LocalSpawner starts processes in the current root with a Reaper.
type LocalSpawner struct {
	Reaper *Reaper
	// Root is the root for user lookups (/etc/passwd, /etc/group): "/".
	Root string
	// DefaultEnv is used when a spec has no Env.
	DefaultEnv func() []string
	// DefaultUser is used when a spec names no User ("": root): the
	// user the VM's entrypoint runs as, so that what exec makes in a
	// workspace belongs to the same owner as what the entrypoint makes.
	// Set it before serving; SetDefaultUser changes it afterwards.
	DefaultUser string
	mu          sync.Mutex
}

// SetDefaultUser changes DefaultUser while requests may be served (a
// template's guest gets its VM's config late).
func (s *LocalSpawner) SetDefaultUser(u string) {
	s.mu.Lock()
	s.DefaultUser = u
	s.mu.Unlock()
}

// DefaultPath is PATH when the environment has none.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

type localProc struct {
	pid    int
	done   <-chan unix.WaitStatus
	once   sync.Once
	status ExitStatus
	stdin  io.WriteCloser
	stdout io.ReadCloser
	stderr io.ReadCloser
	pty    *os.File
}

func (p *localProc) PID() int              { return p.pid }
func (p *localProc) Stdin() io.WriteCloser { return p.stdin }
func (p *localProc) Stdout() io.ReadCloser { return p.stdout }
func (p *localProc) Stderr() io.ReadCloser { return p.stderr }
func (p *localProc) Wait() ExitStatus {
	p.once.Do(func() { p.status = StatusOf(<-p.done) })
	return p.status
}

func (p *localProc) Signal(sig syscall.Signal) error {
	// Each process leads its own session and process group.
	if err := unix.Kill(-p.pid, sig); err != nil {
		if err2 := unix.Kill(p.pid, sig); err2 != nil && err2 != unix.ESRCH {
			return err2
		}
	}
	return nil
}

func (p *localProc) Resize(rows, cols int) error {
	if p.pty == nil {
		return &Error{Code: CodeBadRequest, Message: "not a tty session"}
	}
	return setWinsize(p.pty, rows, cols)
}

func setWinsize(f *os.File, rows, cols int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	err = rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(rows), Col: uint16(cols)})
	})
	if err != nil {
		return err
	}
	return ierr
}

// ptyReader maps the EIO a pty master returns after the last slave fd
// closed to io.EOF.
type ptyReader struct{ *os.File }

func (p ptyReader) Read(b []byte) (int, error) {
	n, err := p.File.Read(b)
	if err != nil && errors.Is(err, syscall.EIO) {
		err = io.EOF
	}
	return n, err
}

// ptyWriter lets stdin's close leave the shared master open for output.
type ptyWriter struct{ f *os.File }

func (p ptyWriter) Write(b []byte) (int, error) { return p.f.Write(b) }
func (p ptyWriter) Close() error {
	_, err := p.f.Write([]byte{4}) // ^D: end of input in canonical mode
	return err
}

func openPTY() (master, slave *os.File, err error) {
	master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	rc, err := master.SyscallConn()
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	var n int
	var ierr error
	_ = rc.Control(func(fd uintptr) {
		if ierr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); ierr != nil {
			return
		}
		n, ierr = unix.IoctlGetInt(int(fd), unix.TIOCGPTN)
	})
	if ierr != nil {
		master.Close()
		return nil, nil, fmt.Errorf("pty: %w", ierr)
	}
	slave, err = os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	return master, slave, nil
}

// Spawn starts spec.
func (s *LocalSpawner) Spawn(spec SpawnSpec) (Proc, error) {
	if len(spec.Argv) == 0 {
		return nil, &Error{Code: CodeBadRequest, Message: "empty argv"}
	}
	root := s.Root
	if root == "" {
		root = "/"
	}
	env := spec.Env
	if len(env) == 0 && s.DefaultEnv != nil {
		env = s.DefaultEnv()
	}
	user := spec.User
	if user == "" {
		s.mu.Lock()
		user = s.DefaultUser
		s.mu.Unlock()
	}
	cred, err := LookupUser(root, user)
	if err != nil {
		return nil, &Error{Code: CodeBadRequest, Message: err.Error()}
	}
	env = withDefaultEnv(env, cred.Home)
	path, err := LookPath(spec.Argv[0], env)
	if err != nil {
		return nil, &Error{Code: CodeNotFound, Message: err.Error()}
	}
	dir := spec.Dir
	if dir == "" {
		dir = "/"
	}

	p := &localProc{}
	var childFiles []*os.File // closed in the parent after the fork
	closeAll := func(fs []*os.File) {
		for _, f := range fs {
			if f != nil {
				f.Close()
			}
		}
	}
	files := make([]uintptr, 3)
	sys := &syscall.SysProcAttr{Setsid: true}
	if spec.TTY {
		master, slave, err := openPTY()
		if err != nil {
			return nil, err
		}
		if spec.Rows > 0 && spec.Cols > 0 {
			_ = setWinsize(master, spec.Rows, spec.Cols)
		}
		childFiles = append(childFiles, slave)
		for i := range files {
			files[i] = slave.Fd()
		}
		sys.Setctty, sys.Ctty = true, 0
		p.pty = master
		p.stdout = ptyReader{master}
		if spec.Stdin {
			p.stdin = ptyWriter{master}
		}
	} else {
		devnull, err := os.Open(os.DevNull)
		if err != nil {
			return nil, err
		}
		childFiles = append(childFiles, devnull)
		files[0] = devnull.Fd()
		var parentFiles []*os.File
		if spec.Stdin {
			r, w, err := os.Pipe()
			if err != nil {
				closeAll(childFiles)
				return nil, err
			}
			childFiles = append(childFiles, r)
			parentFiles = append(parentFiles, w)
			files[0] = r.Fd()
			p.stdin = w
		}
		if spec.Output != nil {
			files[1], files[2] = spec.Output.Fd(), spec.Output.Fd()
		} else {
			for fd := 1; fd <= 2; fd++ {
				r, w, err := os.Pipe()
				if err != nil {
					closeAll(childFiles)
					closeAll(parentFiles)
					return nil, err
				}
				childFiles = append(childFiles, w)
				parentFiles = append(parentFiles, r)
				files[fd] = w.Fd()
				if fd == 1 {
					p.stdout = r
				} else {
					p.stderr = r
				}
			}
		}
	}
	if cred.UID != 0 || cred.GID != 0 || len(cred.Groups) > 0 {
		sys.Credential = &syscall.Credential{Uid: cred.UID, Gid: cred.GID, Groups: cred.Groups}
	}
	pid, done, err := s.Reaper.Start(path, spec.Argv, &syscall.ProcAttr{Dir: dir, Env: env, Files: files, Sys: sys})
	closeAll(childFiles)
	if err != nil {
		if p.pty != nil {
			p.pty.Close()
		}
		for _, c := range []io.Closer{p.stdin, p.stdout, p.stderr} {
			if c != nil && c != io.Closer(nil) {
				c.Close()
			}
		}
		return nil, &Error{Code: CodeFailed, Message: fmt.Sprintf("exec %s: %v", spec.Argv[0], err)}
	}
	p.pid, p.done = pid, done
	return p, nil
}

func withDefaultEnv(env []string, home string) []string {
	has := func(k string) bool {
		for _, e := range env {
			if strings.HasPrefix(e, k+"=") {
				return true
			}
		}
		return false
	}
	out := append([]string{}, env...)
	if !has("PATH") {
		out = append(out, "PATH="+DefaultPath)
	}
	if !has("HOME") && home != "" {
		out = append(out, "HOME="+home)
	}
	return out
}

// LookPath finds file in env's PATH (or DefaultPath), like a shell would.
func LookPath(file string, env []string) (string, error) {
	isExec := func(p string) bool {
		st, err := os.Stat(p)
		return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0
	}
	if strings.Contains(file, "/") {
		if isExec(file) {
			return file, nil
		}
		return "", fmt.Errorf("%s: not an executable file", file)
	}
	path := DefaultPath
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		if p := filepath.Join(dir, file); isExec(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: executable file not found in PATH", file)
}

// Cred is a resolved user.
type Cred struct {
	UID, GID uint32
	Groups   []uint32
	Home     string
}

// LookupUser resolves an OCI-style user ("", "name", "uid", "name:group",
// "uid:gid") against root's /etc/passwd and /etc/group. Numeric ids need no
// entry; names must exist.
func LookupUser(root, spec string) (Cred, error) {
	c := Cred{Home: "/root"}
	if spec == "" {
		return c, nil
	}
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	passwd := readColonFile(filepath.Join(root, "etc/passwd"))
	groups := readColonFile(filepath.Join(root, "etc/group"))
	var name string
	if n, err := strconv.ParseUint(userPart, 10, 32); err == nil {
		c.UID = uint32(n)
		c.GID = uint32(n)
		c.Home = "/"
		for _, f := range passwd {
			if len(f) >= 6 && f[2] == userPart {
				name = f[0]
				if g, err := strconv.ParseUint(f[3], 10, 32); err == nil {
					c.GID = uint32(g)
				}
				c.Home = f[5]
				break
			}
		}
	} else {
		found := false
		for _, f := range passwd {
			if len(f) >= 6 && f[0] == userPart {
				u, err1 := strconv.ParseUint(f[2], 10, 32)
				g, err2 := strconv.ParseUint(f[3], 10, 32)
				if err1 != nil || err2 != nil {
					return c, fmt.Errorf("user %q: bad passwd entry", userPart)
				}
				c.UID, c.GID, c.Home, name, found = uint32(u), uint32(g), f[5], f[0], true
				break
			}
		}
		if !found {
			return c, fmt.Errorf("user %q not found in /etc/passwd", userPart)
		}
	}
	if hasGroup {
		if n, err := strconv.ParseUint(groupPart, 10, 32); err == nil {
			c.GID = uint32(n)
		} else {
			found := false
			for _, f := range groups {
				if len(f) >= 3 && f[0] == groupPart {
					g, err := strconv.ParseUint(f[2], 10, 32)
					if err != nil {
						return c, fmt.Errorf("group %q: bad group entry", groupPart)
					}
					c.GID, found = uint32(g), true
					break
				}
			}
			if !found {
				return c, fmt.Errorf("group %q not found in /etc/group", groupPart)
			}
		}
	}
	c.Groups = []uint32{c.GID}
	if name != "" && !hasGroup {
		for _, f := range groups {
			if len(f) < 4 {
				continue
			}
			for _, m := range strings.Split(f[3], ",") {
				if m == name {
					if g, err := strconv.ParseUint(f[2], 10, 32); err == nil && uint32(g) != c.GID {
						c.Groups = append(c.Groups, uint32(g))
					}
				}
			}
		}
	}
	return c, nil
}

func readColonFile(path string) [][]string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out [][]string
	sc := bufio.NewScanner(io.LimitReader(f, 4<<20))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, strings.Split(line, ":"))
	}
	return out
}
