package e2e

import (
	"archive/tar"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/paddock-vm/paddock/imaging/imagetest"
)

// TestSmoke is `make e2e`: named scenarios through the CLI against a daemon
// running as an unprivileged uid with only CAP_NET_ADMIN, each printing
// "PASS name" or "FAIL name: reason".
func TestSmoke(t *testing.T) {
	e, ns, reg, rootless := rootlessEnv(t, "", "src")
	pushTo(t, reg+"/demo:1", demoImage(t))
	p := e.daemon(t, rootless())
	killDaemon := func() {
		p.signal(t, syscall.SIGKILL)
		p.wait(t, 10*time.Second)
	}
	img := reg + "/demo:1"
	failed := 0
	step := func(name string, fn func() error) {
		err := func() (err error) {
			defer func() {
				if r := recover(); r != nil {
					err = fmt.Errorf("panic: %v", r)
				}
			}()
			return fn()
		}()
		if err != nil {
			failed++
			fmt.Printf("FAIL %s: %v\n", name, err)
			t.Errorf("FAIL %s: %v", name, err)
			return
		}
		fmt.Printf("PASS %s\n", name)
	}
	cli := func(args ...string) (string, error) {
		r := e.cli(t, nil, args...)
		if r.code != 0 {
			return r.stdout, fmt.Errorf("paddock %s: exit %d: %s", strings.Join(args, " "), r.code, strings.TrimSpace(r.stderr))
		}
		return r.stdout, nil
	}
	expect := func(_ string, err error) error { return err }
	status := func(vm, want string) error {
		deadline := time.Now().Add(30 * time.Second)
		for {
			r := e.cli(t, nil, "inspect", vm, "--json")
			if strings.Contains(r.stdout, `"status": "`+want+`"`) {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s is not %s: %s", vm, want, r.stdout)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	noLeaks := func() error {
		if l := e.leaks(t, ns); l.host() != 0 {
			return fmt.Errorf("leaked %v", l.detail)
		}
		return nil
	}

	step("image pull", func() error { return expect(cli("image", "pull", img)) })
	step("import oci layout", func() error {
		lay := filepath.Join(e.dir, "src", "layout")
		lp, err := layout.Write(lay, empty.Index)
		if err != nil {
			return err
		}
		if err := lp.AppendImage(demoImage(t), layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "2"})); err != nil {
			return err
		}
		chownTree(t, lay, daemonUID, daemonUID) // a directory is read as the daemon's user
		return expect(cli("image", "import", lay+":2", "--name", "demo-layout"))
	})
	step("import docker archive", func() error {
		arch := filepath.Join(e.dir, "src", "docker.tar")
		tag, _ := name.NewTag("demo-docker:3")
		if err := tarball.WriteToFile(arch, tag, demoImage(t)); err != nil {
			return err
		}
		return expect(cli("image", "import", arch))
	})
	step("import rootfs tar", func() error {
		root := filepath.Join(e.dir, "src", "root.tar")
		os.WriteFile(root, imagetest.LayerTar(t, imagetest.Entry{Name: "./", Type: tar.TypeDir}, imagetest.Entry{Name: "./x", Body: "x"}), 0o600)
		return expect(cli("image", "import", root, "--name", "plain:1"))
	})
	step("run", func() error { return expect(cli("run", "--image", img, "--name", "s1")) })
	step("exec stdout", func() error {
		out, code := execOut(t, e, "s1", "", "cat", "/etc/motd")
		if code != 0 || !strings.Contains(out, "welcome") {
			return fmt.Errorf("%q exit %d", out, code)
		}
		return nil
	})
	step("exec stdin", func() error {
		if out, code := execOut(t, e, "s1", "piped\n", "cat"); out != "piped\n" || code != 0 {
			return fmt.Errorf("%q exit %d", out, code)
		}
		return nil
	})
	step("exec exit code", func() error {
		if _, code := execOut(t, e, "s1", "", "sh", "-c", "exit 42"); code != 42 {
			return fmt.Errorf("exit %d, want 42", code)
		}
		return nil
	})
	step("logs", func() error { return expect(cli("logs", "s1")) })
	step("console", func() error { return consoleRoundTrip(t, e, "s1") })
	step("stop", func() error { _, err := cli("stop", "s1"); return errorsJoin(err, status("s1", "stopped"), noLeaks()) })
	step("start", func() error { _, err := cli("start", "s1"); return errorsJoin(err, status("s1", "running")) })
	step("restart", func() error { _, err := cli("restart", "s1"); return errorsJoin(err, status("s1", "running")) })
	step("kill", func() error { _, err := cli("kill", "s1"); return errorsJoin(err, status("s1", "stopped"), noLeaks()) })
	step("set", func() error {
		_, err := cli("set", "s1", "--cpus", "2", "--memory", "384MiB")
		if err != nil {
			return err
		}
		if _, err := cli("start", "s1"); err != nil {
			return err
		}
		out, code := execOut(t, e, "s1", "", "sh", "-c", "grep -c ^processor /proc/cpuinfo")
		if code != 0 || strings.TrimSpace(out) != "2" {
			return fmt.Errorf("guest has %q CPUs", out)
		}
		return nil
	})
	step("two VMs at once", func() error {
		if _, err := cli("run", "--image", img, "--name", "s2"); err != nil {
			return err
		}
		a, _ := execOut(t, e, "s1", "", "cat", "/proc/sys/kernel/hostname")
		b, _ := execOut(t, e, "s2", "", "cat", "/proc/sys/kernel/hostname")
		if strings.TrimSpace(a) != "s1" || strings.TrimSpace(b) != "s2" {
			return fmt.Errorf("hostnames %q %q", a, b)
		}
		return nil
	})
	step("kill -9 paddockd with VMs running (re-adopt)", func() error {
		killDaemon()
		p = e.daemon(t, rootless())
		if err := errorsJoin(status("s1", "running"), status("s2", "running")); err != nil {
			return err
		}
		out, code := execOut(t, e, "s2", "", "cat", "/etc/motd")
		if code != 0 || !strings.Contains(out, "welcome") {
			return fmt.Errorf("re-adopted VM: %q %d", out, code)
		}
		return nil
	})
	step("kill -9 of a VMM from outside", func() error {
		vm := inspectVM(t, e, "s2")
		killTagged(t, e, vm.ID)
		// Re-adopted, so not the daemon's child: how it ended is unknown
		// and the VM is stopped with that said (an own child's signal
		// makes it error).
		after := waitStatus(t, e, "s2", "running")
		if after.Reason == "" {
			return fmt.Errorf("no reason given: %+v", after)
		}
		return noLeaksExcept(e, t, ns, "s1")
	})
	step("rm --force of a running VM", func() error {
		_, err := cli("rm", "--force", "s1")
		return err
	})
	step("corrupt handles.json", func() error {
		if _, err := cli("start", "s2"); err != nil {
			return err
		}
		killDaemon()
		e.killVMMs(t)
		vm := filepath.Join(e.state, "vms")
		ents, _ := os.ReadDir(vm)
		for _, en := range ents {
			os.WriteFile(filepath.Join(vm, en.Name(), "handles.json"), []byte("{garbage"), 0o640)
		}
		p = e.daemon(t, rootless())
		return errorsJoin(status("s2", "stopped"), noLeaks())
	})
	step("missing handles.json", func() error {
		if _, err := cli("start", "s2"); err != nil {
			return err
		}
		killDaemon()
		e.killVMMs(t)
		vm := filepath.Join(e.state, "vms")
		ents, _ := os.ReadDir(vm)
		for _, en := range ents {
			os.Remove(filepath.Join(vm, en.Name(), "handles.json"))
		}
		p = e.daemon(t, rootless())
		return errorsJoin(status("s2", "stopped"), noLeaks())
	})
	step("daemon restart during start", func() error {
		p.signal(t, syscall.SIGTERM)
		p.wait(t, 30*time.Second)
		p = e.daemon(t, rootless("PADDOCK_FAILPOINTS=acquire-vmm-live"))
		if r := e.cli(t, nil, "start", "s2"); r.code == 0 {
			return fmt.Errorf("start succeeded through a daemon that died mid-start")
		}
		p.wait(t, 30*time.Second)
		p = e.daemon(t, rootless())
		return errorsJoin(status("s2", "stopped"), noLeaks())
	})
	step("start of a VM whose image was removed", func() error {
		if _, err := cli("create", "s3", "--image", "plain:1"); err != nil {
			return err
		}
		if _, err := cli("image", "rm", "--force", "plain:1"); err != nil {
			return err
		}
		r := e.cli(t, nil, "start", "s3")
		if r.code != 1 || !strings.Contains(r.stderr, "removed") {
			return fmt.Errorf("%+v", r)
		}
		return nil
	})
	step("rm", func() error {
		_, err := cli("rm", "--force", "s2", "s3")
		return errorsJoin(err, noLeaks())
	})
	if failed == 0 {
		fmt.Println("smoke: all scenarios passed")
	}
}

