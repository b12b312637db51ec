package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Kernel command line keys read by paddock-agent. They contain a dot, so the
// kernel treats them as parameters of an unknown module: it ignores them and
// does not pass them to init's argv or environment; the agent reads
// /proc/cmdline itself.
//
//	paddock.root=DEV         root disk: /dev/vda, LABEL=<ext4 label> or UUID=<ext4 uuid>;
//	                         absent: the agent stays in the initramfs
//	paddock.rootfstype=T     root filesystem type (ext4)
//	paddock.rootflags=OPTS   filesystem-specific mount data (e.g. "discard")
//	paddock.ro               mount the root read-only
//	paddock.rootwait=SECS    how long to wait for the root device (10)
//	paddock.growfs           grow the ext4 root to fill its device (a disk made larger than its image)
//	paddock.hostname=NAME    hostname (also written to /etc/hosts)
//	paddock.ip=CIDR[,CIDR]   static address(es) of the interface, e.g. 10.0.0.2/24
//	paddock.gw=IP[,IP]       default gateway(s)
//	paddock.dns=IP[,IP...]   nameservers for /etc/resolv.conf
//	paddock.ifname=NAME      interface to configure (eth0)
//	paddock.mtu=N            interface MTU
//	paddock.etc=0            do not write /etc/hosts and /etc/resolv.conf
//	paddock.ctl=NAME         virtio-serial port to serve the agent protocol on (paddock.agent);
//	                         empty: none
//	paddock.vsock=PORT       also serve on AF_VSOCK port PORT (e.g. 1024)
//	paddock.config=PATH      image config inside the root (/.paddock/config.json)
//	paddock.restart=POLICY   no | on-failure | always (overrides the image config)
//	paddock.onexit=ACTION    keep | poweroff: what to do when the main process has
//	                         exited for good (keep)
//	paddock.stoptimeout=SECS grace period between SIGTERM and SIGKILL on shutdown (5)
//	paddock.debug            verbose logging on the console
//	paddock.poweroff         power off at once (the bare-kernel reference boot)
type bootConfig struct {
	Root        string
	RootFSType  string
	RootFlags   string
	RootRO      bool
	GrowFS      bool // grow the root file system to its device at boot
	RootWait    time.Duration
	Hostname    string
	IPs         []netip.Prefix
	Gateways    []netip.Addr
	DNS         []netip.Addr
	IfName      string
	MTU         int
	WriteEtc    bool
	CtlPort     string
	VsockPort   uint32
	ConfigPath  string
	Restart     string
	OnExit      string
	StopTimeout time.Duration
	Debug       bool
	PowerOff    bool
}

// Restart policies.
const (
	restartNo        = "no"
	restartOnFailure = "on-failure"
	restartAlways    = "always"
)

// splitCmdline splits a kernel command line, honouring double quotes the way
// the kernel does (quotes group words and are dropped).
func splitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

func parseBool(v string) (bool, error) {
	switch v {
	case "", "1", "y", "yes", "true", "on":
		return true, nil
	case "0", "n", "no", "false", "off":
		return false, nil
	}
	return false, fmt.Errorf("not a boolean: %q", v)
}

