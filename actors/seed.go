package actors

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/paddock-vm/paddock/state"
)

// withEnv adds a VM's own environment to its image config (an OCI config
// or its "config" object); a VM's KEY=VALUE replaces the image's KEY.
func withEnv(config []byte, env []string) ([]byte, error) {
	if len(env) == 0 {
		return config, nil
	}
	whole := map[string]json.RawMessage{}
	if len(config) > 0 {
		if err := json.Unmarshal(config, &whole); err != nil {
			return nil, err
		}
	}
	inner := whole
	nested := false
	if raw, ok := whole["config"]; ok {
		inner = map[string]json.RawMessage{}
		if err := json.Unmarshal(raw, &inner); err != nil {
			return nil, err
		}
		nested = true
	}
	var cur []string
	if raw, ok := inner["Env"]; ok {
		_ = json.Unmarshal(raw, &cur)
	}
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
	b, _ := json.Marshal(cur)
	inner["Env"] = b
	if nested {
		b, _ := json.Marshal(inner)
		whole["config"] = b
		return json.Marshal(whole)
	}
	return json.Marshal(inner)
}

// writeSeed writes the image config where the guest reads it: a raw block
// device holding the JSON, padded with NULs to a whole sector.
func writeSeed(path string, config []byte) error {
	if len(config) == 0 {
		config = []byte("{}")
	}
	if len(config) > 1<<20 {
		return fmt.Errorf("image config is larger than 1 MiB")
	}
	n := (len(config) + 1 + 4095) / 4096 * 4096
	buf := make([]byte, n)
	copy(buf, config)
	return state.WriteFileAtomic(path, buf, 0o640)
}
