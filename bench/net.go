package main

import (
	"archive/tar"
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
	"strings"
	"time"

	"github.com/paddock-vm/paddock/internal/nettopo"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// The network bench (-net): TCP throughput out of a guest, measured where
// the bytes arrive, as a ratio to the same transfer over a plain veth pair
// between two namespaces made in the same run (nettopo.VethReference).
//
//	NAT:            guest `dd | nc 192.0.2.1 5001` through the daemon's masquerade
//	                into the uplink's sink (nettopo.GuestSend, Sink.Next)
//	published port: guest `nc -ll -p 8080 -e dd ...` behind `-p HOSTPORT:8080`, fetched
//	                from the client namespace at the daemon's address (nettopo.Fetch)
//
// each for a bridge-mode VM and a `--network user` (passt) VM. Everything
// runs in namespaces made here (nettopo): paddockd in its own, the uplink
// and the client around it. A figure whose feature the CLI lacks is printed
// as "not available" with the reason, never as a number.

const (
	netGuestPort = 8080
	netRefRuns   = 3
	netTimeout   = 4 * time.Minute // one CLI call, one transfer
	netImage     = "netbench:1"
)

// netApplets is what the bench image's busybox provides.
var netApplets = []string{"sh", "dd", "nc", "sleep", "cat", "wget", "nslookup", "ip"}

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
	sort.Slice(refs, func(i, j int) bool { return refs[i].BytesPerSec() < refs[j].BytesPerSec() })
	ref := refs[len(refs)/2]
	fmt.Printf("reference: plain veth pair, %d MiB over TCP    %8.1f MB/s  (median of %d)\n", size>>20, ref.BytesPerSec()/1e6, netRefRuns)

	figures := []netFigure{
		{label: "bridge: guest -> uplink through NAT", mode: "bridge", kind: "nat", target: "target >= 0.5x"},
		{label: "bridge: guest -> client through -p", mode: "bridge", kind: "publish", target: "target >= 0.5x"},
		{label: "user (passt): guest -> uplink", mode: "user", kind: "nat"},
		{label: "user (passt): guest -> client through -p", mode: "user", kind: "publish"},
	}
	why := netUnavailable(cliBin)
	for i := range figures {
		figures[i].unavailable = why[figures[i].mode]
	}
	if slices.ContainsFunc(figures, func(f netFigure) bool { return f.unavailable == "" }) {
		if err := netVMFigures(daemonBin, cliBin, size, figures); err != nil {
			return err
		}
	}
	for _, f := range figures {
		switch {
		case f.unavailable != "":
			fmt.Printf("%-45s not available: %s\n", f.label, f.unavailable)
		case f.err != nil:
			fmt.Printf("%-45s FAILED: %v\n", f.label, f.err)
		default:
			note := ""
			if f.target != "" {
				note = "  (" + f.target + ")"
			}
			fmt.Printf("%-45s %8.1f MB/s  = %.2fx veth%s\n", f.label, f.res.BytesPerSec()/1e6, f.res.BytesPerSec()/ref.BytesPerSec(), note)
		}
	}
	for _, f := range figures {
		if f.err != nil {
			return errors.New("a network figure failed")
		}
	}
	return nil
}

type netFigure struct {
	label, mode, kind, target string
	unavailable               string // why the figure cannot be taken here
	res                       nettopo.Result
	err                       error
}

// netUnavailable says, per network mode, why no VM figure can be taken
// ("" when one can): no root, no guest kernel, no passt, or a CLI without
// the flags (-p, --network) the figures need.
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
		}
	}
	return why
}

