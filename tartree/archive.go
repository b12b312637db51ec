package tartree

import (
	"archive/tar"
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// TarDir writes the tree under dir to w as a tar stream, as the calling
// user reads it: symbolic links are archived as links (never followed),
// hardlinked files as one content and links to it, directories before
// their children. Entries are named relative to dir, which is left out.
// Owners are left out (the daemon gives every file the
// workspace's). Device nodes and fifos are archived as what they are, so
// the daemon refuses them naming the entry; a socket, or what cannot be
// read, fails naming the path.
func TarDir(ctx context.Context, dir string, w io.Writer) error {
	return archive(ctx, dir, "", w)
}

// Archive writes src to w as TarDir does, src itself included as the
// entry name (a file, a symbolic link, never followed, or a directory,
// whose children are name/child...).
func Archive(ctx context.Context, src, name string, w io.Writer) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("%q cannot name what is copied", name)
	}
	return archive(ctx, src, name, w)
}

func archive(ctx context.Context, dir, name string, w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	tw := tar.NewWriter(bw)
	type ino struct{ dev, ino uint64 }
	seen := map[ino]string{}
	buf := make([]byte, 1<<20)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		switch {
		case rel == "." && name == "":
			return nil // the root is the destination's own
		case rel == ".":
			rel = name
		case name != "":
			rel = name + "/" + rel
		}
		fi, err := d.Info()
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		h := &tar.Header{Name: rel, Mode: int64(fi.Mode().Perm()), ModTime: fi.ModTime(), Format: tar.FormatPAX}
		if fi.Mode()&fs.ModeSetuid != 0 {
			h.Mode |= 0o4000
		}
		if fi.Mode()&fs.ModeSetgid != 0 {
			h.Mode |= 0o2000
		}
		if fi.Mode()&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		st, _ := fi.Sys().(*syscall.Stat_t)
		switch m := fi.Mode(); {
		case m.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, rel+"/"
		case m&fs.ModeSymlink != 0:
			t, err := os.Readlink(path)
			if err != nil {
				return fmt.Errorf("read %s: %w", path, err)
			}
			h.Typeflag, h.Linkname = tar.TypeSymlink, t
		case m.IsRegular():
			if st != nil && st.Nlink > 1 {
				k := ino{uint64(st.Dev), st.Ino}
				if first, ok := seen[k]; ok {
					h.Typeflag, h.Linkname = tar.TypeLink, first
					return tw.WriteHeader(h)
				}
				seen[k] = rel
			}
			h.Typeflag, h.Size = tar.TypeReg, fi.Size()
		case m&fs.ModeCharDevice != 0:
			h.Typeflag = tar.TypeChar
		case m&fs.ModeDevice != 0:
			h.Typeflag = tar.TypeBlock
		case m&fs.ModeNamedPipe != 0:
			h.Typeflag = tar.TypeFifo
		default:
			return fmt.Errorf("%s: a %s cannot go into a workspace", path, strings.TrimSpace(modeKind(m)))
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if h.Typeflag != tar.TypeReg {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		defer f.Close()
		if n, err := io.CopyBuffer(tw, io.LimitReader(f, h.Size), buf); err != nil || n != h.Size {
			if err == nil {
				err = fmt.Errorf("it shrank while being read (%d of %d bytes)", n, h.Size)
			}
			return fmt.Errorf("read %s: %w", path, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

func modeKind(m fs.FileMode) string {
	if m&fs.ModeSocket != 0 {
		return "socket"
	}
	return "special file (" + m.String() + ")"
}
