// Package sbin finds the system tools paddock runs (mke2fs, losetup, ip,
// ...): in $PATH first, then in /usr/sbin and /sbin, which are not in an
// unprivileged user's PATH on Debian.
package sbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Dirs are searched, in order, after $PATH.
var Dirs = []string{"/usr/sbin", "/sbin"}

// Look returns the path of the executable name.
func Look(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range Dirs {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in $PATH, /usr/sbin or /sbin", name)
}
