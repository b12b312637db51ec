package actors

import (
	"encoding/json"
	"strings"

	"github.com/paddock-vm/paddock/guestboot"
	"github.com/paddock-vm/paddock/state"
)

// guestConfig is the image config (an OCI config, or its "config" object)
// with a VM's own settings on top, as the guest agent reads it from the
// seed disk: Env entries replace the image's of the same KEY; Entrypoint,
// Cmd, WorkingDir and User replace the image's when set, and a new
// Entrypoint drops the image's Cmd unless the VM sets Cmd too (docker's
// rule). With nothing to change the config is returned as it is.
//
// mounts (the VM's workspaces) go under guestboot.MountsKey.
func guestConfig(config []byte, s state.Spec, mounts []guestboot.Mount) ([]byte, error) {
	if len(s.Env) == 0 && s.Entrypoint == nil && s.Cmd == nil && s.Workdir == "" && s.User == "" && len(mounts) == 0 && !s.TemplateBoot {
		return config, nil
	}
	whole := map[string]json.RawMessage{}
	if len(config) > 0 {
		if err := json.Unmarshal(config, &whole); err != nil {
			return nil, err
		}
	}
	inner := whole
	raw, nested := whole["config"]
	if nested {
		inner = map[string]json.RawMessage{}
		if err := json.Unmarshal(raw, &inner); err != nil {
			return nil, err
		}
	}
	set := func(key string, v any) {
		b, _ := json.Marshal(v)
		inner[key] = b
	}
	if len(s.Env) > 0 {
		var cur []string
		if raw, ok := inner["Env"]; ok {
			_ = json.Unmarshal(raw, &cur)
		}
		set("Env", mergeEnv(cur, s.Env))
	}
	if s.Entrypoint != nil {
		set("Entrypoint", append([]string{}, *s.Entrypoint...)) // [] clears, null would not
		if s.Cmd == nil {
			set("Cmd", []string{})
		}
	}
	if s.Cmd != nil {
		set("Cmd", s.Cmd)
	}
	if s.Workdir != "" {
		set("WorkingDir", s.Workdir)
	}
	if s.User != "" {
		set("User", s.User)
	}
	if len(mounts) > 0 {
		set(guestboot.MountsKey, mounts)
	}
	if s.TemplateBoot {
		set(guestboot.TemplateKey, true)
	}
	if nested {
		b, _ := json.Marshal(inner)
		whole["config"] = b
		return json.Marshal(whole)
	}
	return json.Marshal(inner)
}

// mergeEnv adds env to cur; an entry replaces cur's entry of its KEY.
func mergeEnv(cur, env []string) []string {
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		out := cur[:0:0]
		for _, c := range cur {
			if ck, _, _ := strings.Cut(c, "="); ck != k {
				out = append(out, c)
			}
		}
		cur = append(out, kv)
	}
	return cur
}
