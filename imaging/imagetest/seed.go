// Package imagetest seeds a real image store for tests of code that consumes
// images, until a test can import one through the full pipeline.
package imagetest

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/imaging"
)

// Seed builds a small real ext4 base with mkfs.ext4 -d and records it in the
// store under stateDir as a public name. It returns the stored image.
func Seed(t testing.TB, stateDir, name string) *imaging.Image {
	t.Helper()
	img, err := SeedImage(stateDir, name)
	if err != nil {
		t.Fatalf("seed image %s: %v", name, err)
	}
	return img
}

// SeedImage is Seed for callers without a testing.TB (benchmarks, tools).
func SeedImage(stateDir, name string) (*imaging.Image, error) {
	st, err := imaging.OpenStore(stateDir)
	if err != nil {
		return nil, err
	}
	tree, err := os.MkdirTemp("", "paddock-seed-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tree)
	for _, d := range []string{"etc", "bin", "tmp"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(tree, "etc", "os-release"), []byte("NAME="+name+"\n"), 0o644); err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte("paddock-seed:" + name))
	digest := "sha256:" + hex.EncodeToString(sum[:])
	dir := st.Dir(digest)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	rootfs := filepath.Join(dir, "rootfs.ext4")
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", "-d", tree, rootfs, "8M").CombinedOutput()
	if err != nil {
		return nil, &exec.ExitError{Stderr: out}
	}
	fi, err := os.Stat(rootfs)
	if err != nil {
		return nil, err
	}
	img := &imaging.Image{Digest: digest, Size: fi.Size(), Created: time.Now().UTC(), RootFS: "rootfs.ext4"}
	if err := st.Add(img); err != nil {
		return nil, err
	}
	// Seeded images are published: every user resolves the name.
	if err := st.Hold(imaging.PublicNamespace, digest, []string{name}); err != nil {
		return nil, err
	}
	return st.View(imaging.Viewer{Admin: true}, digest)
}
