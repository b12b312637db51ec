package imagetest

import (
	"crypto/subtle"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
)

// AuthRegistry runs go-containerregistry's registry on 127.0.0.1 twice
// over the same storage: guarded answers only requests that carry user and
// password (HTTP basic), open answers anyone (for the test's pushes). Both
// are host:port.
func AuthRegistry(t testing.TB, user, password string) (guarded, open string) {
	t.Helper()
	h := registry.New(registry.Logger(nilLogger()))
	g := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 || subtle.ConstantTimeCompare([]byte(p), []byte(password)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="paddock-test"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(g.Close)
	o := httptest.NewServer(h)
	t.Cleanup(o.Close)
	return strings.TrimPrefix(g.URL, "http://"), strings.TrimPrefix(o.URL, "http://")
}
