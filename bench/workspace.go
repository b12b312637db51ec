package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// workspaceBench times, through the CLI as a user runs it, seeding a
// workspace from a 10,000-file / 300 MB tree against mkfs.ext4 -d of the
// same tree, and exporting it to a tar file against tar -c of the tree.
// The references write where paddock writes: the image into the state
// directory's file system, the tar file beside the export's.
func workspaceBench(cli, sock, scratch, state string, cloneRuns int) error {
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
	if err := cloneBench(cli, sock, state, "bench", "1 GiB", cloneRuns); err != nil {
		return err
	}
	// The same tree in a volume 16 times bigger (sparse): the clone's cost
	// must not follow the size.
	if _, err := timed(cli, "--socket", sock, "workspace", "create", "bench-big", "--from", tree, "--size", "16GiB"); err != nil {
		return err
	}
	if err := cloneBench(cli, sock, state, "bench-big", "16 GiB", cloneRuns); err != nil {
		return err
	}
	for _, n := range []string{"bench", "bench-big"} {
		if _, err := timed(cli, "--socket", sock, "workspace", "rm", n); err != nil {
			return err
		}
	}
	return nil
}

// cloneBench times runs clones of src through the CLI (median) against a
// workspace inspect of src (the CLI's start and one round trip, median of
// as many), and reports what each clone takes on disk: the new
// workspace's directory, and all the workspaces' files grew by (the
// source's new top included; the frozen layer is a hard link).
func cloneBench(cli, sock, state, src, size string, runs int) error {
	wsRoot := filepath.Join(state, "workspaces")
	var clones, refs []time.Duration
	var dirKiB, grewKiB []int64
	for i := range runs {
		ref, err := timed(cli, "--socket", sock, "workspace", "inspect", src)
		if err != nil {
			return err
		}
		refs = append(refs, ref)
		before, err := allocated(wsRoot)
		if err != nil {
			return err
		}
		name := fmt.Sprintf("%s-clone-%d", src, i)
		clone, err := timed(cli, "--socket", sock, "workspace", "clone", src, name)
		if err != nil {
			return err
		}
		clones = append(clones, clone)
		after, err := allocated(wsRoot)
		if err != nil {
			return err
		}
		out, err := exec.Command(cli, "--socket", sock, "workspace", "inspect", name, "--json").Output()
		if err != nil {
			return fmt.Errorf("inspect the clone: %w", err)
		}
		var ws struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(out, &ws); err != nil || ws.ID == "" {
			return fmt.Errorf("inspect the clone: %v: %s", err, out)
		}
		dir, err := allocated(filepath.Join(wsRoot, ws.ID))
		if err != nil {
			return err
		}
		dirKiB, grewKiB = append(dirKiB, dir>>10), append(grewKiB, (after-before)>>10)
	}
	for i := range runs {
		if _, err := timed(cli, "--socket", sock, "workspace", "rm", fmt.Sprintf("%s-clone-%d", src, i)); err != nil {
			return err
		}
	}
	clone, ref := middle(clones), middle(refs)
	verdict := "ok"
	if clone > 50*time.Millisecond || maxOf(grewKiB) > 1024 {
		verdict = "MISSED"
	}
	fmt.Printf("workspace clone of a %s workspace (300 MB in it)  median %v (n=%d) = %.2fx a workspace inspect (%v); on disk: the clone's directory %d KiB, all grew %d KiB (max %d)  (goal: <= 50 ms, <= 1 MiB: %s)\n",
		size, clone.Round(100*time.Microsecond), runs, ratio(clone, ref), ref.Round(100*time.Microsecond), middle(dirKiB), middle(grewKiB), maxOf(grewKiB), verdict)
	return nil
}

func middle[T int64 | time.Duration](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func maxOf(xs []int64) int64 { return slices.Max(xs) }

// allocated is what the files under dir take on the disk (du: blocks, a
// hard-linked file once).
func allocated(dir string) (int64, error) {
	seen := map[uint64]bool{}
	var total int64
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || seen[st.Ino] {
			return nil
		}
		seen[st.Ino] = true
		total += st.Blocks * 512
		return nil
	})
	return total, err
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
