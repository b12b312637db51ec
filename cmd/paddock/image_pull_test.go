package main

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
)

// A pull carries the caller's own credentials for the registry of its
// reference, from $DOCKER_CONFIG; nothing when the config has none.
func TestPullInCredentials(t *testing.T) {
	dir := t.TempDir()
	cfg := map[string]any{"auths": map[string]any{
		"127.0.0.1:5000":  map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte("bob:s3cret"))},
		"tokens.test:443": map[string]string{"identitytoken": "tok"},
	}}
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
	for _, tc := range []struct {
		ref        string
		user, pass string
		token      string
		none       bool
	}{
		{ref: "127.0.0.1:5000/app:1", user: "bob", pass: "s3cret"},
		{ref: "tokens.test:443/app:1", token: "tok"},
		{ref: "127.0.0.1:5001/app:1", none: true},
		{ref: "NOT A REF", none: true},
	} {
		in, err := pullIn(tc.ref, true, authn.DefaultKeychain)
		if err != nil {
			t.Fatalf("%s: %v", tc.ref, err)
		}
		if in.Ref != tc.ref || !in.Insecure {
			t.Errorf("%s: %+v", tc.ref, in)
		}
		switch {
		case tc.none:
			if in.Auth != nil {
				t.Errorf("%s: sends credentials of another registry", tc.ref)
			}
		case in.Auth == nil:
			t.Errorf("%s: no credentials sent", tc.ref)
		case in.Auth.Username != tc.user || in.Auth.Password != tc.pass || in.Auth.IdentityToken != tc.token:
			t.Errorf("%s: credentials %+v", tc.ref, *in.Auth)
		}
	}
	// A config that does not parse is named, not silently ignored.
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := pullIn("127.0.0.1:5000/app:1", false, authn.DefaultKeychain); err == nil {
		t.Error("a broken docker config was ignored")
	}
}
