package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/paddock-vm/paddock/bootkit"
	"github.com/paddock-vm/paddock/internal/nettopo"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// The network bench (-net): TCP throughput out of a guest, measured where
// the bytes arrive, as a ratio to the same transfer over a plain veth pair
// between two namespaces made in the same run (nettopo.VethReference).
//
//	direct:         guest `nc HOST 5002 -e dd` straight to a sink in the daemon's
//	                namespace, no NAT and no forwarding: what paddock's own path
//	                (QEMU, tap or passt) costs (nettopo.GuestSendTo, Sink.Next)
//	NAT:            guest `nc 192.0.2.1 5001 -e dd` through the daemon's NAT into
//	                the uplink's sink (nettopo.GuestSend, Sink.Next)
//	published port: guest `nc -ll -p 8080 -e ...` behind `-p HOSTPORT:8080`,
//	                fetched from the client namespace at the daemon's address;
//	                the client sends a line first (nettopo.Fetch, GuestServe)
//
// each for a bridge-mode VM and a `--network user` (passt) VM; the NAT and
// published-port figures are also given as a ratio to their mode's direct
// figure. The direct sink is on the bridge's gateway address, opened to
// the guest by vm.host_access; passt runs with --no-map-gw (its gateway
// leads nowhere), so a user-mode guest reaches the daemon's namespace at
// that namespace's own address, through passt and nothing else.
//
// Each mode has its own rig (netRig): a fresh namespace with the topology
// around it (nettopo.Build), its own dirs, its own paddockd: bridge mode's
// runs as root; user mode's as an unused uid with no capability at all, as
// passt requires (e2e TestNetUserMode). VMs start through the CLI, as a
// user's do. The rigs run one after the other and are torn down whole:
// daemon, QEMU, passt, namespaces, dirs. A figure whose feature the CLI
// lacks is printed as "not available" with the reason, one that fails as
// FAILED with the error, never as a number.

const (
	netGuestPort  = 8080
	netDirectPort = 5002            // the daemon namespace's sink for the direct figures
	netRefRuns    = 3               // veth transfers, and transfers per VM figure: each is their median
	netTimeout    = 4 * time.Minute // one CLI call, one transfer
	netImage      = "netbench:1"
	// netUserUID runs user mode's paddockd: a uid no account or e2e
	// daemon uses.
	netUserUID = 61001
)

// netApplets is what the bench image's busybox provides.
var netApplets = []string{"sh", "dd", "nc", "sleep", "cat", "wget", "nslookup", "ip", "kill"}

// netModes are the rigs, in the order they run.
var netModes = []string{"bridge", "user"}

func runNet(daemonBin, cliBin string, size int64) error {
	size = nettopo.Blocks(size) * nettopo.GuestBlock
	ctx, cancel := context.WithTimeout(context.Background(), netTimeout)
	defer cancel()
	var refs []nettopo.Result
	for range netRefRuns {
		r, err := nettopo.VethReference(ctx, size)
		if err != nil {
			return fmt.Errorf("veth reference: %w", err)
		}
		refs = append(refs, r)
	}
	ref := median(refs)
	fmt.Printf("reference: plain veth pair, %d MiB over TCP         %8.1f MB/s  (every figure: median of %d)\n", size>>20, ref.BytesPerSec()/1e6, netRefRuns)

	const target = "target >= 0.5x"
	figures := []netFigure{
		{label: "bridge: guest -> gateway (no NAT, host_access)", mode: "bridge", kind: "direct"},
		{label: "bridge: guest -> uplink through NAT", mode: "bridge", kind: "nat", target: target},
		{label: "bridge: guest -> client through -p", mode: "bridge", kind: "publish", target: target},
		{label: "user (passt): guest -> daemon ns's own address", mode: "user", kind: "direct"},
		{label: "user (passt): guest -> uplink", mode: "user", kind: "nat"},
		{label: "user (passt): guest -> client through -p", mode: "user", kind: "publish"},
	}
	why := netUnavailable(cliBin)
	for i := range figures {
		figures[i].unavailable = why[figures[i].mode]
	}
	hostPort := 18080
	for _, mode := range netModes {
		var mine []*netFigure
		for i := range figures {
			if figures[i].mode == mode && figures[i].unavailable == "" {
				mine = append(mine, &figures[i])
			}
		}
		if len(mine) > 0 {
			netModeFigures(daemonBin, cliBin, mode, hostPort, size, mine)
		}
		hostPort++
	}

	slow := ""
	if _, err := os.Stat("/dev/kvm"); err != nil {
		slow = "; below it here: no /dev/kvm, QEMU emulates the guest CPU (TCG), so the guest is CPU-bound"
	}
	direct := map[string]*netFigure{}
	for i := range figures {
		if f := &figures[i]; f.kind == "direct" && f.err == nil && f.unavailable == "" {
			direct[f.mode] = f
		}
	}
	for _, f := range figures {
		switch {
		case f.unavailable != "":
			fmt.Printf("%-50s not available: %s\n", f.label, f.unavailable)
		case f.err != nil:
			fmt.Printf("%-50s FAILED: %v\n", f.label, f.err)
		default:
			bps := f.res.BytesPerSec()
			line := fmt.Sprintf("%-50s %8.1f MB/s  = %.2fx veth", f.label, bps/1e6, bps/ref.BytesPerSec())
			if d := direct[f.mode]; f.kind != "direct" {
				if d != nil {
					line += fmt.Sprintf(", %.2fx %s", bps/d.res.BytesPerSec(), netDirectName[f.mode])
				} else {
					line += fmt.Sprintf(", no %s figure", netDirectName[f.mode])
				}
			}
			if f.target != "" {
				note := f.target
				if bps/ref.BytesPerSec() < 0.5 {
					note += slow
				}
				line += "  (" + note + ")"
			}
			fmt.Println(line)
		}
	}
	for _, f := range figures {
		if f.err != nil {
			return errors.New("a network figure failed")
		}
	}
	return nil
}

