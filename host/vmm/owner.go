package vmm

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/host/cgroup"
)

// Owner is what makes a VMM one daemon's own. A tag says "a paddock VMM",
// and a socket path says nothing across mount namespaces: two daemons
// whose runtime directories have the same path in different mount
// namespaces (containers, parallel test suites, configs alike) each see the
// other's VMMs with sockets under "their" directory. A VMM is o's only when
// it runs as o.UID and either its API socket, looked up in the VMM's own
// mount namespace (/proc/PID/root), is the very file (device and inode) the
// same path names here, or its cgroup lies in o.Cgroup.
type Owner struct {
	// UID is the daemon's effective uid.
	UID int
	// RunRoot is the directory the daemon's VMM sockets live under.
	RunRoot string
	// Cgroup is the delegated cgroup the daemon's VMM cgroups are made in
	// ("" for none).
	Cgroup string
	// Also are other cgroups whose VMMs are the daemon's: its own delegated
	// one while VMMs start through the launcher (VMMs an older paddockd
	// started in-process live there), or the reverse.
	Also []string
}

// within reports whether pid's cgroup lies in one of o's cgroups, and which
// it is in.
func (o Owner) within(pid int) (in bool, cg, dir string) {
	for _, d := range append([]string{o.Cgroup}, o.Also...) {
		if d == "" {
			continue
		}
		if in, cg, err := cgroup.Within(pid, d); err == nil && in {
			return true, cg, d
		}
	}
	return false, "", ""
}

// Found is a VMM found by its tag, with the verdict on whose it is.
type Found struct {
	*Process
	// Ours: provably the Owner's. Why says how that was decided either way.
	Ours bool
	Why  string
}

// Find lists the live tagged processes that could be o's: whose API socket
// path lies under o.RunRoot or whose cgroup lies in o.Cgroup, each with the
// verdict. Only those with Ours set may be acted on.
func (o Owner) Find() ([]Found, error) {
	all, err := Find("")
	if err != nil {
		return nil, err
	}
	var out []Found
	for _, p := range all {
		f := o.facts(p)
		if !f.underRoot && !f.inCgroup {
			continue
		}
		ours, why := o.judge(f)
		out = append(out, Found{Process: p, Ours: ours, Why: why})
	}
	return out, nil
}

// fileID is a file's identity.
type fileID struct {
	dev, ino uint64
	socket   bool
}

func (f fileID) String() string {
	return fmt.Sprintf("%d:%d:%d", unix.Major(f.dev), unix.Minor(f.dev), f.ino)
}

// ownerFacts is what judge decides on, read from /proc and the file system.
type ownerFacts struct {
	pid int
	// uids are the real and effective uid (nil: unreadable, uidErr says why).
	uids   []int
	uidErr error
	// socket is the API socket path on the command line ("" for none);
	// underRoot: it lies under the Owner's RunRoot.
	socket    string
	underRoot bool
	// here is the socket in this mount namespace, there in the VMM's.
	here, there       fileID
	hereErr, thereErr error
	// inCgroup: the process's cgroup lies in one of the Owner's cgroups
	// (ownerCgroup).
	inCgroup    bool
	cgroup      string
	ownerCgroup string
}

func (o Owner) facts(p *Process) ownerFacts {
	f := ownerFacts{pid: p.PID, socket: p.APISocket}
	f.uids, f.uidErr = uidsOf(p.PID)
	if f.socket != "" && o.RunRoot != "" {
		f.underRoot = strings.HasPrefix(filepath.Clean(f.socket), filepath.Clean(o.RunRoot)+string(filepath.Separator))
	}
	if f.underRoot {
		f.here, f.hereErr = statID(f.socket)
		f.there, f.thereErr = statID(filepath.Join(procRoot, strconv.Itoa(p.PID), "root", f.socket))
	}
	f.inCgroup, f.cgroup, f.ownerCgroup = o.within(p.PID)
	return f
}

// judge decides whether the process f describes is provably o's, and says
// why in words for the log.
func (o Owner) judge(f ownerFacts) (bool, string) {
	switch {
	case f.uidErr != nil:
		return false, fmt.Sprintf("its uid cannot be read: %v", f.uidErr)
	case len(f.uids) < 2 || f.uids[0] != o.UID || f.uids[1] != o.UID:
		return false, fmt.Sprintf("it runs as uid %v, this daemon as %d", f.uids, o.UID)
	case f.inCgroup:
		return true, fmt.Sprintf("its cgroup %s lies in this daemon's %s", f.cgroup, f.ownerCgroup)
	case f.socket == "":
		return false, "its command line names no API socket"
	case !f.underRoot:
		return false, fmt.Sprintf("its API socket %s is not under this daemon's %s", f.socket, o.RunRoot)
	case f.hereErr != nil:
		return false, fmt.Sprintf("its API socket %s is not in this daemon's view: %v", f.socket, f.hereErr)
	case f.thereErr != nil:
		return false, fmt.Sprintf("its API socket %s cannot be seen in its own mount namespace: %v", f.socket, f.thereErr)
	case !f.here.socket || !f.there.socket:
		return false, fmt.Sprintf("%s is not a socket in both views", f.socket)
	case f.here != f.there:
		return false, fmt.Sprintf("its API socket %s is another file (%s) than this daemon's (%s): another mount namespace's", f.socket, f.there, f.here)
	}
	return true, fmt.Sprintf("its API socket %s is this daemon's very file (%s)", f.socket, f.here)
}

// JudgePID decides whether the live process pid, a helper of a VM that
// carries no VMM tag (passt), is provably o's: it runs as o.UID and either
// its cgroup lies in o.Cgroup or proveSocket (nil: no such proof) shows
// that it serves a socket this daemon sees. Why says how it was decided.
func (o Owner) JudgePID(pid int, proveSocket func() (bool, string)) (bool, string) {
	uids, err := uidsOf(pid)
	switch {
	case err != nil:
		return false, fmt.Sprintf("its uid cannot be read: %v", err)
	case len(uids) < 2 || uids[0] != o.UID || uids[1] != o.UID:
		return false, fmt.Sprintf("it runs as uid %v, this daemon as %d", uids, o.UID)
	}
	if in, cg, dir := o.within(pid); in {
		return true, fmt.Sprintf("its cgroup %s lies in this daemon's %s", cg, dir)
	}
	if proveSocket == nil {
		return false, "neither its cgroup nor a socket proves it this daemon's"
	}
	return proveSocket()
}

// Status reads /proc/PID/status into a map of its fields (Uid, CapEff,
// NoNewPrivs, ...), values trimmed.
func Status(pid int) (map[string]string, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "status"))
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m, nil
}

// uidsOf returns the real and effective uid of pid (/proc/PID/status).
func uidsOf(pid int) ([]int, error) {
	st, err := Status(pid)
	if err != nil {
		return nil, err
	}
	fs := strings.Fields(st["Uid"])
	if len(fs) < 2 {
		return nil, fmt.Errorf("no Uid line in /proc status (%q)", st["Uid"])
	}
	var ids []int
	for _, s := range fs[:2] {
		n, err := strconv.Atoi(s)
		if err != nil {
			return nil, fmt.Errorf("malformed Uid line %q", st["Uid"])
		}
		ids = append(ids, n)
	}
	return ids, nil
}

// statID identifies the file at path without following a final symlink.
func statID(path string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fileID{}, err
	}
	return fileID{dev: st.Dev, ino: st.Ino, socket: st.Mode&unix.S_IFMT == unix.S_IFSOCK}, nil
}
