package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/internal/testenv"
	"github.com/paddock-vm/paddock/state"
)

// Template snapshots: one guest booted and saved, ten VMs resumed from it
// at once. Each must come up with its own identity — hostname, MAC,
// address, a reseeded CRNG (32 bytes of /dev/urandom differ between every
// pair), its clock stepped to the host's although the state is older (by
// seconds, then by minutes) — and its own disk: what one writes the others and the template never see.
// templateAge is how old the saved state is when the last VM resumes it
// (the issue: "a snapshot taken minutes earlier").
const templateAge = 2 * time.Minute

func TestTemplates(t *testing.T) {
	testenv.RequireRoot(t, "runs VMs")
	e, _, ns, demo := bootEnv(t, "", nil)
	e.bootKit(t)
	t0 := time.Now()
	e.cli(t, nil, "template", "create", "tmpl", "--image", demo, "--memory", "256MiB").ok(t, "template create")
	saved := time.Now()
	t.Logf("FIGURES: template create %.2f s", saved.Sub(t0).Seconds())
	if out := e.cli(t, nil, "template", "ls").ok(t, "template ls"); !strings.Contains(out, "tmpl") {
		t.Fatalf("template ls: %q", out)
	}
	if out := e.cli(t, nil, "ls").ok(t, "ls"); strings.Contains(out, "template-") {
		t.Fatalf("the builder VM is left: %q", out)
	}
	// The builder's RAM became the template's memory file: the saved state
	// beside it holds the devices only. Its digest is checked again at the
	// end: no clone writes it.
	mems, _ := filepath.Glob(filepath.Join(e.state, state.TemplatesDir, "*", state.TemplateState))
	if len(mems) != 1 {
		t.Fatalf("template state files: %q", mems)
	}
	statePath := mems[0]
	if st, err := os.Stat(statePath); err != nil || st.Size() > 1<<20 {
		t.Fatalf("saved state %v (%v): want the device state only, under 1 MiB", st, err)
	}
	memSum := testenv.FileSHA256(t, vmm.MemPath(statePath))
	// The saved clock is behind by now; the identity step must step it.
	time.Sleep(3 * time.Second)

	const n = 10
	var wg sync.WaitGroup
	took := make([]time.Duration, n)
	errs := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := time.Now()
			r := e.cli(t, nil, "run", "--from-template", "tmpl", "--name", fmt.Sprintf("c%d", i))
			took[i] = time.Since(s)
			if r.code != 0 {
				errs[i] = r.stderr
			}
		}()
	}
	wg.Wait()
	for i, msg := range errs {
		if msg != "" {
			t.Fatalf("run --from-template c%d: %s", i, msg)
		}
	}
	t.Logf("FIGURES: %d runs from one template at once: %v", n, took)

	seen := map[string]map[string]string{"hostname": {}, "mac": {}, "ip": {}, "random": {}}
	for i := range n {
		vm := fmt.Sprintf("c%d", i)
		host := time.Now()
		out, code := guestSh(t, e, vm, `$b hostname; $b cat /sys/class/net/eth0/address; $b ip -4 -o addr show eth0 | $b awk '{print $4}'; $b head -c 32 /dev/urandom | $b od -An -tx1 | $b tr -d ' \n'; echo; $b date +%s`)
		if code != 0 {
			t.Fatalf("%s: exit %d: %q", vm, code, out)
		}
		f := strings.Split(strings.TrimSpace(out), "\n")
		if len(f) != 5 {
			t.Fatalf("%s: %q", vm, out)
		}
		if f[0] != vm {
			t.Errorf("%s: hostname %q", vm, f[0])
		}
		for k, v := range map[string]string{"hostname": f[0], "mac": f[1], "ip": f[2], "random": f[3]} {
			if other, dup := seen[k][v]; dup || v == "" {
				t.Errorf("%s and %s share %s %q", vm, other, k, v)
			}
			seen[k][v] = vm
		}
		guest, err := strconv.ParseInt(f[4], 10, 64)
		if err != nil {
			t.Fatalf("%s: date %q", vm, f[4])
		}
		if skew := guest - host.Unix(); skew < -1 || skew > 1 {
			t.Errorf("%s: guest clock %d s off the host's (state saved %.0f s before)", vm, skew, time.Since(t0).Seconds())
		}
	}
	// Writes stay in their VM.
	if out, code := guestSh(t, e, "c0", "echo mine > /root/c0-was-here && $b sync && $b cat /root/c0-was-here"); code != 0 || out != "mine\n" {
		t.Fatalf("write in c0 (%d): %q", code, out)
	}
	if out, code := guestSh(t, e, "c1", "$b ls /root/c0-was-here 2>&1 || echo absent"); code != 0 || !strings.Contains(out, "absent") {
		t.Fatalf("c0's write seen in c1 (%d): %q", code, out)
	}
	// A VM made from the template after that still sees the template's disk.
	s := time.Now()
	e.cli(t, nil, "run", "--from-template", "tmpl", "--name", "late").ok(t, "a later run")
	warm := time.Since(s)
	// The builder did its late boot work (the power button's drivers, the
	// initramfs emptied) before it was saved: a VM resumed from it has the
	// drivers at once, with nothing left to load beside its first exec.
	if out, code := guestSh(t, e, "late", "$b grep -c '^evdev ' /proc/modules"); code != 0 || out != "1\n" {
		t.Fatalf("evdev in a VM just resumed from the template (%d): %q", code, out)
	}
	s = time.Now()
	e.cli(t, nil, "run", "--image", demo, "--memory", "256MiB", "--name", "cold").ok(t, "a cold run")
	t.Logf("FIGURES: one run --from-template %.2f s, one cold run %.2f s (%.2fx)", warm.Seconds(), time.Since(s).Seconds(), warm.Seconds()/time.Since(s).Seconds())
	if out, code := guestSh(t, e, "late", "$b ls /root/c0-was-here 2>&1 || echo absent"); code != 0 || !strings.Contains(out, "absent") {
		t.Fatalf("c0's write reached the template (%d): %q", code, out)
	}
	// A resumed VM stops and boots again like any other.
	e.cli(t, nil, "stop", "c0").ok(t, "stop c0")
	e.cli(t, nil, "start", "c0").ok(t, "cold start of c0")
	if out, code := guestSh(t, e, "c0", "$b cat /root/c0-was-here; $b hostname"); code != 0 || out != "mine\nc0\n" {
		t.Fatalf("c0 after a cold start (%d): %q", code, out)
	}
	// Refusals name the culprit.
	if r := e.cli(t, nil, "run", "--from-template", "tmpl", "--name", "x", "--cpus", "2"); r.code == 0 || !strings.Contains(r.stderr, "cpus comes from template tmpl") {
		t.Fatalf("run with other cpus: %d %q", r.code, r.stderr)
	}
	if r := e.cli(t, nil, "run", "--from-template", "nosuch", "--name", "x"); r.code == 0 || !strings.Contains(r.stderr, `no template named "nosuch"`) {
		t.Fatalf("run from a missing template: %d %q", r.code, r.stderr)
	}
	// The clock of a state saved minutes earlier: without the identity
	// step the guest would be that far behind.
	if wait := templateAge - time.Since(saved); wait > 0 {
		t.Logf("waiting %.0f s so the saved state is %v old", wait.Seconds(), templateAge)
		time.Sleep(wait)
	}
	e.cli(t, nil, "run", "--from-template", "tmpl", "--name", "aged").ok(t, "run from an aged template")
	host := time.Now()
	out, code := guestSh(t, e, "aged", "$b date +%s")
	guest, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if code != 0 || err != nil {
		t.Fatalf("aged: date (%d): %q", code, out)
	}
	if skew := guest - host.Unix(); skew < -1 || skew > 1 {
		t.Errorf("aged: guest clock %d s off the host's (state saved %.0f s before)", skew, time.Since(saved).Seconds())
	}
	t.Logf("FIGURES: guest clock of a VM resumed from a state saved %.0f s before: %+d s off the host's", time.Since(saved).Seconds(), guest-host.Unix())
	for i := range n {
		e.cli(t, nil, "rm", "-f", fmt.Sprintf("c%d", i)).ok(t, "rm")
	}
	e.cli(t, nil, "rm", "-f", "late", "cold", "aged").ok(t, "rm late cold aged")
	if testenv.FileSHA256(t, vmm.MemPath(statePath)) != memSum {
		t.Fatal("the template's memory file changed under its clones")
	}
	// The template uses its image: removing the image is refused naming it.
	if r := e.cli(t, nil, "image", "rm", demo); r.code == 0 || !strings.Contains(r.stderr, "template tmpl") {
		t.Fatalf("image rm while a template uses it: %d %q", r.code, r.stderr)
	}
	e.cli(t, nil, "template", "rm", "tmpl").ok(t, "template rm")
	if l := e.leaks(t, ns); l.host() != 0 {
		t.Fatalf("leaked %+v %v", l, l.detail)
	}
}

