package systemd

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/internal/testenv"
)

const (
	// maxExposure is the bar `systemd-analyze security` must stay under.
	maxExposure = 4.0
	// exposureRatchet is the figure paddock.service reached (systemd 252).
	// Raise it only on purpose, e.g. when the dm backend adds CAP_SYS_ADMIN.
	// 2.5: capset allowed back (the VMM's confining step needs it).
	exposureRatchet = 2.5
	repoExecStart   = "ExecStart=/usr/bin/paddockd --config /etc/paddock/paddock.toml"
)

func systemdAnalyze(t *testing.T) string {
	t.Helper()
	return testenv.RequireTool(t, "systemd-analyze", "systemd")
}

// unitCopies copies the units into a temporary directory with ExecStart
// pointing at an executable stand-in (verify checks that it exists), after
// checking the repository's unit runs /usr/bin/paddockd. edit, if non-nil,
// may change the service text further.
func unitCopies(t *testing.T, edit func(string) string) (socket, service string) {
	t.Helper()
	dir := t.TempDir()
	svc, err := os.ReadFile("paddock.service")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(svc), "\n"+repoExecStart+"\n"); n != 1 {
		t.Fatalf("paddock.service must contain %q exactly once, found %d", repoExecStart, n)
	}
	bin := filepath.Join(dir, "paddockd")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(svc), repoExecStart, "ExecStart="+bin, 1)
	if edit != nil {
		text = edit(text)
	}
	service = filepath.Join(dir, "paddock.service")
	if err := os.WriteFile(service, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	sock, err := os.ReadFile("paddock.socket")
	if err != nil {
		t.Fatal(err)
	}
	socket = filepath.Join(dir, "paddock.socket")
	if err := os.WriteFile(socket, sock, 0o644); err != nil {
		t.Fatal(err)
	}
	return socket, service
}

// verify runs systemd-analyze verify and returns the lines about our units.
func verify(t *testing.T, sa string, units ...string) (complaints []string, all string) {
	t.Helper()
	cmd := exec.Command(sa, append([]string{"verify", "--man=no"}, units...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.Contains(line, "paddock") {
			complaints = append(complaints, line)
		}
	}
	if err != nil {
		complaints = append(complaints, "exit: "+err.Error())
	}
	return complaints, out.String()
}

func TestUnitsVerify(t *testing.T) {
	sa := systemdAnalyze(t)
	socket, service := unitCopies(t, nil)
	complaints, out := verify(t, sa, socket, service)
	if out != "" {
		t.Logf("systemd-analyze verify output:\n%s", out)
	}
	for _, c := range complaints {
		t.Errorf("verify: %s", c)
	}

	// The check itself must catch a broken unit.
	socket, service = unitCopies(t, func(s string) string {
		return strings.Replace(s, "[Service]\n", "[Service]\nProtectSytem=strict\n", 1)
	})
	if complaints, out := verify(t, sa, socket, service); len(complaints) == 0 {
		t.Errorf("verify did not flag a misspelt setting; output:\n%s", out)
	}
}

var exposureRE = regexp.MustCompile(`Overall exposure level for paddock\.service: ([0-9]+\.[0-9]+)`)

func TestUnitsSecurity(t *testing.T) {
	sa := systemdAnalyze(t)
	_, service := unitCopies(t, nil)
	out, err := exec.Command(sa, "security", "--offline=yes", "--no-pager", service).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security --offline=yes: %v\n%s", err, out)
	}
	m := exposureRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in output:\n%s", out)
	}
	level, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("paddock.service exposure level: %.1f", level)
	if level > maxExposure {
		t.Errorf("exposure %.1f > %.1f:\n%s", level, maxExposure, out)
	}
	if level > exposureRatchet {
		t.Errorf("exposure %.1f got worse than the %.1f reached before; raise exposureRatchet only on purpose:\n%s",
			level, exposureRatchet, out)
	}

	// The parser must see a weaker unit as worse.
	_, weak := unitCopies(t, func(s string) string {
		return strings.Replace(s, "NoNewPrivileges=yes\n", "NoNewPrivileges=no\n", 1)
	})
	out, err = exec.Command(sa, "security", "--offline=yes", "--no-pager", weak).CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if m := exposureRE.FindSubmatch(out); m == nil {
		t.Fatalf("no exposure level for the weakened unit:\n%s", out)
	} else if w, _ := strconv.ParseFloat(string(m[1]), 64); w <= level {
		t.Errorf("NoNewPrivileges=no scored %.1f, not worse than %.1f", w, level)
	}
}

