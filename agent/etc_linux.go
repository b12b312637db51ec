package agent

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// WriteEtcFile makes root/etc/NAME hold data, never following a symlink
// out of root: etc is opened beneath root without following symlinks, the
// new file is made beside NAME under a random name (O_EXCL, O_NOFOLLOW) and
// renamed over it, so a NAME that is a symlink (resolv.conf often is) is
// replaced by a file, never written through.
//
// On a read-only root (EROFS) the file is not replaced but covered: data
// goes into a file on a tmpfs bind-mounted over NAME, which must then exist
// as a regular file or a symlink that resolves inside root to one. What
// cannot be done is an error naming the file.
func WriteEtcFile(root, name string, data []byte) error {
	if name == "" || strings.ContainsRune(name, '/') || name == "." || name == ".." {
		return fmt.Errorf("etc file %q: not a plain name", name)
	}
	target := path.Join("/etc", name)
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: open the root %s: %w", target, root, err)
	}
	defer unix.Close(rfd)
	efd, err := unix.Openat2(rfd, "etc", &unix.OpenHow{
		Flags:   unix.O_DIRECTORY | unix.O_CLOEXEC | unix.O_RDONLY,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return fmt.Errorf("%s: open /etc (not a directory, or a symlink): %w", target, err)
	}
	defer unix.Close(efd)
	if holdsAlready(efd, name, data) {
		return nil
	}
	err = replaceAt(efd, name, data)
	if errors.Is(err, unix.EROFS) {
		err = coverAt(rfd, path.Join("etc", name), data)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", target, err)
	}
	return nil
}

// holdsAlready reports whether name in dir is already what WriteEtcFile
// makes: a regular file (not a symlink), root's, mode 0644, holding data.
// Then nothing is written: a restarted VM's files, and most of a VM's
// resumed from a template, are as they were, and each rewrite (a new file,
// a rename, a journal entry) cost ~20 ms of a boot under TCG. Only a
// regular file is opened (an image's device node or FIFO there is never
// opened, just replaced), and the open neither blocks nor takes a
// terminal should one be swapped in meanwhile.
func holdsAlready(dir int, name string, data []byte) bool {
	var pre unix.Stat_t
	if unix.Fstatat(dir, name, &pre, unix.AT_SYMLINK_NOFOLLOW) != nil || pre.Mode&unix.S_IFMT != unix.S_IFREG {
		return false
	}
	fd, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Mode&0o7777 != 0o644 ||
		st.Uid != 0 || st.Size != int64(len(data)) {
		return false
	}
	buf := make([]byte, len(data)+1)
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false
		}
		if m == 0 {
			break
		}
		n += m
	}
	return n == len(data) && string(buf[:n]) == string(data)
}

// replaceAt writes data to a new file in dir and renames it over name.
func replaceAt(dir int, name string, data []byte) error {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := "." + name + ".paddock-" + hex.EncodeToString(rnd[:])
	fd, err := unix.Openat(dir, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	// No fsync: the agent writes these files at every boot, before the
	// hello; an fsync each cost a journal commit and a flush of the disk
	// image on the host (tens to hundreds of ms of the boot on a busy
	// host). A crash may lose the new content, not leave the file empty:
	// ext4 (auto_da_alloc) writes a file renamed over another out with
	// the rename, and the next boot writes them again.
	err = writeAll(fd, data)
	if err == nil {
		err = unix.Fchmod(fd, 0o644) // whatever the umask
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(dir, tmp, dir, name)
	}
	if err != nil {
		_ = unix.Unlinkat(dir, tmp, 0)
	}
	return err
}

// coverAt bind-mounts a file holding data over rel (beneath root,
// symlinks resolved inside root only).
func coverAt(root int, rel string, data []byte) error {
	tfd, err := unix.Openat2(root, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != nil {
		return fmt.Errorf("read-only root, and nothing to mount over: %w", err)
	}
	defer unix.Close(tfd)
	var st unix.Stat_t
	if err := unix.Fstat(tfd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return errors.New("read-only root, and it is not a regular file to mount over")
	}
	// The source is a root-owned file in a writable scratch file system
	// (a memfd cannot be bind-mounted: it is in no mount namespace),
	// unlinked once mounted: the mount keeps it.
	var mountErr error
	for _, dir := range coverScratch {
		dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		var rnd [8]byte
		_, _ = rand.Read(rnd[:])
		tmp := ".paddock-etc-" + hex.EncodeToString(rnd[:])
		err = replaceAt(dfd, tmp, data)
		if err == nil {
			src := path.Join(dir, tmp)
			mountErr = unix.Mount(src, fmt.Sprintf("/proc/self/fd/%d", tfd), "", unix.MS_BIND, "")
			_ = unix.Unlinkat(dfd, tmp, 0)
		}
		unix.Close(dfd)
		if err == nil && mountErr == nil {
			return nil
		}
	}
	if mountErr != nil {
		return fmt.Errorf("read-only root; bind-mount over it: %w", mountErr)
	}
	return fmt.Errorf("read-only root, and no writable scratch file system (%s) to mount from", strings.Join(coverScratch, ", "))
}

// coverScratch are where a read-only root's covering files are made: the
// guest's tmpfs mounts (tests point it elsewhere).
var coverScratch = []string{"/dev/shm", "/run", "/tmp"}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}
