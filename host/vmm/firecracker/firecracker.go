// Package firecracker is the Firecracker VMM driver: it runs
// "firecracker --api-sock <RunDir>/firecracker.sock --id paddock-<vm id>"
// and configures the microVM through Firecracker's REST API on that UNIX
// socket: PUT /machine-config, /boot-source, /drives/{id},
// /network-interfaces/{id}, /vsock, /serial, then PUT /actions
// InstanceStart; Stop sends PUT /actions SendCtrlAltDel, waits, then kills.
//
// CONTRACT-TESTED ONLY. Firecracker cannot run on paddock's development and
// CI hosts (no usable KVM), so this driver has never driven a real
// Firecracker. Its tests run it against a stand-in process that serves the
// API on the UNIX socket and validates every request (method and path exist,
// body matches the definition: required fields, types, enums, bounds, no
// unknown fields) against Firecracker's published swagger description
// (v1.17.0-dev, testdata/firecracker-api.yaml, read by the tests).
// Behaviour beyond the schema (ordering rules, when Firecracker exits, how
// it opens the serial FIFO) follows Firecracker's documentation and is
// unverified.
//
// Differences from QEMU: Firecracker needs KVM (Accel "tcg" is
// ErrUnsupported), takes raw disks only (qcow2 is ErrUnsupported), and the
// agent is reached over hybrid vsock (Process.ControlKind
// ControlHybridVsock: dial the vsock UDS and write "CONNECT <port>"). The
// guest's serial console goes to a FIFO in RunDir (PUT /serial) that the
// console copier drains; Firecracker's own log goes to RunDir/vmm.log.
// The jailer is not used.
//
// Saved states (templates, vmm.Saver): Save pauses the guest (PATCH /vm)
// and writes a full snapshot (PUT /snapshot/create): the VM state to the
// given path, the guest memory to vmm.MemPath(path). A resume (Spec.Incoming)
// starts a bare Firecracker and loads both (PUT /snapshot/load, memory
// mapped privately: the files are never written, any number of VMs resume
// from them), pointing the vsock device and the tap at this VM's
// (vsock_override, network_overrides). Firecracker re-opens the drives at
// the paths they had at the save (Firecracker's documented behaviour, like
// the private mapping: unverified here), so the snapshot is loaded paused, the
// restored configuration checked against the Spec (GET /vm/config), each
// drive re-pointed at this VM's disk (PATCH /drives/{id}) and only then
// the guest resumed (PATCH /vm): the guest never runs on the saved VM's
// disks. Those disks must still exist at load time (Firecracker opens
// them). The restored guest's serial console is not the console FIFO:
// PUT /serial is refused before a load, so a resumed VM has no console log.
package firecracker

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/guestboot"
	"github.com/paddock-vm/paddock/host/vmm"
)

// Name is the driver's name (Process.Driver).
const Name = "firecracker"

// Defaults.
const (
	DefaultBinary = "firecracker"
	// DefaultAPITimeout bounds one API request.
	DefaultAPITimeout = 10 * time.Second
	// snapshotTimeout backstops a snapshot create or load, which moves the
	// whole guest memory: the caller's ctx is the real bound, not
	// APITimeout.
	snapshotTimeout = 10 * time.Minute
)

// Driver runs Firecracker VMMs. The zero value is ready to use.
type Driver struct {
	vmm.Base
	// Binary is the firecracker binary (DefaultBinary on $PATH).
	Binary string
	// APITimeout bounds each API request (DefaultAPITimeout).
	APITimeout time.Duration
	// Env is the VMM's environment (nil: PATH only).
	Env []string
}

var (
	_ vmm.Driver = (*Driver)(nil)
	_ vmm.Saver  = (*Driver)(nil)
)

// New returns a Firecracker driver with default settings.
func New() *Driver { return &Driver{} }

// Name returns "firecracker".
func (d *Driver) Name() string { return Name }

// Paths of a VM's files under its RunDir.
func apiPath(runDir string) string     { return filepath.Join(runDir, "firecracker.sock") }
func consolePath(runDir string) string { return filepath.Join(runDir, "console.fifo") }

