// Package layoutref parses the PATH[:TAG|@DIGEST] form that names one image
// in an OCI layout directory.
package layoutref

import (
	"os"
	"strings"
)

// Split splits "DIR:TAG" and "DIR@sha256:..." into the directory and the
// selector; the ":TAG" form only when DIR is a directory, so a file name
// with a colon stays whole. Anything else is a path with no selector.
func Split(p string) (path, sel string) {
	if i := strings.LastIndex(p, "@sha256:"); i > 0 {
		return p[:i], p[i+1:]
	}
	if i := strings.LastIndex(p, ":"); i > 0 && !strings.Contains(p[i:], "/") {
		if fi, err := os.Stat(p[:i]); err == nil && fi.IsDir() {
			return p[:i], p[i+1:]
		}
	}
	return p, ""
}