func TestSysusersConf(t *testing.T) {
	bin := testenv.RequireTool(t, "systemd-sysusers", "systemd")
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	conf, err := filepath.Abs("../packaging/sysusers.d/paddock.conf")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "--root="+root, conf).CombinedOutput(); err != nil {
		t.Fatalf("systemd-sysusers: %v\n%s", err, out)
	}
	passwd, _ := os.ReadFile(filepath.Join(root, "etc/passwd"))
	group, _ := os.ReadFile(filepath.Join(root, "etc/group"))
	if !regexp.MustCompile(`(?m)^paddock:x:\d+:\d+:[^:]*:/var/lib/paddock:/usr/sbin/nologin$`).Match(passwd) {
		t.Errorf("no paddock user in passwd:\n%s", passwd)
	}
	for _, g := range []string{"paddock", "paddock-admin", "kvm"} {
		if !regexp.MustCompile(`(?m)^` + g + `:x:\d+:`).Match(group) {
			t.Errorf("no group %s:\n%s", g, group)
		}
	}
}

// paddock-guests.service verifies beside the other units: the VMM
// launcher's unit (VMMs in its delegated cgroup, outliving its restarts),
// whose real stop, and only that, applies the host shutdown policy.
func TestGuestsUnitVerify(t *testing.T) {
	sa := systemdAnalyze(t)
	socket, service := unitCopies(t, nil)
	guests := guestsCopy(t, filepath.Dir(service))
	complaints, out := verify(t, sa, socket, service, guests)
	for _, c := range complaints {
		t.Errorf("verify: %s\n%s", c, out)
	}
}

const (
	guestsExecStart = "ExecStart=/usr/bin/paddockd --config /etc/paddock/paddock.toml launcher"
	guestsExecStop  = `ExecStop=/bin/sh -c '[ -n "$$EXIT_CODE" ] || exec /usr/bin/paddock host-shutdown'`
)

// guestsCopy checks paddock-guests.service's essentials and copies it into
// dir with stand-in binaries (verify checks that they exist).
func guestsCopy(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile("paddock-guests.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{guestsExecStart, guestsExecStop, "Type=notify", "KillMode=process", "Delegate=yes",
		"Restart=always", "User=paddock", "After=paddock.socket paddock.service network.target"} {
		if strings.Count(string(b), "\n"+want+"\n") != 1 {
			t.Fatalf("paddock-guests.service must say %q once:\n%s", want, b)
		}
	}
	for _, name := range []string{"paddockd", "paddock"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	text := strings.Replace(string(b), "ExecStart=/usr/bin/paddockd ", "ExecStart="+filepath.Join(dir, "paddockd")+" ", 1)
	text = strings.Replace(text, "exec /usr/bin/paddock host-shutdown", "exec "+filepath.Join(dir, "paddock")+" host-shutdown", 1)
	guests := filepath.Join(dir, "paddock-guests.service")
	if err := os.WriteFile(guests, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return guests
}

var guestsExposureRE = regexp.MustCompile(`Overall exposure level for paddock-guests\.service: ([0-9]+\.[0-9]+)`)

// The launcher's unit holds the VMs: as confined as paddock.service.
func TestGuestsUnitSecurity(t *testing.T) {
	sa := systemdAnalyze(t)
	guests := guestsCopy(t, t.TempDir())
	out, err := exec.Command(sa, "security", "--offline=yes", "--no-pager", guests).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security --offline=yes: %v\n%s", err, out)
	}
	m := guestsExposureRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in output:\n%s", out)
	}
	level, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("paddock-guests.service exposure level: %.1f", level)
	if level > exposureRatchet {
		t.Errorf("paddock-guests.service exposure %.1f > %.1f:\n%s", level, exposureRatchet, out)
	}
}