// netVMFigures takes the VM figures not marked unavailable: one daemon in
// a fresh namespace with the topology around it, one VM per mode.
func netVMFigures(daemonBin, cliBin string, size int64, figures []netFigure) (err error) {
	dns, err := nettopo.NewNetns("pdkbench")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, dns.Close(), nettopo.CheckGone(dns.Name)) }()
	top, err := nettopo.Build(dns.Name)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, top.Close()) }()

	dir, err := os.MkdirTemp("", "pdk-netbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	cfg := filepath.Join(dir, "paddock.toml")
	sock := filepath.Join(dir, "run", "io.paddock.v1")
	body := fmt.Sprintf("state_dir = %q\nruntime_dir = %q\ncache_dir = %q\n[log]\nlevel = \"warn\"\n[vm]\nrun = \"on\"\nstart_timeout = \"180s\"\nstop_timeout = \"10s\"\n",
		filepath.Join(dir, "state"), filepath.Join(dir, "run"), filepath.Join(dir, "cache"))
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		return err
	}
	d := exec.Command("nsenter", "--net="+dns.Path(), "--", daemonBin, "--config", cfg)
	d.Stderr = os.Stderr
	if err := d.Start(); err != nil {
		return fmt.Errorf("start %s: %w", daemonBin, err)
	}
	defer func() { _ = d.Process.Kill(); _ = d.Wait() }()
	c, err := dialWait(sock)
	if err != nil {
		return err
	}
	c.Close()
	cli := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), netTimeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, cliBin, append([]string{"--socket", sock}, args...)...).CombinedOutput()
		if err != nil {
			return string(out), fmt.Errorf("paddock %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}
	vmlinuz, modules, err := testenv.FindKernel()
	if err != nil {
		return err
	}
	if _, err := cli("kernel", "import", vmlinuz, "--modules", modules, "--name", "default"); err != nil {
		return err
	}
	tarPath, cfgPath, err := netImageFiles(dir)
	if err != nil {
		return err
	}
	if _, err := cli("image", "import", tarPath, "--name", netImage, "--config", cfgPath); err != nil {
		return err
	}

	hostPort := 18080
	for _, mode := range []string{"bridge", "user"} {
		var mine []*netFigure
		for i := range figures {
			if figures[i].mode == mode && figures[i].unavailable == "" {
				mine = append(mine, &figures[i])
			}
		}
		if len(mine) == 0 {
			continue
		}
		vm := "net-" + mode
		args := []string{"run", "--image", netImage, "--name", vm, "-p", fmt.Sprintf("%d:%d", hostPort, netGuestPort)}
		if mode == "user" {
			args = append(args, "--network", "user")
		}
		if _, err := cli(args...); err != nil {
			for _, f := range mine {
				f.err = err
			}
			continue
		}
		for _, f := range mine {
			f.res, f.err = netFigureRun(cli, top, vm, f.kind, hostPort, size)
		}
		if _, err := cli("rm", "-f", vm); err != nil {
			return err
		}
		hostPort++
	}
	return nil
}

// netFigureRun takes one transfer out of the running VM vm.
func netFigureRun(cli func(...string) (string, error), top *nettopo.Topology, vm, kind string, hostPort int, size int64) (nettopo.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), netTimeout)
	defer cancel()
	var res nettopo.Result
	var err error
	switch kind {
	case "nat":
		if _, err := cli(append([]string{"exec", vm, "--"}, nettopo.GuestSend(size)...)...); err != nil {
			return res, err
		}
		res, err = top.Sink.Next(ctx)
		if err == nil && res.Peer.Addr() != nettopo.HostUplinkIP {
			err = fmt.Errorf("the uplink saw %s, not the host's %s: no masquerade", res.Peer.Addr(), nettopo.HostUplinkIP)
		}
	case "publish":
		// The fetch gives up when the guest's server ends early (it failed).
		fctx, fcancel := context.WithCancel(ctx)
		serve := make(chan error, 1)
		go func() {
			_, err := cli(append([]string{"exec", vm, "--"}, nettopo.GuestServe(netGuestPort, size)...)...)
			fcancel()
			serve <- err
		}()
		res, err = nettopo.Fetch(fctx, top.Client, netip.AddrPortFrom(nettopo.HostClientIP, uint16(hostPort)).String())
		_, stopErr := cli(append([]string{"exec", vm, "--"}, nettopo.GuestServeStop(netGuestPort)...)...)
		serveErr := <-serve // the stop kills it: its exit status is only news when nothing was received
		fcancel()
		if err != nil {
			err = errors.Join(err, stopErr, serveErr)
		}
	}
	if err == nil && res.Bytes != size {
		err = fmt.Errorf("received %d bytes of %d", res.Bytes, size)
	}
	return res, err
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
