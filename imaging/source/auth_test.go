package source_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/imaging/source"
)

// A pull uses exactly the credentials it is given, for their registry
// only; with none it is anonymous (never the docker config of the process).
func TestPullCredentials(t *testing.T) {
	guarded, open := imagetest.AuthRegistry(t, "bob", "s3cret")
	imagetest.Push(t, open+"/private:1", testImage(t))
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		kc   authn.Keychain
		ok   bool
	}{
		{"anonymous", nil, false},
		{"the right credentials", source.Credentials(guarded, authn.AuthConfig{Username: "bob", Password: "s3cret"}), true},
		{"a wrong password", source.Credentials(guarded, authn.AuthConfig{Username: "bob", Password: "guess"}), false},
		{"credentials of another registry", source.Credentials(open, authn.AuthConfig{Username: "bob", Password: "s3cret"}), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The process's own docker config would let it in: it must not count.
			t.Setenv("DOCKER_CONFIG", dockerConfig(t, guarded, "bob", "s3cret"))
			_, err := source.Pull(ctx, guarded+"/private:1", source.Options{Keychain: tc.kc})
			if (err == nil) != tc.ok {
				t.Fatalf("pull: %v, want ok %v", err, tc.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "UNAUTHORIZED") {
				t.Fatalf("refusal does not say why: %v", err)
			}
		})
	}
}

// dockerConfig writes a docker config directory holding user:password for
// registry.
func dockerConfig(t *testing.T, registry, user, password string) string {
	t.Helper()
	dir := t.TempDir()
	b, _ := json.Marshal(map[string]any{"auths": map[string]any{registry: map[string]string{"username": user, "password": password}}})
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}