// API bodies (the subset of Firecracker's definitions paddock sets).
type (
	machineConfig struct {
		VCPUCount  int `json:"vcpu_count"`
		MemSizeMiB int `json:"mem_size_mib"`
	}
	bootSource struct {
		KernelImagePath string `json:"kernel_image_path"`
		InitrdPath      string `json:"initrd_path,omitempty"`
		BootArgs        string `json:"boot_args,omitempty"`
	}
	drive struct {
		DriveID      string `json:"drive_id"`
		PathOnHost   string `json:"path_on_host"`
		IsRootDevice bool   `json:"is_root_device"`
		IsReadOnly   bool   `json:"is_read_only"`
	}
	networkInterface struct {
		IfaceID     string `json:"iface_id"`
		HostDevName string `json:"host_dev_name"`
		GuestMAC    string `json:"guest_mac,omitempty"`
	}
	vsockDevice struct {
		GuestCID uint32 `json:"guest_cid"`
		UDSPath  string `json:"uds_path"`
	}
	serialDevice struct {
		SerialOutPath string `json:"serial_out_path"`
	}
	action struct {
		ActionType string `json:"action_type"`
	}
	vmState struct {
		State string `json:"state"` // Paused or Resumed
	}
	snapshotCreate struct {
		SnapshotType string `json:"snapshot_type"`
		SnapshotPath string `json:"snapshot_path"`
		MemFilePath  string `json:"mem_file_path"`
	}
	memBackend struct {
		BackendType string `json:"backend_type"`
		BackendPath string `json:"backend_path"`
	}
	networkOverride struct {
		IfaceID     string `json:"iface_id"`
		HostDevName string `json:"host_dev_name"`
	}
	vsockOverride struct {
		UDSPath string `json:"uds_path"`
	}
	snapshotLoad struct {
		SnapshotPath     string            `json:"snapshot_path"`
		MemBackend       memBackend        `json:"mem_backend"`
		ResumeVM         bool              `json:"resume_vm"`
		NetworkOverrides []networkOverride `json:"network_overrides,omitempty"`
		VsockOverride    *vsockOverride    `json:"vsock_override,omitempty"`
	}
	partialDrive struct {
		DriveID    string `json:"drive_id"`
		PathOnHost string `json:"path_on_host"`
	}
	// vmConfig is GET /vm/config (the fields a resume checks).
	vmConfig struct {
		MachineConfig     *machineConfig     `json:"machine-config"`
		Drives            []drive            `json:"drives"`
		NetworkInterfaces []networkInterface `json:"network-interfaces"`
		Vsock             *vsockDevice       `json:"vsock"`
	}
	// InstanceInfo is GET / (the fields paddock reads).
	InstanceInfo struct {
		ID         string `json:"id"`
		State      string `json:"state"`
		VMMVersion string `json:"vmm_version"`
		AppName    string `json:"app_name"`
	}
)

// APIError is a non-2xx answer of the Firecracker API.
type APIError struct {
	Method, Path string
	Status       int
	Fault        string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("firecracker: %s %s: HTTP %d: %s", e.Method, e.Path, e.Status, e.Fault)
}

// client talks HTTP/1.1 to one API socket.
type client struct {
	sock    string
	http    *http.Client
	timeout time.Duration
}

func (d *Driver) client(sock string) *client {
	t := d.APITimeout
	if t <= 0 {
		t = DefaultAPITimeout
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var nd net.Dialer
			return nd.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}
	return &client{sock: sock, http: &http.Client{Transport: tr}, timeout: t}
}

// long returns c for a request that moves the guest memory (snapshot
// create and load): bounded by the caller's ctx, not by APITimeout.
func (c *client) long() *client {
	cc := *c
	cc.timeout = max(c.timeout, snapshotTimeout)
	return &cc
}

// do sends one request; out (optional) receives a JSON answer.
func (c *client) do(ctx context.Context, method, path string, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("firecracker: %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var fe struct {
			FaultMessage string `json:"fault_message"`
		}
		if json.Unmarshal(b, &fe) != nil || fe.FaultMessage == "" {
			fe.FaultMessage = strings.TrimSpace(string(b))
		}
		return &APIError{Method: method, Path: path, Status: resp.StatusCode, Fault: fe.FaultMessage}
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("firecracker: %s %s: %w", method, path, err)
		}
	}
	return nil
}

