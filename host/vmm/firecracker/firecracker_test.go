package firecracker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/guestboot"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/internal/testenv"
	"github.com/paddock-vm/paddock/internal/testwait"
	"github.com/paddock-vm/paddock/internal/unixtest"
)

// The test binary doubles as a stand-in firecracker (FAKE_FC=1): it serves
// the API on --api-sock, validates every request against the swagger
// description and answers 400 with the reason when one does not conform,
// logs each request to FAKE_FC_LOG, emulates Firecracker's pre-boot/post-boot
// rules, serves hybrid vsock with a real agent protocol server, writes guest
// console lines into the serial FIFO, and exits on SendCtrlAltDel (the
// guest's reboot ends Firecracker) unless FAKE_FC_IGNORE_CAD=1.
func TestMain(m *testing.M) {
	if os.Getenv("FAKE_FC") == "1" {
		os.Exit(fakeFirecracker())
	}
	os.Exit(m.Run())
}

// requireAPI loads the API description or skips (fails under CI=true).
func requireAPI(t *testing.T) *swagger {
	t.Helper()
	s, err := loadSwagger(apiDescription())
	if err != nil {
		testenv.SkipBecause(t, fmt.Sprintf("Firecracker API description not available: %v", err))
	}
	return s
}

type loggedRequest struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body,omitempty"`
	Error  string          `json:"error,omitempty"`
}

func fakeFirecracker() int {
	var sock, id string
	for i := 1; i+1 < len(os.Args); i++ {
		switch os.Args[i] {
		case "--api-sock":
			sock = os.Args[i+1]
		case "--id":
			id = os.Args[i+1]
		}
	}
	if sock == "" || id == "" {
		fmt.Println("fake firecracker: --api-sock and --id required")
		return 2
	}
	api, err := loadSwagger(os.Getenv("FAKE_FC_API"))
	if err != nil {
		fmt.Println("fake firecracker:", err)
		return 2
	}
	logf, err := os.OpenFile(os.Getenv("FAKE_FC_LOG"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Println("fake firecracker:", err)
		return 2
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Println("fake firecracker:", err)
		return 2
	}
	var (
		mu sync.Mutex
		// started: a machine exists (booted or loaded from a snapshot);
		// guestUp: its guest has run (startGuest was called)
		started, paused, guestUp bool
		config                   = map[string]json.RawMessage{}
	)
	fail, hang := os.Getenv("FAKE_FC_FAIL"), os.Getenv("FAKE_FC_HANG")
	preBootOnly := map[string]bool{"/machine-config": true, "/boot-source": true, "/vsock": true, "/serial": true}
	write := func(w http.ResponseWriter, code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		if v != nil {
			_ = json.NewEncoder(w).Encode(v)
		}
	}
	logRequest := func(r *http.Request, body []byte, err error) {
		rec := loggedRequest{Method: r.Method, Path: r.URL.Path}
		if len(body) > 0 {
			rec.Body = json.RawMessage(body)
		}
		if err != nil {
			rec.Error = err.Error()
		}
		b, _ := json.Marshal(rec)
		_, _ = logf.Write(append(b, '\n'))
	}
	// rules are Firecracker's preconditions (from its API description and
	// documentation), checked before a request acts
	rules := func(r *http.Request, body []byte) error {
		path := r.URL.Path
		switch {
		case path == fail:
			return errors.New("injected failure")
		case r.Method == http.MethodPut && started && (preBootOnly[path] || strings.HasPrefix(path, "/drives/") || strings.HasPrefix(path, "/network-interfaces/")):
			return errors.New("The requested operation is not supported after starting the microVM.")
		case r.Method == http.MethodPut && path == "/snapshot/load" && (started || len(config) > 0):
			return errors.New("Loading a microVM snapshot not allowed after configuring boot-specific resources.")
		case r.Method == http.MethodPut && path == "/snapshot/create" && (!started || !paused):
			return errors.New("Create snapshot: the microVM must be paused.")
		case r.Method == http.MethodPatch && !started:
			return errors.New("The requested operation is not supported before starting the microVM.")
		case r.Method == http.MethodPatch && strings.HasPrefix(path, "/drives/") && config[path] == nil:
			return fmt.Errorf("Drive %s not found.", strings.TrimPrefix(path, "/drives/"))
		case path == "/actions":
			var act action
			_ = json.Unmarshal(body, &act)
			switch {
			case act.ActionType == "InstanceStart" && started:
				return errors.New("the microVM is already running")
			case act.ActionType == "InstanceStart" && (config["/boot-source"] == nil):
				return errors.New("Cannot start microvm without kernel configuration.")
			case act.ActionType == "SendCtrlAltDel" && !started:
				return errors.New("SendCtrlAltDel: the microVM is not running")
			}
		}
		return nil
	}
	runGuest := func() {
		if !guestUp {
			guestUp = true
			startGuest(config)
		}
	}
	// apply performs a valid request; a non-nil answer is sent with 200
	apply := func(r *http.Request, body []byte) (any, error) {
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/":
			state := "Not started"
			if started {
				state = map[bool]string{false: "Running", true: "Paused"}[paused]
			}
			return map[string]string{"app_name": "Firecracker", "id": id, "state": state, "vmm_version": "1.17.0-fake"}, nil
		case r.Method == http.MethodGet && r.URL.Path == "/vm/config":
			return fakeVMConfig(api, config)
		case r.Method == http.MethodPatch && r.URL.Path == "/vm":
			var st vmState
			_ = json.Unmarshal(body, &st)
			if paused = st.State == "Paused"; !paused {
				runGuest()
			}
			return nil, nil
		case r.Method == http.MethodPatch && strings.HasPrefix(r.URL.Path, "/drives/"):
			var pd partialDrive
			var dr drive
			_ = json.Unmarshal(body, &pd)
			_ = json.Unmarshal(config[r.URL.Path], &dr)
			dr.PathOnHost = pd.PathOnHost
			config[r.URL.Path], _ = json.Marshal(dr)
			return nil, nil
		case r.Method != http.MethodPut:
			return nil, errors.New("not emulated")
		case r.URL.Path == "/snapshot/create":
			var sc snapshotCreate
			_ = json.Unmarshal(body, &sc)
			// the fake's "VM state" is its configuration; Firecracker
			// keeps no serial output path in a snapshot (assumed)
			saved := maps.Clone(config)
			delete(saved, "/serial")
			delete(saved, "/actions")
			b, _ := json.Marshal(saved)
			if err := os.WriteFile(sc.SnapshotPath, b, 0o600); err != nil {
				return nil, err
			}
			if err := os.WriteFile(sc.MemFilePath, []byte("fake guest memory"), 0o600); err != nil {
				return nil, err
			}
			if os.Getenv("FAKE_FC_PARTIAL") == "1" {
				return nil, errors.New("injected failure after writing the files")
			}
			return nil, nil
		case r.URL.Path == "/snapshot/load":
			var sl snapshotLoad
			_ = json.Unmarshal(body, &sl)
			return nil, fakeLoad(sl, config, func() {
				started, paused = true, !sl.ResumeVM
				if sl.ResumeVM {
					runGuest()
				}
			})
		}
		config[r.URL.Path] = json.RawMessage(body)
		if r.URL.Path == "/actions" {
			var act action
			_ = json.Unmarshal(body, &act)
			switch act.ActionType {
			case "InstanceStart":
				started = true
				runGuest()
			case "SendCtrlAltDel":
				if os.Getenv("FAKE_FC_IGNORE_CAD") != "1" {
					go func() { time.Sleep(50 * time.Millisecond); os.Exit(0) }()
				}
			}
		}
		return nil, nil
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		mu.Lock()
		defer mu.Unlock()
		err := api.checkRequest(r.Method, r.URL.Path, body)
		if err == nil {
			err = rules(r, body)
		}
		if err == nil && r.URL.Path == hang {
			logRequest(r, body, nil)
			time.Sleep(time.Hour) // holds mu: the whole API hangs
		}
		var answer any
		if err == nil {
			answer, err = apply(r, body)
		}
		logRequest(r, body, err)
		switch {
		case err != nil:
			write(w, http.StatusBadRequest, map[string]string{"fault_message": err.Error()})
		case answer != nil:
			write(w, http.StatusOK, answer)
		default:
			write(w, http.StatusNoContent, nil)
		}
	})
	_ = http.Serve(l, h)
	return 1
}

