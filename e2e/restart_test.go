package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/api"
)

// Acceptance: kill -9 after 100 creates, restart: all 100 back, none
// duplicated or lost; a truncated vm.json yields one VM in error and 99 fine.
func TestKill9After100Creates(t *testing.T) {
	e := newEnv(t, "")
	p := e.daemon(t, nil)
	created := map[string]string{} // id -> name
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	// Four concurrent clients, as a busy host would have.
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c, err := api.Dial(context.Background(), e.socket)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			for i := w; i < 100; i += 4 {
				name := fmt.Sprintf("vm-%03d", i)
				vm, err := c.Create(context.Background(), api.CreateIn{Name: name, Image: "alpine"})
				if err != nil {
					errs <- fmt.Errorf("create %s: %w", name, err)
					return
				}
				mu.Lock()
				created[vm.ID] = name
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGKILL)
	p.wait(t, 5*time.Second)

	check := func(p *proc) []api.VM {
		t.Helper()
		vms, err := e.client(t).List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return vms
	}
	p = e.daemon(t, nil)
	vms := check(p)
	if len(vms) != 100 {
		t.Fatalf("after kill -9: %d VMs, want 100", len(vms))
	}
	seen := map[string]bool{}
	for _, vm := range vms {
		if created[vm.ID] != vm.Name || seen[vm.Name] || vm.Status != "created" {
			t.Fatalf("VM %s/%s after restart: duplicated, renamed or changed (%s)", vm.ID, vm.Name, vm.Status)
		}
		seen[vm.Name] = true
	}

	// Truncate one record while the daemon is down.
	p.signal(t, syscall.SIGTERM)
	p.wait(t, 15*time.Second)
	victim := vms[37].ID
	rec := filepath.Join(e.state, "vms", victim, "vm.json")
	b, err := os.ReadFile(rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rec, b[:len(b)/2], 0o640); err != nil {
		t.Fatal(err)
	}
	p = e.daemon(t, nil)
	vms = check(p)
	bad, good := 0, 0
	for _, vm := range vms {
		if vm.Status == "error" {
			bad++
			if vm.ID != victim || vm.Reason == "" {
				t.Fatalf("error VM %+v", vm)
			}
		} else {
			good++
		}
	}
	if bad != 1 || good != 99 {
		t.Fatalf("after truncation: %d error, %d fine; want 1 and 99", bad, good)
	}
	p.waitLog(t, "VM record unreadable", victim)
	info, err := e.client(t).Info(context.Background())
	if err != nil || info.VMs.Error != 1 || info.VMs.Total != 100 {
		t.Fatalf("info: %+v %v", info, err)
	}
}