// KernelCmdline returns the guest kernel command line for spec: serial
// console, reboot=k and panic=1 (a reboot ends Firecracker), quiet, then the
// caller's keys with the agent's control channel set to this driver's: vsock
// port agent.DefaultVsockPort (which DialAgent reaches through the vsock
// UDS) and no virtio-serial port. Whatever paddock.ctl or paddock.vsock the
// caller gave is replaced: exactly one of each reaches the guest.
func KernelCmdline(spec vmm.Spec) (string, error) {
	boot, err := guestboot.Parse(spec.Cmdline)
	if err == nil {
		boot.SetControl("", agent.DefaultVsockPort)
		err = boot.Validate()
	}
	if err != nil {
		return "", fmt.Errorf("%w: kernel command line: %v", vmm.ErrInvalidSpec, err)
	}
	return strings.TrimSuffix("console=ttyS0 reboot=k panic=1 pci=off quiet "+boot.String(), " "), nil
}

// Start launches Firecracker, configures the VM and starts it.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (*vmm.Process, error) {
	spec, err := spec.Normalize()
	if err != nil {
		return nil, err
	}
	if spec.Accel == vmm.AccelTCG {
		return nil, fmt.Errorf("%w: firecracker needs KVM (accel tcg)", vmm.ErrUnsupported)
	}
	for i, disk := range spec.Disks {
		if disk.Format != vmm.FormatRaw {
			// A workspace snapshotted or cloned on a host without reflinks
			// is a qcow2 overlay; a resize flattens it into one raw file.
			return nil, fmt.Errorf("%w: disk %d (%s) is %s; firecracker takes raw disks only (a workspace snapshotted, restored or cloned on a host without reflinks is qcow2: run it under QEMU, or flatten it with paddock workspace resize NAME SIZE, its size now)", vmm.ErrUnsupported, i, disk.Path, disk.Format)
		}
	}
	var bootArgs string
	if spec.Incoming == "" {
		if bootArgs, err = KernelCmdline(spec); err != nil {
			return nil, err
		}
	} else if err := checkSaved(spec.Incoming); err != nil {
		return nil, err
	}
	if err := vmm.RefuseRunning(spec.VMID); err != nil {
		return nil, err
	}
	p := &vmm.Process{
		Driver: Name, VMID: spec.VMID, RunDir: spec.RunDir, Accel: vmm.AccelKVM,
		APISocket:     apiPath(spec.RunDir),
		ControlSocket: spec.VsockUDS, ControlKind: vmm.ControlHybridVsock,
		ConsoleLog: spec.ConsoleLog, ConsoleLogMax: spec.ConsoleLogMax,
	}
	if spec.Incoming == "" {
		// a resumed guest's serial cannot be pointed at the FIFO (see the
		// package documentation): it gets none
		p.ConsoleSocket = consolePath(spec.RunDir)
	}
	p.Sockets = []string{p.APISocket, p.ControlSocket}
	if p.ConsoleSocket != "" {
		p.Sockets = append(p.Sockets, p.ConsoleSocket)
	}
	if err := vmm.PrepareRunDir(p); err != nil {
		return nil, err
	}
	if p.ConsoleSocket != "" {
		if err := unix.Mkfifo(p.ConsoleSocket, 0o600); err != nil {
			return nil, fmt.Errorf("firecracker: console FIFO: %w", err)
		}
	}
	argv := []string{cmp.Or(d.Binary, DefaultBinary), "--api-sock", p.APISocket, "--id", vmm.Tag(spec.VMID)}
	configure := func(ctx context.Context) error { return d.configure(ctx, p, spec, bootArgs) }
	if spec.Incoming != "" {
		configure = func(ctx context.Context) error { return d.restore(ctx, p, spec) }
	}
	if err := d.StartVMM(ctx, p, spec.Cgroup, spec.Limits, vmm.Command{Path: argv[0], Args: argv, Env: d.Env}, configure); err != nil {
		return nil, err
	}
	return p, nil
}