// fakeLoad restores the configuration a fake snapshot holds into config,
// with the load's overrides, and calls loaded; like Firecracker it fails
// when a file it must open is missing or an override names no device.
func fakeLoad(sl snapshotLoad, config map[string]json.RawMessage, loaded func()) error {
	b, err := os.ReadFile(sl.SnapshotPath)
	if err != nil {
		return fmt.Errorf("Load snapshot error: cannot open the snapshot file: %v", err)
	}
	saved := map[string]json.RawMessage{}
	if err := json.Unmarshal(b, &saved); err != nil {
		return fmt.Errorf("Load snapshot error: %v", err)
	}
	if _, err := os.Stat(sl.MemBackend.BackendPath); err != nil {
		return fmt.Errorf("Load snapshot error: cannot open the memory file: %v", err)
	}
	// the drives are opened at their saved paths
	for k, v := range saved {
		var dr drive
		if strings.HasPrefix(k, "/drives/") && json.Unmarshal(v, &dr) == nil {
			if _, err := os.Stat(dr.PathOnHost); err != nil {
				return fmt.Errorf("Load snapshot error: Cannot open the block device backing file: %v", err)
			}
		}
	}
	for _, o := range sl.NetworkOverrides {
		key := "/network-interfaces/" + o.IfaceID
		var ni networkInterface
		if json.Unmarshal(saved[key], &ni) != nil {
			return fmt.Errorf("Load snapshot error: network interface %s not found", o.IfaceID)
		}
		ni.HostDevName = o.HostDevName
		saved[key], _ = json.Marshal(ni)
	}
	if o := sl.VsockOverride; o != nil {
		var vs vsockDevice
		if json.Unmarshal(saved["/vsock"], &vs) != nil {
			return errors.New("Load snapshot error: no vsock device to override")
		}
		vs.UDSPath = o.UDSPath
		saved["/vsock"], _ = json.Marshal(vs)
	}
	maps.Copy(config, saved)
	loaded()
	return nil
}

// fakeVMConfig answers GET /vm/config from the configuration, checked
// against the API description's FullVmConfiguration.
func fakeVMConfig(api *swagger, config map[string]json.RawMessage) (any, error) {
	full := map[string]any{}
	var drives, ifaces []json.RawMessage
	for _, k := range slices.Sorted(maps.Keys(config)) {
		switch {
		case strings.HasPrefix(k, "/drives/"):
			drives = append(drives, config[k])
		case strings.HasPrefix(k, "/network-interfaces/"):
			ifaces = append(ifaces, config[k])
		case k == "/machine-config" || k == "/vsock" || k == "/boot-source":
			full[k[1:]] = config[k]
		}
	}
	if drives != nil {
		full["drives"] = drives
	}
	if ifaces != nil {
		full["network-interfaces"] = ifaces
	}
	b, _ := json.Marshal(full)
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if err := api.validate(v, &schema{Ref: "#/definitions/FullVmConfiguration"}, "GET /vm/config answer"); err != nil {
		return nil, fmt.Errorf("fake: %v", err)
	}
	return json.RawMessage(b), nil
}

// startGuest emulates the guest side after InstanceStart: console output on
// the serial FIFO and the agent behind hybrid vsock.
func startGuest(config map[string]json.RawMessage) {
	var serial serialDevice
	if json.Unmarshal(config["/serial"], &serial) == nil && serial.SerialOutPath != "" {
		// like Firecracker: the FIFO is opened for writing without blocking
		if f, err := os.OpenFile(serial.SerialOutPath, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			go func() {
				for i := 0; ; i++ {
					fmt.Fprintf(f, "fake guest console line %d\n", i)
					time.Sleep(5 * time.Millisecond)
				}
			}()
		}
	}
	// the guest's agent reads its channel from the kernel command line, as
	// paddock-agent does: it serves on the vsock port named there, and a
	// virtio-serial port named there does not exist on Firecracker
	var bs bootSource
	_ = json.Unmarshal(config["/boot-source"], &bs)
	boot, err := guestboot.Parse(bs.BootArgs)
	var bootErrs []string
	if err != nil {
		bootErrs = append(bootErrs, "cmdline: "+err.Error())
	}
	if boot.Serial != "" {
		bootErrs = append(bootErrs, fmt.Sprintf("control: no virtio-serial port %q", boot.Serial))
	}
	var vs vsockDevice
	if json.Unmarshal(config["/vsock"], &vs) != nil || vs.UDSPath == "" || boot.Vsock == 0 {
		return
	}
	l, err := net.Listen("unix", vs.UDSPath)
	if err != nil {
		return
	}
	srv := agent.NewServer(agent.ServerConfig{AgentVersion: "fake", Hello: func() agent.HelloInfo {
		return agent.HelloInfo{Hostname: boot.Hostname, Kit: "fake", BootError: strings.Join(bootErrs, "; ")}
	}})
	unixtest.Serve(l, func(c net.Conn) {
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		if err != nil || line != fmt.Sprintf("CONNECT %d\n", boot.Vsock) {
			fmt.Fprint(c, "ERR\n")
			return
		}
		fmt.Fprint(c, "OK 1073741824\n")
		_ = srv.ServeConn(context.Background(), c)
	})
}

