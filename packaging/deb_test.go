// Package packaging holds the files the Debian package installs besides the
// binaries and units, and (packaging/deb) how it is built. Its test builds
// the .deb as `make deb` does and checks what it holds and what its
// maintainer scripts do.
package packaging

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/xml"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/paddock-vm/paddock/internal/testenv"
)

// wantFiles is every regular file the package holds, with its mode; all
// are owned by root:root.
var wantFiles = map[string]string{
	"/usr/bin/paddock":                                       "-rwxr-xr-x",
	"/usr/bin/paddockd":                                      "-rwxr-xr-x",
	"/usr/libexec/paddock/paddock-agent":                     "-rwxr-xr-x",
	"/usr/lib/systemd/system/paddock.service":                "-rw-r--r--",
	"/usr/lib/systemd/system/paddock.socket":                 "-rw-r--r--",
	"/usr/lib/systemd/system/paddock-guests.service":         "-rw-r--r--",
	"/usr/lib/sysusers.d/paddock.conf":                       "-rw-r--r--",
	"/usr/lib/tmpfiles.d/paddock.conf":                       "-rw-r--r--",
	"/usr/lib/modules-load.d/paddock.conf":                   "-rw-r--r--",
	"/usr/share/dbus-1/system.d/org.paddock1.conf":           "-rw-r--r--",
	"/usr/share/dbus-1/system-services/org.paddock1.service": "-rw-r--r--",
	"/etc/paddock/paddock.toml":                              "-rw-r--r--",
	"/usr/share/bash-completion/completions/paddock":         "-rw-r--r--",
	"/usr/share/zsh/vendor-completions/_paddock":             "-rw-r--r--",
	"/usr/share/fish/vendor_completions.d/paddock.fish":      "-rw-r--r--",
	"/usr/share/man/man1/paddock.1.gz":                       "-rw-r--r--",
	"/usr/share/man/man8/paddockd.8.gz":                      "-rw-r--r--",
	"/usr/share/doc/paddock/changelog.Debian.gz":             "-rw-r--r--",
	"/usr/share/doc/paddock/copyright":                       "-rw-r--r--",
	"/usr/share/lintian/overrides/paddock":                   "-rw-r--r--",
}

// Files the package copies verbatim from the tree.
var verbatim = map[string]string{
	"/usr/lib/systemd/system/paddock.service":                "../systemd/paddock.service",
	"/usr/lib/systemd/system/paddock.socket":                 "../systemd/paddock.socket",
	"/usr/lib/systemd/system/paddock-guests.service":         "../systemd/paddock-guests.service",
	"/usr/lib/sysusers.d/paddock.conf":                       "sysusers.d/paddock.conf",
	"/usr/lib/tmpfiles.d/paddock.conf":                       "tmpfiles.d/paddock.conf",
	"/usr/lib/modules-load.d/paddock.conf":                   "modules-load.d/paddock.conf",
	"/usr/share/dbus-1/system.d/org.paddock1.conf":           "dbus/org.paddock1.conf",
	"/usr/share/dbus-1/system-services/org.paddock1.service": "dbus/org.paddock1.service",
	"/etc/paddock/paddock.toml":                              "../config.example.toml",
	"/usr/share/lintian/overrides/paddock":                   "deb/lintian-overrides",
}

func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return string(out)
}

// buildDeb runs packaging/deb/build.sh (what `make deb` runs) and returns
// the .deb's path.
func buildDeb(t *testing.T) string {
	t.Helper()
	testenv.Short(t, "builds the Debian package (three binaries, nfpm through the module proxy)")
	testenv.RequireTool(t, "dpkg-deb", "dpkg")
	testenv.RequireTool(t, "gzip", "gzip")
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	out := run(t, repo, nil, "packaging/deb/build.sh")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	deb := filepath.Join(repo, lines[len(lines)-1])
	if !regexp.MustCompile(`/paddock_[0-9][0-9A-Za-z.+~]*-1_amd64\.deb$`).MatchString(deb) {
		t.Fatalf("build.sh printed %q, want dist/paddock_<version>-1_amd64.deb", deb)
	}
	return deb
}

