package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// workspaceBench times, through the CLI as a user runs it, seeding a
// workspace from a 10,000-file / 300 MB tree against mkfs.ext4 -d of the
// same tree, and exporting it to a tar file against tar -c of the tree.
// The references write where paddock writes: the image into the state
// directory's file system, the tar file beside the export's.
func workspaceBench(cli, sock, scratch, state string) error {
	tree := filepath.Join(scratch, "ws-tree")
	if err := benchTree(tree, 10000, 300<<20); err != nil {
		return err
	}
	defer os.RemoveAll(tree)
	const size = "1GiB"

	img := filepath.Join(state, "ws-ref.ext4")
	refSeed, err := timed("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", tree, img, "1G")
	os.Remove(img)
	if err != nil {
		return err
	}
	seed, err := timed(cli, "--socket", sock, "workspace", "create", "bench", "--from", tree, "--size", size)
	if err != nil {
		return err
	}
	fmt.Printf("workspace create --from (10,000 files, 300 MB)  %v  = %.2fx mkfs.ext4 -d of the tree (%v)\n",
		seed.Round(time.Millisecond), ratio(seed, refSeed), refSeed.Round(time.Millisecond))

	refTar := filepath.Join(scratch, "ws-ref.tar")
	refExport, err := timed("tar", "-cf", refTar, "-C", tree, ".")
	os.Remove(refTar)
	if err != nil {
		return err
	}
	out := filepath.Join(scratch, "ws-export.tar")
	export, err := timed(cli, "--socket", sock, "workspace", "export", "bench", "-o", out)
	os.Remove(out)
	if err != nil {
		return err
	}
	fmt.Printf("workspace export -o FILE.tar                    %v  = %.2fx tar -c of the tree (%v)\n",
		export.Round(time.Millisecond), ratio(export, refExport), refExport.Round(time.Millisecond))
	inspect, err := timed(cli, "--socket", sock, "workspace", "inspect", "bench")
	if err != nil {
		return err
	}
	clone, err := timed(cli, "--socket", sock, "workspace", "clone", "bench", "bench-clone")
	if err != nil {
		return err
	}
	out2, err := exec.Command(cli, "--socket", sock, "workspace", "inspect", "bench-clone", "--json").Output()
	if err != nil {
		return fmt.Errorf("inspect the clone: %w", err)
	}
	var ws struct {
		Used int64 `json:"used"`
	}
	if err := json.Unmarshal(out2, &ws); err != nil {
		return fmt.Errorf("inspect the clone: %w", err)
	}
	fmt.Printf("workspace clone of the 300 MB workspace      %v = %.1fx a workspace inspect (%v), %d KiB on disk  (goal: <= 50 ms, <= 1 MiB)\n",
		clone.Round(time.Millisecond), ratio(clone, inspect), inspect.Round(time.Millisecond), ws.Used>>10)
	for _, n := range []string{"bench-clone", "bench"} {
		if _, err := timed(cli, "--socket", sock, "workspace", "rm", n); err != nil {
			return err
		}
	}
	return nil
}

// timed runs a command and returns how long it took.
func timed(name string, args ...string) (time.Duration, error) {
	t0 := time.Now()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("%s %v: %v\n%s", name, args, err, out)
	}
	return time.Since(t0), nil
}

// benchTree writes n files of total bytes (one large file holds half, the
// rest are small) in 100 directories under dir.
func benchTree(dir string, n int, total int64) error {
	rng := rand.New(rand.NewPCG(1, 2))
	big := total / 2
	small := (total - big) / int64(n-1)
	buf := make([]byte, big)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "big.bin"), buf, 0o644); err != nil {
		return err
	}
	for i := 1; i < n; i++ {
		sub := filepath.Join(dir, fmt.Sprintf("d%02d", i%100))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			return err
		}
		off := int64(i) * 7919 % (big - small)
		if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%05d.txt", i)), buf[off:off+small], 0o644); err != nil {
			return err
		}
	}
	return nil
}