var idSeq atomic.Int64

func testID() string { return fmt.Sprintf("f%d-%d", os.Getpid(), idSeq.Add(1)) }

// fakeDriver returns a driver whose "firecracker" is this test binary.
func fakeDriver(t *testing.T, dir string, env ...string) (*Driver, string) {
	t.Helper()
	requireAPI(t)
	log := filepath.Join(dir, "requests.log")
	d := &Driver{Binary: os.Args[0], Env: append([]string{"FAKE_FC=1", "FAKE_FC_API=" + apiDescription(), "FAKE_FC_LOG=" + log}, env...)}
	t.Cleanup(func() { d.Close() })
	return d, log
}

func readLog(t *testing.T, path string) []loggedRequest {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []loggedRequest
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var r loggedRequest
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

func spec(t *testing.T, dir string) vmm.Spec {
	t.Helper()
	for _, f := range []string{"vmlinux", "initrd", "root.ext4", "data.ext4"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return vmm.Spec{
		VMID: testID(), Kernel: filepath.Join(dir, "vmlinux"), Initrd: filepath.Join(dir, "initrd"),
		Cmdline: "paddock.root=/dev/vda paddock.hostname=fcguest", CPUs: 2, MemoryMiB: 512,
		Disks: []vmm.Disk{{Path: filepath.Join(dir, "root.ext4")}, {Path: filepath.Join(dir, "data.ext4"), ReadOnly: true}},
		Tap:   &vmm.Tap{Name: "pdk-fc", MAC: "02:00:00:00:00:09"},
		// sun_path is 108 bytes: keep the run directory short
		RunDir: filepath.Join(dir, "r"), ConsoleLogMax: 4096,
	}
}

// shortTempDir is t.TempDir under /tmp with a short name (UNIX socket
// paths are limited to 108 bytes).
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "pfc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// started is a VM started through the fake.
type started struct {
	d    *Driver
	dir  string
	log  string
	spec vmm.Spec
	p    *vmm.Process
	ctx  context.Context
}

// startFake starts a VM from spec (changed by mutate, if given) through the
// fake; it is killed at cleanup.
func startFake(t *testing.T, mutate func(*vmm.Spec)) *started {
	t.Helper()
	return startFakeEnv(t, nil, mutate)
}

// startFakeEnv is startFake with the fake's environment extended by env.
func startFakeEnv(t *testing.T, env []string, mutate func(*vmm.Spec)) *started {
	t.Helper()
	vm := &started{dir: shortTempDir(t)}
	vm.d, vm.log = fakeDriver(t, vm.dir, env...)
	vm.spec = spec(t, vm.dir)
	if mutate != nil {
		mutate(&vm.spec)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	vm.ctx = ctx
	p, err := vm.d.Start(ctx, vm.spec)
	if err != nil {
		t.Fatal(err)
	}
	vm.p = p
	t.Cleanup(func() { _ = New().Kill(context.Background(), p) })
	return vm
}

// hello dials p's agent and returns its hello.
func hello(t *testing.T, ctx context.Context, p *vmm.Process) agent.HelloInfo {
	t.Helper()
	conn, err := vmm.DialAgent(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	c, err := agent.NewClient(ctx, conn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.Hello()
}

func TestLifecycle(t *testing.T) {
	vm := startFake(t, nil)
	d, logPath, s, p, ctx, dir := vm.d, vm.log, vm.spec, vm.p, vm.ctx, vm.dir

	// every request was valid, in Firecracker's order, with paddock's values
	reqs := readLog(t, logPath)
	var seq []string
	for _, r := range reqs {
		if r.Error != "" {
			t.Errorf("%s %s rejected: %s (body %s)", r.Method, r.Path, r.Error, r.Body)
		}
		if r.Method == http.MethodPut {
			seq = append(seq, r.Path)
		}
	}
	want := []string{"/machine-config", "/boot-source", "/drives/disk0", "/drives/disk1", "/network-interfaces/eth0", "/vsock", "/serial", "/actions"}
	if !slices.Equal(seq, want) {
		t.Fatalf("PUT sequence %v, want %v", seq, want)
	}
	bodies := map[string]string{}
	for _, r := range reqs {
		bodies[r.Path] = string(r.Body)
	}
	bootArgs, err := KernelCmdline(s)
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"/machine-config":          `{"vcpu_count":2,"mem_size_mib":512}`,
		"/boot-source":             fmt.Sprintf(`{"kernel_image_path":%q,"initrd_path":%q,"boot_args":%q}`, s.Kernel, s.Initrd, bootArgs),
		"/drives/disk0":            fmt.Sprintf(`{"drive_id":"disk0","path_on_host":%q,"is_root_device":false,"is_read_only":false}`, s.Disks[0].Path),
		"/drives/disk1":            fmt.Sprintf(`{"drive_id":"disk1","path_on_host":%q,"is_root_device":false,"is_read_only":true}`, s.Disks[1].Path),
		"/network-interfaces/eth0": `{"iface_id":"eth0","host_dev_name":"pdk-fc","guest_mac":"02:00:00:00:00:09"}`,
		"/vsock":                   fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, filepath.Join(s.RunDir, "vsock.sock")),
		"/serial":                  fmt.Sprintf(`{"serial_out_path":%q}`, filepath.Join(s.RunDir, "console.fifo")),
		"/actions":                 `{"action_type":"InstanceStart"}`,
	} {
		if bodies[path] != want {
			t.Errorf("%s body %s, want %s", path, bodies[path], want)
		}
	}

	// the handle: tag, sockets, hybrid vsock
	if id, drv, ok := vmm.TagOf(p.Cmdline); !ok || id != s.VMID || drv != Name || p.Cmdline[1] != "--api-sock" {
		t.Fatalf("cmdline %q", p.Cmdline)
	}
	if p.ControlKind != vmm.ControlHybridVsock || p.Accel != vmm.AccelKVM || len(p.Sockets) != 3 {
		t.Fatalf("handle %+v", p)
	}
	if st, err := d.Probe(p); err != nil || st != vmm.StateRunning {
		t.Fatalf("Probe: %v %v", st, err)
	}
	if info, err := d.Info(ctx, p); err != nil || info.State != "Running" || info.ID != vmm.Tag(s.VMID) {
		t.Fatalf("Info: %+v %v", info, err)
	}
	if h := hello(t, ctx, p); h.Hostname != "fcguest" || h.BootError != "" {
		t.Fatalf("hello %+v", h)
	}
	testwait.For(t, "console through the FIFO", 10*time.Second, func() bool {
		b, _ := os.ReadFile(p.ConsoleLog)
		return strings.Contains(string(b), "fake guest console line 20")
	})

	// a daemon restart: drop the driver, re-adopt from JSON
	js, _ := json.Marshal(p)
	d.Close()
	var h vmm.Process
	if err := json.Unmarshal(js, &h); err != nil {
		t.Fatal(err)
	}
	d2, _ := fakeDriver(t, dir)
	if err := d2.Adopt(ctx, &h); err != nil {
		t.Fatal(err)
	}
	size := func() int64 { fi, _ := os.Stat(h.ConsoleLog); return fi.Size() }
	testwait.For(t, "console after re-adoption", 10*time.Second, func() bool {
		b, _ := os.ReadFile(h.ConsoleLog)
		return strings.Count(string(b), "\n") > 10 && size() <= h.ConsoleLogMax
	})
	if size() > h.ConsoleLogMax {
		t.Fatalf("console log %d bytes, cap %d", size(), h.ConsoleLogMax)
	}

	// Stop: SendCtrlAltDel ends the fake
	start := time.Now()
	if err := d2.Stop(ctx, &h, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("Stop took %v: SendCtrlAltDel not sent or not effective", time.Since(start))
	}
	reqs = readLog(t, logPath)
	if last := reqs[len(reqs)-1]; last.Path != "/actions" || string(last.Body) != `{"action_type":"SendCtrlAltDel"}` || last.Error != "" {
		t.Fatalf("last request %+v", last)
	}
	if ex, err := d2.Wait(ctx, &h); err != nil || !ex.Known || ex.Code != 0 {
		t.Fatalf("exit %v %v", ex, err)
	}
	if st, _ := d2.Probe(&h); st != vmm.StateExited {
		t.Fatalf("after Stop: %v", st)
	}
	for _, s := range h.Sockets {
		if _, err := os.Lstat(s); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left: %v", s, err)
		}
	}
	if err := d2.Kill(ctx, &h); err != nil {
		t.Fatalf("Kill after exit: %v", err)
	}
}

func TestStopKillsWhenIgnored(t *testing.T) {
	dir := shortTempDir(t)
	d, _ := fakeDriver(t, dir, "FAKE_FC_IGNORE_CAD=1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := d.Start(ctx, spec(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = New().Kill(context.Background(), p) })
	start := time.Now()
	if err := d.Stop(ctx, p, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Fatalf("did not wait: %v", took)
	}
	if ex, _ := d.Wait(ctx, p); ex.Signal != int(syscall.SIGKILL) {
		t.Fatalf("exit %v", ex)
	}
}

func TestStartFailures(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name string
		env  []string
		mut  func(*vmm.Spec)
		want string
		is   error
	}{
		{"qcow2 disk", nil, func(s *vmm.Spec) { s.Disks[0].Format = vmm.FormatQCOW2 }, "raw disks only", vmm.ErrUnsupported},
		{"tcg", nil, func(s *vmm.Spec) { s.Accel = vmm.AccelTCG }, "needs KVM", vmm.ErrUnsupported},
		{"API rejects boot-source", []string{"FAKE_FC_FAIL=/boot-source"}, nil, "PUT /boot-source: HTTP 400: injected failure", nil},
		{"API rejects InstanceStart", []string{"FAKE_FC_FAIL=/actions"}, nil, "HTTP 400: injected failure", nil},
		{"binary exits at once", []string{"FAKE_FC_API=/nonexistent"}, nil, "exited at start", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := shortTempDir(t)
			d, _ := fakeDriver(t, dir, tc.env...)
			s := spec(t, dir)
			if tc.mut != nil {
				tc.mut(&s)
			}
			p, err := d.Start(ctx, s)
			if err == nil {
				_ = d.Kill(ctx, p)
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) || tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			var ae *APIError
			if strings.Contains(tc.want, "HTTP 400") && (!errors.As(err, &ae) || ae.Status != 400) {
				t.Fatalf("not an APIError: %v", err)
			}
			if found, _ := vmm.Find(s.VMID); len(found) != 0 {
				t.Fatalf("VMM left running: %+v", found[0])
			}
			ents, _ := os.ReadDir(s.RunDir)
			for _, e := range ents {
				if e.Type()&(os.ModeSocket|os.ModeNamedPipe) != 0 {
					t.Errorf("%s left", e.Name())
				}
			}
		})
	}
}

func TestKernelCmdline(t *testing.T) {
	for _, tc := range []struct{ cmdline, want string }{
		{"paddock.root=/dev/vda paddock.ip=10.0.0.2/24",
			"console=ttyS0 reboot=k panic=1 pci=off quiet paddock.root=/dev/vda paddock.ip=10.0.0.2/24 paddock.vsock=1024"},
		// the caller's channel is replaced, never appended to
		{"paddock.ctl=paddock.agent paddock.vsock=5 paddock.root=/dev/vda",
			"console=ttyS0 reboot=k panic=1 pci=off quiet paddock.root=/dev/vda paddock.vsock=1024"},
	} {
		got, err := KernelCmdline(vmm.Spec{Cmdline: tc.cmdline})
		if err != nil || got != tc.want {
			t.Errorf("KernelCmdline(%q) = %q, %v; want %q", tc.cmdline, got, err, tc.want)
		}
	}
	if _, err := KernelCmdline(vmm.Spec{Cmdline: "paddock.mtu=1"}); !errors.Is(err, vmm.ErrInvalidSpec) || !strings.Contains(err.Error(), "paddock.mtu") {
		t.Errorf("bad key: %v", err)
	}
}

// TestControlChannelContract: the kernel command line the driver sends (as
// the API server received it, validated against Firecracker's description)
// parses, the way paddock-agent parses it, to exactly the channel the driver
// set up and dials: no virtio-serial port (Firecracker has none) and the
// vsock port DialAgent connects to through the VM's vsock UDS. The caller's
// command line is the VM actor's, which names the QEMU port.
func TestControlChannelContract(t *testing.T) {
	vm := startFake(t, func(s *vmm.Spec) {
		s.Cmdline = "console=ttyS0 panic=-1 quiet paddock.root=/dev/vda paddock.hostname=fcguest paddock.config=/dev/vdb paddock.ctl=paddock.agent"
	})
	p := vm.p
	var boot bootSource
	var vsock vsockDevice
	for _, r := range readLog(t, vm.log) {
		if r.Error != "" {
			t.Fatalf("%s %s rejected: %s", r.Method, r.Path, r.Error)
		}
		switch r.Path {
		case "/boot-source":
			_ = json.Unmarshal(r.Body, &boot)
		case "/vsock":
			_ = json.Unmarshal(r.Body, &vsock)
		}
	}
	args, err := guestboot.Parse(boot.BootArgs)
	if err != nil {
		t.Fatalf("the guest would report: %v (boot_args %q)", err, boot.BootArgs)
	}
	if args.Serial != "" || args.Vsock != agent.DefaultVsockPort {
		t.Errorf("guest serves on virtio-serial %q, vsock %d; want none, %d (boot_args %q)", args.Serial, args.Vsock, agent.DefaultVsockPort, boot.BootArgs)
	}
	if args.Root != "/dev/vda" || args.Hostname != "fcguest" || args.Config != "/dev/vdb" {
		t.Errorf("the caller's keys did not arrive: %+v", args)
	}
	if p.ControlKind != vmm.ControlHybridVsock || vsock.UDSPath != p.ControlSocket {
		t.Errorf("vsock device on %q, handle dials %s %q", vsock.UDSPath, p.ControlKind, p.ControlSocket)
	}
	if h := hello(t, vm.ctx, p); h.BootError != "" {
		t.Errorf("the guest's boot error: %s", h.BootError)
	}
}

// TestValidator: the contract check itself rejects what Firecracker would.
func TestValidator(t *testing.T) {
	api := requireAPI(t)
	for _, tc := range []struct {
		name, method, path, body string
		ok                       bool
	}{
		{"machine-config", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":512}`, true},
		{"machine-config missing mem", "PUT", "/machine-config", `{"vcpu_count":2}`, false},
		{"machine-config vcpu string", "PUT", "/machine-config", `{"vcpu_count":"2","mem_size_mib":512}`, false},
		{"machine-config vcpu 0", "PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":512}`, false},
		{"machine-config vcpu 33", "PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":512}`, false},
		{"machine-config fractional", "PUT", "/machine-config", `{"vcpu_count":1.5,"mem_size_mib":512}`, false},
		{"machine-config unknown field", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":512,"ht_enabled":true}`, false},
		{"machine-config huge_pages enum", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":512,"huge_pages":"2M"}`, true},
		{"machine-config bad enum", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":512,"huge_pages":"1G"}`, false},
		{"boot-source", "PUT", "/boot-source", `{"kernel_image_path":"/k","boot_args":"console=ttyS0"}`, true},
		{"boot-source no kernel", "PUT", "/boot-source", `{"boot_args":"x"}`, false},
		{"drive", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/d","is_root_device":true,"is_read_only":false}`, true},
		{"drive id mismatch", "PUT", "/drives/a", `{"drive_id":"b","path_on_host":"/d","is_root_device":true}`, false},
		{"drive missing is_root_device", "PUT", "/drives/a", `{"drive_id":"a","path_on_host":"/d"}`, false},
		{"drive nested rate limiter", "PUT", "/drives/a", `{"drive_id":"a","is_root_device":false,"rate_limiter":{"bandwidth":{"size":1,"refill_time":100}}}`, true},
		{"drive nested unknown", "PUT", "/drives/a", `{"drive_id":"a","is_root_device":false,"rate_limiter":{"bandwidth":{"size":1,"refill_time":100,"x":1}}}`, false},
		{"drive without id in path", "PUT", "/drives/", `{"drive_id":"","is_root_device":false}`, false},
		{"network interface", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`, true},
		{"network interface mtu too small", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","mtu":10}`, false},
		{"vsock", "PUT", "/vsock", `{"guest_cid":3,"uds_path":"/v.sock"}`, true},
		{"vsock cid 2", "PUT", "/vsock", `{"guest_cid":2,"uds_path":"/v.sock"}`, false},
		{"serial", "PUT", "/serial", `{"serial_out_path":"/c.fifo"}`, true},
		{"InstanceStart", "PUT", "/actions", `{"action_type":"InstanceStart"}`, true},
		{"SendCtrlAltDel", "PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, true},
		{"unknown action", "PUT", "/actions", `{"action_type":"Reboot"}`, false},
		{"actions no body", "PUT", "/actions", ``, false},
		{"actions trailing data", "PUT", "/actions", `{"action_type":"InstanceStart"} {}`, false},
		{"actions not JSON", "PUT", "/actions", `action_type=InstanceStart`, false},
		{"describe", "GET", "/", ``, true},
		{"describe with body", "GET", "/", `{}`, false},
		{"wrong method", "POST", "/actions", `{"action_type":"InstanceStart"}`, false},
		{"unknown path", "PUT", "/snapshots", `{}`, false},
		{"pause", "PATCH", "/vm", `{"state":"Paused"}`, true},
		{"resume", "PATCH", "/vm", `{"state":"Resumed"}`, true},
		{"vm bad state", "PATCH", "/vm", `{"state":"Stopped"}`, false},
		{"vm by PUT", "PUT", "/vm", `{"state":"Paused"}`, false},
		{"snapshot create", "PUT", "/snapshot/create", `{"snapshot_type":"Full","snapshot_path":"/s","mem_file_path":"/s.mem"}`, true},
		{"snapshot create no memory file", "PUT", "/snapshot/create", `{"snapshot_type":"Full","snapshot_path":"/s"}`, false},
		{"snapshot create bad type", "PUT", "/snapshot/create", `{"snapshot_type":"Incremental","snapshot_path":"/s","mem_file_path":"/m"}`, false},
		{"snapshot load", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/s.mem"},"resume_vm":false,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap1"}],"vsock_override":{"uds_path":"/v.sock"}}`, true},
		{"snapshot load bad backend", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_type":"Disk","backend_path":"/m"}}`, false},
		{"snapshot load backend no path", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_type":"File"}}`, false},
		{"snapshot load override no tap", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"},"network_overrides":[{"iface_id":"eth0"}]}`, false},
		{"snapshot load drive override", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"},"drive_overrides":[]}`, false},
		{"patch drive", "PATCH", "/drives/disk0", `{"drive_id":"disk0","path_on_host":"/d"}`, true},
		{"patch drive read-only", "PATCH", "/drives/disk0", `{"drive_id":"disk0","path_on_host":"/d","is_read_only":true}`, false},
		{"vm config", "GET", "/vm/config", ``, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := api.checkRequest(tc.method, tc.path, []byte(tc.body))
			if (err == nil) != tc.ok {
				t.Fatalf("checkRequest: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// TestAdoptNotStarted: a Firecracker whose daemon died before InstanceStart
// is not adoptable.
func TestAdoptNotStarted(t *testing.T) {
	dir := shortTempDir(t)
	d, _ := fakeDriver(t, dir)
	id := testID()
	p := &vmm.Process{Driver: Name, VMID: id, RunDir: dir, APISocket: apiPath(dir)}
	p.Sockets = []string{p.APISocket}
	argv := []string{os.Args[0], "--api-sock", p.APISocket, "--id", vmm.Tag(id)}
	if err := d.Launch(p, vmm.Command{Path: argv[0], Args: argv, Log: filepath.Join(dir, "vmm.log"), Env: d.Env}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t.Cleanup(func() { _ = New().Kill(context.Background(), p) })
	testwait.For(t, "API socket", 10*time.Second, func() bool { _, err := d.Info(ctx, p); return err == nil })
	if err := New().Adopt(ctx, p); !errors.Is(err, vmm.ErrNotRunning) || !strings.Contains(err.Error(), "never started") {
		t.Fatalf("Adopt: %v", err)
	}
}

// TestAdoptPaused: a Firecracker left paused (its daemon died during a save
// or a resume) is not adopted as a running VM.
func TestAdoptPaused(t *testing.T) {
	vm := startFake(t, nil)
	if _, err := vm.d.Save(vm.ctx, vm.p, filepath.Join(vm.dir, "state")); err != nil {
		t.Fatal(err)
	}
	d2, _ := fakeDriver(t, vm.dir)
	if err := d2.Adopt(vm.ctx, vm.p); !errors.Is(err, vmm.ErrNotRunning) || !strings.Contains(err.Error(), "paused") {
		t.Fatalf("Adopt: %v", err)
	}
}

// call is one expected API request: method, path and exact body.
type call struct{ method, path, body string }

// apiCalls returns the requests in reqs other than the readiness polls
// (GET /, repeated a varying number of times), failing the test on any
// the fake rejected unless allowErr.
func apiCalls(t *testing.T, reqs []loggedRequest, allowErr bool) []call {
	t.Helper()
	var out []call
	for _, r := range reqs {
		if r.Error != "" && !allowErr {
			t.Errorf("%s %s rejected: %s (body %s)", r.Method, r.Path, r.Error, r.Body)
		}
		if r.Method == http.MethodGet && r.Path == "/" {
			continue
		}
		out = append(out, call{r.Method, r.Path, string(r.Body)})
	}
	return out
}

func checkCalls(t *testing.T, what string, got, want []call) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s: requests\n%q\nwant\n%q", what, got, want)
	}
}

// saveCalls is what Save sends, in order.
func saveCalls(state string) []call {
	return []call{
		{"PATCH", "/vm", `{"state":"Paused"}`},
		{"PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_type":"Full","snapshot_path":%q,"mem_file_path":%q}`, state, state+".mem")},
	}
}

// resumeSpec is a spec for another VM resuming state: its own disks, run
// directory and tap (when the saved one has one), the same machine.
func resumeSpec(t *testing.T, saved vmm.Spec, state string) (vmm.Spec, string) {
	t.Helper()
	dir := shortTempDir(t)
	s := spec(t, dir)
	s.CPUs, s.MemoryMiB, s.Incoming = saved.CPUs, saved.MemoryMiB, state
	s.Disks = s.Disks[:len(saved.Disks)]
	for i := range s.Disks {
		s.Disks[i].ReadOnly = saved.Disks[i].ReadOnly
	}
	s.Tap = nil
	if saved.Tap != nil {
		s.Tap = &vmm.Tap{Name: saved.Tap.Name + "r", MAC: saved.Tap.MAC}
	}
	return s, dir
}

// saveFake starts a VM through the fake (spec changed by mutate), saves
// it to <its dir>/state and kills it, as the template code does.
func saveFake(t *testing.T, mutate func(*vmm.Spec)) (*started, string, vmm.Saved) {
	t.Helper()
	vm := startFake(t, mutate)
	state := filepath.Join(vm.dir, "state")
	saved, err := vm.d.Save(vm.ctx, vm.p, state)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.d.Kill(vm.ctx, vm.p); err != nil {
		t.Fatal(err)
	}
	return vm, state, saved
}

// TestSaveResume: Save pauses and snapshots with exactly the requests
// Firecracker's description allows, and reports both files; a second VM
// resumes the state on its own disks, tap and vsock socket, with the
// guest resumed only after its drives were re-pointed, and its agent
// answers on the new VM's socket.
func TestSaveResume(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*vmm.Spec)
	}{
		{"tap and two disks", nil},
		{"no network, one disk", func(s *vmm.Spec) { s.Tap, s.Disks = nil, s.Disks[:1] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := startFake(t, tc.mutate)
			state := filepath.Join(vm.dir, "state")
			booted := len(readLog(t, vm.log))
			saved, err := vm.d.Save(vm.ctx, vm.p, state)
			if err != nil {
				t.Fatal(err)
			}
			checkCalls(t, "Save", apiCalls(t, readLog(t, vm.log)[booted:], false), saveCalls(state))
			if !slices.Equal(saved.Files, []string{state, state + ".mem"}) {
				t.Fatalf("Saved.Files %q", saved.Files)
			}
			var total int64
			for _, f := range saved.Files {
				fi, err := os.Stat(f)
				if err != nil {
					t.Fatal(err)
				}
				total += fi.Size()
			}
			if saved.Bytes != total || total == 0 || saved.Took <= 0 {
				t.Fatalf("Saved %+v, files hold %d bytes", saved, total)
			}
			if info, err := vm.d.Info(vm.ctx, vm.p); err != nil || info.State != "Paused" {
				t.Fatalf("after Save: %+v %v, want the guest paused", info, err)
			}
			if err := vm.d.Kill(vm.ctx, vm.p); err != nil {
				t.Fatal(err)
			}
			stateBefore, _ := os.ReadFile(state)

			s2, dir2 := resumeSpec(t, vm.spec, state)
			d2, log2 := fakeDriver(t, dir2)
			p2, err := d2.Start(vm.ctx, s2)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = New().Kill(context.Background(), p2) })
			overrides := ""
			if s2.Tap != nil {
				overrides = fmt.Sprintf(`,"network_overrides":[{"iface_id":"eth0","host_dev_name":%q}]`, s2.Tap.Name)
			}
			want := []call{
				{"PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q},"resume_vm":false%s,"vsock_override":{"uds_path":%q}}`, state, state+".mem", overrides, s2.RunDir+"/vsock.sock")},
				{"GET", "/vm/config", ""},
			}
			for i, d := range s2.Disks {
				want = append(want, call{"PATCH", fmt.Sprintf("/drives/disk%d", i), fmt.Sprintf(`{"drive_id":"disk%d","path_on_host":%q}`, i, d.Path)})
			}
			want = append(want, call{"PATCH", "/vm", `{"state":"Resumed"}`})
			checkCalls(t, "resume", apiCalls(t, readLog(t, log2), false), want)

			// the restored machine is on this VM's files and devices
			var cfg vmConfig
			if err := d2.client(p2.APISocket).do(vm.ctx, http.MethodGet, "/vm/config", nil, &cfg); err != nil {
				t.Fatal(err)
			}
			for i, dr := range cfg.Drives {
				if dr.PathOnHost != s2.Disks[i].Path {
					t.Errorf("drive %s on %s, want %s", dr.DriveID, dr.PathOnHost, s2.Disks[i].Path)
				}
			}
			if len(cfg.NetworkInterfaces) != 0 && cfg.NetworkInterfaces[0].HostDevName != s2.Tap.Name {
				t.Errorf("network interface %+v, want tap %s", cfg.NetworkInterfaces[0], s2.Tap.Name)
			}
			if p2.ControlSocket != filepath.Join(s2.RunDir, "vsock.sock") || p2.ConsoleSocket != "" || len(p2.Sockets) != 2 {
				t.Errorf("handle %+v", p2)
			}
			if info, err := d2.Info(vm.ctx, p2); err != nil || info.State != "Running" {
				t.Fatalf("after resume: %+v %v", info, err)
			}
			if h := hello(t, vm.ctx, p2); h.Hostname != "fcguest" || h.BootError != "" {
				t.Fatalf("hello %+v", h)
			}
			if after, _ := os.ReadFile(state); !bytes.Equal(after, stateBefore) {
				t.Errorf("the state file changed on resume")
			}
		})
	}
}

// TestSaveFailures: a step Firecracker rejects is named with Firecracker's
// message, and Save leaves no file behind, nor touches one it refused to
// overwrite.
func TestSaveFailures(t *testing.T) {
	for _, tc := range []struct {
		name  string
		env   []string
		exist string // file made before Save: "state" or "state.mem"
		rel   bool   // a relative path
		want  string
		calls int // how many of saveCalls were sent
	}{
		{"snapshot/create rejected", []string{"FAKE_FC_FAIL=/snapshot/create"}, "", false,
			"save state: write the snapshot: firecracker: PUT /snapshot/create: HTTP 400: injected failure", 2},
		{"snapshot/create fails after writing", []string{"FAKE_FC_PARTIAL=1"}, "", false,
			"save state: write the snapshot: firecracker: PUT /snapshot/create: HTTP 400: injected failure after writing the files", 2},
		{"pause rejected", []string{"FAKE_FC_FAIL=/vm"}, "", false,
			"save state: pause the guest: firecracker: PATCH /vm: HTTP 400: injected failure", 1},
		{"state file exists", nil, "state", false, "file already exists", 0},
		{"memory file exists", nil, "state.mem", false, "file already exists", 0},
		{"relative path", nil, "", true, "must be an absolute path", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := startFakeEnv(t, tc.env, nil)
			state := filepath.Join(vm.dir, "state")
			if tc.exist != "" {
				if err := os.WriteFile(filepath.Join(vm.dir, tc.exist), []byte("keep"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			path := state
			if tc.rel {
				path = "state"
			}
			booted := len(readLog(t, vm.log))
			_, err := vm.d.Save(vm.ctx, vm.p, path)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Save: %v, want %q", err, tc.want)
			}
			var ae *APIError
			if strings.Contains(tc.want, "HTTP 400") && (!errors.As(err, &ae) || ae.Status != 400) {
				t.Fatalf("not an APIError: %v", err)
			}
			checkCalls(t, "Save", apiCalls(t, readLog(t, vm.log)[booted:], true), saveCalls(state)[:tc.calls])
			for _, f := range []string{state, state + ".mem"} {
				b, err := os.ReadFile(f)
				switch {
				case filepath.Base(f) == tc.exist && string(b) != "keep":
					t.Errorf("%s: %q %v, want it untouched", f, b, err)
				case filepath.Base(f) != tc.exist && !errors.Is(err, os.ErrNotExist):
					t.Errorf("%s left behind: %v", f, err)
				}
			}
		})
	}
}

// TestResumeRefused: a state whose files Firecracker could not read is
// refused, naming the file, before any VMM is launched (no API call).
func TestResumeRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, state string) string // returns Incoming
		want    func(state string) string
		is      error
	}{
		{"missing memory file", func(t *testing.T, state string) string {
			writeFile(t, state)
			return state
		}, func(state string) string {
			return "guest memory file of saved state " + state + ": open " + state + ".mem"
		}, os.ErrNotExist},
		{"missing state file", func(t *testing.T, state string) string {
			writeFile(t, state+".mem")
			return state
		}, func(state string) string { return "saved state: open " + state }, os.ErrNotExist},
		{"state is a directory", func(t *testing.T, state string) string {
			writeFile(t, state+".mem")
			if err := os.Mkdir(state, 0o700); err != nil {
				t.Fatal(err)
			}
			return state
		}, func(state string) string { return "saved state " + state + ": not a regular file" }, nil},
		{"unreadable state", func(t *testing.T, state string) string {
			if os.Geteuid() == 0 {
				t.Skip("root reads any file")
			}
			writeFile(t, state)
			writeFile(t, state+".mem")
			if err := os.Chmod(state, 0); err != nil {
				t.Fatal(err)
			}
			return state
		}, func(state string) string { return "saved state: open " + state }, os.ErrPermission},
		{"relative path", func(t *testing.T, state string) string { return "state" }, func(string) string { return "must be an absolute path" }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := shortTempDir(t)
			d, log := fakeDriver(t, dir)
			s := spec(t, dir)
			state := filepath.Join(dir, "state")
			s.Incoming = tc.prepare(t, state)
			p, err := d.Start(ctx, s)
			if err == nil {
				_ = d.Kill(ctx, p)
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tc.want(state)) || !errors.Is(err, vmm.ErrInvalidSpec) || tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("Start: %v, want %q", err, tc.want(state))
			}
			if _, err := os.Stat(log); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the API was called (request log: %v)", err)
			}
			if found, _ := vmm.Find(s.VMID); len(found) != 0 {
				t.Fatalf("VMM launched: %+v", found[0])
			}
		})
	}
}

