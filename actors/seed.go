package actors

import (
	"fmt"

	"github.com/paddock-vm/paddock/state"
)

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
