// Package portcheck tells whether a host port a VM would publish is
// already taken: by a listener in paddockd's network namespace (read from
// /proc/net/{tcp,tcp6,udp,udp6}, its holder named from /proc/*/fd), or by
// another VM's published port (CheckVMs, a pure function the Manager calls
// with every other VM's mappings). Messages name what holds the port as far
// as the asker may know it: another user's VM is "another user's VM", a
// process paddockd cannot see into is "another process".
package portcheck

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/paddock-vm/paddock/netspec"
)

// ErrInUse marks a host port that something else holds.
var ErrInUse = errors.New("host port in use")

// InUseError is a refusal naming the mapping and what holds its port.
type InUseError struct {
	Mapping netspec.PortMapping
	By      string // "process nginx (pid 12)", "your VM web", ...
}

func (e *InUseError) Error() string {
	return fmt.Sprintf("port mapping %s: host port %s is already in use by %s", e.Mapping, e.Mapping.HostString(), e.By)
}

func (e *InUseError) Unwrap() error { return ErrInUse }

// Published is a port another VM publishes.
type Published struct {
	VMID    string
	VMName  string
	Owner   uint32
	Mapping netspec.PortMapping
}

// Viewer is who asks: what it may know of another VM.
type Viewer struct {
	UID   uint32
	Admin bool
}

// CheckVMs returns an *InUseError for the first of want whose host port
// another VM publishes (netspec.Overlaps), naming that VM as v may know
// it: its name when v may see it (its owner or an admin), else "another
// user's VM". Callers leave the VM being changed out of others.
func CheckVMs(want []netspec.PortMapping, others []Published, v Viewer) error {
	for _, m := range want {
		for _, o := range others {
			if !netspec.Overlaps(m, o.Mapping) {
				continue
			}
			by := "another user's VM"
			switch {
			case o.Owner == v.UID:
				by = "your VM " + o.VMName
			case v.Admin:
				by = fmt.Sprintf("VM %s of uid %d", o.VMName, o.Owner)
			}
			return &InUseError{Mapping: m, By: fmt.Sprintf("%s (%s)", by, o.Mapping.HostString())}
		}
	}
	return nil
}

// Holder is a socket holding a host port, and its process when paddockd
// can see it.
type Holder struct {
	Local netip.AddrPort // the socket's own address
	Inode uint64
	PID   int    // 0: not visible to paddockd
	Comm  string // the process's name (untrusted: escape it for terminals)
}

// String names the holder: its process, or "another process".
func (h Holder) String() string {
	if h.PID == 0 {
		return fmt.Sprintf("another process (listening on %s)", h.Local)
	}
	return fmt.Sprintf("process %s (pid %d, listening on %s)", strconv.Quote(h.Comm), h.PID, h.Local)
}

// Limits bounding the reads of /proc.
const (
	// MaxTableSize caps each /proc/net table read (a line is ~150 bytes).
	MaxTableSize = 64 << 20
	// MaxFDs caps the descriptors looked at while naming a holder.
	MaxFDs = 1 << 20
)

// Checker reads a /proc tree: Proc "" is /proc (tests give a fake one).
type Checker struct {
	Proc string
}

func (c Checker) proc(elem ...string) string {
	root := c.Proc
	if root == "" {
		root = "/proc"
	}
	return filepath.Join(append([]string{root}, elem...)...)
}

// netDir is the calling thread's network namespace's view: thread-self
// when the kernel has it (a thread may have entered another namespace).
func (c Checker) netDir() string {
	if p := c.proc("thread-self", "net"); exists(p) {
		return p
	}
	return c.proc("self", "net")
}

// Check is Listeners' first holder as an *InUseError; nil when the port is
// free. Its error is any other failure to look.
func (c Checker) Check(ctx context.Context, m netspec.PortMapping) error {
	hs, err := c.Listeners(ctx, m)
	if err != nil {
		return err
	}
	if len(hs) == 0 {
		return nil
	}
	return &InUseError{Mapping: m, By: hs[0].String()}
}