func writeFile(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestResumeMismatch: a saved guest whose devices this VM's cannot stand
// in for is refused by name before the guest runs (never PATCH /vm
// Resumed), and the VMM is gone.
func TestResumeMismatch(t *testing.T) {
	vm, state, _ := saveFake(t, nil)
	for _, tc := range []struct {
		name   string
		mutate func(*vmm.Spec)
		want   string
		is     error
	}{
		{"no tap in this VM", func(s *vmm.Spec) { s.Tap = nil }, `network interface "eth0" (tap pdk-fc) has no tap in this VM: it cannot be redirected`, vmm.ErrInvalidSpec},
		{"one disk fewer", func(s *vmm.Spec) { s.Disks = s.Disks[:1] }, "the saved guest has 2 drives, this VM 1 disks", vmm.ErrInvalidSpec},
		{"read-only differs", func(s *vmm.Spec) { s.Disks[1].ReadOnly = false }, "drive disk1 is read-only=true in the saved guest, false in this VM", vmm.ErrInvalidSpec},
		{"other memory size", func(s *vmm.Spec) { s.MemoryMiB = 1024 }, "the saved guest has 2 vCPUs and 512 MiB, this VM 2 and 1024", vmm.ErrInvalidSpec},
		// last: it removes the saved VM's disk
		{"saved disks gone", func(*vmm.Spec) { _ = os.Remove(vm.spec.Disks[0].Path) }, "load the snapshot: firecracker: PUT /snapshot/load: HTTP 400: Load snapshot error: Cannot open the block device backing file", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, dir := resumeSpec(t, vm.spec, state)
			tc.mutate(&s)
			d, log := fakeDriver(t, dir)
			p, err := d.Start(vm.ctx, s)
			if err == nil {
				_ = d.Kill(vm.ctx, p)
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) || tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("Start: %v, want %q", err, tc.want)
			}
			calls := apiCalls(t, readLog(t, log), tc.is == nil)
			if len(calls) == 0 || calls[0].path != "/snapshot/load" || slices.ContainsFunc(calls, func(c call) bool { return c.method == "PATCH" }) {
				t.Fatalf("requests %q: want the load, no PATCH", calls)
			}
			if found, _ := vmm.Find(s.VMID); len(found) != 0 {
				t.Fatalf("VMM left running: %+v", found[0])
			}
		})
	}
}

