package vmm

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"

	"golang.org/x/sys/unix"
)

// A VMM must not inherit what paddockd may do: paddock.service gives the
// daemon an ambient CAP_NET_ADMIN (taps, bridge), and a root daemon has
// every capability, both of which exec would hand on to QEMU. Go cannot
// drop capabilities between fork and exec, so a VMM starts as paddock's own
// binary re-executed under confineArg0 (in this package's init, before
// main): on one locked thread it sets no_new_privs, clears the ambient set,
// drops the bounding set as far as it may (CAP_SETPCAP: all of it for root),
// empties the effective, permitted and inheritable sets, then execs the VMM.
// With no_new_privs, an exec grants no capability the thread did not hold
// (not even to uid 0, nor through file capabilities or set-uid bits), so the
// VMM starts with none and can never gain one.

// confineArg0 is argv[0] of paddock's binary run as the confining step:
// argv is confineArg0, noHugePagesArg or not, the VMM's binary (a path),
// then the VMM's own argv.
const confineArg0 = "paddock-vmm-confine"

// noHugePagesArg makes the confining step turn transparent huge pages off
// for the VMM (prctl PR_SET_THP_DISABLE, kept across exec). For a TCG
// guest they cost more than they give: every first touch of a guest page
// zeroes its whole 2 MiB, and on a host that is itself a VM (where TCG is
// what runs) a free 2 MiB block is often memory the host gave back to its
// hypervisor (free page reporting, a balloon), which must be backed again
// page by page. Measured here, QEMU exec -> agent hello, boots alternating
// with and without (6 each): 3.00–3.58 s with, 2.21–2.93 s without on a
// quiet host; 2.90–3.39 s against 2.26–2.69 s with 4 idle VMs beside
// (QEMU's copy of the kernel into guest memory alone went from 50 to 400
// ms there). Under KVM the guest needs them: kept.
const noHugePagesArg = "--no-huge-pages"

// selfExe is the running binary; the child re-executes it.
const selfExe = "/proc/self/exe"

func init() {
	if len(os.Args) < 3 || os.Args[0] != confineArg0 {
		return
	}
	args, noHugePages := os.Args[1:], false
	if args[0] == noHugePagesArg && len(args) >= 3 {
		args, noHugePages = args[1:], true
	}
	confineAndExec(args[0], args[1:], noHugePages)
}

// Confine makes cmd start through the confining step: the process drops
// every capability and sets no_new_privs, then execs cmd.Path with
// cmd.Args; with noHugePages, without transparent huge pages (see
// noHugePagesArg). cmd.Path must be absolute (exec.Command resolves it). The
// pid, session, cgroup and descriptors are the ones cmd gets; /proc shows the
// VMM's own argv once the exec is done (and carries the tag before it too).
func Confine(cmd *exec.Cmd, noHugePages bool) {
	if cmd.Err != nil {
		return // Start reports it
	}
	pre := []string{confineArg0, cmd.Path}
	if noHugePages {
		pre = []string{confineArg0, noHugePagesArg, cmd.Path}
	}
	cmd.Args = append(pre, cmd.Args...)
	cmd.Path = selfExe
}

// confineAndExec drops privileges and execs path; it never returns. What
// goes wrong is written to stderr (the VMM's log) and ends the process.
func confineAndExec(path string, argv []string, noHugePages bool) {
	runtime.LockOSThread() // capabilities are per thread: exec from this one
	if err := dropPrivileges(); err != nil {
		fmt.Fprintf(os.Stderr, "paddock: confining the VMM before exec: %v\n", err)
		os.Exit(126)
	}
	if noHugePages {
		// A kernel without it (before 3.15) only costs speed: go on.
		if err := unix.Prctl(unix.PR_SET_THP_DISABLE, 1, 0, 0, 0); err != nil {
			fmt.Fprintf(os.Stderr, "paddock: turning transparent huge pages off for the VMM: %v\n", err)
		}
	}
	err := unix.Exec(path, argv, os.Environ())
	fmt.Fprintf(os.Stderr, "paddock: exec %s: %v\n", path, err)
	os.Exit(127)
}

// dropPrivileges confines the calling thread (see the comment at the top).
func dropPrivileges() error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clearing the ambient capabilities: %w", err)
	}
	for c := 0; ; c++ {
		in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0)
		if errors.Is(err, unix.EINVAL) {
			break // past the kernel's last capability
		}
		if err != nil {
			return fmt.Errorf("reading bounding capability %d: %w", c, err)
		}
		if in != 1 {
			continue
		}
		// EPERM: no CAP_SETPCAP (an unprivileged daemon). The capability
		// stays in the bounding set, which no_new_privs makes moot.
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EPERM) {
			return fmt.Errorf("dropping bounding capability %d: %w", c, err)
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var none [2]unix.CapUserData
	if err := unix.Capset(&hdr, &none[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	return nil
}