func control(t *testing.T, deb string) map[string]string {
	t.Helper()
	fields := map[string]string{}
	var last string
	for _, l := range strings.Split(run(t, "", nil, "dpkg-deb", "-f", deb), "\n") {
		if strings.HasPrefix(l, " ") && last != "" {
			fields[last] += "\n" + l
			continue
		}
		if k, v, ok := strings.Cut(l, ": "); ok {
			fields[k], last = v, k
		}
	}
	return fields
}

func TestDeb(t *testing.T) {
	deb := buildDeb(t)
	t.Logf("built %s", deb)

	t.Run("control", func(t *testing.T) {
		f := control(t, deb)
		for k, want := range map[string]string{"Package": "paddock", "Architecture": "amd64", "Section": "admin"} {
			if f[k] != want {
				t.Errorf("%s: %q, want %q", k, f[k], want)
			}
		}
		if f["Maintainer"] == "" || f["Description"] == "" {
			t.Errorf("Maintainer %q / Description %q missing", f["Maintainer"], f["Description"])
		}
		deps := map[string]bool{}
		for _, d := range strings.Split(f["Depends"], ", ") {
			deps[d] = true
		}
		for _, d := range []string{"qemu-system-x86", "qemu-utils", "e2fsprogs", "procps", "systemd | systemd-standalone-sysusers | systemd-sysusers"} {
			if !deps[d] {
				t.Errorf("Depends %q lacks %q", f["Depends"], d)
			}
		}
		if f["Recommends"] != "passt, nftables" {
			t.Errorf("Recommends: %q, want passt, nftables", f["Recommends"])
		}
	})

	t.Run("contents", func(t *testing.T) {
		got := map[string]string{}
		sc := bufio.NewScanner(strings.NewReader(run(t, "", nil, "dpkg-deb", "-c", deb)))
		for sc.Scan() {
			// drwxr-xr-x root/root 0 2026-12-06 01:53 ./usr/
			fs := strings.Fields(sc.Text())
			if len(fs) < 6 {
				t.Fatalf("dpkg-deb -c line %q", sc.Text())
			}
			if fs[1] != "root/root" {
				t.Errorf("%s owned by %s, want root/root", fs[5], fs[1])
			}
			path := strings.TrimPrefix(fs[5], ".")
			if fs[0][0] == 'd' {
				if fs[0] != "drwxr-xr-x" {
					t.Errorf("directory %s: mode %s", path, fs[0])
				}
				continue
			}
			got[path] = fs[0]
		}
		for p, mode := range wantFiles {
			if got[p] != mode {
				t.Errorf("%s: mode %q, want %q", p, got[p], mode)
			}
		}
		for p := range got {
			if _, ok := wantFiles[p]; !ok {
				t.Errorf("unexpected file %s", p)
			}
		}
	})

	root := t.TempDir()
	run(t, "", nil, "dpkg-deb", "-x", deb, root)
	ctrl := filepath.Join(t.TempDir(), "DEBIAN")
	run(t, "", nil, "dpkg-deb", "-e", deb, ctrl)
	read := func(t *testing.T, p string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	t.Run("conffiles", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(ctrl, "conffiles"))
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != "/etc/paddock/paddock.toml\n" {
			t.Errorf("conffiles: %q, want only /etc/paddock/paddock.toml", b)
		}
	})

	t.Run("files", func(t *testing.T) {
		for dst, src := range verbatim {
			want, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(read(t, dst), want) {
				t.Errorf("%s differs from the tree's %s", dst, src)
			}
		}
		// The unit reads the conffile, which paddockd accepts as shipped.
		if !bytes.Contains(read(t, "/usr/lib/systemd/system/paddock.service"), []byte("\nExecStart=/usr/bin/paddockd --config /etc/paddock/paddock.toml\n")) {
			t.Error("paddock.service does not run /usr/bin/paddockd --config /etc/paddock/paddock.toml")
		}
		out := run(t, "", nil, filepath.Join(root, "usr/bin/paddockd"), "--check-config", "--config", filepath.Join(root, "etc/paddock/paddock.toml"))
		if !strings.Contains(out, "configuration ok") {
			t.Errorf("paddockd --check-config on the shipped config: %q", out)
		}
		// Static Go binaries (statically-linked-binary is overridden for them)
		// and stripped (lintian's unstripped-binary-or-object).
		for _, p := range []string{"/usr/bin/paddock", "/usr/bin/paddockd", "/usr/libexec/paddock/paddock-agent"} {
			f, err := elf.Open(filepath.Join(root, p))
			if err != nil {
				t.Fatal(err)
			}
			for _, prog := range f.Progs {
				if prog.Type == elf.PT_INTERP {
					t.Errorf("%s is dynamically linked", p)
				}
			}
			if f.Section(".symtab") != nil {
				t.Errorf("%s is not stripped", p)
			}
			f.Close()
		}
		// Man pages and the changelog: gzip -9n (no name, no time stamp).
		for _, p := range []string{"/usr/share/man/man1/paddock.1.gz", "/usr/share/man/man8/paddockd.8.gz", "/usr/share/doc/paddock/changelog.Debian.gz"} {
			zr, err := gzip.NewReader(bytes.NewReader(read(t, p)))
			if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			text, err := io.ReadAll(zr)
			if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			if zr.Name != "" || !zr.ModTime.IsZero() {
				t.Errorf("%s: gzip header keeps name %q / time %v (want gzip -n)", p, zr.Name, zr.ModTime)
			}
			if strings.HasSuffix(p, "changelog.Debian.gz") {
				if !regexp.MustCompile(`^paddock \([0-9][^)]*-1\) unstable; urgency=medium\n`).Match(text) {
					t.Errorf("changelog: %q", text)
				}
			} else if !bytes.Contains(text, []byte("\n.TH PADDOCK")) && !bytes.HasPrefix(text, []byte(".TH")) {
				t.Errorf("%s has no .TH line", p)
			}
		}
		for p, marker := range map[string]string{
			"/usr/share/bash-completion/completions/paddock":    "__start_paddock",
			"/usr/share/zsh/vendor-completions/_paddock":        "#compdef paddock",
			"/usr/share/fish/vendor_completions.d/paddock.fish": "complete -c paddock",
		} {
			if !bytes.Contains(read(t, p), []byte(marker)) {
				t.Errorf("%s lacks %q", p, marker)
			}
		}
		act := string(read(t, "/usr/share/dbus-1/system-services/org.paddock1.service"))
		for _, l := range []string{"[D-BUS Service]", "Name=org.paddock1", "Exec=/bin/false", "User=paddock", "SystemdService=paddock.service"} {
			if !strings.Contains(act, "\n"+l+"\n") && !strings.HasPrefix(act, l+"\n") {
				t.Errorf("org.paddock1.service lacks %q", l)
			}
		}
	})

	t.Run("dbus-policy", func(t *testing.T) {
		// Only paddock and root own org.paddock1; everyone may send to it
		// (the daemon decides per call), and nothing names another
		// destination or none (lintian dbus-policy-excessively-broad).
		var cfg struct {
			Policies []struct {
				User    string `xml:"user,attr"`
				Group   string `xml:"group,attr"`
				Context string `xml:"context,attr"`
				Rules   []struct {
					XMLName xml.Name
					Attrs   []xml.Attr `xml:",any,attr"`
				} `xml:",any"`
			} `xml:"policy"`
		}
		if err := xml.Unmarshal(read(t, "/usr/share/dbus-1/system.d/org.paddock1.conf"), &cfg); err != nil {
			t.Fatal(err)
		}
		who := map[string]bool{}
		for _, p := range cfg.Policies {
			if p.Context != "" && p.Context != "default" {
				t.Errorf("policy context=%q: only user=, group= and the default policy are wanted", p.Context)
			}
			for _, r := range p.Rules {
				if r.XMLName.Local != "allow" {
					continue
				}
				for _, a := range r.Attrs {
					switch {
					case a.Name.Local == "own" && a.Value == "org.paddock1" && (p.User == "paddock" || p.User == "root"):
						who["own:"+p.User] = true
					case a.Name.Local == "send_destination" && a.Value == "org.paddock1" && p.Context == "default":
						who["send:everyone"] = true
					default:
						t.Errorf("policy user=%q group=%q allows %s=%q", p.User, p.Group, a.Name.Local, a.Value)
					}
				}
			}
		}
		for _, w := range []string{"own:paddock", "own:root", "send:everyone"} {
			if !who[w] {
				t.Errorf("no rule %s (have %v)", w, who)
			}
		}
	})

	t.Run("scripts", func(t *testing.T) {
		// Shell syntax, and systemctl only for daemon-reload (lintian's
		// maintainer-script-calls-systemctl): the rest goes through
		// deb-systemd-helper / deb-systemd-invoke.
		systemctl := regexp.MustCompile(`^(?:.+;)?\s*systemctl\b`)
		for _, s := range []string{"postinst", "prerm", "postrm"} {
			p := filepath.Join(ctrl, s)
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o755 {
				t.Errorf("%s: mode %v", s, st.Mode())
			}
			run(t, "", nil, "sh", "-n", p)
			b, _ := os.ReadFile(p)
			for i, l := range strings.Split(string(b), "\n") {
				if !strings.HasPrefix(l, "#") && systemctl.MatchString(l) && !strings.Contains(l, "daemon-reload") {
					t.Errorf("%s:%d calls systemctl: %s", s, i+1, l)
				}
			}
		}
	})

	t.Run("lifecycle", func(t *testing.T) {
		// The maintainer scripts against the unpacked tree as DPKG_ROOT, as
		// `dpkg --root` runs them, with systemctl and the deb-systemd-*
		// helpers replaced by recorders: users, groups and directories are
		// made (and on purge removed) for real, but only in the scratch
		// root. The real install under systemd is the nspawn test's.
		testenv.RequireRoot(t, "systemd-tmpfiles chowns in the scratch root; userdel --root chroots")
		testenv.RequireTool(t, "systemd-sysusers", "systemd")
		testenv.RequireTool(t, "userdel", "passwd")
		stubs := t.TempDir()
		log := filepath.Join(stubs, "log")
		for _, c := range []string{"systemctl", "deb-systemd-helper", "deb-systemd-invoke"} {
			if err := os.WriteFile(filepath.Join(stubs, c), []byte("#!/bin/sh\necho \""+c+" $*\" >>"+log+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		env := []string{"PATH=" + stubs + ":" + os.Getenv("PATH"), "DPKG_ROOT=" + root}
		// The scripts act on units only when systemd runs ([ -d
		// /run/systemd/system ]); copies see a stand-in for it, so the
		// start/restart/stop calls are made, into the stubs, either way.
		booted := t.TempDir()
		script := func(env []string, name string, args ...string) []string {
			t.Helper()
			os.Remove(log)
			b, err := os.ReadFile(filepath.Join(ctrl, name))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(b, []byte("[ -d /run/systemd/system ]")) {
				t.Fatalf("%s has no [ -d /run/systemd/system ] test", name)
			}
			cp := filepath.Join(stubs, name)
			if err := os.WriteFile(cp, bytes.ReplaceAll(b, []byte("[ -d /run/systemd/system ]"), []byte("[ -d "+booted+" ]")), 0o755); err != nil {
				t.Fatal(err)
			}
			run(t, "", env, "sh", append([]string{"-e", cp}, args...)...)
			b, _ = os.ReadFile(log)
			return strings.Split(strings.TrimSpace(string(b)), "\n")
		}
		has := func(calls []string, want string) bool {
			for _, c := range calls {
				if c == want {
					return true
				}
			}
			return false
		}
		calls := script(env, "postinst", "configure")
		if !has(calls, "deb-systemd-helper enable paddock.socket") {
			t.Errorf("postinst configure: no enable of paddock.socket: %q", calls)
		}
		if !has(calls, "deb-systemd-invoke start paddock.socket") {
			t.Errorf("postinst configure: socket not started: %q", calls)
		}
		if !has(calls, "deb-systemd-helper enable paddock-guests.service") || !has(calls, "deb-systemd-invoke start paddock-guests.service") {
			t.Errorf("postinst configure: paddock-guests.service not enabled and started: %q", calls)
		}
		for _, c := range calls {
			if strings.Contains(c, "paddock.service") {
				t.Errorf("postinst on a new install touches the service: %q", c)
			}
		}
		ids := func(file, name string) (int, bool) {
			b, _ := os.ReadFile(filepath.Join(root, "etc", file))
			for _, l := range strings.Split(string(b), "\n") {
				if fs := strings.Split(l, ":"); len(fs) > 3 && fs[0] == name {
					n, _ := strconv.Atoi(fs[2])
					return n, true
				}
			}
			return 0, false
		}
		uid, ok := ids("passwd", "paddock")
		if !ok {
			t.Fatal("postinst made no paddock user")
		}
		for _, g := range []string{"paddock", "paddock-admin", "kvm"} {
			if _, ok := ids("group", g); !ok {
				t.Errorf("postinst made no group %s", g)
			}
		}
		for _, d := range []string{"var/lib/paddock", "var/cache/paddock"} {
			st, err := os.Stat(filepath.Join(root, d))
			if err != nil {
				t.Fatalf("tmpfiles: %v", err)
			}
			if st.Mode().Perm() != 0o700 || int(st.Sys().(*syscall.Stat_t).Uid) != uid {
				t.Errorf("/%s: mode %v uid %d, want 0700 paddock (%d)", d, st.Mode().Perm(), st.Sys().(*syscall.Stat_t).Uid, uid)
			}
		}

		// Upgrade: nothing stops in prerm; postinst restarts the service
		// (KillMode=process keeps VMs) and leaves the socket listening.
		if calls := script(env, "prerm", "upgrade", "9"); len(calls) != 1 || calls[0] != "" {
			t.Errorf("prerm upgrade: %q, want nothing", calls)
		}
		calls = script(env, "postinst", "configure", "0.0~git1-1")
		if !has(calls, "deb-systemd-invoke restart paddock.service") {
			t.Errorf("postinst upgrade: no restart of paddock.service: %q", calls)
		}
		for _, c := range calls {
			// Restarting paddock-guests.service would stop every VM.
			if strings.Contains(c, "stop") || c == "deb-systemd-invoke restart paddock.socket" || strings.Contains(c, "restart paddock-guests") {
				t.Errorf("postinst upgrade: %q", c)
			}
		}
		// Remove, as on a host (no DPKG_ROOT: the snippet skips under it),
		// into the stubs.
		calls = script(env[:1], "prerm", "remove")
		if !has(calls, "deb-systemd-invoke stop paddock.socket paddock.service") {
			t.Errorf("prerm remove: %q", calls)
		}
		for _, c := range calls {
			if strings.Contains(c, "paddock-guests") {
				t.Errorf("prerm remove touches paddock-guests.service (its stop stops every VM): %q", c)
			}
		}

		calls = script(env, "postrm", "purge")
		if !has(calls, "deb-systemd-helper purge paddock.socket paddock-guests.service") {
			t.Errorf("postrm purge: %q", calls)
		}
		for _, d := range []string{"var/lib/paddock", "var/cache/paddock"} {
			if _, err := os.Stat(filepath.Join(root, d)); !os.IsNotExist(err) {
				t.Errorf("/%s after purge: %v", d, err)
			}
		}
		if _, ok := ids("passwd", "paddock"); ok {
			t.Error("purge left the paddock user")
		}
		var left []string
		for _, g := range []string{"paddock", "paddock-admin"} {
			if _, ok := ids("group", g); ok {
				left = append(left, g)
			}
		}
		sort.Strings(left)
		if len(left) > 0 {
			t.Errorf("purge left groups %v", left)
		}
		if _, ok := ids("group", "kvm"); !ok {
			t.Error("purge removed group kvm, which is udev's")
		}
	})
}
