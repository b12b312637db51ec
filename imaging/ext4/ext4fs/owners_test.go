package ext4fs

import (
	"os/exec"
	"regexp"
	"testing"
)

// TestSetOwners: every inode of the tree (the root and lost+found too)
// gets the owner, uids and gids above 16 bits included, and e2fsck finds
// nothing wrong: the inode checksums are right.
func TestSetOwners(t *testing.T) {
	for _, feat := range []string{"metadata_csum", "^metadata_csum"} {
		img := mkfs(t, tree(t), "-O", feat)
		n, err := SetOwners(img, 100123, 70001)
		if err != nil {
			t.Fatal(err)
		}
		if n < 3000 {
			t.Errorf("-O %s: %d inodes changed, want every one of the tree's (over 3000)", feat, n)
		}
		if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
			t.Fatalf("-O %s: e2fsck -fn: %v\n%s", feat, err, out)
		}
		re := regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)`)
		for _, p := range []string{"/", "/lost+found", "/a/b/c/sparse", "/many/file-2999.txt", "/a/slow", "/fifo"} {
			out, err := exec.Command("debugfs", "-R", "stat "+p, img).CombinedOutput()
			m := re.FindStringSubmatch(string(out))
			if err != nil || m == nil || m[1] != "100123" || m[2] != "70001" {
				t.Errorf("-O %s: %s: owner %v (%v), want 100123:70001", feat, p, m, err)
			}
		}
	}
}