// TestSnapshotContext: a Firecracker that never answers a snapshot
// request holds Save or a resume no longer than the caller's ctx (not the
// backstop for snapshot requests, nor APITimeout), and a resume then
// leaves no VMM.
func TestSnapshotContext(t *testing.T) {
	// The caller's ctx is cancelled once the fake has the request it hangs
	// on (not after a fixed time, which a slow start of the fake on a busy
	// host would use up before the request is sent).
	const limit = 30 * time.Second
	t.Run("save", func(t *testing.T) {
		vm := startFakeEnv(t, []string{"FAKE_FC_HANG=/snapshot/create"}, nil)
		vm.d.APITimeout = time.Minute
		state := filepath.Join(vm.dir, "state")
		booted := len(readLog(t, vm.log))
		ctx := cancelOnRequest(t, vm.log, "/snapshot/create")
		var err error
		within(t, "Save", limit, func() { _, err = vm.d.Save(ctx, vm.p, state) })
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "write the snapshot") {
			t.Fatalf("Save: %v", err)
		}
		checkCalls(t, "Save", apiCalls(t, readLog(t, vm.log)[booted:], false), saveCalls(state))
	})
	t.Run("resume", func(t *testing.T) {
		vm, state, _ := saveFake(t, nil)
		s, dir := resumeSpec(t, vm.spec, state)
		d, log := fakeDriver(t, dir, "FAKE_FC_HANG=/snapshot/load")
		d.APITimeout = time.Minute
		ctx := cancelOnRequest(t, log, "/snapshot/load")
		var p *vmm.Process
		var err error
		within(t, "Start", limit, func() { p, err = d.Start(ctx, s) })
		if err == nil {
			_ = d.Kill(context.Background(), p)
			t.Fatal("Start succeeded")
		}
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "load the snapshot") {
			t.Fatalf("Start: %v", err)
		}
		if calls := apiCalls(t, readLog(t, log), false); len(calls) != 1 || calls[0].path != "/snapshot/load" {
			t.Fatalf("requests %q", calls)
		}
		if found, _ := vmm.Find(s.VMID); len(found) != 0 {
			t.Fatalf("VMM left running: %+v", found[0])
		}
	})
}

// cancelOnRequest is a context cancelled once the fake's request log at
// path shows a request to api (or after a minute, a bound for a fake that
// never gets it).
func cancelOnRequest(t *testing.T, path, api string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	needle := `"path":"` + api + `"`
	go func() {
		defer cancel()
		for ctx.Err() == nil {
			if b, err := os.ReadFile(path); err == nil && strings.Contains(string(b), needle) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return ctx
}

// within runs f and fails the test when it has not returned after limit.
func within(t *testing.T, what string, limit time.Duration, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(limit):
		t.Fatalf("%s still running after %v: the caller's ctx does not bound it", what, limit)
	}
}