// netDirectName names a mode's direct figure in the ratios to it.
var netDirectName = map[string]string{"bridge": "guest->gateway", "user": "guest->daemon ns"}

type netFigure struct {
	label, mode, kind, target string
	unavailable               string // why the figure cannot be taken here
	res                       nettopo.Result
	err                       error
}

// netUnavailable says, per network mode, why no VM figure can be taken
// ("" when one can): no root, no guest kernel, no passt or setpriv, or a
// CLI without the flags (-p, --network) the figures need.
func netUnavailable(cliBin string) map[string]string {
	why := map[string]string{}
	var common string
	help, err := exec.Command(cliBin, "run", "--help").CombinedOutput()
	switch {
	case os.Geteuid() != 0:
		common = "needs root (network namespaces)"
	case err != nil:
		common = fmt.Sprintf("%s run --help: %v", cliBin, err)
	case !strings.Contains(string(help), "-p, --"):
		common = "paddock run has no -p (published ports) yet"
	}
	if common == "" {
		if _, _, err := testenv.FindKernel(); err != nil {
			common = err.Error()
		}
	}
	why["bridge"] = common
	why["user"] = common
	if common == "" && !strings.Contains(string(help), "--network") {
		why["user"] = "paddock run has no --network yet"
	}
	if why["user"] == "" {
		if _, err := exec.LookPath("passt"); err != nil {
			why["user"] = "passt not installed (apt-get install passt)"
		} else if _, err := exec.LookPath("setpriv"); err != nil {
			why["user"] = "setpriv not installed (util-linux): user mode's paddockd runs with no capability"
		}
	}
	return why
}

// netModeFigures takes figs, all of one mode, on a rig of their own: a VM
// started with `paddock run -p hostPort:8080`, one transfer per figure.
// Every error lands on the figures it spoils.
func netModeFigures(daemonBin, cliBin, mode string, hostPort int, size int64, figs []*netFigure) {
	fail := func(err error) {
		for _, f := range figs {
			if f.err == nil {
				f.err = err
			}
		}
	}
	r, err := startRig(daemonBin, cliBin, mode)
	if err != nil {
		fail(err)
		return
	}
	defer func() {
		if err := r.Close(); err != nil {
			fail(fmt.Errorf("%s rig teardown: %w", mode, err))
		}
	}()
	vm := "net-" + mode
	args := []string{"run", "--image", netImage, "--name", vm, "-p", fmt.Sprintf("%d:%d", hostPort, netGuestPort)}
	if mode == "user" {
		args = append(args, "--network", "user")
	}
	if _, err := r.cli(args...); err != nil {
		fail(err)
		return
	}
	for _, f := range figs {
		f.res, f.err = r.figure(vm, f.kind, hostPort, size, netRefRuns)
	}
	if _, err := r.cli("rm", "-f", vm); err != nil {
		fail(err)
	}
}

