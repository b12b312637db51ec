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
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
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

// sendfileMin is the size from which a content goes to a file or pipe w by
// sendfile(2) (the kernel moves it, for a pipe by reference to the page
// cache) rather than through a buffer (read, then write: two copies):
// one page, from which a reference saves a copy. Smaller contents are
// batched in the buffer, fewer system calls. (At 256 KiB, a tree of
// 16 KiB files cost the CLI and the daemon about a tenth more.)
const sendfileMin = 4 << 10

func archive(ctx context.Context, dir, name string, w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	direct, _ := w.(*os.File)
	// Each entry gets a tar.Writer of its own, which writes its header
	// into bw; contents and padding go to bw (or w) here, so that a
	// content can bypass the buffer. The archive ends as tar.Writer's
	// Close ends it: two zero blocks.
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
					return tar.NewWriter(bw).WriteHeader(h)
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
		if err := tar.NewWriter(bw).WriteHeader(h); err != nil {
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
		var n int64
		if direct != nil && h.Size >= sendfileMin {
			if err := bw.Flush(); err != nil {
				return err
			}
			n, err = sendfile(direct, f, h.Size)
		} else {
			n, err = io.CopyBuffer(bw, io.LimitReader(f, h.Size), buf)
		}
		if err != nil || n != h.Size {
			if err == nil {
				err = fmt.Errorf("it shrank while being read (%d of %d bytes)", n, h.Size)
			}
			return fmt.Errorf("read %s: %w", path, err)
		}
		_, err = bw.Write(zeros[:(blockSize-h.Size%blockSize)%blockSize])
		return err
	})
	if err != nil {
		return err
	}
	if _, err := bw.Write(zeros[:2*blockSize]); err != nil {
		return err
	}
	return bw.Flush()
}

const blockSize = 512

var zeros [2 * blockSize]byte

// sendfile sends up to size bytes of src to dst from src's offset 0 and
// returns how many it sent (fewer when src ends first). A full pipe is
// waited for through the runtime's poller.
func sendfile(dst, src *os.File, size int64) (int64, error) {
	sc, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	var sfd int
	if err := sc.Control(func(fd uintptr) { sfd = int(fd) }); err != nil {
		return 0, err
	}
	dc, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	var off int64
	var serr error
	err = dc.Write(func(fd uintptr) bool {
		for off < size {
			n, err := unix.Sendfile(int(fd), sfd, &off, int(min(size-off, 1<<30)))
			switch {
			case err == unix.EAGAIN:
				return false // wait until dst takes more
			case err == unix.EINTR:
				continue
			case err != nil:
				serr = err
				return true
			case n == 0:
				return true // src ended early
			}
		}
		return true
	})
	runtime.KeepAlive(src)
	if err == nil {
		err = serr
	}
	return off, err
}

func modeKind(m fs.FileMode) string {
	if m&fs.ModeSocket != 0 {
		return "socket"
	}
	return "special file (" + m.String() + ")"
}
