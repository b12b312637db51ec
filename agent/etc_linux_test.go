package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/internal/testenv"
)

const rc = "nameserver 192.0.2.53\n"

// setupRoot makes a guest root with /etc and, outside it, a file a
// symlink in the root points at.
func setupRoot(t *testing.T, dir string) (root, outside string) {
	t.Helper()
	root, outside = filepath.Join(dir, "root"), filepath.Join(dir, "outside")
	for _, d := range []string{filepath.Join(root, "etc"), filepath.Join(root, "run"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(outside, "victim"), []byte("keep\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root, outside
}

func TestWriteEtcFile(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T, root, outside string)
		err   string // "" for success
	}{
		{"missing", func(*testing.T, string, string) {}, ""},
		{"regular file", func(t *testing.T, root, _ string) {
			must(t, os.WriteFile(filepath.Join(root, "etc/resolv.conf"), []byte("old\n"), 0o600))
		}, ""},
		{"symlink out of the root", func(t *testing.T, root, outside string) {
			must(t, os.Symlink(filepath.Join(outside, "victim"), filepath.Join(root, "etc/resolv.conf")))
		}, ""},
		{"relative symlink climbing out", func(t *testing.T, root, _ string) {
			must(t, os.Symlink("../../outside/victim", filepath.Join(root, "etc/resolv.conf")))
		}, ""},
		{"dangling symlink", func(t *testing.T, root, _ string) {
			must(t, os.Symlink("../run/systemd/resolve/stub-resolv.conf", filepath.Join(root, "etc/resolv.conf")))
		}, ""},
		{"etc is a symlink out", func(t *testing.T, root, outside string) {
			must(t, os.RemoveAll(filepath.Join(root, "etc")))
			must(t, os.Symlink(outside, filepath.Join(root, "etc")))
		}, "open /etc"},
		{"the same content, another mode", func(t *testing.T, root, _ string) {
			must(t, os.WriteFile(filepath.Join(root, "etc/resolv.conf"), []byte(rc), 0o600))
		}, ""},
		{"the same content, one byte more", func(t *testing.T, root, _ string) {
			must(t, os.WriteFile(filepath.Join(root, "etc/resolv.conf"), []byte(rc+"#"), 0o644))
		}, ""},
		{"a symlink to the same content", func(t *testing.T, root, outside string) {
			must(t, os.WriteFile(filepath.Join(outside, "same"), []byte(rc), 0o644))
			must(t, os.Symlink(filepath.Join(outside, "same"), filepath.Join(root, "etc/resolv.conf")))
		}, ""},
		{"a FIFO", func(t *testing.T, root, _ string) {
			must(t, unix.Mkfifo(filepath.Join(root, "etc/resolv.conf"), 0o644))
		}, ""},
		{"a device node", func(t *testing.T, root, _ string) {
			err := unix.Mknod(filepath.Join(root, "etc/resolv.conf"), unix.S_IFCHR|0o644, int(unix.Mkdev(1, 3))) // /dev/null's
			if err == unix.EPERM && os.Getenv("CI") == "" {
				t.Skip("making a device node needs CAP_MKNOD")
			}
			must(t, err)
		}, ""},
		{"a directory in the way", func(t *testing.T, root, _ string) {
			must(t, os.Mkdir(filepath.Join(root, "etc/resolv.conf"), 0o755))
			must(t, os.WriteFile(filepath.Join(root, "etc/resolv.conf/x"), nil, 0o644))
		}, "/etc/resolv.conf"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root, outside := setupRoot(t, t.TempDir())
			c.setup(t, root, outside)
			err := WriteEtcFile(root, "resolv.conf", []byte(rc))
			if got, _ := os.ReadFile(filepath.Join(outside, "victim")); string(got) != "keep\n" {
				t.Fatalf("the file outside the root was written: %q", got)
			}
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v, want one naming %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(root, "etc/resolv.conf")
			fi, err := os.Lstat(p)
			if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o644 {
				t.Fatalf("%s: %v %v, want a 0644 file", p, fi.Mode(), err)
			}
			if got, _ := os.ReadFile(p); string(got) != rc {
				t.Fatalf("%s = %q", p, got)
			}
			ents, _ := os.ReadDir(filepath.Join(root, "etc"))
			if len(ents) != 1 {
				t.Fatalf("left in /etc: %v", ents)
			}
		})
	}
	// A file that holds the content already, as WriteEtcFile makes it, is
	// left as it is: not replaced (same inode, same mtime).
	root, _ := setupRoot(t, t.TempDir())
	p := filepath.Join(root, "etc/resolv.conf")
	must(t, WriteEtcFile(root, "resolv.conf", []byte(rc)))
	var before, after unix.Stat_t
	must(t, unix.Lstat(p, &before))
	must(t, WriteEtcFile(root, "resolv.conf", []byte(rc)))
	must(t, unix.Lstat(p, &after))
	if after.Ino != before.Ino || after.Mtim != before.Mtim {
		t.Errorf("the same content written again: inode %d -> %d", before.Ino, after.Ino)
	}
	must(t, WriteEtcFile(root, "resolv.conf", []byte(rc+"# other\n")))
	if got, _ := os.ReadFile(p); string(got) != rc+"# other\n" {
		t.Errorf("other content not written: %q", got)
	}
	for _, bad := range []string{"", "..", "a/b"} {
		if err := WriteEtcFile(t.TempDir(), bad, nil); err == nil {
			t.Errorf("name %q taken", bad)
		}
	}
}