// Listeners lists the sockets holding m's host port in the calling
// thread's network namespace: TCP listeners for tcp, unconnected UDP
// sockets for udp, on m's address, on every address (0.0.0.0, or :: which
// may take IPv4 too), or, for a mapping on every address, on any IPv4
// address. Each is named with its process when paddockd can see it.
func (c Checker) Listeners(ctx context.Context, m netspec.PortMapping) ([]Holder, error) {
	var files []string
	var state string
	switch m.Proto {
	case netspec.TCP:
		files, state = []string{"tcp", "tcp6"}, "0A" // LISTEN
	case netspec.UDP:
		files, state = []string{"udp", "udp6"}, "07" // CLOSE: bound, unconnected
	default:
		return nil, fmt.Errorf("port mapping %s: protocol %q is not tcp or udp", m, m.Proto)
	}
	var out []Holder
	for _, f := range files {
		hs, err := c.table(filepath.Join(c.netDir(), f), state)
		if err != nil {
			return nil, err
		}
		for _, h := range hs {
			if h.Local.Port() == m.HostPort && covers(m, h.Local.Addr()) {
				out = append(out, h)
			}
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	owners, err := c.owners(ctx, out)
	if err != nil {
		return nil, err
	}
	for i := range out {
		if p, ok := owners[out[i].Inode]; ok {
			out[i].PID = p
			out[i].Comm = c.comm(p)
		}
	}
	return out, nil
}

// covers reports whether a socket on local takes traffic m would publish.
func covers(m netspec.PortMapping, local netip.Addr) bool {
	if local.Is6() && local.IsUnspecified() {
		return true // dual-stack unless IPV6_V6ONLY, which /proc does not show
	}
	local = local.Unmap()
	if !local.Is4() {
		return false
	}
	return m.Wildcard() || local.IsUnspecified() || local == m.HostIP
}

// table reads one /proc/net table: the sockets in state.
func (c Checker) table(path, state string) ([]Holder, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // no IPv6 in this kernel
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	return parseTable(io.LimitReader(f, MaxTableSize), state, path)
}

func parseTable(r io.Reader, state, name string) ([]Holder, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 64<<10)
	var out []Holder
	first := true
	for sc.Scan() {
		if first { // the header
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 10 || f[3] != state {
			continue
		}
		local, err := parseAddrPort(f[1])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		inode, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: inode %q: %w", name, f[9], err)
		}
		out = append(out, Holder{Local: local, Inode: inode})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return out, nil
}

// parseAddrPort reads the kernel's ADDR:PORT: the address as 32-bit words
// in the host's byte order, the port as big-endian hex.
func parseAddrPort(s string) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("address %q is not ADDR:PORT", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: bad port", s)
	}
	raw, err := hex.DecodeString(a)
	if err != nil || len(raw) != 4 && len(raw) != 16 {
		return netip.AddrPort{}, fmt.Errorf("address %q: bad address", s)
	}
	b := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(b[i:], binary.NativeEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(addr, uint16(port)), nil
}

// owners finds the processes holding the holders' sockets, scanning
// /proc/*/fd (at most MaxFDs descriptors); a socket of a process paddockd
// may not look into is left out.
func (c Checker) owners(ctx context.Context, hs []Holder) (map[uint64]int, error) {
	want := map[string]uint64{}
	for _, h := range hs {
		want["socket:["+strconv.FormatUint(h.Inode, 10)+"]"] = h.Inode
	}
	out := map[uint64]int{}
	procs, err := os.ReadDir(c.proc())
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	seen := 0
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid <= 0 {
			continue
		}
		if err := ctx.Err(); err != nil {
			return out, fmt.Errorf("naming the holder of a port: %w", err)
		}
		dir := c.proc(p.Name(), "fd")
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue // gone, or not ours to see
		}
		for _, fd := range fds {
			if seen++; seen > MaxFDs {
				return out, nil
			}
			link, err := os.Readlink(filepath.Join(dir, fd.Name()))
			if err != nil {
				continue
			}
			if ino, ok := want[link]; ok {
				if _, done := out[ino]; !done {
					out[ino] = pid
				}
			}
		}
		if len(out) == len(want) {
			break
		}
	}
	return out, nil
}

// comm reads a process's name (at most 64 bytes).
func (c Checker) comm(pid int) string {
	f, err := os.Open(c.proc(strconv.Itoa(pid), "comm"))
	if err != nil {
		return "?"
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(f, 64))
	return strings.TrimSuffix(string(b), "\n")
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
