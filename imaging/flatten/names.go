package flatten

import (
	"strings"
)

// Limits every name must respect. They are the intersection of what ext4,
// mkfs.ext4 -d and the debugfs command parser can store exactly: debugfs
// splits command lines at LF and CR (and runs "!…" lines through /bin/sh),
// C strings end at NUL, and a component of 256 bytes wraps ext4's 8-bit
// name_len into a corrupt zero-length entry.
const (
	MaxNameLen       = 255   // bytes per path component
	MaxPathLen       = 4096  // bytes of the absolute path "/a/b/c"
	MaxLinkTargetLen = 4095  // bytes of a symlink target (PATH_MAX minus NUL)
	MaxXattrNameLen  = 255   // bytes of an xattr name incl. its namespace prefix
	MaxXattrBytes    = 65536 // all xattr names+values of one entry (XATTR_SIZE_MAX)
)

// xattrPrefixes are the namespaces Linux (and debugfs ea_set) know.
var xattrPrefixes = []string{"security.", "system.", "trusted.", "user."}

// CleanPath validates a tar entry name and returns it as a clean path
// relative to the image root, without leading or trailing slashes ("" is
// the root itself). Leading "/" and "./", empty and "." components are
// dropped, as tar does. Any ".." component is rejected with ErrPathEscape
// even where lexical cleaning would keep it inside the root, because
// lexical cleaning disagrees with the kernel once a component is a symlink.
func CleanPath(name string) (string, error) {
	if name == "" {
		return "", rule(ErrBadName, "empty name")
	}
	if err := checkChars("name", name); err != nil {
		return "", err
	}
	comps := strings.Split(name, "/")
	out := comps[:0]
	total := 0
	for _, c := range comps {
		switch {
		case c == "" || c == ".":
			continue
		case c == "..":
			return "", rule(ErrPathEscape, "name contains a '..' component")
		case len(c) > MaxNameLen:
			return "", rule(ErrBadName, "component of %d bytes (max %d)", len(c), MaxNameLen)
		}
		out = append(out, c)
		total += 1 + len(c)
	}
	if total > MaxPathLen {
		return "", rule(ErrBadName, "path of %d bytes (max %d)", total, MaxPathLen)
	}
	return strings.Join(out, "/"), nil
}

// CheckLinkTarget validates a symlink target. Targets are stored verbatim:
// absolute targets and ".." are legal (they are resolved inside the image
// root whenever paddock follows them), only unstorable bytes are rejected.
func CheckLinkTarget(target string) error {
	if target == "" {
		return rule(ErrBadName, "empty symlink target")
	}
	if len(target) > MaxLinkTargetLen {
		return rule(ErrBadName, "symlink target of %d bytes (max %d)", len(target), MaxLinkTargetLen)
	}
	return checkChars("symlink target", target)
}

// CheckXattrName validates an extended attribute name: a known namespace,
// no NUL/LF/CR, at most MaxXattrNameLen bytes.
func CheckXattrName(name string) error {
	if len(name) > MaxXattrNameLen {
		return rule(ErrBadName, "xattr name of %d bytes (max %d)", len(name), MaxXattrNameLen)
	}
	if err := checkChars("xattr name", name); err != nil {
		return err
	}
	for _, p := range xattrPrefixes {
		if strings.HasPrefix(name, p) && len(name) > len(p) {
			return nil
		}
	}
	return rule(ErrBadName, "xattr %q has no known namespace (security., system., trusted., user.)", name)
}

func checkChars(what, s string) error {
	if i := strings.IndexAny(s, "\x00\n\r"); i >= 0 {
		return rule(ErrBadName, "%s contains byte %#02x at offset %d", what, s[i], i)
	}
	return nil
}
