package actors

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/config"
	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/state"
)

var admin = Caller{UID: 0, Admin: true}

type harness struct {
	fk    *fakes
	dir   string
	store *state.Store
	sys   *System
	mu    sync.Mutex
	count api.Counts
}

func start(t *testing.T, dir string) *harness {
	t.Helper()
	host, fk := fakeHost(t, dir)
	return startOn(t, dir, host, fk)
}

// startOn starts a tree over host; a second tree over the same host and
// fakes is a daemon restart.
func startOn(t *testing.T, dir string, host *Host, fk *fakes) *harness {
	t.Helper()
	h := &harness{dir: dir, fk: fk}
	startTree(t, h, func(d *Deps, _ *imaging.Store) {
		d.Host = host
		d.OnCounts = func(c api.Counts) { h.mu.Lock(); h.count = c; h.mu.Unlock() }
	})
	return h
}

// startTree opens h's stores under h.dir and starts a tree over them; mod
// adds what the test needs (a host, an importer) to the dependencies.
func startTree(t *testing.T, h *harness, mod func(d *Deps, imgs *imaging.Store)) {
	t.Helper()
	var err error
	if h.store, err = state.NewStore(h.dir); err != nil {
		t.Fatal(err)
	}
	imgs, err := imaging.OpenStore(h.dir)
	if err != nil {
		t.Fatal(err)
	}
	d := Deps{Store: h.store, Images: imgs, Defaults: func() config.Defaults { return config.Default().Defaults }}
	mod(&d, imgs)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if h.sys, err = Start(ctx, d); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.sys.Shutdown)
}

func (h *harness) do(t *testing.T, msg any) (*Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return h.sys.Request(ctx, msg)
}

func (h *harness) mustCreate(t *testing.T, c Caller, name string) *state.VM {
	t.Helper()
	r, err := h.do(t, &CreateVM{Caller: c, Name: name, Image: "alpine"})
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	return r.VM
}

