// Package config loads paddockd's TOML configuration, fills defaults and
// validates every key, naming the culprit in each error.
package config

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// ErrInvalid marks a configuration that parsed but holds a bad value.
var ErrInvalid = errors.New("invalid configuration")

// Config is the whole daemon configuration. Field tags are the TOML keys;
// config.example.toml documents each one.
type Config struct {
	StateDir   string `toml:"state_dir"`
	RuntimeDir string `toml:"runtime_dir"`
	CacheDir   string `toml:"cache_dir"`

	API      API      `toml:"api"`
	Log      Log      `toml:"log"`
	Defaults Defaults `toml:"defaults"`
	Images   Images   `toml:"images"`
	VM       VM       `toml:"vm"`
	Stats    Stats    `toml:"stats"`
	DBus     DBus     `toml:"dbus"`
}

// DBus configures the D-Bus API (org.paddock1).
type DBus struct {
	// Bus is system, session, off, or auto: the session bus for a daemon
	// run by a user who has one, else the system bus. A bus that cannot be
	// reached leaves the D-Bus API off (logged), never stops the daemon.
	Bus string `toml:"bus"`
}

// Stats configures the Stats actor.
type Stats struct {
	// Interval between background polls of running VMs.
	Interval Duration `toml:"interval"`
	// AutoStopStaleAfter stops a VM idle this long when it has no
	// auto_stop of its own; "off" disables.
	AutoStopStaleAfter Duration `toml:"auto_stop_stale_after"`
	// IdleCPU is the guest CPU share under which a VM counts as idle.
	IdleCPU float64 `toml:"idle_cpu"`
	// Parallel bounds how many VMs are polled at once.
	Parallel int `toml:"parallel"`
}

// VM configures how VMs run.
type VM struct {
	// Kernel is the boot kit a VM that names none boots (paddock kernel
	// import --name); when it does not exist, the only kit there is.
	Kernel string `toml:"kernel"`
	// Run: "off" keeps VMs as records only (no VMM is ever started).
	Run string `toml:"run"`
	// VMMBinary is the QEMU binary: a name looked up in $PATH, or a path.
	VMMBinary string `toml:"vmm_binary"`
	// DiskBackend: auto, dm, reflink, qcow2 or copy.
	DiskBackend string `toml:"disk_backend"`
	// Accel: auto (KVM when a KVM guest really boots, else TCG), kvm or tcg.
	Accel string `toml:"accel"`
	// Network is the default network of a VM that names none: "bridge"
	// gives every VM a tap on Bridge with an address from Subnet; "user"
	// a passt process per VM (no capability needed); "none" gives VMs no
	// network device.
	Network string `toml:"network"`
	Bridge  string `toml:"bridge"`
	Subnet  string `toml:"subnet"`
	// NAT: "on" masquerades bridge VMs' traffic out of the host; "off"
	// leaves them on the bridge's subnet.
	NAT string `toml:"nat"`
	// DNS are the guests' nameservers; empty: the host's non-loopback
	// ones (HostDNS).
	DNS []string `toml:"dns"`
	// HostAccess are the host's services a bridge VM may reach on the
	// gateway ("tcp/PORT" or "udp/PORT"); everything else there is dropped.
	HostAccess []string `toml:"host_access"`
	// StartTimeout bounds a start from VMM launch to the agent's hello.
	StartTimeout Duration `toml:"start_timeout"`
	// StopTimeout is how long a guest gets to power off before a kill.
	StopTimeout Duration `toml:"stop_timeout"`
	// OnHostShutdown is what paddock-guests.service asks for when the
	// host shuts down: "stop" powers every running VM off cleanly first
	// (in parallel, each within StopTimeout); "keep" leaves them to the
	// host's own shutdown (killed with the service).
	OnHostShutdown string `toml:"on_host_shutdown"`
	// ConsoleLogMax caps each VM's console.log.
	ConsoleLogMax Size `toml:"console_log_max"`
	// VMMMemoryOverhead is added to a VM's memory to make its VMM cgroup's
	// memory.max (0: none); VMMPIDsMax plus one per guest CPU is its
	// pids.max (0: none). Only where paddockd has a delegated cgroup.
	VMMMemoryOverhead Size `toml:"vmm_memory_overhead"`
	VMMPIDsMax        int  `toml:"vmm_pids_max"`
}

