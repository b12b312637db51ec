// Package guestboot is the boot contract between paddockd and paddock-agent
// (PID 1 of every guest): the paddock.* keys of the guest kernel command line
// (BootArgs) and the seed disk that carries the image config (WriteSeed,
// ReadSeed). The host writes both through this package and the agent reads
// both through it, so the two sides cannot drift apart.
//
// The package uses the standard library only (and package state for the
// atomic write), so it builds into the static agent (CGO_ENABLED=0).
//
// # Kernel command line
//
// The keys contain a dot, so the kernel takes them for parameters of a module
// named "paddock" that does not exist: it ignores them, and does not pass them
// to init's argv or environment. The agent reads /proc/cmdline itself.
//
//	paddock.root=DEV          root disk: /dev/X, LABEL=<ext4 label> or UUID=<ext4 uuid>;
//	                          absent: the agent stays in the initramfs
//	paddock.rootfstype=T      root file system type (ext4)
//	paddock.rootflags=OPTS    file-system-specific mount data (e.g. "discard")
//	paddock.ro                mount the root read-only
//	paddock.rootwait=SECS     how long to wait for the root device (10)
//	paddock.growfs            grow the ext4 root to fill its device
//	paddock.hostname=NAME     hostname (also written to /etc/hosts)
//	paddock.ip=CIDR[,CIDR]    static address(es) of the interface, e.g. 10.0.0.2/24
//	paddock.gw=IP[,IP]        default gateway(s)
//	paddock.dns=IP[,IP...]    nameservers for /etc/resolv.conf (at most 3: the
//	                          C library reads no more)
//	paddock.ifname=NAME       interface to configure (eth0)
//	paddock.mtu=N             interface MTU
//	paddock.etc=0             do not write /etc/hosts and /etc/resolv.conf
//	paddock.ctl=NAME          virtio-serial port to serve the agent protocol on;
//	                          absent or empty: none
//	paddock.vsock=PORT        serve the agent protocol on AF_VSOCK port PORT
//	paddock.config=PATH       image config: a file in the root or the seed disk
//	                          (/.paddock/config.json)
//	paddock.restart=POLICY    no | on-failure | always (overrides the image config)
//	paddock.onexit=ACTION     keep | poweroff: what to do when the main process has
//	                          exited for good (keep)
//	paddock.stoptimeout=SECS  grace period between SIGTERM and SIGKILL on shutdown (5)
//	paddock.debug             verbose logging on the console
//	paddock.poweroff          power off at once (the bare-kernel reference boot)
//
// Each key may appear once. Boolean keys take no value or one of 1/0, y/n,
// yes/no, true/false, on/off. A value holding spaces is quoted the way the
// kernel groups words: "paddock.rootflags=a b". Words that are not paddock.*
// keys are kept, in order, in BootArgs.Kernel and never validated.
//
// The control channel (paddock.ctl, paddock.vsock) belongs to the VMM driver,
// which alone knows which device it gives the guest: callers leave it unset
// and the driver sets it (see host/vmm/qemu and host/vmm/firecracker).
package guestboot

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Defaults the agent applies to keys that are absent (WithDefaults).
const (
	DefaultRootFSType = "ext4"
	// DefaultRootWait is generous: on a loaded host without KVM a virtio
	// disk has been seen to take seconds to appear, and a guest that gives up
	// boots without its root; the host's start timeout still bounds a boot.
	DefaultRootWait    = 30 * time.Second
	DefaultIfName      = "eth0"
	DefaultConfigPath  = "/.paddock/config.json"
	DefaultStopTimeout = 5 * time.Second
	// DefaultSerialPort is the virtio-serial port name the VMM drivers give
	// the agent's control channel.
	DefaultSerialPort = "paddock.agent"
)

// Restart policies (paddock.restart) and exit actions (paddock.onexit).
const (
	RestartNo        = "no"
	RestartOnFailure = "on-failure"
	RestartAlways    = "always"
	OnExitKeep       = "keep"
	OnExitPowerOff   = "poweroff"
)

// MaxSeconds bounds paddock.rootwait and paddock.stoptimeout.
const MaxSeconds = 3600