func TestLifecycleTransitionsAndRefusals(t *testing.T) {
	dir := t.TempDir()
	imagetest.Seed(t, dir, "alpine")
	h := start(t, dir)
	vm := h.mustCreate(t, admin, "web1")
	if vm.Status != state.StatusCreated || vm.Spec.CPUs != 1 || vm.Spec.ImageDigest == "" || len(vm.ID) < 12 {
		t.Fatalf("created: %+v", vm)
	}
	steps := []struct {
		msg    any
		want   state.Status
		errIs  error
		errHas string
	}{
		{&StopVM{Caller: admin, Ref: "web1"}, "", ErrInvalidState, "only a running VM"},
		{&StartVM{Caller: admin, Ref: "web1"}, state.StatusRunning, nil, ""},
		{&StartVM{Caller: admin, Ref: vm.ID[:6]}, "", ErrInvalidState, "is running"},
		{&SetVM{Caller: admin, Ref: "web1", CPUs: ptr(2)}, "", ErrInvalidState, "cannot change cpus"},
		{&SetVM{Caller: admin, Ref: "web1", AutoStop: ptr("30m")}, state.StatusRunning, nil, ""},
		{&DeleteVM{Caller: admin, Ref: "web1"}, "", ErrInvalidState, "stop it first"},
		{&StopVM{Caller: admin, Ref: vm.ID}, state.StatusStopped, nil, ""},
		{&SetVM{Caller: admin, Ref: "web1", CPUs: ptr(2), Memory: ptr(int64(1 << 30))}, state.StatusStopped, nil, ""},
		{&SetVM{Caller: admin, Ref: "web1", DiskSize: ptr(int64(1 << 30))}, "", ErrInvalidArgument, "can only grow"},
		{&SetVM{Caller: admin, Ref: "web1", Memory: ptr(int64(100))}, "", ErrInvalidArgument, "memory"},
		{&GetVM{Caller: admin, Ref: "nope"}, "", ErrNotFound, `"nope"`},
		{&CreateVM{Caller: admin, Name: "web1", Image: "alpine"}, "", ErrNameInUse, `"web1"`},
		{&CreateVM{Caller: admin, Name: "Bad_Name", Image: "alpine"}, "", ErrInvalidArgument, "Bad_Name"},
		{&CreateVM{Caller: admin, Name: "x", Image: "ghost:1"}, "", ErrInvalidArgument, "ghost:1"},
	}
	for i, s := range steps {
		r, err := h.do(t, s.msg)
		if s.errIs != nil {
			if !errors.Is(err, s.errIs) || !containsStr(err.Error(), s.errHas) {
				t.Fatalf("step %d %T: err = %v, want %v mentioning %q", i, s.msg, err, s.errIs, s.errHas)
			}
			continue
		}
		if err != nil || r.VM.Status != s.want {
			t.Fatalf("step %d %T: %v %v", i, s.msg, r, err)
		}
	}
	got, _ := h.do(t, &GetVM{Caller: admin, Ref: "web1"})
	if got.VM.Spec.CPUs != 2 || got.VM.Spec.Memory != 1<<30 || got.VM.Spec.AutoStop != "30m0s" {
		t.Fatalf("spec after set: %+v", got.VM.Spec)
	}
	// What the actor says is what is on disk.
	disk, err := h.store.Load(vm.ID)
	if err != nil || !reflect.DeepEqual(disk.Spec, got.VM.Spec) || disk.Status != state.StatusStopped {
		t.Fatalf("disk %+v %v", disk, err)
	}
	if _, err := h.do(t, &DeleteVM{Caller: admin, Ref: "web1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(h.store.Dir(vm.ID)); !os.IsNotExist(err) {
		t.Fatalf("VM dir still there: %v", err)
	}
	if _, err := h.do(t, &GetVM{Caller: admin, Ref: "web1"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}

func TestPanicRestartsOnlyThatVM(t *testing.T) {
	dir := t.TempDir()
	imagetest.Seed(t, dir, "alpine")
	h := start(t, dir)
	a := h.mustCreate(t, admin, "a")
	h.mustCreate(t, admin, "b")
	if _, err := h.do(t, &StartVM{Caller: admin, Ref: "b"}); err != nil {
		t.Fatal(err)
	}
	// Change a's record on disk behind the actor's back: a restarted actor
	// must pick it up, proving it reloads from disk rather than memory.
	onDisk, _ := h.store.Load(a.ID)
	onDisk.Spec.CPUs = 7
	if err := h.store.Save(onDisk); err != nil {
		t.Fatal(err)
	}
	h.sys.sys.Root.Send(h.sys.Manager, &crashVM{Ref: "a"})
	var got *Result
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := h.do(t, &GetVM{Caller: admin, Ref: "a"})
		if err != nil {
			t.Fatal(err)
		}
		if r.VM.Spec.CPUs == 7 {
			got = r
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("VM a did not reload its record after the panic: %+v", r.VM)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got.VM.Status != state.StatusCreated {
		t.Fatalf("a after restart: %+v", got.VM)
	}
	// a still works, b was untouched, and the API (the Manager) answers.
	if _, err := h.do(t, &StartVM{Caller: admin, Ref: "a"}); err != nil {
		t.Fatalf("a after restart: %v", err)
	}
	r, err := h.do(t, &GetVM{Caller: admin, Ref: "b"})
	if err != nil || r.VM.Status != state.StatusRunning {
		t.Fatalf("b: %+v %v", r, err)
	}
	if err := h.sys.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptRecordBecomesErrorVM(t *testing.T) {
	dir := t.TempDir()
	imagetest.Seed(t, dir, "alpine")
	h := start(t, dir)
	var ids []string
	for i := 0; i < 5; i++ {
		ids = append(ids, h.mustCreate(t, admin, fmt.Sprintf("vm%d", i)).ID)
	}
	h.sys.Shutdown()
	p := filepath.Join(h.store.Dir(ids[2]), "vm.json")
	b, _ := os.ReadFile(p)
	if err := os.WriteFile(p, b[:len(b)/3], 0o640); err != nil {
		t.Fatal(err)
	}
	h2 := start(t, dir)
	r, err := h2.do(t, &ListVMs{Caller: admin})
	if err != nil {
		t.Fatal(err)
	}
	var bad, good int
	for _, vm := range r.VMs {
		if vm.Status == state.StatusError {
			bad++
			if vm.ID != ids[2] || !containsStr(vm.Reason, "vm.json") {
				t.Fatalf("error VM: %+v", vm)
			}
		} else {
			good++
		}
	}
	if bad != 1 || good != 4 {
		t.Fatalf("bad=%d good=%d", bad, good)
	}
	if _, err := h2.do(t, &StartVM{Caller: admin, Ref: ids[2]}); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("start of corrupt VM: %v", err)
	}
	if _, err := h2.do(t, &DeleteVM{Caller: admin, Ref: ids[2]}); err != nil {
		t.Fatalf("delete of corrupt VM: %v", err)
	}
	// The Manager settles the delete before it answers the next request.
	if r, err := h2.do(t, &ListVMs{Caller: admin}); err != nil || len(r.VMs) != 4 {
		t.Fatalf("after delete: %v %v", r, err)
	}
	h2.mu.Lock()
	defer h2.mu.Unlock()
	if h2.count.Total != 4 || h2.count.Error != 0 {
		t.Fatalf("counts %+v", h2.count)
	}
}

func TestEventsFanOut(t *testing.T) {
	dir := t.TempDir()
	imagetest.Seed(t, dir, "alpine")
	h := start(t, dir)
	_, all, err := h.sys.Subscribe(context.Background(), admin, "", 16)
	if err != nil {
		t.Fatal(err)
	}
	_, mine, _ := h.sys.Subscribe(context.Background(), Caller{UID: 1001}, "", 16)
	h.mustCreate(t, admin, "e1")
	h.do(t, &StartVM{Caller: admin, Ref: "e1"})
	want := []string{"created:created", "status:starting", "status:running"}
	for i, w := range want {
		select {
		case ev := <-all:
			if got := string(ev.Kind) + ":" + ev.Status; got != w || ev.Seq == 0 || ev.VMName != "e1" {
				t.Fatalf("event %d = %+v, want %s", i, ev, w)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("event %d missing", i)
		}
	}
	select {
	case ev := <-mine:
		t.Fatalf("uid 1001 saw another user's event %+v", ev)
	case <-time.After(50 * time.Millisecond):
	}
}

func ptr[T any](v T) *T { return &v }

func containsStr(s, sub string) bool {
	return len(sub) == 0 || (len(s) >= len(sub) && (func() bool {
		for i := 0; i+len(sub) <= len(s); i++ {
			if s[i:i+len(sub)] == sub {
				return true
			}
		}
		return false
	})())
}