// Images configures image import.
type Images struct {
	// InsecureRegistries are reached over plain HTTP (host[:port]).
	InsecureRegistries []string `toml:"insecure_registries"`
	MaxUnpackedSize    Size     `toml:"max_unpacked_size"`
	MaxEntries         int64    `toml:"max_entries"`
	// ScratchDir holds unpacked trees while a base is built; empty means
	// <cache_dir>/scratch. A tmpfs makes imports faster.
	ScratchDir string `toml:"scratch_dir"`
	// FreeSpace is left free in every ext4 base on top of its content.
	FreeSpace Size `toml:"free_space"`
	// BlobCacheSize caps <cache_dir>/blobs, where verified registry layer
	// blobs are kept (least recently used go first); 0 keeps none.
	BlobCacheSize Size `toml:"blob_cache_size"`
}

// API configures the varlink endpoint and who may use it.
type API struct {
	Socket          string   `toml:"socket"`
	SocketGroup     string   `toml:"socket_group"`
	SocketMode      string   `toml:"socket_mode"`
	AdminGroup      string   `toml:"admin_group"`
	RequestTimeout  Duration `toml:"request_timeout"`
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
	MaxMessageSize  Size     `toml:"max_message_size"`
	MaxConnections  int      `toml:"max_connections"`
	// MaxConnectionsPerUser bounds the connections one user who is not an
	// admin may hold, so that no user can starve the others.
	MaxConnectionsPerUser int `toml:"max_connections_per_user"`
	// AdminReservedConnections of MaxConnections only admins may take.
	AdminReservedConnections int `toml:"admin_reserved_connections"`
	// IdleTimeout closes a connection with no call in flight that sends
	// nothing for this long; "off" keeps them.
	IdleTimeout Duration `toml:"idle_timeout"`
}

// Log configures logging.
type Log struct {
	Level  string `toml:"level"`
	Format string `toml:"format"`
}

// Defaults are applied to a VM spec that leaves a field out.
type Defaults struct {
	CPUs     int      `toml:"cpus"`
	Memory   Size     `toml:"memory"`
	DiskSize Size     `toml:"disk_size"`
	AutoStop Duration `toml:"auto_stop"`
}

// Duration is a time.Duration written as "30s" in TOML; "off" or "0" is zero.
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) {
	if d.Duration == 0 {
		return []byte("off"), nil
	}
	return []byte(d.String()), nil
}

// ParseDuration accepts Go durations plus "off" (zero).
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "off" || s == "0" || s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("bad duration %q (want e.g. 30s, 5m, off)", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("negative duration %q", s)
	}
	return d, nil
}

// Size is a byte count written as "512MiB" in TOML (or a plain integer).
type Size int64

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = Size(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (s Size) MarshalText() ([]byte, error) { return []byte(FormatSize(int64(s))), nil }

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
	{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1},
}

// ParseSize parses "512MiB", "2G", "1048576".
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad size %q (want e.g. 512MiB, 2GiB)", s)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q too large", s)
	}
	return n * mult, nil
}

