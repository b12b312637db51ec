package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// sweepScratch removes what builds a crash cut short left in the scratch
// directory (the flattener's spill, the ext4 builder's staging tree), at
// start-up, before any build runs. Only this daemon's uid's directories
// with those prefixes go: the directory may be shared (/dev/shm).
func sweepScratch(dir string) ([]string, error) {
	es, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var swept []string
	for _, e := range es {
		if !e.IsDir() || !(strings.HasPrefix(e.Name(), "paddock-flatten-") || strings.HasPrefix(e.Name(), "paddock-ext4-")) {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Geteuid() {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return swept, err
		}
		swept = append(swept, e.Name())
	}
	return swept, nil
}
