package source

import (
	"github.com/google/go-containerregistry/pkg/authn"
)

// Credentials is a keychain that holds one registry's credentials (a
// caller's, for one pull) and answers anonymous for every other registry.
func Credentials(registry string, cfg authn.AuthConfig) authn.Keychain {
	return oneRegistry{registry: registry, auth: authn.FromConfig(cfg)}
}

type oneRegistry struct {
	registry string
	auth     authn.Authenticator
}

func (k oneRegistry) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if r.RegistryStr() == k.registry {
		return k.auth, nil
	}
	return authn.Anonymous, nil
}
