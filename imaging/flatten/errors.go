package flatten

import (
	"errors"
	"fmt"
	"strings"

	"github.com/paddock-vm/paddock/errdefs"
)

// Sentinel errors for the reasons callers branch on. Every rejection is
// returned as an *EntryError whose Unwrap yields one of these.
var (
	// ErrPathEscape: an entry name, hardlink target, whiteout or a symlink
	// followed during a write would leave the image root.
	ErrPathEscape = errdefs.New(errdefs.ErrInvalidArgument, "path escapes the image root")
	// ErrBadName: a name the filesystem builders cannot store faithfully
	// (NUL, LF, CR, empty or over-long component, path over MaxPathLen,
	// bad symlink target or xattr name).
	ErrBadName = errdefs.New(errdefs.ErrInvalidArgument, "name cannot be stored")
	// ErrBadLink: a hardlink whose target does not exist or is a directory,
	// or a symlink that cannot be followed (dangling, loop).
	ErrBadLink = errdefs.New(errdefs.ErrInvalidArgument, "bad link")
	// ErrBadEntry: a malformed or unsupported entry (type, owner, device
	// number, parent that is not a directory, truncated or corrupt tar).
	ErrBadEntry = errdefs.New(errdefs.ErrInvalidArgument, "malformed entry")
	// ErrTooLarge: the unpacked size (or one entry's metadata) is over the limit.
	ErrTooLarge = errdefs.New(errdefs.ErrInvalidArgument, "unpacked size over limit")
	// ErrTooManyEntries: more tar entries than the configured maximum.
	ErrTooManyEntries = errdefs.New(errdefs.ErrInvalidArgument, "too many entries")
)

// EntryError names the entry that was rejected and why.
type EntryError struct {
	ImageRef string // Options.ImageRef, may be empty
	Layer    string // layer digest (or label) the entry came from, may be empty
	Path     string // entry name exactly as it appears in the tar
	Reason   string // human-readable detail
	Err      error  // one of the sentinel errors above
}

func (e *EntryError) Error() string {
	var b strings.Builder
	if e.ImageRef != "" {
		fmt.Fprintf(&b, "image %s: ", e.ImageRef)
	}
	if e.Layer != "" {
		fmt.Fprintf(&b, "layer %s: ", e.Layer)
	}
	fmt.Fprintf(&b, "entry %q: %v", e.Path, e.Err)
	if e.Reason != "" {
		b.WriteString(": ")
		b.WriteString(e.Reason)
	}
	return b.String()
}

func (e *EntryError) Unwrap() error { return e.Err }

// ruleError is what the name checks return: a sentinel plus a reason.
// It is turned into an *EntryError once the entry and layer are known.
type ruleError struct {
	sentinel error
	reason   string
}

func (e *ruleError) Error() string { return e.sentinel.Error() + ": " + e.reason }
func (e *ruleError) Unwrap() error { return e.sentinel }

func rule(sentinel error, format string, args ...any) error {
	return &ruleError{sentinel: sentinel, reason: fmt.Sprintf(format, args...)}
}

// NewEntryError builds an *EntryError from an error returned by the checks
// in this package (CleanPath, CheckLinkTarget, CheckXattrName…) or any
// error wrapping one of the sentinels; other errors are classified as
// ErrBadEntry. Exported so that the filesystem
// builders, which re-validate, report in the same shape.
func NewEntryError(imageRef, layer, path string, err error) *EntryError {
	var ee *EntryError
	if errors.As(err, &ee) {
		return ee
	}
	e := &EntryError{ImageRef: imageRef, Layer: layer, Path: path, Err: ErrBadEntry, Reason: err.Error()}
	for _, s := range sentinels {
		if errors.Is(err, s) {
			e.Err = s
			// "context: sentinel: detail" reads "context: detail" after the sentinel
			e.Reason = strings.Replace(err.Error(), s.Error()+": ", "", 1)
			break
		}
	}
	return e
}

var sentinels = []error{ErrPathEscape, ErrBadName, ErrTooLarge, ErrTooManyEntries, ErrBadLink, ErrBadEntry}