// MaxDNS bounds paddock.dns: a resolver reads at most three nameservers
// (the C library's MAXNS).
const MaxDNS = 3

// BootArgs is the guest kernel command line: the paddock.* keys as typed
// fields and every other word in Kernel. The zero value of a field means the
// key is absent (the agent's default applies; see WithDefaults).
type BootArgs struct {
	Root        string         // paddock.root
	RootFSType  string         // paddock.rootfstype
	RootFlags   string         // paddock.rootflags
	RootRO      bool           // paddock.ro
	RootWait    time.Duration  // paddock.rootwait
	GrowFS      bool           // paddock.growfs
	Hostname    string         // paddock.hostname
	IPs         []netip.Prefix // paddock.ip
	Gateways    []netip.Addr   // paddock.gw
	DNS         []netip.Addr   // paddock.dns
	IfName      string         // paddock.ifname
	MTU         int            // paddock.mtu
	NoEtc       bool           // paddock.etc=0
	Serial      string         // paddock.ctl: the agent's virtio-serial port, "" for none
	Vsock       uint32         // paddock.vsock: the agent's vsock port, 0 for none
	Config      string         // paddock.config
	Restart     string         // paddock.restart
	OnExit      string         // paddock.onexit
	StopTimeout time.Duration  // paddock.stoptimeout
	Debug       bool           // paddock.debug
	PowerOff    bool           // paddock.poweroff
	// Kernel holds the words that are not paddock.* keys (kernel parameters
	// such as console=ttyS0), in order. String writes them first.
	Kernel []string
}

// WithDefaults returns b with the agent's defaults filled in for absent keys.
func (b BootArgs) WithDefaults() BootArgs {
	if b.RootFSType == "" {
		b.RootFSType = DefaultRootFSType
	}
	if b.RootWait == 0 {
		b.RootWait = DefaultRootWait
	}
	if b.IfName == "" {
		b.IfName = DefaultIfName
	}
	if b.Config == "" {
		b.Config = DefaultConfigPath
	}
	if b.OnExit == "" {
		b.OnExit = OnExitKeep
	}
	if b.StopTimeout == 0 {
		b.StopTimeout = DefaultStopTimeout
	}
	return b
}

// key is one paddock.* key: how to read its value into a BootArgs, and how to
// write it back ("" when the field is unset). A boolean key is written bare.
type key struct {
	name   string
	isBool bool
	parse  func(b *BootArgs, v string) error
	str    func(b *BootArgs) string
}

// keys in the order String writes them.
var keys = []key{
	stringKey("root", func(b *BootArgs) *string { return &b.Root }, checkRoot),
	stringKey("rootfstype", func(b *BootArgs) *string { return &b.RootFSType }, checkFSType),
	stringKey("rootflags", func(b *BootArgs) *string { return &b.RootFlags }, nil),
	boolKey("ro", func(b *BootArgs) *bool { return &b.RootRO }),
	secondsKey("rootwait", func(b *BootArgs) *time.Duration { return &b.RootWait }),
	boolKey("growfs", func(b *BootArgs) *bool { return &b.GrowFS }),
	stringKey("hostname", func(b *BootArgs) *string { return &b.Hostname }, checkHostname),
	listKey("ip", func(b *BootArgs) *[]netip.Prefix { return &b.IPs }, parsePrefix),
	listKey("gw", func(b *BootArgs) *[]netip.Addr { return &b.Gateways }, parseAddr),
	{name: "dns", parse: func(b *BootArgs, v string) error {
		var k BootArgs
		if err := dnsList.parse(&k, v); err != nil {
			return err
		}
		if len(k.DNS) > MaxDNS {
			return fmt.Errorf("%d nameservers: at most %d", len(k.DNS), MaxDNS)
		}
		b.DNS = k.DNS
		return nil
	}, str: func(b *BootArgs) string { return dnsList.str(b) }},
	stringKey("ifname", func(b *BootArgs) *string { return &b.IfName }, checkIfName),
	{name: "mtu", parse: func(b *BootArgs, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 68 || n > 65535 {
			return fmt.Errorf("%q is not an MTU (68-65535)", v)
		}
		b.MTU = n
		return nil
	}, str: func(b *BootArgs) string { return itoaOrEmpty(int64(b.MTU)) }},
	{name: "etc", parse: func(b *BootArgs, v string) error {
		on, err := parseBool(v)
		b.NoEtc = !on
		return err
	}, str: func(b *BootArgs) string {
		if b.NoEtc {
			return "0"
		}
		return ""
	}},
	stringKey("ctl", func(b *BootArgs) *string { return &b.Serial }, checkPortName),
	{name: "vsock", parse: func(b *BootArgs, v string) error {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n == 0 || n == 1<<32-1 {
			return fmt.Errorf("%q is not a vsock port (1-%d)", v, uint32(1<<32-2))
		}
		b.Vsock = uint32(n)
		return nil
	}, str: func(b *BootArgs) string { return itoaOrEmpty(int64(b.Vsock)) }},
	stringKey("config", func(b *BootArgs) *string { return &b.Config }, checkAbs),
	stringKey("restart", func(b *BootArgs) *string { return &b.Restart }, oneOf(RestartNo, RestartOnFailure, RestartAlways)),
	stringKey("onexit", func(b *BootArgs) *string { return &b.OnExit }, oneOf(OnExitKeep, OnExitPowerOff)),
	secondsKey("stoptimeout", func(b *BootArgs) *time.Duration { return &b.StopTimeout }),
	boolKey("debug", func(b *BootArgs) *bool { return &b.Debug }),
	boolKey("poweroff", func(b *BootArgs) *bool { return &b.PowerOff }),
}

