package main

import "testing"

func TestRootMountData(t *testing.T) {
	for _, c := range []struct{ fstype, vm, want string }{
		{"ext4", "", "noinit_itable,no_prefetch_block_bitmaps"},
		{"ext4", "discard", "noinit_itable,no_prefetch_block_bitmaps,discard"},
		{"ext4", "init_itable=5", "noinit_itable,no_prefetch_block_bitmaps,init_itable=5"}, // the VM's own wins
		{"xfs", "discard", "discard"},
		{"btrfs", "", ""},
	} {
		if got := rootMountData(c.fstype, c.vm); got != c.want {
			t.Errorf("rootMountData(%q, %q) = %q, want %q", c.fstype, c.vm, got, c.want)
		}
	}
}
