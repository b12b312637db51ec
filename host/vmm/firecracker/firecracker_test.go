package firecracker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
		mu      sync.Mutex
		started bool
		config  = map[string]json.RawMessage{}
	)
	fail := os.Getenv("FAKE_FC_FAIL")
	preBootOnly := map[string]bool{"/machine-config": true, "/boot-source": true, "/vsock": true, "/serial": true}
	write := func(w http.ResponseWriter, code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		if v != nil {
			_ = json.NewEncoder(w).Encode(v)
		}
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		mu.Lock()
		defer mu.Unlock()
		err := api.checkRequest(r.Method, r.URL.Path, body)
		if err == nil && r.URL.Path == fail {
			err = errors.New("injected failure")
		}
		if err == nil && r.Method == http.MethodPut && started && (preBootOnly[r.URL.Path] || strings.HasPrefix(r.URL.Path, "/drives/") || strings.HasPrefix(r.URL.Path, "/network-interfaces/")) {
			err = errors.New("The requested operation is not supported after starting the microVM.")
		}
		var act action
		if err == nil && r.URL.Path == "/actions" {
			_ = json.Unmarshal(body, &act)
			switch {
			case act.ActionType == "InstanceStart" && started:
				err = errors.New("the microVM is already running")
			case act.ActionType == "InstanceStart" && (config["/boot-source"] == nil):
				err = errors.New("Cannot start microvm without kernel configuration.")
			case act.ActionType == "SendCtrlAltDel" && !started:
				err = errors.New("SendCtrlAltDel: the microVM is not running")
			}
		}
		rec := loggedRequest{Method: r.Method, Path: r.URL.Path}
		if len(body) > 0 {
			rec.Body = json.RawMessage(body)
		}
		if err != nil {
			rec.Error = err.Error()
		}
		b, _ := json.Marshal(rec)
		_, _ = logf.Write(append(b, '\n'))
		if err != nil {
			write(w, http.StatusBadRequest, map[string]string{"fault_message": err.Error()})
			return
		}
		if r.Method == http.MethodGet && r.URL.Path == "/" {
			state := "Not started"
			if started {
				state = "Running"
			}
			write(w, http.StatusOK, map[string]string{"app_name": "Firecracker", "id": id, "state": state, "vmm_version": "1.17.0-fake"})
			return
		}
		if r.Method != http.MethodPut {
			write(w, http.StatusBadRequest, map[string]string{"fault_message": "not emulated"})
			return
		}
		config[r.URL.Path] = json.RawMessage(body)
		if r.URL.Path == "/actions" {
			switch act.ActionType {
			case "InstanceStart":
				started = true
				startGuest(config)
			case "SendCtrlAltDel":
				if os.Getenv("FAKE_FC_IGNORE_CAD") != "1" {
					go func() { time.Sleep(50 * time.Millisecond); os.Exit(0) }()
				}
			}
		}
		write(w, http.StatusNoContent, nil)
	})
	_ = http.Serve(l, h)
	return 1
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
	vm := &started{dir: shortTempDir(t)}
	vm.d, vm.log = fakeDriver(t, vm.dir)
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