func stringKey(name string, field func(*BootArgs) *string, check func(string) error) key {
	return key{name: name, parse: func(b *BootArgs, v string) error {
		if check != nil && v != "" {
			if err := check(v); err != nil {
				return err
			}
		}
		*field(b) = v
		return nil
	}, str: func(b *BootArgs) string { return *field(b) }}
}

func boolKey(name string, field func(*BootArgs) *bool) key {
	return key{name: name, isBool: true, parse: func(b *BootArgs, v string) error {
		on, err := parseBool(v)
		*field(b) = on
		return err
	}, str: func(b *BootArgs) string {
		if *field(b) {
			return "1"
		}
		return ""
	}}
}

// secondsKey reads a duration in decimal seconds (at most nanosecond
// precision, so that it converts back exactly).
func secondsKey(name string, field func(*BootArgs) *time.Duration) key {
	return key{name: name, parse: func(b *BootArgs, v string) error {
		d, err := parseSeconds(v)
		*field(b) = d
		return err
	}, str: func(b *BootArgs) string { return formatSeconds(*field(b)) }}
}

// listKey reads a comma-separated list.
func listKey[T fmt.Stringer](name string, field func(*BootArgs) *[]T, parse func(string) (T, error)) key {
	return key{name: name, parse: func(b *BootArgs, v string) error {
		var out []T
		if v != "" {
			for _, s := range strings.Split(v, ",") {
				x, err := parse(s)
				if err != nil {
					return err
				}
				out = append(out, x)
			}
		}
		*field(b) = out
		return nil
	}, str: func(b *BootArgs) string {
		s := make([]string, len(*field(b)))
		for i, x := range *field(b) {
			s[i] = x.String()
		}
		return strings.Join(s, ",")
	}}
}

var dnsList = listKey("dns", func(b *BootArgs) *[]netip.Addr { return &b.DNS }, parseAddr)

// ResolvConf is the guest's /etc/resolv.conf for b.DNS (nil when there
// are none): one nameserver line each, in order.
func (b BootArgs) ResolvConf() []byte {
	if len(b.DNS) == 0 {
		return nil
	}
	var s strings.Builder
	s.WriteString("# written by paddock-agent from paddock.dns\n")
	for _, a := range b.DNS {
		fmt.Fprintf(&s, "nameserver %s\n", a)
	}
	return []byte(s.String())
}

var keyByName = func() map[string]*key {
	m := map[string]*key{}
	for i := range keys {
		m[keys[i].name] = &keys[i]
	}
	return m
}()

const prefix = "paddock."

