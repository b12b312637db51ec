package main

import (
	"encoding/json"
	"fmt"
	"os"

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
	c, err := parseImageConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}