// FormatSize prints a byte count in the largest exact binary unit.
func FormatSize(n int64) string {
	for _, u := range sizeUnits[:4] {
		if n >= u.mult && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// Default returns working defaults for the calling user: system paths for
// root, XDG paths for anyone else.
func Default() *Config {
	c := &Config{
		API: API{
			SocketGroup:     "paddock",
			SocketMode:      "0660",
			AdminGroup:      "paddock-admin",
			RequestTimeout:  Duration{30 * time.Second},
			ShutdownTimeout: Duration{10 * time.Second},
			MaxMessageSize:  1 << 20,
			MaxConnections:  256,
			// A user may hold an eighth of the connections, and a sixteenth
			// is kept for admins, whatever the users hold (scaleLimits).
			MaxConnectionsPerUser:    32,
			AdminReservedConnections: 16,
			IdleTimeout:              Duration{5 * time.Minute},
		},
		Log:      Log{Level: "info", Format: "auto"},
		Defaults: Defaults{CPUs: 1, Memory: 512 << 20, DiskSize: 2 << 30},
		VM: VM{Kernel: "default", Run: "on", VMMBinary: "qemu-system-x86_64", DiskBackend: "auto", Accel: "auto", Network: "bridge", Bridge: "paddock0", Subnet: "10.77.0.0/16",
			NAT: "on", DNS: []string{}, HostAccess: []string{},
			StartTimeout: Duration{2 * time.Minute}, StopTimeout: Duration{30 * time.Second}, OnHostShutdown: "stop", ConsoleLogMax: 4 << 20,
			VMMMemoryOverhead: 352 << 20, VMMPIDsMax: 256},
		DBus:   DBus{Bus: "auto"},
		Stats:  Stats{Interval: Duration{10 * time.Second}, IdleCPU: 0.15, Parallel: 4},
		Images: Images{InsecureRegistries: []string{}, MaxUnpackedSize: 16 << 30, MaxEntries: 1 << 20, FreeSpace: 64 << 20, BlobCacheSize: 2 << 30},
	}
	if os.Geteuid() == 0 {
		c.StateDir, c.RuntimeDir, c.CacheDir = "/var/lib/paddock", "/run/paddock", "/var/cache/paddock"
	} else {
		c.StateDir = filepath.Join(xdg("XDG_STATE_HOME", ".local/state"), "paddock")
		c.CacheDir = filepath.Join(xdg("XDG_CACHE_HOME", ".cache"), "paddock")
		if rt := os.Getenv("XDG_RUNTIME_DIR"); rt != "" {
			c.RuntimeDir = filepath.Join(rt, "paddock")
		} else {
			c.RuntimeDir = filepath.Join(os.TempDir(), fmt.Sprintf("paddock-%d", os.Geteuid()))
		}
	}
	return c
}

// systemd passes these to a unit with StateDirectory= etc.; they win over
// built-in defaults but not over an explicit config key.
func applyEnvDirs(c *Config) {
	for _, e := range []struct {
		env string
		dst *string
	}{{"STATE_DIRECTORY", &c.StateDir}, {"RUNTIME_DIRECTORY", &c.RuntimeDir}, {"CACHE_DIRECTORY", &c.CacheDir}} {
		if v := os.Getenv(e.env); v != "" {
			*e.dst = strings.Split(v, ":")[0]
		}
	}
}

func xdg(env, fallback string) string {
	if v := os.Getenv(env); v != "" && filepath.IsAbs(v) {
		return v
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "/"
	}
	return filepath.Join(home, fallback)
}

// Load reads path (empty: defaults only) and validates the result.
func Load(path string) (*Config, error) {
	c := Default()
	applyEnvDirs(c)
	if path != "" {
		md, err := toml.DecodeFile(path, c)
		if err != nil {
			return nil, fmt.Errorf("config %s: %w", path, describeDecodeError(err))
		}
		if und := md.Undecoded(); len(und) > 0 {
			keys := make([]string, len(und))
			for i, k := range und {
				keys[i] = k.String()
			}
			sort.Strings(keys)
			return nil, fmt.Errorf("config %s: unknown key %s: %w", path, strings.Join(keys, ", "), ErrInvalid)
		}
		c.API.scaleLimits(md.IsDefined("api", "max_connections_per_user"), md.IsDefined("api", "admin_reserved_connections"))
	}
	if err := c.Validate(); err != nil {
		if path != "" {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
		return nil, err
	}
	return c, nil
}

func describeDecodeError(err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		if pe.LastKey != "" {
			return fmt.Errorf("line %d, key %s: %s: %w", pe.Position.Line, pe.LastKey, pe.Message, ErrInvalid)
		}
		return fmt.Errorf("line %d: %s: %w", pe.Position.Line, pe.Message, ErrInvalid)
	}
	return fmt.Errorf("%v: %w", err, ErrInvalid)
}

var logLevels = map[string]bool{"debug": true, "info": true, "warn": true, "error": true}
var logFormats = map[string]bool{"auto": true, "text": true, "json": true, "journal": true}

// Validate checks every value and names the first bad key.
func (c *Config) Validate() error {
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("key %s: %s: %w", key, fmt.Sprintf(format, args...), ErrInvalid)
	}
	for _, d := range []struct{ key, val string }{{"state_dir", c.StateDir}, {"runtime_dir", c.RuntimeDir}, {"cache_dir", c.CacheDir}} {
		if d.val == "" || !filepath.IsAbs(d.val) {
			return bad(d.key, "must be an absolute path, got %q", d.val)
		}
	}
	if c.API.Socket == "" {
		c.API.Socket = filepath.Join(c.RuntimeDir, "io.paddock.v1")
	} else if !filepath.IsAbs(c.API.Socket) {
		return bad("api.socket", "must be an absolute path, got %q", c.API.Socket)
	}
	if len(c.API.Socket) > 107 {
		return bad("api.socket", "path longer than a UNIX socket allows (107 bytes): %q", c.API.Socket)
	}
	if _, err := c.API.Mode(); err != nil {
		return bad("api.socket_mode", "%v", err)
	}
	if c.API.RequestTimeout.Duration <= 0 {
		return bad("api.request_timeout", "must be positive")
	}
	if c.API.ShutdownTimeout.Duration <= 0 {
		return bad("api.shutdown_timeout", "must be positive")
	}
	if c.API.MaxMessageSize < 4096 || c.API.MaxMessageSize > 64<<20 {
		return bad("api.max_message_size", "must be between 4KiB and 64MiB, got %s", FormatSize(int64(c.API.MaxMessageSize)))
	}
	if c.API.MaxConnections < 1 {
		return bad("api.max_connections", "must be at least 1, got %d", c.API.MaxConnections)
	}
	if c.API.AdminReservedConnections < 0 || c.API.AdminReservedConnections >= c.API.MaxConnections {
		return bad("api.admin_reserved_connections", "must be 0 or more and less than api.max_connections (%d), got %d", c.API.MaxConnections, c.API.AdminReservedConnections)
	}
	if users := c.API.MaxConnections - c.API.AdminReservedConnections; c.API.MaxConnectionsPerUser < 1 || c.API.MaxConnectionsPerUser > users {
		return bad("api.max_connections_per_user", "must be 1..%d (api.max_connections less api.admin_reserved_connections), got %d", users, c.API.MaxConnectionsPerUser)
	}
	if d := c.API.IdleTimeout.Duration; d != 0 && d < time.Second {
		return bad("api.idle_timeout", "must be \"off\" or at least 1s, got %s", d)
	}
	if !logLevels[c.Log.Level] {
		return bad("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	if !logFormats[c.Log.Format] {
		return bad("log.format", "%q is not one of auto, text, json, journal", c.Log.Format)
	}
	if c.Defaults.CPUs < 1 || c.Defaults.CPUs > 256 {
		return bad("defaults.cpus", "must be 1..256, got %d", c.Defaults.CPUs)
	}
	if c.Defaults.Memory < 64<<20 {
		return bad("defaults.memory", "must be at least 64MiB, got %s", FormatSize(int64(c.Defaults.Memory)))
	}
	if c.Defaults.DiskSize < 64<<20 {
		return bad("defaults.disk_size", "must be at least 64MiB, got %s", FormatSize(int64(c.Defaults.DiskSize)))
	}
	if c.VM.Kernel == "" {
		return bad("vm.kernel", "must name a boot kit")
	}
	if c.VM.VMMBinary == "" {
		return bad("vm.vmm_binary", "must name the QEMU binary (e.g. qemu-system-x86_64)")
	}
	oneOf := func(key, v string, allowed ...string) error {
		for _, a := range allowed {
			if v == a {
				return nil
			}
		}
		return bad(key, "%q is not one of %s", v, strings.Join(allowed, ", "))
	}
	for _, e := range []error{
		oneOf("vm.run", c.VM.Run, "on", "off"),
		oneOf("vm.disk_backend", c.VM.DiskBackend, "auto", "dm", "reflink", "qcow2", "copy"),
		oneOf("vm.accel", c.VM.Accel, "auto", "kvm", "tcg"),
		oneOf("vm.network", c.VM.Network, "bridge", "user", "none"),
		oneOf("vm.nat", c.VM.NAT, "on", "off"),
		oneOf("vm.on_host_shutdown", c.VM.OnHostShutdown, "stop", "keep"),
	} {
		if e != nil {
			return e
		}
	}
	if p, err := netip.ParsePrefix(c.VM.Subnet); err != nil || !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 30 {
		return bad("vm.subnet", "%q is not an IPv4 prefix like 10.77.0.0/16", c.VM.Subnet)
	}
	if c.VM.Bridge == "" || len(c.VM.Bridge) > 15 {
		return bad("vm.bridge", "%q must be 1-15 bytes", c.VM.Bridge)
	}
	if _, err := c.VM.Nameservers(); err != nil {
		return bad("vm.dns", "%v", err)
	}
	if _, err := c.VM.HostAccessRules(); err != nil {
		return bad("vm.host_access", "%v", err)
	}
	if c.VM.StartTimeout.Duration <= 0 || c.VM.StopTimeout.Duration < 0 {
		return bad("vm.start_timeout", "must be positive")
	}
	if c.VM.ConsoleLogMax < 64<<10 {
		return bad("vm.console_log_max", "must be at least 64KiB")
	}
	if c.VM.VMMMemoryOverhead != 0 && c.VM.VMMMemoryOverhead < 64<<20 {
		return bad("vm.vmm_memory_overhead", "must be 0 (no memory limit) or at least 64MiB (QEMU's own memory), got %s", FormatSize(int64(c.VM.VMMMemoryOverhead)))
	}
	if c.VM.VMMPIDsMax != 0 && (c.VM.VMMPIDsMax < 128 || c.VM.VMMPIDsMax > 1<<20) {
		return bad("vm.vmm_pids_max", "must be 0 (no limit) or 128..1048576 (QEMU alone may run 64 I/O threads), got %d", c.VM.VMMPIDsMax)
	}
	if c.Stats.Interval.Duration < 100*time.Millisecond {
		return bad("stats.interval", "must be at least 100ms")
	}
	if c.Stats.IdleCPU < 0 || c.Stats.IdleCPU > 1 {
		return bad("stats.idle_cpu", "must be between 0 and 1, got %v", c.Stats.IdleCPU)
	}
	switch c.DBus.Bus {
	case "auto", "system", "session", "off":
	default:
		return bad("dbus.bus", "%q is not one of auto, system, session, off", c.DBus.Bus)
	}
	if c.Stats.Parallel < 1 {
		return bad("stats.parallel", "must be at least 1")
	}
	if c.Images.MaxUnpackedSize < 1<<20 {
		return bad("images.max_unpacked_size", "must be at least 1MiB, got %s", FormatSize(int64(c.Images.MaxUnpackedSize)))
	}
	if c.Images.BlobCacheSize < 0 {
		return bad("images.blob_cache_size", "must not be negative, got %s", FormatSize(int64(c.Images.BlobCacheSize)))
	}
	if c.Images.MaxEntries < 1 {
		return bad("images.max_entries", "must be at least 1, got %d", c.Images.MaxEntries)
	}
	if c.Images.ScratchDir == "" {
		c.Images.ScratchDir = filepath.Join(c.CacheDir, "scratch")
	} else if !filepath.IsAbs(c.Images.ScratchDir) {
		return bad("images.scratch_dir", "must be an absolute path, got %q", c.Images.ScratchDir)
	}
	for _, r := range c.Images.InsecureRegistries {
		if r == "" || strings.ContainsAny(r, "/ ") {
			return bad("images.insecure_registries", "%q is not a host[:port]", r)
		}
	}
	return nil
}

// scaleLimits derives the per-user cap and the admins' reserve that the
// file leaves out from max_connections, as the defaults are derived from
// its default: an eighth per user, a sixteenth kept for admins.
func (a *API) scaleLimits(perUserSet, reserveSet bool) {
	if !reserveSet {
		a.AdminReservedConnections = a.MaxConnections / 16
	}
	if !perUserSet {
		a.MaxConnectionsPerUser = max(1, a.MaxConnections/8)
	}
}

// Mode parses socket_mode as octal.
func (a API) Mode() (os.FileMode, error) {
	m, err := strconv.ParseUint(a.SocketMode, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("%q is not an octal permission like 0660", a.SocketMode)
	}
	return os.FileMode(m), nil
}

// Change is one key that differs between two configurations.
type Change struct {
	Key      string
	Old, New string
	Live     bool // applied without a restart
}

// Diff lists what differs from old to c, marking which keys reload live.
func (c *Config) Diff(old *Config) []Change {
	var out []Change
	add := func(key string, o, n any, live bool) {
		ov, nv := fmt.Sprint(o), fmt.Sprint(n)
		if ov != nv {
			out = append(out, Change{Key: key, Old: ov, New: nv, Live: live})
		}
	}
	add("state_dir", old.StateDir, c.StateDir, false)
	add("runtime_dir", old.RuntimeDir, c.RuntimeDir, false)
	add("cache_dir", old.CacheDir, c.CacheDir, false)
	add("api.socket", old.API.Socket, c.API.Socket, false)
	add("api.socket_group", old.API.SocketGroup, c.API.SocketGroup, false)
	add("api.socket_mode", old.API.SocketMode, c.API.SocketMode, false)
	add("api.max_message_size", old.API.MaxMessageSize, c.API.MaxMessageSize, false)
	add("api.max_connections", old.API.MaxConnections, c.API.MaxConnections, false)
	add("api.max_connections_per_user", old.API.MaxConnectionsPerUser, c.API.MaxConnectionsPerUser, false)
	add("api.admin_reserved_connections", old.API.AdminReservedConnections, c.API.AdminReservedConnections, false)
	add("api.idle_timeout", old.API.IdleTimeout.Duration, c.API.IdleTimeout.Duration, false)
	add("api.admin_group", old.API.AdminGroup, c.API.AdminGroup, true)
	add("api.request_timeout", old.API.RequestTimeout.Duration, c.API.RequestTimeout.Duration, true)
	add("api.shutdown_timeout", old.API.ShutdownTimeout.Duration, c.API.ShutdownTimeout.Duration, true)
	add("log.level", old.Log.Level, c.Log.Level, true)
	add("log.format", old.Log.Format, c.Log.Format, false)
	add("defaults.cpus", old.Defaults.CPUs, c.Defaults.CPUs, true)
	add("defaults.memory", old.Defaults.Memory, c.Defaults.Memory, true)
	add("defaults.disk_size", old.Defaults.DiskSize, c.Defaults.DiskSize, true)
	add("defaults.auto_stop", old.Defaults.AutoStop.Duration, c.Defaults.AutoStop.Duration, true)
	add("vm.kernel", old.VM.Kernel, c.VM.Kernel, true)
	add("stats.interval", old.Stats.Interval.Duration, c.Stats.Interval.Duration, true)
	add("stats.auto_stop_stale_after", old.Stats.AutoStopStaleAfter.Duration, c.Stats.AutoStopStaleAfter.Duration, true)
	add("stats.idle_cpu", old.Stats.IdleCPU, c.Stats.IdleCPU, false)
	add("stats.parallel", old.Stats.Parallel, c.Stats.Parallel, false)
	add("dbus.bus", old.DBus.Bus, c.DBus.Bus, false)
	add("vm.run", old.VM.Run, c.VM.Run, false)
	add("vm.vmm_binary", old.VM.VMMBinary, c.VM.VMMBinary, false)
	add("vm.disk_backend", old.VM.DiskBackend, c.VM.DiskBackend, false)
	add("vm.accel", old.VM.Accel, c.VM.Accel, false)
	add("vm.network", old.VM.Network, c.VM.Network, false)
	add("vm.bridge", old.VM.Bridge, c.VM.Bridge, false)
	add("vm.subnet", old.VM.Subnet, c.VM.Subnet, false)
	add("vm.nat", old.VM.NAT, c.VM.NAT, false)
	add("vm.on_host_shutdown", old.VM.OnHostShutdown, c.VM.OnHostShutdown, true)
	add("vm.dns", old.VM.DNS, c.VM.DNS, false)
	add("vm.host_access", old.VM.HostAccess, c.VM.HostAccess, false)
	add("vm.start_timeout", old.VM.StartTimeout.Duration, c.VM.StartTimeout.Duration, false)
	add("vm.stop_timeout", old.VM.StopTimeout.Duration, c.VM.StopTimeout.Duration, false)
	add("vm.console_log_max", old.VM.ConsoleLogMax, c.VM.ConsoleLogMax, false)
	add("vm.vmm_memory_overhead", old.VM.VMMMemoryOverhead, c.VM.VMMMemoryOverhead, false)
	add("vm.vmm_pids_max", old.VM.VMMPIDsMax, c.VM.VMMPIDsMax, false)
	add("images.insecure_registries", old.Images.InsecureRegistries, c.Images.InsecureRegistries, true)
	add("images.max_unpacked_size", old.Images.MaxUnpackedSize, c.Images.MaxUnpackedSize, false)
	add("images.max_entries", old.Images.MaxEntries, c.Images.MaxEntries, false)
	add("images.scratch_dir", old.Images.ScratchDir, c.Images.ScratchDir, false)
	add("images.free_space", old.Images.FreeSpace, c.Images.FreeSpace, false)
	add("images.blob_cache_size", old.Images.BlobCacheSize, c.Images.BlobCacheSize, false)
	return out
}
