package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/imaging/source"
)

// Whose credentials a pull uses, and who may make a registry insecure.
func TestPullOptions(t *testing.T) {
	const reg = "127.0.0.1:5000"
	admin, user := actors.Caller{UID: 0, Admin: true}, actors.Caller{UID: 1000}
	mine := &api.RegistryAuth{Username: "bob", Password: "s3cret"}
	base := source.Options{Insecure: []string{"listed:5000"}}
	for _, tc := range []struct {
		name     string
		in       api.PullIn
		caller   actors.Caller
		denied   bool
		keychain string // "none", "daemon", "caller"
		insecure []string
	}{
		{"user, no credentials: anonymous", api.PullIn{Ref: reg + "/app:1"}, user, false, "none", base.Insecure},
		{"user, own credentials", api.PullIn{Ref: reg + "/app:1", Auth: mine}, user, false, "caller", base.Insecure},
		{"admin, no credentials: the daemon's", api.PullIn{Ref: reg + "/app:1"}, admin, false, "daemon", base.Insecure},
		{"admin, own credentials", api.PullIn{Ref: reg + "/app:1", Auth: mine}, admin, false, "caller", base.Insecure},
		{"user, insecure listed host", api.PullIn{Ref: "listed:5000/app:1", Insecure: true}, user, false, "none", base.Insecure},
		{"user, insecure unlisted host", api.PullIn{Ref: "elsewhere:5000/app:1", Insecure: true}, user, true, "", nil},
		{"admin, insecure unlisted host", api.PullIn{Ref: "elsewhere:5000/app:1", Insecure: true}, admin, false, "daemon", []string{"listed:5000", "elsewhere:5000"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pullOptions(base, tc.in, tc.caller)
			if tc.denied {
				var ae *actors.Error
				if !errors.As(err, &ae) || !errors.Is(err, actors.ErrPermissionDenied) {
					t.Fatalf("err = %v, want PermissionDenied", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Insecure, tc.insecure) {
				t.Errorf("insecure %v, want %v", got.Insecure, tc.insecure)
			}
			switch tc.keychain {
			case "none":
				if got.Keychain != nil {
					t.Errorf("keychain %T, want none", got.Keychain)
				}
			case "daemon":
				if got.Keychain != authn.DefaultKeychain {
					t.Errorf("keychain %T, want the daemon's", got.Keychain)
				}
			case "caller":
				r, _ := name.ParseReference(tc.in.Ref)
				a, err := got.Keychain.Resolve(r.Context())
				if err != nil {
					t.Fatal(err)
				}
				cfg, _ := a.Authorization()
				if cfg.Username != "bob" || cfg.Password != "s3cret" {
					t.Errorf("credentials %+v, want the caller's", cfg)
				}
				other, _ := name.ParseReference("other.example:5000/app:1")
				if a, _ := got.Keychain.Resolve(other.Context()); a != authn.Anonymous {
					t.Errorf("the caller's credentials go to another registry")
				}
			}
			if base.Insecure[0] != "listed:5000" || len(base.Insecure) != 1 {
				t.Errorf("the daemon's list changed: %v", base.Insecure)
			}
		})
	}
}

// Credentials never show when a request is printed or logged.
func TestRegistryAuthRedacted(t *testing.T) {
	in := api.PullIn{Ref: "r/app:1", Auth: &api.RegistryAuth{Username: "bob", Password: "s3cret", IdentityToken: "tok"}}
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("pull", "in", in, "auth", in.Auth, "auth_value", *in.Auth)
	for _, s := range []string{fmt.Sprintf("%v", in), fmt.Sprintf("%+v", in), fmt.Sprintf("%#v", in), fmt.Sprint(*in.Auth), logged.String()} {
		if strings.Contains(s, "s3cret") || strings.Contains(s, "tok") {
			t.Errorf("credentials printed: %s", s)
		}
	}
}