// netRig is one mode's paddockd in a namespace of its own, with the
// topology (uplink, client) around it and a sink in it for the direct
// figure.
type netRig struct {
	mode, dir, sock, cliBin string
	ns                      *nettopo.Netns
	top                     *nettopo.Topology
	direct                  *nettopo.Sink
	daemon                  *exec.Cmd
	daemonDone              chan error
}

// startRig makes the rig for mode, its daemon answering, the boot kit and
// the bench image imported. On error nothing of it is left.
func startRig(daemonBin, cliBin, mode string) (r *netRig, err error) {
	r = &netRig{mode: mode, cliBin: cliBin}
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("%s rig: %w", mode, err), r.Close())
			r = nil
		}
	}()
	if r.ns, err = nettopo.NewNetns("pdkbench"); err != nil {
		return r, err
	}
	if r.top, err = nettopo.Build(r.ns.Name); err != nil {
		return r, err
	}
	// Every address of the namespace: the gateway appears with the bridge.
	if r.direct, err = nettopo.StartSink(r.top.Daemon, netip.AddrPortFrom(netip.IPv4Unspecified(), netDirectPort)); err != nil {
		return r, err
	}
	if r.dir, err = os.MkdirTemp("", "pdk-netbench-"); err != nil {
		return r, err
	}
	if err := os.Chmod(r.dir, 0o755); err != nil {
		return r, err
	}
	for _, d := range []string{"state", "run", "cache"} {
		if err := os.Mkdir(filepath.Join(r.dir, d), 0o755); err != nil {
			return r, err
		}
	}
	cfg := filepath.Join(r.dir, "paddock.toml")
	r.sock = filepath.Join(r.dir, "run", "io.paddock.v1")
	body := fmt.Sprintf("state_dir = %q\nruntime_dir = %q\ncache_dir = %q\n[log]\nlevel = \"warn\"\n[vm]\nrun = \"on\"\nstart_timeout = \"180s\"\nstop_timeout = \"10s\"\n",
		filepath.Join(r.dir, "state"), filepath.Join(r.dir, "run"), filepath.Join(r.dir, "cache"))
	daemonPath, err := filepath.Abs(daemonBin)
	if err != nil {
		return r, err
	}
	vmlinuz, modules, err := testenv.FindKernel()
	if err != nil {
		return r, err
	}
	argv := []string{"nsenter", "--net=" + r.ns.Path(), "--"}
	switch mode {
	case "bridge":
		body += fmt.Sprintf("host_access = [\"tcp/%d\"]\n", netDirectPort)
	case "user":
		// As e2e TestNetUserMode: an unused uid owning the dirs, no
		// capability in any set; nsenter and setpriv exec, so the pid is
		// paddockd's.
		body += "network = \"user\"\ndisk_backend = \"qcow2\"\n"
		// paddockd reads the module tree as its own user (kernel import
		// takes its path, world-readable on every distribution); the
		// bench's lies under a root-only home: the kit is built here, as
		// e2e's rootless daemons get theirs.
		agent := filepath.Join(filepath.Dir(daemonPath), "paddock-agent")
		if _, err := bootkit.Import(context.Background(), vmlinuz, modules, "default", filepath.Join(r.dir, "state"), bootkit.WithAgent(agent)); err != nil {
			return r, fmt.Errorf("boot kit for the unprivileged daemon: %w", err)
		}
		if err := chownTree(r.dir, netUserUID); err != nil {
			return r, err
		}
		argv = append(argv, "setpriv", fmt.Sprintf("--reuid=%d", netUserUID), fmt.Sprintf("--regid=%d", netUserUID), "--clear-groups",
			"--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--")
	}
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		return r, err
	}
	r.daemon = exec.Command(argv[0], append(argv[1:], daemonPath, "--config", cfg)...)
	r.daemon.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/nonexistent"}
	if mode == "bridge" {
		r.daemon.Env = os.Environ()
	}
	r.daemon.Stderr = os.Stderr
	if err := r.daemon.Start(); err != nil {
		r.daemon = nil
		return r, fmt.Errorf("start %s: %w", daemonBin, err)
	}
	r.daemonDone = make(chan error, 1)
	go func() { r.daemonDone <- r.daemon.Wait() }()
	c, err := dialWait(r.sock)
	if err != nil {
		return r, err
	}
	c.Close()
	if mode == "user" {
		if err := requireNoCaps(r.daemon.Process.Pid, netUserUID); err != nil {
			return r, err
		}
	}
	if mode == "bridge" {
		if _, err := r.cli("kernel", "import", vmlinuz, "--modules", modules, "--name", "default"); err != nil {
			return r, err
		}
	}
	tarPath, cfgPath, err := netImageFiles(r.dir)
	if err != nil {
		return r, err
	}
	if _, err := r.cli("image", "import", tarPath, "--name", netImage, "--config", cfgPath); err != nil {
		return r, err
	}
	return r, nil
}

