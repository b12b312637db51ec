package bootkit

import (
	"fmt"
	"io"
	"path"
	"strings"
)

// CPIOWriter writes a newc ("070701") cpio archive, the format the kernel
// unpacks as an initramfs. Entries need no privileges to create: device nodes
// are just headers.
type CPIOWriter struct {
	w      io.Writer
	ino    uint32
	mtime  int64
	closed bool
	dirs   map[string]bool
}

// NewCPIOWriter returns a writer whose entries all carry mtime (seconds; use
// a fixed value for reproducible archives).
func NewCPIOWriter(w io.Writer, mtime int64) *CPIOWriter {
	return &CPIOWriter{w: w, ino: 1, mtime: mtime, dirs: map[string]bool{"": true, ".": true}}
}

const (
	cpioModeDir = 0o040000
	cpioModeReg = 0o100000
	cpioModeLnk = 0o120000
	cpioModeChr = 0o020000
)

func cleanName(name string) (string, error) {
	n := strings.TrimPrefix(path.Clean("/"+name), "/")
	if n == "" || n == "." {
		return "", fmt.Errorf("cpio: bad entry name %q", name)
	}
	return n, nil
}

func (c *CPIOWriter) header(name string, mode uint32, size int, rdevMajor, rdevMinor uint32, nlink uint32) error {
	if c.closed {
		return fmt.Errorf("cpio: write after close")
	}
	if len(name)+1 > 4096 {
		return fmt.Errorf("cpio: name too long: %q", name)
	}
	ino := c.ino
	c.ino++
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, uint32(c.mtime), size, 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	buf := make([]byte, 0, len(hdr)+len(name)+4)
	buf = append(buf, hdr...)
	buf = append(buf, name...)
	buf = append(buf, 0)
	for len(buf)%4 != 0 {
		buf = append(buf, 0)
	}
	_, err := c.w.Write(buf)
	return err
}

func (c *CPIOWriter) pad(n int) error {
	if r := n % 4; r != 0 {
		_, err := c.w.Write(make([]byte, 4-r))
		return err
	}
	return nil
}

// ensureParents creates missing parent directories (mode 0755).
func (c *CPIOWriter) ensureParents(name string) error {
	dir := path.Dir(name)
	if c.dirs[dir] {
		return nil
	}
	if err := c.ensureParents(dir); err != nil {
		return err
	}
	c.dirs[dir] = true
	return c.header(dir, cpioModeDir|0o755, 0, 0, 0, 2)
}

// Mkdir adds a directory (and its missing parents).
func (c *CPIOWriter) Mkdir(name string, perm uint32) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if c.dirs[n] {
		return nil
	}
	if err := c.ensureParents(n); err != nil {
		return err
	}
	c.dirs[n] = true
	return c.header(n, cpioModeDir|(perm&0o7777), 0, 0, 0, 2)
}

// WriteFile adds a regular file with the given content.
func (c *CPIOWriter) WriteFile(name string, perm uint32, data []byte) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if err := c.ensureParents(n); err != nil {
		return err
	}
	if err := c.header(n, cpioModeReg|(perm&0o7777), len(data), 0, 0, 1); err != nil {
		return err
	}
	if _, err := c.w.Write(data); err != nil {
		return err
	}
	return c.pad(len(data))
}

// Symlink adds a symbolic link name → target.
func (c *CPIOWriter) Symlink(name, target string) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if err := c.ensureParents(n); err != nil {
		return err
	}
	if err := c.header(n, cpioModeLnk|0o777, len(target), 0, 0, 1); err != nil {
		return err
	}
	if _, err := io.WriteString(c.w, target); err != nil {
		return err
	}
	return c.pad(len(target))
}

// CharDev adds a character device node.
func (c *CPIOWriter) CharDev(name string, perm, major, minor uint32) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if err := c.ensureParents(n); err != nil {
		return err
	}
	return c.header(n, cpioModeChr|(perm&0o7777), 0, major, minor, 1)
}

// Close writes the trailer. It does not close the underlying writer.
func (c *CPIOWriter) Close() error {
	if c.closed {
		return nil
	}
	if err := c.header("TRAILER!!!", 0, 0, 0, 0, 1); err != nil {
		return err
	}
	c.closed = true
	return nil
}