// paddockd killed at every step of a template's creation and of a resume
// leaves, after a restart, no template half-made, no builder VM, a resumed
// VM that can start, and nothing leaked.
func TestTemplateCrashPoints(t *testing.T) {
	testenv.RequireRoot(t, "runs VMs")
	e, p, ns, demo := bootEnv(t, "", nil)
	e.bootKit(t)
	e.cli(t, nil, "image", "pull", demo).ok(t, "pull")
	restart := func(fp string) {
		t.Helper()
		p.signal(t, syscall.SIGTERM)
		p.wait(t, 30*time.Second)
		env := []string{}
		if fp != "" {
			env = append(env, "PADDOCK_FAILPOINTS="+fp)
		}
		p = e.daemon(t, func(c *exec.Cmd) {
			c.Env = append(os.Environ(), env...)
			inNetns(ns)(c)
		})
	}
	afterCrash := func(fp string) {
		t.Helper()
		p.wait(t, 60*time.Second) // the daemon killed itself at fp
		p = e.daemon(t, inNetns(ns))
	}
	noBuilder := func(fp string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			out := e.cli(t, nil, "ls").ok(t, fp+": ls")
			if !strings.Contains(out, "template-") {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: builder VM left: %q", fp, out)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	var resume []string
	for _, fp := range actors.TemplateFailpoints {
		if fp == "template-resumed" {
			resume = append(resume, fp)
			continue
		}
		restart(fp)
		if r := e.cli(t, nil, "template", "create", "t", "--image", demo); r.code == 0 {
			t.Fatalf("%s: template create succeeded although the daemon died", fp)
		}
		afterCrash(fp)
		if out := e.cli(t, nil, "template", "ls").ok(t, fp+": ls"); strings.Contains(out, "t ") {
			t.Fatalf("%s: a half-made template is listed: %q", fp, out)
		}
		noBuilder(fp)
		if l := e.leaks(t, ns); l.host() != 0 {
			t.Fatalf("%s: leaked %+v %v", fp, l, l.detail)
		}
	}
	e.cli(t, nil, "template", "create", "t", "--image", demo).ok(t, "template create after the crashes")
	for _, fp := range append(resume, "acquire-vmm-live") {
		restart(fp)
		if r := e.cli(t, nil, "run", "--from-template", "t", "--name", "r"); r.code == 0 {
			t.Fatalf("%s: run succeeded although the daemon died", fp)
		}
		afterCrash(fp)
		vm := inspectVM(t, e, "r")
		if vm.Status == "running" {
			e.cli(t, nil, "stop", "r").ok(t, fp+": stop")
		}
		e.cli(t, nil, "start", "r").ok(t, fp+": the VM starts after the crash")
		if out, code := guestSh(t, e, "r", "$b hostname"); code != 0 || out != "r\n" {
			t.Fatalf("%s: after the crash (%d): %q", fp, code, out)
		}
		e.cli(t, nil, "rm", "-f", "r").ok(t, fp+": rm")
		if l := e.leaks(t, ns); l.host() != 0 {
			t.Fatalf("%s: leaked %+v %v", fp, l, l.detail)
		}
	}
	e.cli(t, nil, "template", "rm", "t").ok(t, "template rm")
}
