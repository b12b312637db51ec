// Package resolvconf reads the host's resolver configuration to find the
// nameservers a guest should use: the host's own upstream servers, never a
// loopback stub (a guest cannot reach the host's loopback).
package resolvconf

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
)

// The files HostNameservers reads: the system's resolv.conf and, when that
// lists only a loopback stub (systemd-resolved's 127.0.0.53), the file
// where resolved keeps the upstream servers.
const (
	SystemFile   = "/etc/resolv.conf"
	ResolvedFile = "/run/systemd/resolve/resolv.conf"
)

// MaxSize bounds how much of a resolv.conf is read.
const MaxSize = 64 << 10

// MaxServers is how many nameservers a resolver reads (the C library's
// MAXNS); more are dropped.
const MaxServers = 3

// Parse returns the nameservers r lists, in order. Comments (# or ;) and
// other keywords are skipped; a zoned (link-local) address, meaningless to a
// guest, is skipped too. At most MaxSize bytes are read.
func Parse(r io.Reader) ([]netip.Addr, error) {
	sc := bufio.NewScanner(io.LimitReader(r, MaxSize))
	sc.Buffer(make([]byte, 4096), MaxSize)
	var out []netip.Addr
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil || a.Zone() != "" {
			continue
		}
		out = append(out, a.Unmap())
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("read resolv.conf: %w", err)
	}
	return out, nil
}

// ParseFile is Parse of the file at path.
func ParseFile(path string) ([]netip.Addr, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	as, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return as, nil
}

// Upstream keeps the servers a guest can use: IPv4 (guests have IPv4
// addresses only), neither loopback nor unspecified, at most MaxServers,
// each once.
func Upstream(as []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range as {
		if !a.Is4() || a.IsLoopback() || a.IsUnspecified() || contains(out, a) {
			continue
		}
		if out = append(out, a); len(out) == MaxServers {
			break
		}
	}
	return out
}

// HostNameservers returns the host's upstream nameservers and the file they
// came from: system's (/etc/resolv.conf) when it lists any a guest can use,
// else resolved's (/run/systemd/resolve/resolv.conf, read when the system
// file lists only loopback servers, or none, which means the local host).
// None found is not an error: the guest then gets no nameserver.
func HostNameservers(system, resolved string) ([]netip.Addr, string, error) {
	as, err := ParseFile(system)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, "", err
	}
	if up := Upstream(as); len(up) > 0 {
		return up, system, nil
	}
	for _, a := range as {
		if !a.IsLoopback() {
			// Servers the guest cannot use (IPv6, unspecified) but no
			// loopback stub: resolved's file is not this host's truth.
			return nil, system, nil
		}
	}
	rs, err := ParseFile(resolved)
	if errors.Is(err, os.ErrNotExist) {
		return nil, system, nil
	}
	if err != nil {
		return nil, "", err
	}
	return Upstream(rs), resolved, nil
}

func contains(as []netip.Addr, a netip.Addr) bool {
	for _, x := range as {
		if x == a {
			return true
		}
	}
	return false
}
