package guestboot

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// The seed disk carries the image config (an OCI image config document, or
// its "config" object, as JSON) to the guest on a read-only raw block
// device: the JSON, then NUL bytes up to the next 4096-byte boundary (at
// least one NUL, so the end of the JSON is always marked). JSON cannot hold a
// raw NUL, so the first NUL ends it. The agent reads it with
// paddock.config=/dev/vdb; a plain JSON file (no padding) reads the same.
const (
	// MaxSeedConfig is the largest image config a seed carries.
	MaxSeedConfig = 1 << 20
	// SeedBlock is the size the seed is padded to a multiple of.
	SeedBlock = 4096
)

// EncodeSeed returns the seed disk image for config (empty: "{}").
func EncodeSeed(config []byte) ([]byte, error) {
	if len(config) == 0 {
		config = []byte("{}")
	}
	if len(config) > MaxSeedConfig {
		return nil, fmt.Errorf("image config is %d bytes, more than the seed's %d", len(config), MaxSeedConfig)
	}
	if !json.Valid(config) {
		return nil, errors.New("image config is not valid JSON")
	}
	buf := make([]byte, (len(config)+1+SeedBlock-1)/SeedBlock*SeedBlock)
	copy(buf, config)
	return buf, nil
}

// WriteSeed writes the seed disk image for config to path (mode 0600: it
// holds the VM's environment, --env values included),
// replacing it atomically. It does not fsync: the seed is rebuilt before
// every start, so a crash can cost nothing but a rewrite.
func WriteSeed(path string, config []byte) error {
	buf, err := EncodeSeed(config)
	if err != nil {
		return fmt.Errorf("seed %s: %w", path, err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	_, err = f.Write(buf)
	err = errors.Join(err, f.Chmod(0o600), f.Close())
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("seed %s: %w", path, err)
	}
	return nil
}

// ReadSeed reads the image config from a seed disk (or a plain JSON file),
// reading at most MaxSeedConfig+1 bytes from r: the JSON up to its first
// NUL or the end of r.
func ReadSeed(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxSeedConfig+1))
	if err != nil {
		return nil, fmt.Errorf("reading the seed: %w", err)
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	} else if len(b) > MaxSeedConfig {
		return nil, fmt.Errorf("the seed's image config is larger than %d bytes", MaxSeedConfig)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, errors.New("the seed holds no image config")
	}
	if !json.Valid(b) {
		return nil, errors.New("the seed's image config is not valid JSON")
	}
	return b, nil
}

// MountsKey is the key of the image config on the seed (beside
// Entrypoint, Env, ...) under which paddockd lists the block devices the
// agent mounts before it starts the entrypoint: the VM's workspaces.
const MountsKey = "PaddockMounts"

// TemplateKey, true in the config on the seed, says the guest boots to be
// saved as a template: the agent holds the entrypoint until the identity
// step of each VM resumed from it (agent.IdentityRequest).
const TemplateKey = "PaddockTemplate"

// Mount is one block device the agent mounts (a workspace): Device at
// Path, read-only when ReadOnly. UID and GID own the files of the volume:
// when the image config names no User, the entrypoint runs as the first
// read-write mount's (else the first mount's) UID:GID, so that it owns
// what it works on.
type Mount struct {
	Device   string `json:"device"`
	Path     string `json:"path"`
	FSType   string `json:"fstype,omitempty"` // ext4 when empty
	ReadOnly bool   `json:"ro,omitempty"`
	UID      uint32 `json:"uid"`
	GID      uint32 `json:"gid"`
}

// CheckMount reports what the agent would refuse in m.
func CheckMount(m Mount) error {
	if !strings.HasPrefix(m.Device, "/dev/") || len(m.Device) == len("/dev/") || strings.Contains(m.Device[5:], "/") {
		return fmt.Errorf("mount device %q is not /dev/NAME", m.Device)
	}
	if !path.IsAbs(m.Path) || path.Clean(m.Path) != m.Path || m.Path == "/" || strings.ContainsAny(m.Path, "\x00\n") {
		return fmt.Errorf("mount path %q must be a clean absolute path other than /", m.Path)
	}
	if m.FSType != "" {
		if err := checkFSType(m.FSType); err != nil {
			return err
		}
	}
	return nil
}

// MountUser is the user the entrypoint runs as when the image names none
// ("UID:GID" of the first read-write mount, else of the first), or "".
func MountUser(ms []Mount) string {
	for _, m := range ms {
		if !m.ReadOnly {
			return fmt.Sprintf("%d:%d", m.UID, m.GID)
		}
	}
	if len(ms) > 0 {
		return fmt.Sprintf("%d:%d", ms[0].UID, ms[0].GID)
	}
	return ""
}

// MountOwner is who owns what paddock cp unpacks into the guest directory
// dir: the uid:gid of the workspace whose mount point holds dir (the
// deepest, compared as paths: a symbolic link is not followed), else root.
func MountOwner(ms []Mount, dir string) (uid, gid int) {
	best := -1
	dir = path.Clean(dir)
	for _, m := range ms {
		p := path.Clean(m.Path)
		if (dir == p || strings.HasPrefix(dir, strings.TrimSuffix(p, "/")+"/")) && len(p) > best {
			best, uid, gid = len(p), int(m.UID), int(m.GID)
		}
	}
	return uid, gid
}