// On a read-only root the file is covered by a bind mount: run in a
// private mount namespace (unshare -m), on a tmpfs made read-only there.
func TestWriteEtcFileReadOnlyRoot(t *testing.T) {
	if dir := os.Getenv("PADDOCK_ETC_RO_DIR"); dir != "" {
		readOnlyChild(t, dir)
		return
	}
	testenv.RequireRoot(t, "mount namespace and bind mounts")
	unshare := testenv.RequireTool(t, "unshare", "util-linux")
	cmd := exec.Command(unshare, "--mount", "--propagation", "private", os.Args[0], "-test.run=^TestWriteEtcFileReadOnlyRoot$", "-test.v")
	cmd.Env = append(os.Environ(), "PADDOCK_ETC_RO_DIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestWriteEtcFileReadOnlyRoot") {
		t.Fatalf("in a private mount namespace: %v\n%s", err, out)
	}
}

func readOnlyChild(t *testing.T, dir string) {
	must(t, unix.Mount("tmpfs", dir, "tmpfs", 0, "mode=0755"))
	root, outside := setupRoot(t, dir)
	must(t, os.WriteFile(filepath.Join(root, "run/resolv.conf"), []byte("old\n"), 0o644))
	must(t, os.Symlink("/run/resolv.conf", filepath.Join(root, "etc/resolv.conf")))
	must(t, os.Symlink(filepath.Join(outside, "victim"), filepath.Join(root, "etc/hosts")))
	coverScratch = []string{filepath.Join(dir, "missing"), filepath.Join(dir, "scratch")}
	must(t, os.Mkdir(filepath.Join(dir, "scratch"), 0o755))
	must(t, unix.Mount(root, root, "", unix.MS_BIND, ""))
	must(t, unix.Mount("", root, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""))
	if err := WriteEtcFile(root, "resolv.conf", []byte(rc)); err != nil {
		t.Fatal(err)
	}
	// The symlink stays, resolved inside the root, to the covered file.
	if got, _ := os.ReadFile(filepath.Join(root, "run/resolv.conf")); string(got) != rc {
		t.Fatalf("resolv.conf through its symlink = %q", got)
	}
	// A symlink out of the root resolves inside it: nothing to cover.
	if err := WriteEtcFile(root, "hosts", []byte("x\n")); err == nil {
		t.Fatal("covered a file a symlink names outside the root")
	}
	if got, _ := os.ReadFile(filepath.Join(outside, "victim")); string(got) != "keep\n" {
		t.Fatalf("the file outside the root changed: %q", got)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "scratch")); len(ents) != 0 {
		t.Fatalf("left in the scratch directory: %v", ents)
	}
	// A file with no counterpart cannot be covered on a read-only root.
	if err := WriteEtcFile(root, "hostname", []byte("h\n")); err == nil || !strings.Contains(err.Error(), "/etc/hostname") {
		t.Fatalf("hostname on a read-only root: %v", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
