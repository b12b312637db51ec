package state

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/paddock-vm/paddock/netspec"
)

// SchemaVersion is written into every vm.json and handles.json; a file with
// a newer version is refused rather than misread.
const SchemaVersion = 1

// Sentinel errors callers branch on.
var (
	ErrCorrupt  = errors.New("corrupt state file")
	ErrNotFound = errors.New("no such record")
)

// Status is where a VM is in its life.
type Status string

// The VM states. Transitions live in the VM actor.
const (
	StatusCreated  Status = "created"
	StatusStarting Status = "starting"
	StatusRunning  Status = "running"
	StatusStopping Status = "stopping"
	StatusStopped  Status = "stopped"
	StatusError    Status = "error"
)

// Spec is what the user asked for.
type Spec struct {
	Image       string `json:"image"`
	ImageDigest string `json:"image_digest"`
	CPUs        int    `json:"cpus"`
	Memory      int64  `json:"memory"`    // bytes
	DiskSize    int64  `json:"disk_size"` // bytes
	// AutoStop is a Go duration string; "" or "off" means never.
	AutoStop string `json:"auto_stop,omitempty"`
	// Env is added to the image's environment (KEY=VALUE).
	Env []string `json:"env,omitempty"`
	// Kernel names the boot kit; "" is the daemon's default (vm.kernel, or
	// the only kit there is).
	Kernel string `json:"kernel,omitempty"`
	// Entrypoint, when set, replaces the image's (an empty list clears it)
	// and, as in docker, drops the image's Cmd unless Cmd is set too.
	Entrypoint *[]string `json:"entrypoint,omitempty"`
	// Cmd, when set, replaces the image's Cmd.
	Cmd []string `json:"cmd,omitempty"`
	// Workdir and User, when set, replace the image's WorkingDir and User.
	Workdir string `json:"workdir,omitempty"`
	User    string `json:"user,omitempty"`
	// Ports are published on the host (netspec.Validate checks them).
	Ports []netspec.PortMapping `json:"ports,omitempty"`
	// Network is "" (the daemon's vm.network), "bridge", "user" or
	// "shared:GROUP" (netspec.ParseNetwork).
	Network string `json:"network,omitempty"`
	// Workspaces are attached at every start, in order (/dev/vdc first).
	Workspaces []WorkspaceMount `json:"workspaces,omitempty"`
	// Template, the id of a template, makes the VM's first start resume
	// that template's saved guest (with this VM's identity) instead of a
	// boot; later starts boot its disk as any VM's.
	Template string `json:"template,omitempty"`
	// TemplateBoot: the VM is booted to be saved as a template; its
	// entrypoint waits for the identity of each VM resumed from it.
	TemplateBoot bool `json:"template_boot,omitempty"`
}

// WorkspaceMount is a workspace a VM attaches: the workspace (its id,
// resolved when the VM was created or set, and its name then), where the
// guest mounts it, and whether read-only.
type WorkspaceMount struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// DefaultWorkspacePath is where a workspace is mounted when no path is given.
const DefaultWorkspacePath = "/workspace"

// AttachRuntime is a VM's workspace attachments (the "workspaces"
// resource's handle): the VM they belong to, and each workspace with the
// volume attached, the guest device and mount. Released, every claim of
// the VM is dropped.
type AttachRuntime struct {
	VM     string              `json:"vm"`
	VMName string              `json:"vm_name,omitempty"`
	Owner  uint32              `json:"owner_uid"`
	Items  []WorkspaceAttached `json:"items,omitempty"`
}

// WorkspaceAttached is one attached workspace.
type WorkspaceAttached struct {
	WorkspaceMount
	Volume string `json:"volume"`
	Format string `json:"format,omitempty"` // of Volume: "raw" ("") or "qcow2"
	Device string `json:"device"`           // in the guest: /dev/vdc, /dev/vdd, ...
	UID    uint32 `json:"uid"`
	GID    uint32 `json:"gid"`
}

// Runtime mirrors every identity needed to tear a running VM down, so that
// cleanup works even when handles.json is lost. Filled by the lifecycle code.
type Runtime struct {
	Tap       *TapRuntime   `json:"tap,omitempty"`
	Loops     []LoopRuntime `json:"loops,omitempty"`
	DM        *DMRuntime    `json:"dm,omitempty"`
	VMM       *VMMRuntime   `json:"vmm,omitempty"`
	CgroupDir string        `json:"cgroup,omitempty"`
	// DiskFiles are the VM's own disk files (inside its directory), made
	// by DiskBackend.
	DiskFiles   []string `json:"disk_files,omitempty"`
	DiskBackend string   `json:"disk_backend,omitempty"`
	// Rules are the VM's packet rules in paddock's nftables tables (bridge
	// mode); Passt is its user-mode network process (the passt handle).
	Rules *RulesRuntime   `json:"rules,omitempty"`
	Passt json.RawMessage `json:"passt,omitempty"`
	// Workspaces are the VM's workspace attachments.
	Workspaces *AttachRuntime `json:"workspaces,omitempty"`
}

