package source

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/paddock-vm/paddock/errdefs"
)

// ErrBadName classes an image name that is not a reference.
var ErrBadName = errdefs.New(errdefs.ErrInvalidArgument, "not an image reference")

// tagRE is a tag as the distribution spec allows it.
var tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// ValidName refuses a name an image cannot be stored under: anything but
// a reference [registry/]repository[:tag] in printable ASCII. Names reach
// every user's terminal, so an image (its annotations, a docker archive's
// tags) never names itself with anything else.
func ValidName(s string) error {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return fmt.Errorf("image name %+q: only printable ASCII without spaces: %w", s, ErrBadName)
		}
	}
	if _, err := name.NewTag(s); err != nil {
		return fmt.Errorf("image name %+q is not a reference (lowercase [registry/]repository[:tag]): %w", s, ErrBadName)
	}
	return nil
}

func validNames(names []string) error {
	for _, n := range names {
		if err := ValidName(n); err != nil {
			return err
		}
	}
	return nil
}

// layoutNames is what an image of an OCI layout is named: its
// org.opencontainers.image.ref.name annotation (a full reference, or a tag
// of base), else base. An annotation that is neither is refused.
func layoutNames(ref, base string) ([]string, error) {
	if base != "" {
		if err := ValidName(base); err != nil {
			return nil, err
		}
	}
	var names []string
	switch {
	case ref == "":
		if base != "" {
			names = append(names, base)
		}
	case tagRE.MatchString(ref):
		if base != "" {
			names = append(names, repoOf(base)+":"+ref)
		}
	case ValidName(ref) == nil:
		names = append(names, ref)
	default:
		return nil, fmt.Errorf("annotation %s %+q is neither a tag nor an image reference: %w", refName, ref, ErrBadName)
	}
	return names, validNames(names)
}

// repoOf is a reference without its tag.
func repoOf(ref string) string {
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[:i]
	}
	return ref
}
