package main

import (
	"context"
	"fmt"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/api"
)

func (c *cli) newImagePullCommand() *cobra.Command {
	var insecure, quiet, public bool
	cmd := &cobra.Command{Use: "pull REF", Short: "Pull an image from a registry (linux/amd64) with your own docker credentials", Args: exactly(1, "one image reference")}
	cmd.Flags().BoolVar(&insecure, "insecure", false, "reach the registry over plain HTTP (admins only, unless the daemon's config lists it)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress; print the image's digest only")
	cmd.Flags().BoolVar(&public, "public", false, "publish its name to every user, not just yourself (admins only)")
	cmd.RunE = func(_ *cobra.Command, a []string) error {
		in, err := pullIn(a[0], insecure, authn.DefaultKeychain)
		if err != nil {
			return err
		}
		in.Public = public
		return c.importing(quiet, pullImage(in))
	}
	return cmd
}

// pullIn is a pull of ref carrying the caller's own credentials for its
// registry, as kc finds them (the default keychain reads $DOCKER_CONFIG or
// ~/.docker/config.json, and its credential helpers): the daemon pulls
// for a user with that user's credentials, never its own.
func pullIn(ref string, insecure bool, kc authn.Keychain) (api.PullIn, error) {
	in := api.PullIn{Ref: ref, Insecure: insecure}
	r, err := name.ParseReference(ref)
	if err != nil {
		return in, nil // the daemon names what is wrong with it
	}
	a, err := kc.Resolve(r.Context())
	if err != nil {
		return in, fmt.Errorf("your registry credentials for %s: %w", r.Context().RegistryStr(), err)
	}
	if a == authn.Anonymous {
		return in, nil
	}
	cfg, err := a.Authorization()
	if err != nil {
		return in, fmt.Errorf("your registry credentials for %s: %w", r.Context().RegistryStr(), err)
	}
	if *cfg != (authn.AuthConfig{}) {
		in.Auth = &api.RegistryAuth{Username: cfg.Username, Password: cfg.Password, Auth: cfg.Auth,
			IdentityToken: cfg.IdentityToken, RegistryToken: cfg.RegistryToken}
	}
	return in, nil
}

func pullImage(in api.PullIn) transferFunc {
	return func(ctx context.Context, cl *api.Client, p func(api.ImportProgress)) (*api.ImportOut, error) {
		return cl.PullImage(ctx, in, p)
	}
}