// Parse reads a kernel command line (as in /proc/cmdline). Words that are not
// paddock.* keys go to Kernel unchecked. An unknown paddock.* key, a key given
// twice or a bad value is an error naming the key; Parse still returns every
// key it could read (a repeated key keeps its last value), so a guest can boot
// as far as its command line allows and report the rest.
func Parse(cmdline string) (BootArgs, error) {
	var b BootArgs
	var errs []error
	seen := map[string]bool{}
	for _, w := range splitWords(cmdline) {
		k, v, hasValue := strings.Cut(w, "=")
		name, ok := strings.CutPrefix(k, prefix)
		if !ok {
			b.Kernel = append(b.Kernel, w)
			continue
		}
		kd := keyByName[name]
		if kd == nil {
			errs = append(errs, fmt.Errorf("unknown key %s", k))
			continue
		}
		if seen[name] {
			errs = append(errs, fmt.Errorf("%s: given more than once", k))
		}
		seen[name] = true
		if err := checkValue(v); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", k, err))
			continue
		}
		if !hasValue && !kd.isBool {
			errs = append(errs, fmt.Errorf("%s: needs a value (%s=...)", k, k))
			continue
		}
		// a bad value leaves the field as it was, never half-set
		next := b
		if err := kd.parse(&next, v); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", k, err))
			continue
		}
		b = next
	}
	return b, errors.Join(errs...)
}

// Validate reports what String could not carry to the agent intact: a value
// the agent would reject, a character a kernel command line cannot hold, or a
// Kernel word that looks like a paddock.* key.
func (b BootArgs) Validate() error {
	var errs []error
	for i := range keys {
		kd := &keys[i]
		v := kd.str(&b)
		if v == "" {
			continue
		}
		if err := checkValue(v); err != nil {
			errs = append(errs, fmt.Errorf("%s%s: %w", prefix, kd.name, err))
			continue
		}
		var probe BootArgs
		if err := kd.parse(&probe, v); err != nil {
			errs = append(errs, fmt.Errorf("%s%s: %w", prefix, kd.name, err))
		}
	}
	for _, w := range b.Kernel {
		if strings.HasPrefix(w, prefix) {
			errs = append(errs, fmt.Errorf("kernel word %q: paddock.* keys go in their own fields", w))
		}
		if strings.ContainsRune(w, '"') {
			errs = append(errs, fmt.Errorf("kernel word %q holds a double quote", w))
		}
	}
	return errors.Join(errs...)
}

// String returns the command line: the Kernel words, then each set key (in
// the order of the package documentation). For a BootArgs that passes
// Validate, Parse(b.String()) returns b.
func (b BootArgs) String() string {
	var words []string
	for _, w := range b.Kernel {
		words = append(words, quote(w))
	}
	for i := range keys {
		kd := &keys[i]
		v := kd.str(&b)
		switch {
		case v == "":
		case kd.isBool:
			words = append(words, prefix+kd.name)
		default:
			words = append(words, quote(prefix+kd.name+"="+v))
		}
	}
	return strings.Join(words, " ")
}

// SetControl sets the agent's control channel: a virtio-serial port name
// (paddock.ctl, "" for none) and a vsock port (paddock.vsock, 0 for none).
// VMM drivers call it; whatever the caller's command line said is replaced.
func (b *BootArgs) SetControl(serial string, vsock uint32) {
	b.Serial, b.Vsock = serial, vsock
}

// isSpace is the kernel's isspace() for the bytes that separate words.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

// splitWords splits a command line into words the way the agent has always
// read it: whitespace separates words outside double quotes, and the quotes
// themselves are dropped.
func splitWords(s string) []string {
	var out []string
	var cur []byte
	inQuote, have := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && isSpace(c):
			if have {
				out = append(out, string(cur))
				cur = cur[:0]
				have = false
			}
		default:
			cur = append(cur, c)
			have = true
		}
	}
	if have {
		out = append(out, string(cur))
	}
	return out
}

// quote wraps a word in double quotes when it is empty or holds whitespace.
func quote(w string) string {
	if w == "" {
		return `""`
	}
	for i := 0; i < len(w); i++ {
		if isSpace(w[i]) {
			return `"` + w + `"`
		}
	}
	return w
}

