package workspace

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

// ErrEscape: a tar entry whose name or link reaches out of the directory
// it is unpacked into.
var ErrEscape = errors.New("entry escapes the directory")

// Untar unpacks the tar stream r into dir as the calling user: every file
// is the caller's, setuid and setgid bits are dropped, and no entry may
// reach out of dir (absolute names, "..", a link through a symbolic link
// leading out: refused naming the entry; everything is resolved inside
// dir by os.Root). dir is made if missing and must be empty. Directory
// modes and times are applied last, so a read-only directory still gets
// its children. Entries other than directories, files, symbolic links and
// hardlinks are refused. A stream without its end-of-archive marker is
// refused (a daemon that failed half-way), leaving what was unpacked.
func Untar(ctx context.Context, r io.Reader, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if ents, err := os.ReadDir(dir); err != nil {
		return err
	} else if len(ents) > 0 {
		return fmt.Errorf("%s is not empty", dir)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	type dirMeta struct {
		name  string
		mode  fs.FileMode
		mtime time.Time
	}
	var dirs []dirMeta
	cr := &counter{r: r}
	tr := tar.NewReader(cr)
	var next int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if err == io.EOF {
			if cr.n-next < 2*512 {
				return errors.New("the tar stream ends without its end-of-archive marker: it was cut short")
			}
			break
		}
		if err != nil {
			return fmt.Errorf("the tar stream is malformed: %w", err)
		}
		name, ok := cleanName(h.Name)
		if !ok {
			return fmt.Errorf("%s: %w", h.Name, ErrEscape)
		}
		mode := fs.FileMode(h.Mode & 0o1777)
		var copied int64
		switch h.Typeflag {
		case tar.TypeDir:
			if name != "." {
				if err := root.MkdirAll(name, 0o700); err != nil {
					return fmt.Errorf("%s: %w", h.Name, err)
				}
			}
			if mode&0o1000 != 0 {
				mode = mode&0o777 | fs.ModeSticky
			}
			dirs = append(dirs, dirMeta{name, mode, h.ModTime})
		case tar.TypeReg:
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
			copied, err = io.Copy(f, tr)
			if err == nil {
				err = f.Chmod(mode & 0o777)
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = root.Chtimes(name, h.ModTime, h.ModTime)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
		case tar.TypeSymlink:
			if h.Linkname == "" || strings.ContainsRune(h.Linkname, 0) {
				return fmt.Errorf("%s: bad link target %q", h.Name, h.Linkname)
			}
			// The target is not followed here; whatever later goes through
			// it is resolved inside dir.
			if err := root.Symlink(h.Linkname, name); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
		case tar.TypeLink:
			target, ok := cleanName(h.Linkname)
			if !ok || target == "." {
				return fmt.Errorf("%s -> %s: %w", h.Name, h.Linkname, ErrEscape)
			}
			if err := root.Link(target, name); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
		case tar.TypeXGlobalHeader:
		default:
			return fmt.Errorf("%s: unsupported entry type %q", h.Name, h.Typeflag)
		}
		next = cr.n + (h.Size - copied) + (512-h.Size%512)%512
	}
	// Deepest first: a directory's time is set after its children are.
	sort.SliceStable(dirs, func(i, j int) bool { return strings.Count(dirs[i].name, "/") > strings.Count(dirs[j].name, "/") })
	for _, d := range dirs {
		if err := root.Chmod(d.name, d.mode); err != nil {
			return fmt.Errorf("%s: %w", d.name, err)
		}
		if err := root.Chtimes(d.name, d.mtime, d.mtime); err != nil {
			return fmt.Errorf("%s: %w", d.name, err)
		}
	}
	return nil
}

// cleanName makes a tar name relative to the directory ("." for its
// root); false when it is absolute or climbs out.
func cleanName(n string) (string, bool) {
	if n == "" || strings.HasPrefix(n, "/") || strings.ContainsRune(n, 0) {
		return "", false
	}
	c := path.Clean(n)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", false
	}
	for _, part := range strings.Split(n, "/") {
		if part == ".." {
			return "", false
		}
	}
	return c, true
}