// cli runs the paddock CLI against the rig's daemon.
func (r *netRig) cli(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), netTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, r.cliBin, append([]string{"--socket", r.sock}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("paddock %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// figure takes runs transfers of one kind out of the running VM vm and
// returns their median; any failed transfer fails the figure.
func (r *netRig) figure(vm, kind string, hostPort int, size int64, runs int) (nettopo.Result, error) {
	var all []nettopo.Result
	switch kind {
	case "publish":
		// One server for every fetch (it serves each connection).
		ctx, cancel := context.WithTimeout(context.Background(), netTimeout)
		defer cancel()
		all, err := r.fetchRuns(ctx, vm, hostPort, size, runs)
		if err != nil {
			return nettopo.Result{}, err
		}
		return median(all), nil
	}
	for range runs {
		res, err := r.send(vm, kind, size)
		if err == nil && res.Bytes != size {
			err = fmt.Errorf("received %d bytes of %d", res.Bytes, size)
		}
		if err != nil {
			return res, err
		}
		all = append(all, res)
	}
	return median(all), nil
}

func median(rs []nettopo.Result) nettopo.Result {
	rs = slices.Clone(rs)
	sort.Slice(rs, func(i, j int) bool { return rs[i].BytesPerSec() < rs[j].BytesPerSec() })
	return rs[len(rs)/2]
}

// send takes one transfer the guest sends: "direct" or "nat".
func (r *netRig) send(vm, kind string, size int64) (nettopo.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), netTimeout)
	defer cancel()
	exec := func(cmd []string) (string, error) { return r.cli(append([]string{"exec", vm, "--"}, cmd...)...) }
	var res nettopo.Result
	var err error
	switch kind {
	case "direct":
		// bridge: the gateway, as inspect says, and the sink must see the
		// guest's own address (nothing translated it); user: the daemon
		// namespace's own address (passt's gateway is not mapped to it).
		to, from := nettopo.HostUplinkIP, netip.Addr{}
		if r.mode == "bridge" {
			if to, from, err = r.bridgeAddrs(vm); err != nil {
				return res, err
			}
		}
		if _, err := exec(nettopo.GuestSendTo(netip.AddrPortFrom(to, netDirectPort), size)); err != nil {
			return res, err
		}
		res, err = r.direct.Next(ctx)
		if err == nil && from.IsValid() && res.Peer.Addr() != from {
			err = fmt.Errorf("the gateway's sink saw %s, not the guest's %s", res.Peer.Addr(), from)
		}
	case "nat":
		if _, err := exec(nettopo.GuestSend(size)); err != nil {
			return res, err
		}
		res, err = r.top.Sink.Next(ctx)
		if err == nil && res.Peer.Addr() != nettopo.HostUplinkIP {
			err = fmt.Errorf("the uplink saw %s, not the host's %s: no masquerade", res.Peer.Addr(), nettopo.HostUplinkIP)
		}
	default:
		err = fmt.Errorf("no transfer of kind %q", kind)
	}
	return res, err
}

// fetchRuns serves size bytes per connection from the guest (GuestServe)
// behind the published hostPort and fetches them runs times from the
// client namespace (Fetch: the client speaks first).
func (r *netRig) fetchRuns(ctx context.Context, vm string, hostPort int, size int64, runs int) ([]nettopo.Result, error) {
	exec := func(cmd []string) (string, error) { return r.cli(append([]string{"exec", vm, "--"}, cmd...)...) }
	// A fetch gives up when the guest's server ends early (it failed).
	fctx, fcancel := context.WithCancel(ctx)
	defer fcancel()
	serve := make(chan error, 1)
	go func() {
		_, err := exec(nettopo.GuestServe(netGuestPort, size))
		fcancel()
		serve <- err
	}()
	var all []nettopo.Result
	var err error
	for range runs {
		var res nettopo.Result
		res, err = nettopo.Fetch(fctx, r.top.Client, netip.AddrPortFrom(nettopo.HostClientIP, uint16(hostPort)).String())
		if err == nil && res.Bytes != size {
			err = fmt.Errorf("received %d bytes of %d", res.Bytes, size)
		}
		if err != nil {
			break
		}
		all = append(all, res)
	}
	_, stopErr := exec(nettopo.GuestServeStop(netGuestPort))
	serveErr := <-serve // the stop kills it: its exit status is only news when a fetch failed
	if err != nil {
		return nil, errors.Join(err, stopErr, serveErr)
	}
	return all, stopErr
}

