package agent

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// BootTimeNS returns CLOCK_BOOTTIME in nanoseconds (time since the kernel
// started, including suspend).
func BootTimeNS() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

// IdleNS returns the guest's idle time so far, all CPUs, waits on I/O
// included, from /proc/timer_list (nanoseconds; /proc/uptime and
// /proc/stat count hundredths).
func IdleNS() (int64, error) {
	f, err := os.Open("/proc/timer_list")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return 0, err
	}
	return idleOf(b)
}

// idleOf sums the idle_sleeptime and iowait_sleeptime lines of a
// /proc/timer_list (one of each per CPU with a tick of its own).
func idleOf(b []byte) (int64, error) {
	var sum int64
	found := false
	for line := range bytes.Lines(b) {
		k, v, ok := bytes.Cut(bytes.TrimSpace(line), []byte(":"))
		if !ok {
			continue
		}
		switch string(bytes.TrimSpace(k)) {
		case ".idle_sleeptime", ".iowait_sleeptime":
			n, err := strconv.ParseInt(string(bytes.TrimSuffix(bytes.TrimSpace(v), []byte(" nsecs"))), 10, 64)
			if err != nil || n < 0 {
				return 0, fmt.Errorf("/proc/timer_list: %q", bytes.TrimSpace(line))
			}
			sum, found = sum+n, true
		}
	}
	if !found {
		return 0, errors.New("/proc/timer_list: no idle_sleeptime (a kernel without NO_HZ?)")
	}
	return sum, nil
}

// ReadStats collects resource usage from /proc and statfs of /.
func ReadStats() (Stats, error) {
	var s Stats
	s.Inbound = countInbound("/proc")
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			s.Load1, _ = strconv.ParseFloat(f[0], 64)
			s.Load5, _ = strconv.ParseFloat(f[1], 64)
			s.Load15, _ = strconv.ParseFloat(f[2], 64)
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			v, _ := strconv.ParseUint(f[1], 10, 64)
			switch f[0] {
			case "MemTotal:":
				s.MemTotal = v * 1024
			case "MemAvailable:":
				s.MemAvailable = v * 1024
			}
		}
	}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) > 1 && f[0] == "cpu" {
				for _, x := range f[1:min(len(f), 9)] {
					v, _ := strconv.ParseUint(x, 10, 64)
					s.CPU = append(s.CPU, v)
				}
			}
		}
	}
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err == nil {
				s.Procs++
			}
		}
	}
	s.DiskTotal, s.DiskFree, _ = diskSpace("/")
	if b, err := os.ReadFile("/proc/net/dev"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			name, rest, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			f := strings.Fields(rest)
			if len(f) < 10 {
				continue
			}
			n := NetStats{Name: strings.TrimSpace(name)}
			n.RxBytes, _ = strconv.ParseUint(f[0], 10, 64)
			n.RxPackets, _ = strconv.ParseUint(f[1], 10, 64)
			n.TxBytes, _ = strconv.ParseUint(f[8], 10, 64)
			n.TxPackets, _ = strconv.ParseUint(f[9], 10, 64)
			s.Net = append(s.Net, n)
		}
	}
	return s, nil
}

// diskSpace is the size of the file system at path and what an unprivileged
// writer may still use of it.
func diskSpace(path string) (total, free uint64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, 0, err
	}
	return st.Blocks * uint64(st.Bsize), st.Bavail * uint64(st.Bsize), nil
}

// MountStatsOf reads the size and free space of each path (the volumes the
// agent mounted), skipping those it cannot read, at most MaxMountStats.
func MountStatsOf(paths []string) []MountStats {
	var out []MountStats
	for _, p := range paths[:min(len(paths), MaxMountStats)] {
		if total, free, err := diskSpace(p); err == nil {
			out = append(out, MountStats{Path: p, Total: total, Free: free})
		}
	}
	return out
}

// ListPorts returns listening TCP sockets and bound UDP sockets from
// /proc/net/{tcp,tcp6,udp,udp6}, with the owning process where found.
func ListPorts() ([]Port, error) {
	return listPorts("/proc")
}

// countInbound counts established TCP connections whose local port is one
// the guest listens on: connections made to the guest, not from it.
func countInbound(proc string) int {
	listening := map[string]bool{}
	var est []string
	for _, proto := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(filepath.Join(proc, "net", proto))
		if err != nil {
			continue
		}
		for i, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if i == 0 || len(f) < 4 {
				continue
			}
			_, port, ok := strings.Cut(f[1], ":")
			if !ok {
				continue
			}
			switch f[3] {
			case "0A":
				listening[port] = true
			case "01":
				est = append(est, port)
			}
		}
	}
	n := 0
	for _, p := range est {
		if listening[p] {
			n++
		}
	}
	return n
}

func listPorts(proc string) ([]Port, error) {
	owners := socketOwners(proc)
	var out []Port
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
		f, err := os.Open(filepath.Join(proc, "net", proto))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		first := true
		for sc.Scan() {
			if first {
				first = false
				continue
			}
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 {
				continue
			}
			state := fields[3]
			if strings.HasPrefix(proto, "tcp") && state != "0A" { // LISTEN
				continue
			}
			if strings.HasPrefix(proto, "udp") && state != "07" { // unconnected
				continue
			}
			ip, port, err := parseProcAddr(fields[1])
			if err != nil {
				continue
			}
			p := Port{Proto: proto, Addr: ip, Port: port}
			if o, ok := owners[fields[9]]; ok {
				p.PID, p.Command = o.pid, o.comm
			}
			out = append(out, p)
		}
		f.Close()
	}
	return out, nil
}

type owner struct {
	pid  int
	comm string
}

// socketOwners maps socket inodes to processes via /proc/<pid>/fd links.
func socketOwners(proc string) map[string]owner {
	out := map[string]owner{}
	ents, err := os.ReadDir(proc)
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fds, err := os.ReadDir(filepath.Join(proc, e.Name(), "fd"))
		if err != nil {
			continue
		}
		var comm string
		for _, fd := range fds {
			l, err := os.Readlink(filepath.Join(proc, e.Name(), "fd", fd.Name()))
			if err != nil || !strings.HasPrefix(l, "socket:[") {
				continue
			}
			inode := strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")
			if _, seen := out[inode]; seen {
				continue
			}
			if comm == "" {
				b, _ := os.ReadFile(filepath.Join(proc, e.Name(), "comm"))
				comm = strings.TrimSpace(string(b))
			}
			out[inode] = owner{pid: pid, comm: comm}
		}
	}
	return out
}

// parseProcAddr parses "0100007F:1F90" (IPv4) or the 32-hex-digit IPv6 form.
func parseProcAddr(s string) (string, int, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return "", 0, fmt.Errorf("bad address %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return "", 0, err
	}
	b, err := hex.DecodeString(h)
	if err != nil || (len(b) != 4 && len(b) != 16) {
		return "", 0, fmt.Errorf("bad address %q", s)
	}
	// The kernel prints each 32-bit word in host (little-endian) order.
	for i := 0; i < len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	return net.IP(b).String(), int(port), nil
}

// rootWritable reports whether "/" is mounted read-write with space left.
func rootWritable() bool {
	var st unix.Statfs_t
	if unix.Statfs("/", &st) != nil {
		return false
	}
	return st.Flags&unix.ST_RDONLY == 0 && st.Bavail > 0
}
