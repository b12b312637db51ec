package flattentest

import (
	"archive/tar"
	"strings"
)

// Want is an expectation on one path of the final tree.
type Want struct {
	Path   string            // absolute path in the image
	Type   byte              // tar.TypeReg, TypeDir, TypeSymlink, TypeChar, TypeBlock, TypeFifo
	Mode   int64             // permission incl. setuid/setgid/sticky; Any = unchecked
	UID    int               // Any = unchecked
	GID    int               // Any = unchecked
	Body   *string           // regular file content; nil = unchecked
	Target string            // symlink target ("" = unchecked)
	Major  int64             // devices
	Minor  int64             // devices
	SameAs string            // another name of the same inode (hardlink)
	Xattrs map[string]string // must be present with these values
	MTime  int64             // 0 = unchecked
}

// Any marks an unchecked numeric field.
const Any = -1

// W starts a Want with every numeric field unchecked.
func W(path string, typ byte) Want { return Want{Path: path, Type: typ, Mode: Any, UID: Any, GID: Any} }

// Str returns a pointer to s, for Want.Body.
func Str(s string) *string { return &s }

// Reg, D, Sym are shorthands for the most common wants.
func Reg(path, body string) Want {
	w := W(path, tar.TypeReg)
	w.Body = &body
	return w
}
func D(path string) Want { return W(path, tar.TypeDir) }
func Sym(path, target string) Want {
	w := W(path, tar.TypeSymlink)
	w.Target = target
	return w
}

// Case is one layer-semantics scenario.
type Case struct {
	Name   string
	Layers [][]Entry
	Want   []Want
	Absent []string // absolute paths that must not exist
}

func withMode(w Want, mode int64, uid, gid int) Want {
	w.Mode, w.UID, w.GID = mode, uid, gid
	return w
}

// Long names used by the odd-names case.
var (
	Name255  = strings.Repeat("n", 250) + "-255x"
	longDirs = func() string {
		var parts []string
		for i := 0; i < 15; i++ {
			parts = append(parts, strings.Repeat(string(rune('a'+i)), 250))
		}
		return strings.Join(parts, "/")
	}()
	// LongPath is an absolute path of about 3.8 KiB.
	LongPath = "/deep/" + longDirs + "/end"
)

