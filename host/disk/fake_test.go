package disk

import (
	"context"
	"errors"
	"io/fs"
	"strings"
	"testing"
)

func TestFakeFollowsTheContract(t *testing.T) {
	ctx := context.Background()
	f := NewFake(Copy)
	var b Backend = f
	if b.Name() != Copy || b.Plan("/vms/a").Path != "/vms/a/disk.copy" {
		t.Fatalf("plan %+v", b.Plan("/vms/a"))
	}
	d, err := b.Create(ctx, "/vms/a", "/images/x/rootfs.ext4", 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Create(ctx, "/vms/a", "/images/x/rootfs.ext4", 1<<30); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second Create: %v", err)
	}
	boom := errors.New("boom")
	f.FailNext("create", boom)
	if _, err := b.Create(ctx, "/vms/b", "/images/x/rootfs.ext4", 0); !errors.Is(err, boom) {
		t.Errorf("injected failure: %v", err)
	}
	if err := b.Deactivate(ctx, d); err != nil {
		t.Fatal(err)
	}
	if f.State() != "/vms/a inactive" {
		t.Errorf("state %q", f.State())
	}
	if _, err := b.Activate(ctx, d); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := b.Release(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Activate(ctx, d); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Activate after Release: %v", err)
	}
	want := `create /vms/a base=/images/x/rootfs.ext4 size=1073741824
create /vms/a base=/images/x/rootfs.ext4 size=1073741824
create /vms/b base=/images/x/rootfs.ext4 size=0
deactivate /vms/a
activate /vms/a
release /vms/a
release /vms/a
activate /vms/a`
	if got := strings.Join(f.Calls(), "\n"); got != want {
		t.Errorf("calls:\n%s\nwant:\n%s", got, want)
	}
	if f.State() != "" {
		t.Errorf("state %q", f.State())
	}
}
