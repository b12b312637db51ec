package guestboot

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSeedRoundTrip(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, config, want string
		size               int
	}{
		{"empty", "", "{}", 4096},
		{"small", `{"config":{"Cmd":["sh"]}}`, `{"config":{"Cmd":["sh"]}}`, 4096},
		{"one block exactly", `"` + strings.Repeat("a", 4094) + `"`, `"` + strings.Repeat("a", 4094) + `"`, 8192},
		{"largest", `"` + strings.Repeat("a", MaxSeedConfig-2) + `"`, `"` + strings.Repeat("a", MaxSeedConfig-2) + `"`, MaxSeedConfig + 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name+".img")
			if err := WriteSeed(path, []byte(tc.config)); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(path)
			if err != nil || fi.Size() != int64(tc.size) || fi.Mode().Perm() != 0o600 {
				t.Fatalf("seed file %v %v, want %d bytes, 0600", fi, err, tc.size)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, err := ReadSeed(f)
			if err != nil || string(got) != tc.want {
				t.Fatalf("ReadSeed: %.40q %v", got, err)
			}
		})
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 4 {
		t.Errorf("temporary files left: %v", ents)
	}
}

func TestSeedErrors(t *testing.T) {
	for _, tc := range []struct {
		config, want string
	}{
		{`"` + strings.Repeat("a", MaxSeedConfig) + `"`, "more than the seed's 1048576"},
		{`{"a":`, "not valid JSON"},
	} {
		path := filepath.Join(t.TempDir(), "seed.img")
		if err := WriteSeed(path, []byte(tc.config)); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("WriteSeed(%.20q): %v, want %q", tc.config, err, tc.want)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a seed was written for a bad config: %v", err)
		}
	}
	if err := WriteSeed(filepath.Join(t.TempDir(), "no", "dir"), nil); err == nil {
		t.Error("WriteSeed into a missing directory succeeded")
	}
	for _, tc := range []struct {
		name, in, want string
	}{
		{"plain file", `{"Cmd":["sh"]}` + "\n", ""},
		{"all NULs", "\x00\x00\x00", "holds no image config"},
		{"empty", "", "holds no image config"},
		{"garbage", "\x7fELF\x00", "not valid JSON"},
		{"no NUL, too long", strings.Repeat(" ", MaxSeedConfig+1), "larger than 1048576"},
	} {
		_, err := ReadSeed(strings.NewReader(tc.in))
		if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// endless is a device that never ends: ReadSeed must stop on its own.
type endless byte

func (e endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(e)
	}
	return len(p), nil
}

func TestReadSeedIsBounded(t *testing.T) {
	for _, b := range []byte{'x', 0} {
		c := &countingReader{r: endless(b)}
		_, err := ReadSeed(c)
		if err == nil || c.n > MaxSeedConfig+1 {
			t.Errorf("endless %q: read %d bytes, %v", b, c.n, err)
		}
	}
}

// FuzzSeed: ReadSeed never reads past its bound, and what it returns
// encodes to a seed that reads back the same.
func FuzzSeed(f *testing.F) {
	f.Add([]byte(`{"config":{"Entrypoint":["/bin/app"]}}` + "\x00\x00"))
	f.Add([]byte("{}"))
	f.Add([]byte("\x00{}"))
	f.Add([]byte(`[1,2]` + "\x00garbage"))
	f.Add([]byte(`"a` + "\x00" + `"`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &countingReader{r: bytes.NewReader(data)}
		cfg, err := ReadSeed(c)
		if c.n > MaxSeedConfig+1 {
			t.Fatalf("read %d bytes", c.n)
		}
		if err != nil {
			return
		}
		img, err := EncodeSeed(cfg)
		if err != nil {
			t.Fatalf("EncodeSeed of what ReadSeed returned (%q): %v", cfg, err)
		}
		if len(img)%SeedBlock != 0 {
			t.Fatalf("seed of %d bytes", len(img))
		}
		back, err := ReadSeed(bytes.NewReader(img))
		if err != nil || !bytes.Equal(back, cfg) {
			t.Fatalf("round trip: %q %v, want %q", back, err, cfg)
		}
	})
}

func TestMountOwner(t *testing.T) {
	ms := []Mount{{Path: "/workspace", UID: 1000, GID: 1001}, {Path: "/workspace/deps", UID: 7, GID: 8}, {Path: "/srv/", UID: 5, GID: 6}}
	for _, tc := range []struct {
		dir      string
		uid, gid int
	}{
		{"/workspace", 1000, 1001},
		{"/workspace/src/x", 1000, 1001},
		{"/workspace/deps/a", 7, 8},
		{"/workspaces", 0, 0},
		{"/srv", 5, 6},
		{"/tmp", 0, 0},
	} {
		if uid, gid := MountOwner(ms, tc.dir); uid != tc.uid || gid != tc.gid {
			t.Errorf("MountOwner(%s) = %d:%d, want %d:%d", tc.dir, uid, gid, tc.uid, tc.gid)
		}
	}
}
