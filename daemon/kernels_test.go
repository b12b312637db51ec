package daemon

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/bootkit"
)

// fakeKits makes kit directories as bootkit stores them (kit.json, vmlinux,
// initramfs); broken ones lack their kernel.
func fakeKits(t *testing.T, good []string, broken ...string) string {
	t.Helper()
	state := t.TempDir()
	for _, n := range append(append([]string{}, good...), broken...) {
		dir := filepath.Join(bootkit.KernelsDir(state), n)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(bootkit.Kit{Schema: bootkit.KitSchema, Name: n})
		files := map[string][]byte{bootkit.KitFile: b, bootkit.InitramfsFile: nil}
		if !strings.HasPrefix(n, "broken") {
			files[bootkit.VmlinuxFile] = nil
		}
		for f, body := range files {
			if err := os.WriteFile(filepath.Join(dir, f), body, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return state
}

func TestFindKit(t *testing.T) {
	cases := []struct {
		name       string
		kits       []string
		broken     []string
		ask, conf  string
		want       string
		errPhrases []string // a miss names these
	}{
		{"named", []string{"debian", "default"}, nil, "debian", "default", "debian", nil},
		{"the configured default", []string{"debian", "default"}, nil, "", "default", "default", nil},
		{"the only kit when the default is missing", []string{"debian"}, nil, "", "default", "debian", nil},
		{"the only usable kit", []string{"debian"}, []string{"broken1"}, "", "default", "debian", nil},
		{"a named kit that is missing", []string{"debian", "alpine"}, nil, "fedora", "default", "", []string{`"fedora"`, "alpine, debian"}},
		{"several kits and no default", []string{"debian", "alpine"}, nil, "", "default", "", []string{`"default"`, "alpine, debian", "--kernel"}},
		{"no kit at all", nil, nil, "", "default", "", []string{"paddock kernel import"}},
		{"a named kit is not replaced by the only one", []string{"debian"}, nil, "fedora", "default", "", []string{`"fedora"`, "debian"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			state := fakeKits(t, tc.kits, tc.broken...)
			k, err := findKit(state, tc.ask, tc.conf)
			if tc.want != "" {
				if err != nil || k.Name != tc.want {
					t.Fatalf("got %v, %v; want kit %s", k, err, tc.want)
				}
				if k.VmlinuxPath() != filepath.Join(bootkit.KernelsDir(state), tc.want, bootkit.VmlinuxFile) {
					t.Fatalf("kernel path %s", k.VmlinuxPath())
				}
				return
			}
			if !errors.Is(err, bootkit.ErrNotFound) {
				t.Fatalf("err = %v, want ErrNotFound", err)
			}
			for _, p := range tc.errPhrases {
				if !strings.Contains(err.Error(), p) {
					t.Errorf("%q lacks %q", err, p)
				}
			}
		})
	}
}