// RulesRuntime names a VM's packet rules: every rule tagged
// "paddock:vm:<VM>", with what they publish.
type RulesRuntime struct {
	VM    string                `json:"vm"`
	Tap   string                `json:"tap,omitempty"`
	Group string                `json:"group,omitempty"`
	Ports []netspec.PortMapping `json:"ports,omitempty"`
}

// TapRuntime identifies a tap device.
type TapRuntime struct {
	Name    string `json:"name"`
	Ifindex int    `json:"ifindex"`
}

// LoopRuntime identifies a loop device and its backing file.
type LoopRuntime struct {
	Device  string `json:"device"`
	Backing string `json:"backing"`
}

// DMRuntime identifies a device-mapper device.
type DMRuntime struct {
	Name string `json:"name"`
	UUID string `json:"uuid"`
}

// VMMRuntime identifies a hypervisor process.
type VMMRuntime struct {
	PID       int      `json:"pid"`
	StartTime uint64   `json:"start_time"` // /proc/PID/stat field 22
	Sockets   []string `json:"sockets,omitempty"`
	// Handle is the VMM driver's own handle (vmm.Process), which proves the
	// identity of the process before anything signals it.
	Handle json.RawMessage `json:"handle,omitempty"`
}

// NetRuntime is the guest's network identity, kept while the VM exists so
// it gets the same address at every start.
type NetRuntime struct {
	IP      string `json:"ip"` // CIDR
	Gateway string `json:"gateway"`
	MAC     string `json:"mac"`
}

