package ext4

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// ErrNotClean: an image e2fsck -n finds fault with (a guest that crashed
// or wrote a hostile filesystem). Nothing is read from it.
var ErrNotClean = errors.New("filesystem is not clean")

// Dump copies the tree of the ext4 image into dir (which exists, empty)
// without mounting it: Check first, then one read-only debugfs
// "rdump / dir". Files are written as the caller (debugfs sets modes and
// mtimes, and owners only if it may). Hardlinks come out as separate
// copies. ctx bounds both runs.
func Dump(ctx context.Context, image, dir string, tools Tools) error {
	dbg, err := findTool("debugfs", tools.Debugfs)
	if err != nil {
		return err
	}
	if err := Check(ctx, image, tools); err != nil {
		return err
	}
	env := append(os.Environ(), "DEBUGFS_PAGER=__none__", "PAGER=__none__", "LC_ALL=C")
	if strings.ContainsAny(dir, "\"\n") {
		return fmt.Errorf("dump directory %q: unusable name", dir)
	}
	cmd := exec.CommandContext(ctx, dbg, "-R", "rdump / "+quote(dir), image)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &limitWriter{w: &stderr, n: 1 << 20}
	cmd.Stdout = io.Discard
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: %v: %s", ErrDebugfs, err, firstLines(stderr.String(), 5))
	}
	var bad []string
	for _, l := range strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n") {
		// rdump reports owners it may not set (an unprivileged daemon):
		// the export has no owners anyway.
		if l != "" && !debugfsBanner.MatchString(l) && !strings.Contains(l, "while changing ownership of") {
			bad = append(bad, l)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %d error lines, first: %s", ErrDebugfs, len(bad), firstLines(strings.Join(bad, "\n"), 5))
	}
	return nil
}

// Inodes lists the regular files of the directories dirs (absolute paths
// in image, as "/a/b") with their inode numbers, in one read-only debugfs
// pass: path -> inode. Directories whose names a command line cannot
// carry, and entries whose listing line cannot be read back, are left
// out (the caller treats them as files of their own).
func Inodes(ctx context.Context, image string, dirs []string, tools Tools) (map[string]uint64, error) {
	dbg, err := findTool("debugfs", tools.Debugfs)
	if err != nil {
		return nil, err
	}
	cmdFile, err := os.CreateTemp("", "paddock-ls-")
	if err != nil {
		return nil, err
	}
	defer os.Remove(cmdFile.Name())
	var listed []string
	for _, d := range dirs {
		if strings.ContainsAny(d, "\n\r") || len(d) > maxLine-16 {
			continue
		}
		if _, err := fmt.Fprintf(cmdFile, "ls -p %s\n", quote(d)); err != nil {
			cmdFile.Close()
			return nil, err
		}
		listed = append(listed, d)
	}
	if err := cmdFile.Close(); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, dbg, "-f", cmdFile.Name(), image)
	cmd.Env = append(os.Environ(), "DEBUGFS_PAGER=__none__", "PAGER=__none__", "LC_ALL=C")
	var out bytes.Buffer
	cmd.Stdout = &limitWriter{w: &out, n: 256 << 20}
	cmd.Stderr = io.Discard
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: %v", ErrDebugfs, err)
	}
	res := map[string]uint64{}
	cur, i := "", -1
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "debugfs: ls -p ") {
			i++
			cur = ""
			if i < len(listed) {
				cur = listed[i]
			}
			continue
		}
		if cur == "" || len(l) < 2 || l[0] != '/' || l[len(l)-1] != '/' {
			continue
		}
		f := strings.Split(l[1:len(l)-1], "/")
		if len(f) != 6 || !strings.HasPrefix(f[1], "10") || f[4] == "" {
			continue // not a regular file, or a line that is not one entry
		}
		ino, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		res[strings.TrimSuffix(cur, "/")+"/"+f[4]] = ino
	}
	return res, nil
}

// Check runs e2fsck -fn on the image: read-only, refusing (ErrNotClean) a
// filesystem it finds fault with, or whose journal holds unreplayed writes
// (a guest that crashed, or wrote a hostile filesystem). ctx bounds it.
func Check(ctx context.Context, image string, tools Tools) error {
	fsckBin, err := findTool("e2fsck", tools.E2fsck)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, fsckBin, "-f", "-n", image)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Stdout = &limitWriter{w: &out, n: 1 << 20}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			var bad []string
			for _, l := range strings.Split(out.String(), "\n") {
				if !fsckRoutine.MatchString(l) {
					bad = append(bad, l)
				}
			}
			return fmt.Errorf("%w (e2fsck -n exit %d): %s", ErrNotClean, ee.ExitCode(), firstLines(strings.Join(bad, "\n"), 5))
		}
		return fmt.Errorf("e2fsck: %w", err)
	}
	return nil
}
