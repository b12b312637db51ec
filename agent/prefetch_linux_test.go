package agent

import (
	"debug/elf"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// hostTrue is the host's /usr/bin/true when it is what the cases assume: a
// dynamic ELF run by /lib64/ld-linux-x86-64.so.2 that needs libc.so.6 only
// (Debian on amd64, as CI).
func hostTrue(t *testing.T) []byte {
	t.Helper()
	const bin = "/usr/bin/true"
	f, err := elf.Open(bin)
	if err != nil {
		t.Skipf("no ELF %s: %v", bin, err)
	}
	defer f.Close()
	libs, _ := f.ImportedLibraries()
	var interp string
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			_, _ = p.ReadAt(b, 0)
			interp = string(b[:len(b)-1])
		}
	}
	if interp != "/lib64/ld-linux-x86-64.so.2" || !slices.Equal(libs, []string{"libc.so.6"}) {
		t.Skipf("%s: interpreter %q, libraries %v: not the Debian amd64 layout these cases assume", bin, interp, libs)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPrefetchFiles(t *testing.T) {
	trueELF := hostTrue(t)
	corrupt := slices.Clone(trueELF)
	// e_phoff and e_shoff far past the end, e_phnum and e_shnum at most.
	for _, off := range []int{0x20, 0x28} {
		copy(corrupt[off:], []byte{0xf0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f})
	}
	copy(corrupt[0x38:], []byte{0xff, 0xff})
	copy(corrupt[0x3c:], []byte{0xff, 0xff})

	const (
		ldso   = "/lib64/ld-linux-x86-64.so.2"
		libc   = "/lib/x86_64-linux-gnu/libc.so.6"
		libc64 = "/usr/lib64/libc.so.6"
		cache  = "/etc/ld.so.cache"
	)
	type file struct {
		name string
		data []byte
		link string
	}
	lib := func(name string) file { return file{name: name, data: []byte("library")} }
	cases := []struct {
		name  string
		files []file
		bins  []string
		want  []string
	}{
		{"dynamic: loader, its cache, libraries", []file{{name: "/bin/true", data: trueELF}, lib(ldso), lib(libc), lib(cache)},
			[]string{"/bin/true"}, []string{"/bin/true", ldso, cache, libc}},
		{"library in a later directory", []file{{name: "/bin/true", data: trueELF}, lib(ldso), lib(libc64)},
			[]string{"/bin/true"}, []string{"/bin/true", ldso, libc64}},
		{"a library in two directories: the first, once for two binaries", []file{{name: "/bin/a", data: trueELF}, {name: "/bin/b", data: trueELF}, lib(ldso), lib(libc), lib("/usr/lib/x86_64-linux-gnu/libc.so.6")},
			[]string{"/bin/a", "/bin/b"}, []string{"/bin/a", ldso, libc, "/bin/b"}},
		{"a missing library or loader is left out", []file{{name: "/bin/true", data: trueELF}},
			[]string{"/bin/true"}, []string{"/bin/true"}},
		{"a script: its interpreter's chain", []file{{name: "/app/run", data: []byte("#!/bin/true -x\necho\n")}, {name: "/bin/true", data: trueELF}, lib(ldso), lib(libc)},
			[]string{"/app/run"}, []string{"/app/run", "/bin/true", ldso, libc}},
		{"symlinks followed, each file once", []file{{name: "/bin/dash", data: trueELF}, {name: "/bin/sh", link: "dash"}, lib(ldso), lib(libc)},
			[]string{"/bin/sh", "/bin/dash"}, []string{"/bin/sh", ldso, libc, "/bin/dash"}},
		{"a script naming itself stops", []file{{name: "/loop", data: []byte("#!/loop\n")}},
			[]string{"/loop"}, []string{"/loop"}},
		{"not an executable: itself only", []file{{name: "/data", data: []byte("plain")}},
			[]string{"/data"}, []string{"/data"}},
		{"truncated ELF: itself only", []file{{name: "/bin/true", data: trueELF[:100]}, lib(ldso), lib(libc)},
			[]string{"/bin/true"}, []string{"/bin/true"}},
		{"corrupt ELF headers: itself only", []file{{name: "/bin/true", data: corrupt}, lib(ldso), lib(libc)},
			[]string{"/bin/true"}, []string{"/bin/true"}},
		{"missing binary, directory: nothing", []file{lib(libc)},
			[]string{"/nope", "/lib"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			for _, f := range c.files {
				p := filepath.Join(root, f.name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				var err error
				if f.link != "" {
					err = os.Symlink(f.link, p)
				} else {
					err = os.WriteFile(p, f.data, 0o755)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			var want []string
			for _, w := range c.want {
				want = append(want, filepath.Join(root, w))
			}
			got := PrefetchFiles(root, c.bins)
			if !slices.Equal(got, want) {
				t.Fatalf("PrefetchFiles(%v) = %v, want %v", c.bins, got, want)
			}
			if n := Prefetch(got); n != len(got) {
				t.Fatalf("Prefetch read ahead %d of %d files", n, len(got))
			}
		})
	}
}