// VM is the content of vms/<id>/vm.json.
type VM struct {
	Schema    int       `json:"schema"`
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	OwnerUID  uint32    `json:"owner_uid"`
	Spec      Spec      `json:"spec"`
	Status    Status    `json:"status"`
	Reason    string    `json:"reason,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	Runtime   Runtime   `json:"runtime"`
	// Net survives stops so the guest keeps its address.
	Net *NetRuntime `json:"net,omitempty"`
	// Disk is the VM's own disk (the disk backend's handle): it survives
	// stops, and goes with the VM.
	Disk json.RawMessage `json:"disk,omitempty"`
	// LastBoot is where the last successful start spent its time.
	LastBoot *BootReport `json:"last_boot,omitempty"`
}

// BootReport is where a start spent its time: paddock's own steps, each
// measured on the daemon's clock from the end of the one before (the agent
// step is the VMM's launch to the agent's hello), and the guest's phases as
// its agent reports them (its kernel first).
type BootReport struct {
	Steps []BootPhase `json:"steps"`
	Guest []BootPhase `json:"guest,omitempty"`
	// GuestReadyMS is when the agent was ready on the guest's boot clock
	// (its kernel's start): the agent step less it is paddock's own
	// latency from the VMM's resume to the hello.
	GuestReadyMS float64 `json:"guest_ready_ms,omitempty"`
	// Resumed names the template the start resumed; its guest did not
	// boot, so there are no guest phases (the hello's are the template's).
	Resumed string `json:"resumed,omitempty"`
}

// BootPhase is one named span of a start, in milliseconds.
type BootPhase struct {
	Name string  `json:"name"`
	MS   float64 `json:"ms"`
}

// Handle is one host object a resource actor owns. Intent is recorded before
// the object is created; Live after.
type Handle struct {
	Kind  string `json:"kind"`
	ID    string `json:"id"`
	State string `json:"state"` // "intent" or "live"
	// Payload is the resource's own handle (a tap, a disk, a VMM process).
	Payload json.RawMessage `json:"payload,omitempty"`
}

// Handles is the content of vms/<id>/handles.json.
type Handles struct {
	Schema int      `json:"schema"`
	Items  []Handle `json:"items"`
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidateName applies DNS-label rules: 1..63 of [a-z0-9-], no leading or
// trailing hyphen.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("name %q: must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit", name)
	}
	return nil
}

// ValidateNewName is the rule for the name of a new VM: ValidateName, and
// not the shape of a VM id, so that no name can stand in for another VM's
// id. (Records from before this rule load; ids resolve before names.)
func ValidateNewName(name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if ValidID(name) {
		return fmt.Errorf("name %q has the shape of a VM id (%d hex characters): choose a name that does not", name, IDLen)
	}
	return nil
}

// IDLen is the length of a VM id in hex characters.
const IDLen = 24

var idRE = regexp.MustCompile(`^[0-9a-f]{24}$`)

// NewID returns a random VM id.
func NewID() string {
	b := make([]byte, IDLen/2)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return hex.EncodeToString(b)
}

// ValidID reports whether s has the shape of a VM id.
func ValidID(s string) bool { return idRE.MatchString(s) }

// Store is the vms/ directory under the state dir.
type Store struct {
	Root string // <state_dir>/vms
}

// NewStore creates <stateDir>/vms if needed.
func NewStore(stateDir string) (*Store, error) {
	root := filepath.Join(stateDir, "vms")
	for _, d := range []string{stateDir, root} {
		if err := MkdirPrivate(d); err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
	}
	return &Store{Root: root}, nil
}

// Dir is the VM's own directory.
func (s *Store) Dir(id string) string { return filepath.Join(s.Root, id) }

// IDs lists the VM directories present, sorted. Stray files and names that
// are not ids are ignored (and reported) so one bad entry cannot stop start-up.
func (s *Store) IDs() (ids []string, stray []string, err error) {
	ents, err := os.ReadDir(s.Root)
	if err != nil {
		return nil, nil, fmt.Errorf("list %s: %w", s.Root, err)
	}
	for _, e := range ents {
		if e.IsDir() && ValidID(e.Name()) {
			ids = append(ids, e.Name())
		} else if !strings.HasPrefix(e.Name(), ".") {
			stray = append(stray, e.Name())
		}
	}
	sort.Strings(ids)
	return ids, stray, nil
}

// Load reads and checks vm.json. A missing file is ErrNotFound; anything
// unreadable is ErrCorrupt with the reason.
func (s *Store) Load(id string) (*VM, error) {
	p := filepath.Join(s.Dir(id), "vm.json")
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", p, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	var vm VM
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&vm); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", p, ErrCorrupt, err)
	}
	switch {
	case vm.Schema < 1 || vm.Schema > SchemaVersion:
		return nil, fmt.Errorf("%s: %w: schema version %d not supported (want 1..%d)", p, ErrCorrupt, vm.Schema, SchemaVersion)
	case vm.ID != id:
		return nil, fmt.Errorf("%s: %w: id %q does not match its directory", p, ErrCorrupt, vm.ID)
	case ValidateName(vm.Name) != nil:
		return nil, fmt.Errorf("%s: %w: %v", p, ErrCorrupt, ValidateName(vm.Name))
	}
	switch vm.Status {
	case StatusCreated, StatusStarting, StatusRunning, StatusStopping, StatusStopped, StatusError:
	default:
		return nil, fmt.Errorf("%s: %w: unknown status %q", p, ErrCorrupt, vm.Status)
	}
	return &vm, nil
}

// Save writes vm.json atomically, creating the VM directory on first save.
func (s *Store) Save(vm *VM) error {
	if !ValidID(vm.ID) {
		return fmt.Errorf("save vm: bad id %q", vm.ID)
	}
	dir := s.Dir(vm.ID)
	if err := MkdirPrivate(dir); err != nil {
		return err
	}
	vm.Schema = SchemaVersion
	b, err := json.MarshalIndent(vm, "", "  ")
	if err != nil {
		return fmt.Errorf("encode vm %s: %w", vm.ID, err)
	}
	return WriteFileAtomic(filepath.Join(dir, "vm.json"), append(b, '\n'), 0o600)
}

// LoadHandles reads handles.json; a missing file is an empty set.
func (s *Store) LoadHandles(id string) (*Handles, error) {
	p := filepath.Join(s.Dir(id), "handles.json")
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return &Handles{Schema: SchemaVersion}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	var h Handles
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", p, ErrCorrupt, err)
	}
	if h.Schema < 1 || h.Schema > SchemaVersion {
		return nil, fmt.Errorf("%s: %w: schema version %d not supported", p, ErrCorrupt, h.Schema)
	}
	return &h, nil
}

// SaveHandles writes handles.json atomically.
func (s *Store) SaveHandles(id string, h *Handles) error {
	h.Schema = SchemaVersion
	if h.Items == nil {
		h.Items = []Handle{}
	}
	b, err := json.MarshalIndent(h, "", "  ")
	if err != nil {
		return fmt.Errorf("encode handles %s: %w", id, err)
	}
	return WriteFileAtomic(filepath.Join(s.Dir(id), "handles.json"), append(b, '\n'), 0o600)
}

// Remove deletes the VM's directory. Removing one that is gone succeeds.
// The directory is first renamed aside so a crash mid-delete never leaves a
// half-deleted record that loads as a VM.
func (s *Store) Remove(id string) error {
	dir := s.Dir(id)
	grave := filepath.Join(s.Root, ".deleted-"+id)
	if err := os.Rename(dir, grave); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return os.RemoveAll(grave)
		}
		return fmt.Errorf("remove vm %s: %w", id, err)
	}
	if err := SyncDir(s.Root); err != nil {
		return err
	}
	if err := os.RemoveAll(grave); err != nil {
		return fmt.Errorf("remove %s: %w", grave, err)
	}
	return nil
}

// SweepDeleted removes directories left by a delete interrupted by a crash.
func (s *Store) SweepDeleted() error {
	ents, err := os.ReadDir(s.Root)
	if err != nil {
		return fmt.Errorf("list %s: %w", s.Root, err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".deleted-") {
			if err := os.RemoveAll(filepath.Join(s.Root, e.Name())); err != nil {
				return fmt.Errorf("sweep %s: %w", e.Name(), err)
			}
		}
	}
	return nil
}
