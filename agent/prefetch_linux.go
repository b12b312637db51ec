package agent

import (
	"bytes"
	"debug/elf"
	"io"
	"os"
	"path"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Bounds on what PrefetchFiles reads of an image's files (the image is the
// guest's own, but the agent is its PID 1: a hostile binary must not make it
// panic or allocate much).
const (
	prefetchMaxParse = 64 << 20 // ELF files larger are read ahead, not parsed
	prefetchMaxRead  = 32 << 20 // bytes read ahead of any one file
	prefetchMaxFiles = 24
	prefetchMaxDepth = 2 // a script's interpreter, then its ELF chain
)

// PrefetchFiles returns the files a first run of each of bins reads (paths
// in the guest, looked up under root; the agent's root is "/"): the
// binary, a script's "#!" interpreter, an ELF's interpreter (ld.so) and the
// shared libraries it names (DT_NEEDED, looked up in the usual library
// directories of this architecture, one level: libc's own need is ld.so).
// Paths that do not resolve to regular files are left out; so is anything
// beyond the bounds above. Order is first-needed first, without
// duplicates; the paths returned are root's.
func PrefetchFiles(root string, bins []string) []string {
	var out []string
	seen := map[string]bool{}
	add := func(p string) bool {
		if p == "" || seen[p] || len(out) >= prefetchMaxFiles {
			return false
		}
		seen[p] = true
		if !isRegular(path.Join(root, p)) {
			return false
		}
		out = append(out, path.Join(root, p))
		return true
	}
	var walk func(bin string, depth int)
	walk = func(bin string, depth int) {
		if !add(bin) || depth > prefetchMaxDepth {
			return
		}
		interp, needed, script := executableNeeds(path.Join(root, bin))
		if !strings.HasPrefix(interp, "/") {
			interp = ""
		}
		if script {
			walk(interp, depth+1) // its interpreter's chain
			return
		}
		if add(interp) {
			add(ldCache) // glibc's loader maps it at every start
		}
		for _, lib := range needed {
			// The first directory that has it, as the loader takes: an
			// earlier binary's copy, seen, stops the search too.
			for _, d := range libraryDirs() {
				if p := path.Join(d, lib); isRegular(path.Join(root, p)) {
					add(p)
					break
				}
			}
		}
	}
	for _, b := range bins {
		walk(b, 0)
	}
	return out
}

// Prefetch asks the kernel to read files into the page cache in the
// background (FADV_WILLNEED starts the reads and returns): a first exec
// then finds its loader and libraries in memory instead of faulting them
// in one read at a time. It returns how many files it asked for; failures
// are skipped, as it is only a hint.
func Prefetch(files []string) int {
	n := 0
	for _, f := range files {
		// Symlinks are followed (ld.so and /bin/sh often are); what is not
		// a regular file is closed untouched, and never blocks the open.
		fd, err := unix.Open(f, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG &&
			unix.Fadvise(fd, 0, min(st.Size, prefetchMaxRead), unix.FADV_WILLNEED) == nil {
			n++
		}
		unix.Close(fd)
	}
	return n
}

// executableNeeds reads bin's interpreter (an ELF's PT_INTERP or a
// script's "#!" program) and an ELF's DT_NEEDED names. A file that is
// neither, too large, or malformed needs nothing.
func executableNeeds(bin string) (interp string, needed []string, script bool) {
	f, err := os.Open(bin)
	if err != nil {
		return "", nil, false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() || st.Size() > prefetchMaxParse {
		return "", nil, false
	}
	head := make([]byte, 256)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	if bytes.HasPrefix(head, []byte("#!")) {
		line, _, _ := bytes.Cut(head[2:], []byte("\n"))
		fields := strings.Fields(string(line))
		if len(fields) > 0 {
			return fields[0], nil, true
		}
		return "", nil, true
	}
	if !bytes.HasPrefix(head, []byte(elf.ELFMAG)) {
		return "", nil, false
	}
	defer func() {
		// debug/elf on a hostile file: a panic here must not take PID 1.
		if recover() != nil {
			interp, needed = "", nil
		}
	}()
	ef, err := elf.NewFile(f)
	if err != nil {
		return "", nil, false
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP && p.Filesz > 1 && p.Filesz < 4096 {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err == nil {
				interp = string(bytes.TrimRight(b, "\x00"))
			}
		}
	}
	needed, _ = ef.ImportedLibraries()
	for _, lib := range needed {
		if strings.ContainsRune(lib, '/') || lib == "" {
			return interp, nil, false // odd names: take only the interpreter
		}
	}
	return interp, needed, false
}

// ldCache is glibc's list of libraries, which its ld.so reads first.
const ldCache = "/etc/ld.so.cache"

// libraryDirs are where the dynamic loaders of Debian, Ubuntu, Fedora and
// Alpine images look by default (ld.so.cache aside), for this architecture.
func libraryDirs() []string {
	triplet := map[string]string{"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}[runtime.GOARCH]
	dirs := []string{}
	if triplet != "" {
		dirs = append(dirs, "/lib/"+triplet, "/usr/lib/"+triplet)
	}
	return append(dirs, "/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib")
}

func isRegular(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