// waitAPI waits until p's API answers (bounded by ctx).
func (d *Driver) waitAPI(ctx context.Context, p *vmm.Process, c *client) error {
	return d.WaitReady(ctx, p, "API socket "+p.APISocket, func(ctx context.Context) error {
		var info InstanceInfo
		return c.do(ctx, http.MethodGet, "/", nil, &info)
	})
}

// configure waits for the API, attaches the console, configures the VM and
// starts it.
func (d *Driver) configure(ctx context.Context, p *vmm.Process, spec vmm.Spec, bootArgs string) error {
	c := d.client(p.APISocket)
	if err := d.waitAPI(ctx, p, c); err != nil {
		return err
	}
	if err := d.AttachConsole(ctx, p); err != nil {
		return err
	}
	steps := []apiStep{
		{"/machine-config", machineConfig{VCPUCount: spec.CPUs, MemSizeMiB: spec.MemoryMiB}},
		{"/boot-source", bootSource{KernelImagePath: spec.Kernel, InitrdPath: spec.Initrd, BootArgs: bootArgs}},
	}
	for i, disk := range spec.Disks {
		id := "disk" + strconv.Itoa(i)
		steps = append(steps, apiStep{"/drives/" + id, drive{DriveID: id, PathOnHost: disk.Path, IsReadOnly: disk.ReadOnly}})
	}
	if spec.Tap != nil {
		steps = append(steps, apiStep{"/network-interfaces/eth0", networkInterface{IfaceID: "eth0", HostDevName: spec.Tap.Name, GuestMAC: spec.Tap.MAC}})
	}
	steps = append(steps,
		apiStep{"/vsock", vsockDevice{GuestCID: spec.VsockCID, UDSPath: spec.VsockUDS}},
		apiStep{"/serial", serialDevice{SerialOutPath: p.ConsoleSocket}},
		apiStep{"/actions", action{ActionType: "InstanceStart"}},
	)
	for _, st := range steps {
		if err := c.do(ctx, http.MethodPut, st.path, st.body, nil); err != nil {
			return err
		}
	}
	return nil
}

// apiStep is one configuration request.
type apiStep struct {
	path string
	body any
}

// Info returns GET / of p's VMM.
func (d *Driver) Info(ctx context.Context, p *vmm.Process) (InstanceInfo, error) {
	var info InstanceInfo
	if err := d.RequireRunning(p); err != nil {
		return info, err
	}
	err := d.client(p.APISocket).do(ctx, http.MethodGet, "/", nil, &info)
	return info, err
}

// Adopt re-attaches to a running Firecracker after a daemon restart (the
// console copier). A Firecracker whose guest was never started (the previous
// daemon died while configuring it) or is paused (it died during a Save, or
// during a resume, possibly before the drives were re-pointed) cannot be
// finished from the handle: Adopt reports ErrNotRunning and the caller
// tears it down.
func (d *Driver) Adopt(ctx context.Context, p *vmm.Process) error {
	if err := d.Base.Adopt(ctx, p); err != nil {
		return err
	}
	info, err := d.Info(ctx, p)
	if err != nil {
		return err
	}
	if info.State == "Not started" {
		return fmt.Errorf("%w: firecracker pid %d never started its guest", vmm.ErrNotRunning, p.PID)
	}
	if info.State == "Paused" {
		return fmt.Errorf("%w: firecracker pid %d has its guest paused (a save or a resume was cut short)", vmm.ErrNotRunning, p.PID)
	}
	return nil
}

// Stop sends Ctrl+Alt+Del to the guest (PUT /actions SendCtrlAltDel: the
// guest reboots, which ends Firecracker), waits up to timeout, then kills.
func (d *Driver) Stop(ctx context.Context, p *vmm.Process, timeout time.Duration) error {
	return d.StopWith(ctx, p, vmm.StopStep{Name: "SendCtrlAltDel", Wait: timeout, Do: func(ctx context.Context) error {
		return d.client(p.APISocket).do(ctx, http.MethodPut, "/actions", action{ActionType: "SendCtrlAltDel"}, nil)
	}})
}