// checkValue rejects what no paddock.* value may hold: control characters
// (the kernel would split on some, a terminal would act on others) and
// double quotes (a command line cannot escape them).
func checkValue(v string) error {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 && c != ' ' || c == 0x7f {
			return fmt.Errorf("value %q holds a control character", v)
		}
	}
	if strings.ContainsRune(v, '"') {
		return fmt.Errorf("value %q holds a double quote", v)
	}
	return nil
}

// parseBool reads a boolean value; a bare key ("paddock.ro") is true.
func parseBool(v string) (bool, error) {
	switch v {
	case "", "1", "y", "yes", "true", "on":
		return true, nil
	case "0", "n", "no", "false", "off":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean (1/0, yes/no, true/false, on/off)", v)
}

func parseSeconds(v string) (time.Duration, error) {
	bad := fmt.Errorf("%q is not a number of seconds (0 < s <= %d, e.g. 2.5)", v, MaxSeconds)
	whole, frac, _ := strings.Cut(v, ".")
	if whole == "" || len(whole) > 4 || len(frac) > 9 || !digits(whole) || !digits(frac) {
		return 0, bad
	}
	s, _ := strconv.Atoi(whole)
	ns := 0
	if frac != "" {
		ns, _ = strconv.Atoi(frac + strings.Repeat("0", 9-len(frac)))
	}
	d := time.Duration(s)*time.Second + time.Duration(ns)
	if d <= 0 || d > MaxSeconds*time.Second {
		return 0, bad
	}
	return d, nil
}

func formatSeconds(d time.Duration) string {
	if d == 0 {
		return ""
	}
	s := strconv.FormatInt(int64(d/time.Second), 10)
	if ns := int64(d % time.Second); ns != 0 {
		s += "." + strings.TrimRight(fmt.Sprintf("%09d", ns), "0")
	}
	return s
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func itoaOrEmpty(n int64) string {
	if n == 0 {
		return ""
	}
	return strconv.FormatInt(n, 10)
}

func parsePrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, fmt.Errorf("%q is not an address/prefix length (e.g. 10.0.0.2/24)", s)
	}
	return p, nil
}

func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	return a, nil
}

func checkRoot(v string) error {
	switch {
	case v == "":
		return nil
	case strings.HasPrefix(v, "/dev/") && len(v) > len("/dev/"):
		return nil
	case strings.HasPrefix(v, "LABEL=") && len(v) > len("LABEL=") && len(v) <= len("LABEL=")+16:
		return nil
	case strings.HasPrefix(v, "UUID=") && len(v) > len("UUID="):
		return nil
	}
	return fmt.Errorf("%q is not /dev/NAME, LABEL=<up to 16 bytes> or UUID=<uuid>", v)
}

func checkFSType(v string) error {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_') {
			return fmt.Errorf("%q is not a file system type", v)
		}
	}
	return nil
}

// checkHostname accepts an RFC 1123 host name of at most 64 bytes (the
// kernel's limit).
func checkHostname(v string) error {
	if len(v) > 64 {
		return fmt.Errorf("%q is longer than 64 bytes", v)
	}
	if v == "" {
		return nil
	}
	for _, label := range strings.Split(v, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%q is not a host name", v)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("%q is not a host name (letters, digits, '-' and '.')", v)
			}
		}
	}
	return nil
}

// checkIfName accepts a Linux interface name.
func checkIfName(v string) error {
	if len(v) > 15 || v == "." || v == ".." || strings.ContainsAny(v, "/: ") {
		return fmt.Errorf("%q is not an interface name", v)
	}
	return nil
}

// checkPortName accepts a virtio-serial port name paddock would give.
func checkPortName(v string) error {
	if len(v) > 64 {
		return fmt.Errorf("port name %q is longer than 64 bytes", v)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("port name %q: letters, digits, '.', '_' and '-' only", v)
		}
	}
	return nil
}

func checkAbs(v string) error {
	if v != "" && !strings.HasPrefix(v, "/") {
		return fmt.Errorf("%q is not an absolute path", v)
	}
	return nil
}

func oneOf(allowed ...string) func(string) error {
	return func(v string) error {
		for _, a := range allowed {
			if v == a {
				return nil
			}
		}
		return fmt.Errorf("want %s, got %q", strings.Join(allowed, " or "), v)
	}
}