func errorsJoin(errs ...error) error {
	var msgs []string
	for _, e := range errs {
		if e != nil {
			msgs = append(msgs, e.Error())
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(msgs, "; "))
}

// noLeaksExcept checks that only the named running VM holds a tap and a VMM.
func noLeaksExcept(e *env, t *testing.T, ns, running string) error {
	if l := e.leaks(t, ns); l.taps != 1 || l.vmms != 1 || l.loops+l.dms != 0 {
		return fmt.Errorf("want only %s's tap and VMM, have %v", running, l.detail)
	}
	return nil
}

// consoleRoundTrip attaches to a VM's serial console, makes the guest write
// to it, sees that output, and detaches with Ctrl-].
func consoleRoundTrip(t *testing.T, e *env, vm string) error {
	c := exec.Command(bin("paddock"), "--socket", e.socket, "console", vm)
	in, err := c.StdinPipe()
	if err != nil {
		return err
	}
	out := &lockedBuf{}
	c.Stdout, c.Stderr = out, out
	if err := c.Start(); err != nil {
		return err
	}
	defer c.Process.Kill()
	marker := fmt.Sprintf("console-marker-%d", time.Now().UnixNano())
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), marker) {
		if time.Now().After(deadline) {
			return fmt.Errorf("marker not seen on the console; got %q", out.String())
		}
		execOut(t, e, vm, "", "sh", "-c", "echo "+marker+" > /dev/ttyS0")
		time.Sleep(300 * time.Millisecond)
	}
	if _, err := in.Write([]byte{0x1d}); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		return fmt.Errorf("Ctrl-] did not detach")
	}
}
