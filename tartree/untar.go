// Package tartree moves file trees in and out of tar streams: Archive and
// TarDir write a tree as its reader sees it, never following a symbolic
// link; Untar and Extract unpack a stream that may be hostile into a
// directory, resolving every name inside it (os.Root) and refusing what
// reaches out of it, naming the entry. The CLI, the daemon and the guest
// agent share it, so it holds nothing but the standard library.
package tartree

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
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
	return Extract(ctx, r, root, Options{})
}

// Owner is a uid:gid.
type Owner struct{ UID, GID int }

// Options say how Extract unpacks.
type Options struct {
	// Rename maps an entry's clean name to where it goes under the root;
	// false refuses the entry as lying outside what is copied. nil keeps
	// names as they are.
	Rename func(name string) (string, bool)
	// Chown, when set, gives every entry unpacked this owner (the guest
	// agent, which runs as root); otherwise entries are the caller's.
	Chown *Owner
	// Replace lets a file, link or hardlink replace an existing file or
	// symbolic link of its name (directories merge), as cp does; without
	// it an existing name is an error.
	Replace bool
	// MaxBytes bounds the total size of the files (0: no bound), so that
	// an absurd entry is refused by name before anything of it is
	// written; MaxEntries bounds the number of entries (0: no bound).
	MaxBytes   int64
	MaxEntries int
}

// Extract unpacks r under root as Untar does, with o's renaming, owner,
// replacing and bounds.
func Extract(ctx context.Context, r io.Reader, root *os.Root, o Options) error {
	type dirMeta struct {
		name  string
		mode  fs.FileMode
		mtime time.Time
	}
	var dirs []dirMeta
	cr := &Counter{R: r}
	tr := tar.NewReader(cr)
	var next, total int64
	entries := 0
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if err == io.EOF {
			if cr.N-next < 2*512 {
				return errors.New("the tar stream ends without its end-of-archive marker: it was cut short")
			}
			break
		}
		if err != nil {
			return fmt.Errorf("the tar stream is malformed: %w", err)
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			next = cr.N
			continue
		}
		if entries++; o.MaxEntries > 0 && entries > o.MaxEntries {
			return fmt.Errorf("%s: more than %d entries", h.Name, o.MaxEntries)
		}
		if h.Size < 0 || (o.MaxBytes > 0 && h.Size > o.MaxBytes-total) {
			return fmt.Errorf("%s: %d bytes do not fit: %d bytes are left of %d", h.Name, h.Size, o.MaxBytes-total, o.MaxBytes)
		}
		total += h.Size
		name, ok := cleanName(h.Name)
		if ok && o.Rename != nil {
			name, ok = o.Rename(name)
		}
		if !ok {
			return fmt.Errorf("%s: %w", h.Name, ErrEscape)
		}
		mode := fs.FileMode(h.Mode & 0o1777)
		if h.Typeflag != tar.TypeDir && o.Replace {
			if err := clear(root, name); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
		}
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
			// it is resolved inside the root.
			if err := root.Symlink(h.Linkname, name); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
		case tar.TypeLink:
			target, ok := cleanName(h.Linkname)
			if ok && o.Rename != nil {
				target, ok = o.Rename(target)
			}
			if !ok || target == "." {
				return fmt.Errorf("%s -> %s: %w", h.Name, h.Linkname, ErrEscape)
			}
			if err := root.Link(target, name); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
		default:
			return fmt.Errorf("%s: unsupported entry type %q", h.Name, h.Typeflag)
		}
		if o.Chown != nil {
			if err := root.Lchown(name, o.Chown.UID, o.Chown.GID); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
		}
		next = cr.N + (h.Size - copied) + (512-h.Size%512)%512
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

// clear removes what stands at name so an entry can take its place: a
// file or a symbolic link (never followed); a directory is refused.
func clear(root *os.Root, name string) error {
	fi, err := root.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case fi.IsDir():
		return errors.New("a directory of that name is in the way")
	}
	return root.Remove(name)
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

// Destination works out where a copy of a tree named name (its entries
// name, name/child...) goes for the destination path dst, as cp does:
// inside dst when dst is an existing directory (followed if a symbolic
// link); otherwise it becomes dst itself, whose parent must be a
// directory. It returns the directory to unpack into and the renaming
// for Options.
func Destination(dst, name string) (string, func(string) (string, bool), error) {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return "", nil, fmt.Errorf("%q cannot name what is copied", name)
	}
	dir, target := dst, name
	if fi, err := os.Stat(dst); err != nil || !fi.IsDir() {
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", nil, err
		}
		dir, target = filepath.Dir(dst), filepath.Base(dst)
		if target == "." || target == ".." || target == "/" {
			return "", nil, fmt.Errorf("%s: cannot copy to that name", dst)
		}
		if fi, err := os.Stat(dir); err != nil {
			return "", nil, err
		} else if !fi.IsDir() {
			return "", nil, fmt.Errorf("%s is not a directory", dir)
		}
	}
	rename := func(n string) (string, bool) {
		switch {
		case n == name:
			return target, true
		case strings.HasPrefix(n, name+"/"):
			return target + n[len(name):], true
		}
		return "", false
	}
	return dir, rename, nil
}

// OpenDestination is Destination with the directory opened as the root
// to unpack under; the caller closes it.
func OpenDestination(dst, name string) (*os.Root, func(string) (string, bool), error) {
	dir, rename, err := Destination(dst, name)
	if err != nil {
		return nil, nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, nil, err
	}
	return root, rename, nil
}

// Counter counts the bytes read through it.
type Counter struct {
	R io.Reader
	N int64
}

func (c *Counter) Read(p []byte) (int, error) {
	n, err := c.R.Read(p)
	c.N += int64(n)
	return n, err
}
