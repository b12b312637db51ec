package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/paddock-vm/paddock/guestboot"
)

// imageConfig is the image's run configuration, read from paddock.config:
// the seed disk (/dev/vdb, see package guestboot) or a file in the root
// (default /.paddock/config.json). It
// accepts an OCI image config document ({"config": {"Entrypoint": ...}}) or
// its "config" object alone, plus paddock's own keys:
//
//	{"Entrypoint": ["/bin/app"], "Cmd": ["--flag"], "Env": ["K=V"],
//	 "WorkingDir": "/srv", "User": "app:app", "Restart": "on-failure"}
type imageConfig struct {
	Entrypoint []string `json:"Entrypoint"`
	Cmd        []string `json:"Cmd"`
	Env        []string `json:"Env"`
	WorkingDir string   `json:"WorkingDir"`
	User       string   `json:"User"`
	// Restart is the restart policy (no, on-failure, always).
	Restart string `json:"Restart"`
	// Mounts are the block devices to mount before the entrypoint (the
	// VM's workspaces; see guestboot.Mount).
	Mounts []guestboot.Mount `json:"PaddockMounts"`
	// Template: the guest is booted to be saved as a template snapshot;
	// its entrypoint waits for the identity step of each VM resumed
	// from it, which brings the VM's own config.
	Template bool `json:"PaddockTemplate"` // guestboot.TemplateKey
}

func parseImageConfig(b []byte) (*imageConfig, error) {
	var doc struct {
		imageConfig
		Config *imageConfig `json:"config"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	c := &doc.imageConfig
	if doc.Config != nil {
		c = doc.Config
		if c.Restart == "" {
			c.Restart = doc.Restart
		}
		if c.Mounts == nil {
			c.Mounts = doc.Mounts
		}
		c.Template = c.Template || doc.Template
	}
	for _, m := range c.Mounts {
		if err := guestboot.CheckMount(m); err != nil {
			return nil, err
		}
	}
	switch c.Restart {
	case "", guestboot.RestartNo, guestboot.RestartOnFailure, guestboot.RestartAlways:
	default:
		return nil, fmt.Errorf("bad Restart %q", c.Restart)
	}
	return c, nil
}

// user is the user the entrypoint runs as: the config's, else the owner
// of the workspace it works on (guestboot.MountUser).
func (c *imageConfig) user() string {
	if c.User != "" {
		return c.User
	}
	return guestboot.MountUser(c.Mounts)
}

// argv is entrypoint + cmd.
func (c *imageConfig) argv() []string {
	return append(append([]string{}, c.Entrypoint...), c.Cmd...)
}

// loadImageConfig reads the image config from path (a seed disk or a plain
// file); a missing file means an image without one (the agent only).
func loadImageConfig(path string) (*imageConfig, error) {
	b, err := readSeedFile(path)
	return imageConfigOf(path, b, err)
}

// readSeedFile reads the config's bytes from path; nil when it is missing.
func readSeedFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := guestboot.ReadSeed(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// imageConfigOf parses what readSeedFile read from path.
func imageConfigOf(path string, b []byte, err error) (*imageConfig, error) {
	if err != nil || b == nil {
		return nil, err
	}
	c, err := parseImageConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// seedAhead starts reading a seed disk's config while the root is mounted
// (the read waits on the host: under TCG the first read of the disk took
// 20-25 ms of the boot's critical path). The disk's driver is in, but its
// node may come a little later: it is waited for, up to wait (a seed disk
// named on the command line is never taken for a missing config). A path
// outside /dev (a plain file, which is the root's) is left to the config
// phase. The function it returns gives the bytes.
func seedAhead(path string, wait time.Duration) func() ([]byte, error) {
	if !strings.HasPrefix(path, "/dev/") {
		return func() ([]byte, error) { return readSeedFile(path) }
	}
	return readAhead(path, wait)
}

// readAhead reads path's seed in the background once path exists (up to
// wait); the function it returns waits for the bytes.
func readAhead(path string, wait time.Duration) func() ([]byte, error) {
	type read struct {
		b   []byte
		err error
	}
	ch := make(chan read, 1)
	go func() {
		deadline := time.Now().Add(wait)
		for {
			_, err := os.Stat(path)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				ch <- read{nil, fmt.Errorf("config device %s did not appear within %v: %w", path, wait, err)}
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
		b, err := readSeedFile(path)
		ch <- read{b, err}
	}()
	return func() ([]byte, error) { r := <-ch; return r.b, r.err }
}