// capability is a v2 security.capability granting cap_net_raw (ep).
const capability = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// Cases is the table of layer semantics every builder must get right.
func Cases() []Case {
	return []Case{
		{
			Name: "whiteout-file",
			Layers: [][]Entry{
				{Dir("etc", 0), File("etc/a", "a", 0), File("etc/b", "b", 0)},
				{Whiteout("etc/a")},
			},
			Want:   []Want{Reg("/etc/b", "b"), D("/etc")},
			Absent: []string{"/etc/a"},
		},
		{
			Name: "whiteout-dir",
			Layers: [][]Entry{
				{Dir("d", 0), Dir("d/x", 0), File("d/x/y", "y", 0), File("d/z", "z", 0), File("keep", "k", 0)},
				{Whiteout("d")},
			},
			Want:   []Want{Reg("/keep", "k")},
			Absent: []string{"/d", "/d/x", "/d/x/y", "/d/z"},
		},
		{
			Name: "opaque-dir",
			Layers: [][]Entry{
				{Dir("o", 0o700), File("o/a", "a", 0), Dir("o/sub", 0), File("o/sub/b", "b", 0), File("o/-first", "f", 0)},
				// marker after some of the layer's own children: order must not matter
				{Dir("o", 0o750), File("o/#c", "c", 0), Opaque("o"), File("o/sub/d", "d", 0)},
			},
			Want: []Want{
				withMode(D("/o"), 0o750, 0, 0), Reg("/o/#c", "c"), Reg("/o/sub/d", "d"), D("/o/sub"),
			},
			Absent: []string{"/o/a", "/o/sub/b", "/o/-first"},
		},
		{
			Name: "duplicates-last-wins",
			Layers: [][]Entry{
				{File("f", "first", 0), File("f", "second", 0o600), Dir("dd", 0o700), File("dd/child", "c", 0), File("h", "v1", 0)},
				{File("h", "v2", 0), {Name: "dd", Type: tar.TypeDir, Mode: 0o750, UID: 1, GID: 2}},
			},
			Want: []Want{
				withMode(Reg("/f", "second"), 0o600, Any, Any), Reg("/h", "v2"),
				withMode(D("/dd"), 0o750, 1, 2), Reg("/dd/child", "c"),
			},
		},
		{
			Name: "recreate-after-whiteout",
			Layers: [][]Entry{
				{File("r1", "old", 0), File("r2", "old", 0), Dir("rd", 0), File("rd/old", "o", 0)},
				{
					Whiteout("r1"), File("r1", "new", 0), // whiteout first
					File("r2", "new", 0), Whiteout("r2"), // whiteout after: still lower-only
					Whiteout("rd"), Dir("rd", 0o711), File("rd/new", "n", 0),
				},
			},
			Want:   []Want{Reg("/r1", "new"), Reg("/r2", "new"), withMode(D("/rd"), 0o711, Any, Any), Reg("/rd/new", "n")},
			Absent: []string{"/rd/old"},
		},
		{
			Name: "usrmerge",
			Layers: [][]Entry{
				{Dir("usr", 0), Dir("usr/bin", 0), Dir("usr/lib", 0), Symlink("bin", "usr/bin"), Symlink("lib", "/usr/lib"),
					File("usr/bin/ls", "ls", 0o755), File("usr/bin/cat", "cat", 0o755)},
				{File("bin/x", "x", 0o755), Whiteout("bin/ls"), File("lib/y", "y", 0), Hardlink("bin/cat2", "bin/cat"),
					// absolute targets restart at the image root, wherever the link is
					Dir("opt/app", 0), Symlink("opt/app/lib", "/usr/lib"), File("opt/app/lib/z", "z", 0),
					Symlink("opt/app/up", "../../usr/lib"), File("opt/app/up/w", "w", 0)},
			},
			Want: []Want{
				Sym("/bin", "usr/bin"), Sym("/lib", "/usr/lib"), Reg("/usr/bin/x", "x"), Reg("/usr/lib/y", "y"),
				Reg("/usr/lib/z", "z"), Reg("/usr/lib/w", "w"), Sym("/opt/app/lib", "/usr/lib"),
				func() Want { w := Reg("/usr/bin/cat2", "cat"); w.SameAs = "/usr/bin/cat"; return w }(),
			},
			// "/bin/x" is absent from the stream but resolves through the
			// /bin symlink in a filesystem, so it is not listed here.
			Absent: []string{"/usr/bin/ls"},
		},
		{
			Name: "replace-types",
			Layers: [][]Entry{
				{File("f2d", "file", 0), Dir("d2f", 0), File("d2f/child", "c", 0), Dir("d2s", 0), File("d2s/c", "c", 0),
					File("implicit/a/b/c", "deep", 0)},
				{Dir("f2d", 0), File("f2d/in", "in", 0), File("d2f", "now a file", 0), Symlink("d2s", "f2d")},
			},
			Want: []Want{
				D("/f2d"), Reg("/f2d/in", "in"), Reg("/d2f", "now a file"), Sym("/d2s", "f2d"),
				withMode(D("/implicit"), 0o755, 0, 0), D("/implicit/a/b"), Reg("/implicit/a/b/c", "deep"),
			},
			Absent: []string{"/d2f/child", "/d2s/c"},
		},
		{
			Name: "hardlinks",
			Layers: [][]Entry{
				{
					{Name: "a", Body: "A", Mode: 0o4755, UID: 7, GID: 8}, Hardlink("hl", "a"), Hardlink("hl3", "hl"),
					File("t", "T", 0), Hardlink("sub/tl", "t"),
					Symlink("sl", "a"), Hardlink("sl2", "sl"),
					{Name: "dev/null", Type: tar.TypeChar, Major: 1, Minor: 3, Mode: 0o666}, Hardlink("null2", "dev/null"),
				},
				{Hardlink("hl2", "a"), File("a", "replaced", 0), Whiteout("t")},
			},
			Want: []Want{
				withMode(Reg("/hl", "A"), 0o4755, 7, 8),
				func() Want { w := Reg("/hl2", "A"); w.SameAs = "/hl"; return w }(),
				func() Want { w := Reg("/hl3", "A"); w.SameAs = "/hl2"; return w }(),
				Reg("/a", "replaced"), Reg("/sub/tl", "T"),
				func() Want { w := Sym("/sl2", "a"); w.SameAs = "/sl"; return w }(),
				func() Want { w := W("/null2", tar.TypeChar); w.Major, w.Minor, w.SameAs = 1, 3, "/dev/null"; return w }(),
			},
			Absent: []string{"/t"},
		},
		{
			Name: "devices",
			Layers: [][]Entry{{
				Dir("dev", 0),
				{Name: "dev/null", Type: tar.TypeChar, Major: 1, Minor: 3, Mode: 0o666},
				{Name: "dev/sda", Type: tar.TypeBlock, Major: 8, Minor: 0, Mode: 0o660, GID: 6},
				{Name: "dev/big", Type: tar.TypeChar, Major: 259, Minor: 70000, Mode: 0o600, UID: 5},
				{Name: "dev/max", Type: tar.TypeBlock, Major: 4095, Minor: 1<<20 - 1, Mode: 0o600},
				{Name: "run/fifo", Type: tar.TypeFifo, Mode: 0o620, UID: 1000, GID: 1000},
			}},
			Want: []Want{
				func() Want { w := W("/dev/null", tar.TypeChar); w.Major, w.Minor, w.Mode = 1, 3, 0o666; return w }(),
				func() Want { w := W("/dev/sda", tar.TypeBlock); w.Major, w.GID, w.Mode = 8, 6, 0o660; return w }(),
				func() Want { w := W("/dev/big", tar.TypeChar); w.Major, w.Minor, w.UID = 259, 70000, 5; return w }(),
				func() Want { w := W("/dev/max", tar.TypeBlock); w.Major, w.Minor = 4095, 1<<20-1; return w }(),
				withMode(W("/run/fifo", tar.TypeFifo), 0o620, 1000, 1000),
			},
		},
		{
			Name: "modes-and-owners",
			Layers: [][]Entry{{
				{Name: "./", Type: tar.TypeDir, Mode: 0o751, MTime: 1234567890},
				{Name: "suid", Body: "s", Mode: 0o4755},
				{Name: "sgid", Body: "g", Mode: 0o2711, GID: 50},
				{Name: "tmp", Type: tar.TypeDir, Mode: 0o1777},
				{Name: "sgiddir", Type: tar.TypeDir, Mode: 0o2775, GID: 100},
				{Name: "zero", Body: "secret", Mode: NoPerm},
				{Name: "ro", Type: tar.TypeDir, Mode: 0o555}, File("ro/in", "in-ro", 0o444),
				{Name: "locked", Type: tar.TypeDir, Mode: NoPerm}, File("locked/in", "in-locked", 0),
				{Name: "big", Body: "b", UID: 100000, GID: 100001, Mode: 0o640},
				{Name: "huge", Body: "h", UID: 4000000000, GID: 4000000001},
				{Name: "old", Body: "o", MTime: -86400},
				{Name: "future", Body: "f", MTime: 5000000000},
			}},
			Want: []Want{
				func() Want { w := withMode(D("/"), 0o751, 0, 0); w.MTime = 1234567890; return w }(),
				withMode(Reg("/suid", "s"), 0o4755, 0, 0),
				withMode(Reg("/sgid", "g"), 0o2711, 0, 50),
				withMode(D("/tmp"), 0o1777, 0, 0),
				withMode(D("/sgiddir"), 0o2775, 0, 100),
				withMode(Reg("/zero", "secret"), 0, 0, 0),
				withMode(D("/ro"), 0o555, 0, 0), Reg("/ro/in", "in-ro"),
				withMode(D("/locked"), 0, 0, 0), Reg("/locked/in", "in-locked"),
				withMode(Reg("/big", "b"), 0o640, 100000, 100001),
				withMode(Reg("/huge", "h"), Any, 4000000000, 4000000001),
				func() Want { w := Reg("/old", "o"); w.MTime = -86400; return w }(),
				func() Want { w := Reg("/future", "f"); w.MTime = 5000000000; return w }(),
			},
		},
		{
			Name: "xattrs",
			Layers: [][]Entry{{
				{Name: "usr/bin/ping", Body: "ping", Mode: 0o755, Xattrs: map[string]string{"security.capability": capability}},
				{Name: "note", Body: "n", Xattrs: map[string]string{
					"user.note":  "quote\" back\\slash\nnewline -dash \x00nul",
					"trusted.x":  "t",
					"user.empty": "",
				}},
				{Name: "xdir", Type: tar.TypeDir, Xattrs: map[string]string{"user.dir": "on a dir"}},
			}},
			Want: []Want{
				func() Want {
					w := Reg("/usr/bin/ping", "ping")
					w.Xattrs = map[string]string{"security.capability": capability}
					return w
				}(),
				func() Want {
					w := Reg("/note", "n")
					w.Xattrs = map[string]string{"user.note": "quote\" back\\slash\nnewline -dash \x00nul", "trusted.x": "t"}
					return w
				}(),
				func() Want { w := D("/xdir"); w.Xattrs = map[string]string{"user.dir": "on a dir"}; return w }(),
			},
		},
		{
			Name: "odd-names",
			Layers: [][]Entry{func() []Entry {
				var es []Entry
				for _, n := range OddNames {
					es = append(es, File("odd/"+n, "body of "+n, 0))
				}
				es = append(es,
					Dir("odd/dir with \"quotes\" and \\", 0),
					File("odd/dir with \"quotes\" and \\/inner #!", "inner", 0),
					Symlink("odd/link -> odd", "target with \"quote\" and \\ and ünï"),
					Entry{Name: "odd/-dev \"q\"", Type: tar.TypeChar, Major: 1, Minor: 5, Mode: 0o666},
					Entry{Name: "odd/<13>", Type: tar.TypeFifo, Mode: 0o600},
					Hardlink("odd/hl \"x\"", "odd/with space"),
					File(strings.TrimPrefix(LongPath, "/"), "long", 0),
					Symlink("odd/longtarget", strings.Repeat("t/", 100)+"end"),
				)
				return es
			}()},
			Want: func() []Want {
				var ws []Want
				for _, n := range OddNames {
					ws = append(ws, Reg("/odd/"+n, "body of "+n))
				}
				ws = append(ws,
					Reg("/odd/dir with \"quotes\" and \\/inner #!", "inner"),
					Sym("/odd/link -> odd", "target with \"quote\" and \\ and ünï"),
					func() Want { w := W("/odd/-dev \"q\"", tar.TypeChar); w.Major, w.Minor = 1, 5; return w }(),
					W("/odd/<13>", tar.TypeFifo),
					func() Want { w := Reg("/odd/hl \"x\"", "body of with space"); w.SameAs = "/odd/with space"; return w }(),
					Reg(LongPath, "long"),
					Sym("/odd/longtarget", strings.Repeat("t/", 100)+"end"),
				)
				return ws
			}(),
		},
	}
}

// OddNames are legal names that must be preserved byte for byte.
var OddNames = []string{
	"with space", " lead", "trail ", "with\ttab", "quote\"d", "\"\"", "it's", "back\\slash", "a\\nb",
	"#hash", "!bang", "-dash", "--", "<12>", "a;b$c*d?e|f&g`h`(i)", "%s%n%x", "a:b=c,d",
	"ünïcødé ✓", "\xff\xfe non-utf8", "ctl\x01\x1b\x7f", Name255,
}