// bridgeAddrs are a bridge VM's gateway and own address, from inspect.
func (r *netRig) bridgeAddrs(vm string) (gw, ip netip.Addr, err error) {
	out, err := r.cli("--json", "inspect", vm)
	if err != nil {
		return gw, ip, err
	}
	var v struct {
		Network *struct{ IP, Gateway string }
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil || v.Network == nil {
		return gw, ip, fmt.Errorf("inspect %s: no network in %q (%v)", vm, out, err)
	}
	if gw, err = netip.ParseAddr(v.Network.Gateway); err != nil {
		return gw, ip, fmt.Errorf("inspect %s: gateway: %w", vm, err)
	}
	p, err := netip.ParsePrefix(v.Network.IP)
	if err != nil {
		return gw, ip, fmt.Errorf("inspect %s: ip: %w", vm, err)
	}
	return gw, p.Addr(), nil
}

// Close stops the daemon (SIGTERM, then SIGKILL), kills what it left
// running (QEMU and passt outlive paddockd by design), then removes the
// sink, the topology, the namespace and the dirs; anything left is an
// error.
func (r *netRig) Close() error {
	var errs []error
	if r.daemon != nil {
		_ = r.daemon.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.daemonDone:
		case <-time.After(30 * time.Second):
			_ = r.daemon.Process.Kill()
			<-r.daemonDone
		}
		r.daemon = nil
	}
	if r.dir != "" {
		errs = append(errs, killUnder(r.dir))
	}
	errs = append(errs, r.direct.Close())
	if r.top != nil {
		errs = append(errs, r.top.Close())
	}
	if r.ns != nil {
		errs = append(errs, r.ns.Close(), nettopo.CheckGone(r.ns.Name))
	}
	if r.dir != "" {
		errs = append(errs, os.RemoveAll(r.dir))
	}
	r.direct, r.top, r.ns, r.dir = nil, nil, nil, ""
	return errors.Join(errs...)
}

// killUnder SIGKILLs, by pid, every process whose command line names dir
// (the rig's QEMU and passt), and waits until they are gone.
func killUnder(dir string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids := procsNaming(dir)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes naming %s still running: %v", dir, pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func procsNaming(dir string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(dir)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func chownTree(root string, uid int) error {
	return filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, uid)
	})
}

// requireNoCaps checks pid is paddockd running as uid with no capability
// in any set.
func requireNoCaps(pid, uid int) error {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return err
	}
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) != "paddockd" {
		return fmt.Errorf("process %d is %q, not paddockd", pid, bytes.TrimSpace(comm))
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ":")
		v = strings.TrimSpace(v)
		switch {
		case slices.Contains([]string{"CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"}, k) && v != "0000000000000000":
			return fmt.Errorf("user mode's paddockd has %s %s, want none", k, v)
		case k == "Uid" && strings.Fields(v)[0] != strconv.Itoa(uid):
			return fmt.Errorf("user mode's paddockd runs as uid %s, want %d", v, uid)
		}
	}
	return nil
}

// netImageFiles writes the bench image: a rootfs tar of the host's static
// busybox with netApplets, and its config (PATH, a main process that waits).
func netImageFiles(dir string) (tarPath, cfgPath string, err error) {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return "", "", fmt.Errorf("static busybox (apt-get install busybox-static): %w", err)
	}
	tarPath = filepath.Join(dir, "netbench.tar")
	f, err := os.Create(tarPath)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, d := range []string{"bin/", "etc/", "tmp/", "proc/", "sys/", "dev/", "run/", "root/"} {
		if err := tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
			return "", "", err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb))}); err != nil {
		return "", "", err
	}
	if _, err := tw.Write(bb); err != nil {
		return "", "", err
	}
	for _, a := range netApplets {
		if err := tw.WriteHeader(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}); err != nil {
			return "", "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", "", err
	}
	cfg, _ := json.Marshal(map[string]any{"Env": []string{"PATH=/bin"}, "Cmd": []string{"/bin/sh", "-c", "sleep 100000"}})
	cfgPath = filepath.Join(dir, "netbench.json")
	return tarPath, cfgPath, os.WriteFile(cfgPath, cfg, 0o644)
}
