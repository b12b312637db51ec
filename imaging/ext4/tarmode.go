package ext4

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/paddock-vm/paddock/imaging/flatten"
)

// buildTarStdin feeds the stream to mke2fs -d - (e2fsprogs ≥ 1.47.1 with
// libarchive). mke2fs creates owners, modes, times, devices and hardlinks
// itself, so the debugfs pass only sets the root's metadata and the xattrs
// mke2fs drops (it keeps security.capability alone).
//
// The stream is parsed, validated and re-encoded rather than passed
// through, so mke2fs only ever sees what the Go tar reader and the name
// rules accepted (no parser differentials), and hardlink headers carry
// their target's metadata (mke2fs applies a link header's mode and owner
// to the shared inode).
//
// Debian 12's mke2fs (1.47.0) cannot do this; Probe disables it there. It
// is tested with e2fsprogs 1.47.2 from bookworm-backports (see
// PADDOCK_TEST_E2FSPROGS in the tests).
func buildTarStdin(ctx context.Context, r io.Reader, mke2fs string, args, env []string, sc *script,
	imageRef string, tm *Timings) error {
	t := time.Now()
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := reencode(ctx, r, pw, sc, imageRef)
		pw.CloseWithError(err)
		if err != nil {
			cancel() // stop mke2fs: it must not finish an image from a rejected stream
		}
		errc <- err
	}()
	err := run(ctx, ErrMkfs, env, pr, mke2fs, args...)
	pr.CloseWithError(errMke2fsExited)
	rerr := <-errc
	if perr := parent.Err(); perr != nil {
		return perr
	}
	if rerr != nil && !errors.Is(rerr, errMke2fsExited) {
		return rerr // the stream's error explains mke2fs' failure
	}
	if err != nil {
		return err
	}
	tm.Mkfs = time.Since(t)
	return nil
}

var errMke2fsExited = errors.New("mke2fs stopped reading the stream")

type entryMeta struct {
	typ      byte
	mode     int64
	uid, gid int
	mtime    time.Time
}

func reencode(ctx context.Context, r io.Reader, w io.Writer, sc *script, imageRef string) error {
	tr := tar.NewReader(bufio.NewReaderSize(r, 1<<20))
	bw := bufio.NewWriterSize(w, 1<<20)
	tw := tar.NewWriter(bw)
	seen := map[string]entryMeta{"": {typ: tar.TypeDir}}
	buf := make([]byte, 1<<20)
	fail := func(name string, err error) error { return flatten.NewEntryError(imageRef, "", name, err) }
	prev := ""
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fail(prev, fmt.Errorf("%w: corrupt tar after this entry: %v", flatten.ErrBadEntry, err))
		}
		prev = h.Name
		clean, err := flatten.CleanPath(h.Name)
		if err == nil {
			err = checkHeader(h)
		}
		if err != nil {
			return fail(h.Name, err)
		}
		out := &tar.Header{Typeflag: h.Typeflag, Name: clean, Mode: h.Mode & 0o7777, Uid: h.Uid, Gid: h.Gid,
			ModTime: time.Unix(h.ModTime.Unix(), 0), Linkname: h.Linkname, Devmajor: h.Devmajor, Devminor: h.Devminor,
			Size: h.Size, PAXRecords: map[string]string{}}
		for k, v := range h.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.") {
				out.PAXRecords[k] = v
			}
		}
		if clean == "" {
			if h.Typeflag != tar.TypeDir {
				return fail(h.Name, fmt.Errorf("%w: the root can only be a directory", flatten.ErrBadEntry))
			}
			if err := sc.add(Fixup{Hdr: h}); err != nil { // mke2fs' root comes from root_owner
				return err
			}
			continue
		}
		if _, dup := seen[clean]; dup {
			return fail(h.Name, fmt.Errorf("%w: duplicate entry (stream not flattened)", flatten.ErrBadEntry))
		}
		parent := ""
		if i := strings.LastIndexByte(clean, '/'); i >= 0 {
			parent = clean[:i]
		}
		if seen[parent].typ != tar.TypeDir {
			return fail(h.Name, fmt.Errorf("%w: parent is not a directory earlier in the stream", flatten.ErrBadEntry))
		}
		meta := entryMeta{typ: h.Typeflag, mode: out.Mode, uid: h.Uid, gid: h.Gid, mtime: out.ModTime}
		switch h.Typeflag {
		case tar.TypeDir:
			out.Name += "/"
		case tar.TypeReg, tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		case tar.TypeSymlink:
			out.Mode = 0o777
		case tar.TypeLink:
			t, err := flatten.CleanPath(h.Linkname)
			if err != nil {
				return fail(h.Name, fmt.Errorf("hardlink target: %w", err))
			}
			tm, ok := seen[t]
			if !ok || tm.typ == tar.TypeDir || t == "" {
				return fail(h.Name, fmt.Errorf("%w: hardlink target %q missing or a directory", flatten.ErrBadLink, h.Linkname))
			}
			out.Linkname, out.Mode, out.Uid, out.Gid, out.ModTime = t, tm.mode, tm.uid, tm.gid, tm.mtime
			meta = tm
		default:
			return fail(h.Name, fmt.Errorf("%w: unsupported entry type %q", flatten.ErrBadEntry, h.Typeflag))
		}
		seen[clean] = meta
		// mke2fs keeps only security.capability and clamps times to 32 bits.
		okTime := hostTime(h.ModTime.Unix())
		if h.Typeflag != tar.TypeLink && (hasXattrs(h) || !okTime) {
			if err := sc.add(Fixup{Hdr: h, SkipOwner: true, SkipMode: true, SkipMtime: okTime}); err != nil {
				return err
			}
		}
		// libarchive converts PAX path/linkpath from UTF-8 to the locale and
		// fails on names that do not convert; BINARY keeps the bytes as is.
		if !isASCII(out.Name) || !isASCII(out.Linkname) {
			out.PAXRecords["hdrcharset"] = "BINARY"
		}
		if err := tw.WriteHeader(out); err != nil {
			return fmt.Errorf("re-encode %q: %w", h.Name, err)
		}
		for h.Typeflag == tar.TypeReg {
			n, rerr := tr.Read(buf)
			if _, err := tw.Write(buf[:n]); err != nil {
				return err // mke2fs is gone; its own error is more useful
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				return fail(h.Name, fmt.Errorf("%w: content truncated: %v", flatten.ErrBadEntry, rerr))
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// allocated is the disk space a file occupies.
func allocated(st os.FileInfo) int64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Blocks * 512
	}
	return st.Size()
}