// parseCmdline reads the paddock.* keys. Unknown paddock.* keys and bad
// values are errors; everything else on the line is ignored.
func parseCmdline(line string) (*bootConfig, error) {
	c := &bootConfig{
		RootFSType: "ext4", RootWait: 10 * time.Second, IfName: "eth0", WriteEtc: true,
		CtlPort: "paddock.agent", ConfigPath: "/.paddock/config.json", OnExit: "keep",
		StopTimeout: 5 * time.Second,
	}
	var errs []error
	for _, w := range splitCmdline(line) {
		k, v, _ := strings.Cut(w, "=")
		key, ok := strings.CutPrefix(k, "paddock.")
		if !ok {
			continue
		}
		bad := func(err error) { errs = append(errs, fmt.Errorf("%s: %w", k, err)) }
		switch key {
		case "root":
			c.Root = v
		case "rootfstype":
			c.RootFSType = v
		case "rootflags":
			c.RootFlags = v
		case "ro":
			b, err := parseBool(v)
			if err != nil {
				bad(err)
			}
			c.RootRO = b
		case "growfs":
			b, err := parseBool(v)
			if err != nil {
				bad(err)
			}
			c.GrowFS = b
		case "rootwait", "stoptimeout":
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f < 0 || f > 3600 {
				bad(fmt.Errorf("bad seconds %q", v))
				continue
			}
			d := time.Duration(f * float64(time.Second))
			if key == "rootwait" {
				c.RootWait = d
			} else {
				c.StopTimeout = d
			}
		case "hostname":
			if len(v) > 64 {
				bad(errors.New("hostname longer than 64 bytes"))
				continue
			}
			c.Hostname = v
		case "ip":
			for _, s := range strings.Split(v, ",") {
				p, err := netip.ParsePrefix(s)
				if err != nil {
					bad(err)
					continue
				}
				c.IPs = append(c.IPs, p)
			}
		case "gw":
			for _, s := range strings.Split(v, ",") {
				a, err := netip.ParseAddr(s)
				if err != nil {
					bad(err)
					continue
				}
				c.Gateways = append(c.Gateways, a)
			}
		case "dns":
			for _, s := range strings.Split(v, ",") {
				a, err := netip.ParseAddr(s)
				if err != nil {
					bad(err)
					continue
				}
				c.DNS = append(c.DNS, a)
			}
		case "ifname":
			c.IfName = v
		case "mtu":
			n, err := strconv.Atoi(v)
			if err != nil || n < 68 || n > 65535 {
				bad(fmt.Errorf("bad MTU %q", v))
				continue
			}
			c.MTU = n
		case "etc":
			b, err := parseBool(v)
			if err != nil {
				bad(err)
			}
			c.WriteEtc = b
		case "ctl":
			c.CtlPort = v
		case "vsock":
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				bad(err)
				continue
			}
			c.VsockPort = uint32(n)
		case "config":
			c.ConfigPath = v
		case "restart":
			if v != restartNo && v != restartOnFailure && v != restartAlways {
				bad(fmt.Errorf("want no, on-failure or always, got %q", v))
				continue
			}
			c.Restart = v
		case "onexit":
			if v != "keep" && v != "poweroff" {
				bad(fmt.Errorf("want keep or poweroff, got %q", v))
				continue
			}
			c.OnExit = v
		case "debug":
			c.Debug = true
		case "poweroff":
			c.PowerOff = true
		default:
			errs = append(errs, fmt.Errorf("unknown key %s", k))
		}
	}
	return c, errors.Join(errs...)
}

// imageConfig is the image's run configuration, read from
// paddock.config (default /.paddock/config.json) on the root disk. It
// accepts an OCI image config document ({"config": {"Entrypoint": ...}}) or
// its "config" object alone, plus paddock's own keys:
//
//	{"Entrypoint": ["/bin/app"], "Cmd": ["--flag"], "Env": ["K=V"],
//	 "WorkingDir": "/srv", "User": "app:app", "Restart": "on-failure"}
type imageConfig struct {
	Entrypoint []string `json:"Entrypoint"`
	Cmd        []string `json:"Cmd"`
	Env        []string `json:"Env"`
	WorkingDir string   `json:"WorkingDir"`
	User       string   `json:"User"`
	// Restart is the restart policy (no, on-failure, always).
	Restart string `json:"Restart"`
}

func parseImageConfig(b []byte) (*imageConfig, error) {
	var doc struct {
		imageConfig
		Config *imageConfig `json:"config"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	c := &doc.imageConfig
	if doc.Config != nil {
		c = doc.Config
		if c.Restart == "" {
			c.Restart = doc.Restart
		}
	}
	switch c.Restart {
	case "", restartNo, restartOnFailure, restartAlways:
	default:
		return nil, fmt.Errorf("bad Restart %q", c.Restart)
	}
	return c, nil
}

// argv is entrypoint + cmd.
func (c *imageConfig) argv() []string {
	return append(append([]string{}, c.Entrypoint...), c.Cmd...)
}
