package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/internal/sbin"
)

// Tools names the e2fsprogs binaries. Empty fields are looked up in PATH,
// then in /usr/sbin and /sbin (not in an unprivileged user's PATH on Debian).
type Tools struct {
	Mke2fs, Debugfs, E2fsck string
}

// ErrToolMissing: an e2fsprogs binary was not found.
var ErrToolMissing = errdefs.New(errdefs.ErrUnavailable, "e2fsprogs tool not found")

func findTool(name, given string) (string, error) {
	if given != "" {
		return given, nil
	}
	p, err := sbin.Look(name)
	if err != nil {
		return "", fmt.Errorf("%w: %s (install e2fsprogs)", ErrToolMissing, name)
	}
	return p, nil
}

func (t Tools) resolve() (Tools, error) {
	var err error
	if t.Mke2fs, err = findTool("mke2fs", t.Mke2fs); err != nil {
		return t, err
	}
	if t.Debugfs, err = findTool("debugfs", t.Debugfs); err != nil {
		return t, err
	}
	if t.E2fsck, err = findTool("e2fsck", t.E2fsck); err != nil {
		return t, err
	}
	return t, nil
}

// Capabilities are what the installed mke2fs can do, probed once per binary.
type Capabilities struct {
	Version [3]int // e.g. 1.47.0
	// Prezeroed: -E assume_storage_prezeroed=1 (1.47.0+). It marks inode
	// tables zeroed and skips writing the journal, so a fresh sparse image
	// allocates nothing for them and the guest runs no ext4lazyinit.
	Prezeroed bool
	// TarStdin: -d - reads a tar stream on stdin (1.47.1+, needs libarchive
	// at run time, which mke2fs dlopens). Verified by building a tiny image.
	TarStdin bool
}

var (
	capsMu    sync.Mutex
	capsCache = map[string]*Capabilities{}
)

var versionRE = regexp.MustCompile(`mke2fs (\d+)\.(\d+)(?:\.(\d+))?`)

// Probe reports what the mke2fs binary supports. Results are cached.
func Probe(ctx context.Context, mke2fs string) (*Capabilities, error) {
	capsMu.Lock()
	defer capsMu.Unlock()
	if c := capsCache[mke2fs]; c != nil {
		return c, nil
	}
	out, err := exec.CommandContext(ctx, mke2fs, "-V").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s -V: %w: %s", mke2fs, err, bytes.TrimSpace(out))
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return nil, fmt.Errorf("%s -V: no version in %q", mke2fs, out)
	}
	c := &Capabilities{}
	for i := 0; i < 3; i++ {
		c.Version[i], _ = strconv.Atoi(string(m[i+1]))
	}
	c.Prezeroed = versionAtLeast(c.Version, 1, 47, 0)
	if versionAtLeast(c.Version, 1, 47, 1) {
		c.TarStdin = probeTarStdin(ctx, mke2fs) == nil
	}
	capsCache[mke2fs] = c
	return c, nil
}

func versionAtLeast(v [3]int, a, b, c int) bool {
	if v[0] != a {
		return v[0] > a
	}
	if v[1] != b {
		return v[1] > b
	}
	return v[2] >= c
}

// probeTarStdin builds a 4 MiB image from a one-file tar on stdin. It fails
// when mke2fs was built without tar support or libarchive is missing.
func probeTarStdin(ctx context.Context, mke2fs string) error {
	dir, err := os.MkdirTemp("", "paddock-mke2fs-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	_ = tw.WriteHeader(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(0, 0)})
	_ = tw.WriteHeader(&tar.Header{Name: "probe", Typeflag: tar.TypeReg, Mode: 0o644, Size: 2, ModTime: time.Unix(0, 0)})
	_, _ = tw.Write([]byte("ok"))
	_ = tw.Close()
	img := filepath.Join(dir, "probe.img")
	cmd := exec.CommandContext(ctx, mke2fs, "-q", "-F", "-t", "ext4", "-b", "4096", "-d", "-", img, "4M")
	cmd.Stdin = &buf
	cmd.Env = append(os.Environ(), "MKE2FS_CONFIG=/dev/null")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mke2fs -d -: %w: %s", err, out)
	}
	return nil
}
