package actors

import (
	"archive/tar"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/imaging/flatten"
	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/imaging/source"
	"github.com/paddock-vm/paddock/state"
)

var (
	aliceC = Caller{UID: 1001}
	bobC   = Caller{UID: 1002}
)

// sameRefusal fails unless a and b are the same refusal: same kind, same
// class, same text once each names its own reference.
func sameRefusal(t *testing.T, what string, a error, refA string, b error, refB string) {
	t.Helper()
	if a == nil || b == nil {
		t.Errorf("%s: %v / %v, want two refusals", what, a, b)
		return
	}
	var ea, eb *Error
	if errors.As(a, &ea) != errors.As(b, &eb) || (ea != nil && (ea.Kind != eb.Kind || ea.Field != eb.Field)) {
		t.Errorf("%s: %#v and %#v are different kinds of refusal", what, a, b)
	}
	if errdefs.Class(a) != errdefs.Class(b) {
		t.Errorf("%s: classes %v and %v", what, errdefs.Class(a), errdefs.Class(b))
	}
	if sa, sb := strings.ReplaceAll(a.Error(), refA, "REF"), strings.ReplaceAll(b.Error(), refB, "REF"); sa != sb {
		t.Errorf("%s: %q differs from %q", what, sa, sb)
	}
}

// VM names are per owner; exact ids resolve first; names shaped like ids
// are refused; an admin resolves its own names, then a name one VM has.
func TestVMNamesPerOwner(t *testing.T) {
	dir := t.TempDir()
	imagetest.Seed(t, dir, "alpine")
	h := start(t, dir)
	aliceWeb := h.mustCreate(t, aliceC, "web")
	bobWeb := h.mustCreate(t, bobC, "web") // alice's "web" is no business of bob's
	aliceOnly := h.mustCreate(t, aliceC, "alice-only")
	adm := h.mustCreate(t, admin, "adm")

	if _, err := h.do(t, &CreateVM{Caller: bobC, Name: aliceWeb.ID, Image: "alpine"}); !errors.Is(err, ErrInvalidArgument) || !containsStr(err.Error(), "shape of a VM id") {
		t.Fatalf("bob names a VM after alice's id: %v", err)
	}
	if _, err := h.do(t, &CreateVM{Caller: aliceC, Name: "web", Image: "alpine"}); !errors.Is(err, ErrNameInUse) {
		t.Fatalf("alice's second web: %v", err)
	}

	for _, tc := range []struct {
		who     Caller
		ref     string
		want    string // VM id; "" not found
		errKind error  // when want is ""
	}{
		{aliceC, "web", aliceWeb.ID, nil},
		{bobC, "web", bobWeb.ID, nil},
		{aliceC, aliceWeb.ID, aliceWeb.ID, nil},
		{aliceC, aliceWeb.ID[:8], aliceWeb.ID, nil},
		{bobC, aliceWeb.ID, "", ErrNotFound},
		{bobC, aliceOnly.ID[:8], "", ErrNotFound},
		{bobC, "alice-only", "", ErrNotFound},
		{aliceC, "adm", "", ErrNotFound},
		{admin, "adm", adm.ID, nil},
		{admin, "alice-only", aliceOnly.ID, nil},
		{admin, bobWeb.ID, bobWeb.ID, nil},
		{admin, "web", "", ErrInvalidArgument}, // two users' VMs: give an id
	} {
		r, err := h.do(t, &GetVM{Caller: tc.who, Ref: tc.ref})
		if tc.want == "" {
			if !errors.Is(err, tc.errKind) {
				t.Errorf("uid %d Get %q = %v, %v; want %v", tc.who.UID, tc.ref, r, err, tc.errKind)
			}
			continue
		}
		if err != nil || r.VM.ID != tc.want {
			t.Errorf("uid %d Get %q = %v, %v; want %s", tc.who.UID, tc.ref, r, err, tc.want)
		}
	}
	for _, tc := range []struct {
		who  Caller
		want []string
	}{{aliceC, []string{"alice-only", "web"}}, {bobC, []string{"web"}}, {admin, []string{"adm", "alice-only", "web", "web"}}} {
		r, err := h.do(t, &ListVMs{Caller: tc.who})
		var names []string
		for _, vm := range r.VMs {
			names = append(names, vm.Name)
		}
		if err != nil || !slices.Equal(names, tc.want) {
			t.Errorf("uid %d lists %v (%v), want %v", tc.who.UID, names, err, tc.want)
		}
	}
}

// Every request that names a VM: bob's call on alice's VM is refused
// exactly as a call on a VM that does not exist, by name, id or prefix.
func TestForeignVMIsNotFound(t *testing.T) {
	dir := t.TempDir()
	imagetest.Seed(t, dir, "alpine")
	h := start(t, dir)
	vm := h.mustCreate(t, aliceC, "alice-vm")
	missingID := strings.Repeat("e", state.IDLen)
	requests := map[string]func(ref string) any{
		"Get":    func(ref string) any { return &GetVM{Caller: bobC, Ref: ref} },
		"Set":    func(ref string) any { return &SetVM{Caller: bobC, Ref: ref, CPUs: ptr(2)} },
		"Start":  func(ref string) any { return &StartVM{Caller: bobC, Ref: ref} },
		"Stop":   func(ref string) any { return &StopVM{Caller: bobC, Ref: ref, Force: true} },
		"Delete": func(ref string) any { return &DeleteVM{Caller: bobC, Ref: ref, Force: true} },
		"Exec":   func(ref string) any { return &ExecVM{Caller: bobC, Ref: ref} },
	}
	for name, req := range requests {
		for _, refs := range [][2]string{{"alice-vm", "nobody-vm"}, {vm.ID, missingID}, {vm.ID[:10], missingID[:10]}} {
			_, errA := requestAny(h, req(refs[0]))
			_, errB := requestAny(h, req(refs[1]))
			if !errors.Is(errA, ErrNotFound) {
				t.Errorf("%s as bob on alice's %q: %v, want not found", name, refs[0], errA)
			}
			sameRefusal(t, name+" "+refs[0], errA, refs[0], errB, refs[1])
		}
	}
	// The VM is untouched.
	if r, err := h.do(t, &GetVM{Caller: aliceC, Ref: "alice-vm"}); err != nil || r.VM.Spec.CPUs != vm.Spec.CPUs || r.VM.Status != state.StatusCreated {
		t.Fatalf("alice's VM after bob's calls: %+v %v", r, err)
	}
}

// requestAny sends a VM request to the Manager; ExecVM answers differently.
func requestAny(h *harness, msg any) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if m, ok := msg.(*ExecVM); ok {
		return request[*AgentResult](ctx, h.sys.sys.Root, h.sys.Manager, m)
	}
	return h.sys.Request(ctx, msg)
}

// A VM named after another VM's id (a record from before the rule) can
// stand in for it nowhere: ids resolve first, and paddock's own callers
// (Stats, auto-stop) address VMs by exact id only.
func TestInternalCallersUseIDs(t *testing.T) {
	dir := t.TempDir()
	imagetest.Seed(t, dir, "alpine")
	host, fk := fakeHost(t, dir)
	h := startOn(t, dir, host, fk)
	victim := h.mustCreate(t, aliceC, "victim")
	squat := h.mustCreate(t, bobC, "squat")
	if _, err := h.do(t, &StartVM{Caller: aliceC, Ref: "victim"}); err != nil {
		t.Fatal(err)
	}
	h.sys.Shutdown()
	rec, err := h.store.Load(squat.ID)
	if err != nil {
		t.Fatal(err)
	}
	rec.Name = victim.ID
	if err := h.store.Save(rec); err != nil {
		t.Fatal(err)
	}
	h = startOn(t, dir, host, fk)

	for _, tc := range []struct {
		who  Caller
		ref  string
		want string
	}{
		{aliceC, victim.ID, victim.ID},
		{admin, victim.ID, victim.ID},
		{bobC, victim.ID, squat.ID}, // his own, by its name
	} {
		r, err := h.do(t, &GetVM{Caller: tc.who, Ref: tc.ref})
		if err != nil || r.VM.ID != tc.want {
			t.Errorf("uid %d Get %q = %+v %v, want %s", tc.who.UID, tc.ref, r, err, tc.want)
		}
	}
	// The Stats actor's agent and stop go by id: the victim's agent, the
	// victim's stop.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// (After the restart the agent may still be reconnecting: the answer
	// then says so, still for the victim.)
	ar, err := request[*AgentResult](ctx, h.sys.sys.Root, h.sys.Manager, &ExecVM{Caller: admin, ID: victim.ID})
	if ar == nil || ar.VM == nil || ar.VM.ID != victim.ID || (err != nil && !errors.Is(err, ErrAgentUnavailable)) {
		t.Fatalf("agent by id: %+v %v", ar, err)
	}
	if _, err := request[*AgentResult](ctx, h.sys.sys.Root, h.sys.Manager, &ExecVM{Caller: admin, ID: "victim"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an internal caller resolved a name: %v", err)
	}
	r, err := h.do(t, &StopVM{Caller: admin, ID: victim.ID, Reason: "auto-stop: test"})
	if err != nil || r.VM.ID != victim.ID || r.VM.Status != state.StatusStopped {
		t.Fatalf("stop by id: %+v %v", r, err)
	}
	if r, _ := h.do(t, &GetVM{Caller: bobC, Ref: squat.ID}); r == nil || r.VM.Status != state.StatusCreated {
		t.Fatalf("bob's VM was touched: %+v", r)
	}
}

// importHarness is a tree with a working Import actor (flattening for
// real, a fake ext4 build) and VMs as records.
func importHarness(t *testing.T) (*harness, *imaging.Store) {
	t.Helper()
	h := &harness{dir: t.TempDir()}
	var imgs *imaging.Store
	startTree(t, h, func(d *Deps, store *imaging.Store) {
		imgs = store
		d.Importer = &imaging.Importer{Store: imgs, ScratchDir: filepath.Join(h.dir, "scratch"), Build: func(_ context.Context, _ *flatten.Result, out string) error {
			return os.WriteFile(out, []byte("ext4"), 0o644)
		}}
	})
	return h, imgs
}

func testImage(t *testing.T, env string) v1.Image {
	return imagetest.Image(t, &v1.Config{Env: []string{env}}, imagetest.LayerTar(t, imagetest.Entry{Name: "etc/", Type: tar.TypeDir}, imagetest.Entry{Name: "etc/who", Body: env}))
}

func importAs(t *testing.T, h *harness, c Caller, public bool, img v1.Image, names ...string) (*ImportDone, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return h.sys.ImportImage(ctx, c, public, func(context.Context) (*source.Image, error) {
		return &source.Image{Kind: source.DockerArchive, Ref: "test", Names: names, Image: img}, nil
	}, nil)
}

func images(t *testing.T, h *harness, msg any) (*ImageResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return h.sys.Images(ctx, msg)
}

// Image names are per owner, content is shared, admins publish; another
// user's image is not found, exactly like one that does not exist.
func TestImageNamespaces(t *testing.T) {
	h, store := importHarness(t)
	aliceImg, bobImg, shared := testImage(t, "SECRET=alice"), testImage(t, "SECRET=bob"), testImage(t, "BASE=1")

	a, err := importAs(t, h, aliceC, false, aliceImg, "app:1")
	if err != nil || a.Cached || !slices.Equal(a.Image.Names, []string{"app:1"}) {
		t.Fatalf("alice imports app:1: %+v %v", a, err)
	}
	b, err := importAs(t, h, bobC, false, bobImg, "app:1")
	if err != nil || b.Image.Digest == a.Image.Digest {
		t.Fatalf("bob imports app:1: %+v %v", b, err)
	}
	if _, err := importAs(t, h, bobC, true, shared, "base:1"); !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("bob publishes: %v", err)
	}
	p, err := importAs(t, h, admin, true, shared, "base:1")
	if err != nil || !slices.Equal(p.Image.Public, []string{"base:1"}) {
		t.Fatalf("admin publishes base:1: %+v %v", p, err)
	}
	// alice's VM from app:1 boots alice's image.
	vm, err := h.do(t, &CreateVM{Caller: aliceC, Name: "a1", Image: "app:1"})
	if err != nil || vm.VM.Spec.ImageDigest != a.Image.Digest {
		t.Fatalf("alice's VM from app:1: %+v %v", vm, err)
	}
	if vm, err := h.do(t, &CreateVM{Caller: bobC, Name: "b1", Image: "base:1"}); err != nil || vm.VM.Spec.ImageDigest != p.Image.Digest {
		t.Fatalf("bob's VM from the public base:1: %+v %v", vm, err)
	}
	if _, err := h.do(t, &CreateVM{Caller: aliceC, Name: "a2", Image: "base:1"}); err != nil {
		t.Fatal(err)
	}
	_, errA := h.do(t, &CreateVM{Caller: bobC, Name: "b2", Image: a.Image.Digest})
	_, errB := h.do(t, &CreateVM{Caller: bobC, Name: "b2", Image: "sha256:" + strings.Repeat("e", 64)})
	sameRefusal(t, "bob creates from alice's digest", errA, a.Image.Digest, errB, "sha256:"+strings.Repeat("e", 64))

	// Everything bob asks about alice's image is what he gets for nothing.
	missing := map[string]string{"app:1": "", a.Image.Digest: "sha256:" + strings.Repeat("e", 64), a.Image.Digest[:15]: "sha256:eeeeeeee"}
	for ref, none := range missing {
		if ref == "app:1" {
			continue // bob has his own app:1
		}
		for name, msg := range map[string]func(string) any{
			"inspect": func(r string) any { return &GetImage{Caller: bobC, Ref: r} },
			"rm":      func(r string) any { return &RemoveImage{Caller: bobC, Ref: r, Force: true} },
		} {
			_, e1 := images(t, h, msg(ref))
			_, e2 := images(t, h, msg(none))
			if !errors.Is(e1, ErrImageNotFound) {
				t.Errorf("bob %s %s: %v", name, ref, e1)
			}
			sameRefusal(t, "bob "+name+" "+ref, e1, ref, e2, none)
		}
	}
	if r, err := images(t, h, &GetImage{Caller: bobC, Ref: "app:1"}); err != nil || r.Image.Digest != b.Image.Digest {
		t.Fatalf("bob's app:1: %+v %v", r, err)
	}
	for _, tc := range []struct {
		who  Caller
		want []string
	}{
		{aliceC, []string{a.Image.Digest, p.Image.Digest}},
		{bobC, []string{b.Image.Digest, p.Image.Digest}},
		{admin, []string{a.Image.Digest, b.Image.Digest, p.Image.Digest}},
	} {
		r, err := images(t, h, &ListImages{Caller: tc.who})
		var got []string
		for _, img := range r.Images {
			got = append(got, img.Digest)
		}
		slices.Sort(got)
		slices.Sort(tc.want)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("uid %d lists %v (%v), want %v", tc.who.UID, got, err, tc.want)
		}
	}
	// used_by: the caller's own VMs only.
	for _, tc := range []struct {
		who  Caller
		want []string
	}{{aliceC, []string{"a2"}}, {bobC, []string{"b1"}}, {admin, []string{"a2", "b1"}}} {
		got, err := h.sys.ImageUsers(context.Background(), tc.who, p.Image.Digest)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("uid %d: base:1 used by %v (%v), want %v", tc.who.UID, got, err, tc.want)
		}
	}
	// Users cannot remove public images; their own in use: refused, naming
	// only their own VMs.
	if _, err := images(t, h, &RemoveImage{Caller: bobC, Ref: "base:1", Force: true}); !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("bob removes the public base:1: %v", err)
	}
	if _, err := images(t, h, &RemoveImage{Caller: aliceC, Ref: "app:1"}); !errors.Is(err, ErrImageInUse) || !containsStr(err.Error(), "a1") {
		t.Fatalf("alice removes app:1 in use: %v", err)
	}

	// The same content imported by bob is shared underneath; his removal
	// leaves alice's hold and the content alone.
	same, err := importAs(t, h, bobC, false, aliceImg, "copy:1")
	if err != nil || same.Image.Digest != a.Image.Digest || same.Cached || !slices.Equal(same.Image.Names, []string{"copy:1"}) || !slices.Equal(same.Image.Owners, []uint32{aliceC.UID, bobC.UID}) {
		t.Fatalf("bob imports alice's content: %+v %v", same, err)
	}
	again, err := importAs(t, h, bobC, false, aliceImg, "copy:2")
	if err != nil || !again.Cached {
		t.Fatalf("bob re-imports: %+v %v", again, err)
	}
	if r, err := images(t, h, &RemoveImage{Caller: bobC, Ref: "copy:1"}); err != nil || len(r.Removed) != 1 {
		t.Fatalf("bob removes copy:1: %+v %v", r, err)
	}
	if r, err := images(t, h, &GetImage{Caller: aliceC, Ref: "app:1"}); err != nil || r.Image.Digest != a.Image.Digest {
		t.Fatalf("alice's app:1 after bob's removal: %+v %v", r, err)
	}
	if _, err := images(t, h, &GetImage{Caller: bobC, Ref: "copy:2"}); !errors.Is(err, ErrImageNotFound) {
		t.Fatalf("bob's names of a removed hold: %v", err)
	}
	// bob's own image goes entirely when he removes it; prune takes what
	// none of the caller's VMs uses.
	if _, err := images(t, h, &RemoveImage{Caller: bobC, Ref: "app:1"}); err != nil {
		t.Fatal(err)
	}
	if img, _ := store.Get(b.Image.Digest); img != nil {
		t.Fatalf("bob's removed image is still stored")
	}
	if r, err := images(t, h, &PruneImages{Caller: aliceC}); err != nil || len(r.Removed) != 0 {
		t.Fatalf("alice's prune (her image is in use): %+v %v", r, err)
	}
	// An admin unpublishes; the content stays while VMs use it.
	if _, err := images(t, h, &RemoveImage{Caller: admin, Ref: "base:1", Public: true}); !errors.Is(err, ErrImageInUse) {
		t.Fatalf("admin unpublishes base:1 in use: %v", err)
	}
	if _, err := images(t, h, &RemoveImage{Caller: bobC, Ref: "base:1", Public: true}); !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("bob unpublishes: %v", err)
	}
}

// A removal waits for the Manager's answer about which VMs use the image
// off the Import actor's mailbox: lookups keep being answered meanwhile,
// and the removal is decided by that answer.
func TestRemovalWaitsOffTheMailbox(t *testing.T) {
	dir := t.TempDir()
	imagetest.Seed(t, dir, "alpine")
	store, err := imaging.OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan []ImageUser)
	users := func() ([]ImageUser, error) { return <-release, nil }
	sys := actor.NewActorSystem()
	t.Cleanup(sys.Shutdown)
	pid := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor {
		return newImportActor(slog.New(slog.DiscardHandler), &imaging.Importer{Store: store}, users, nil)
	}))
	ask := func(msg any) (*ImageResult, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return request[*ImageResult](ctx, sys.Root, pid, msg)
	}
	type answer struct {
		r   *ImageResult
		err error
	}
	done := make(chan answer, 1)
	go func() {
		r, err := ask(&RemoveImage{Caller: admin, Ref: "alpine"})
		done <- answer{r, err}
	}()
	// The removal is waiting on users; the actor still answers.
	for i := 0; i < 3; i++ {
		if r, err := ask(&GetImage{Caller: admin, Ref: "alpine"}); err != nil || r.Image == nil {
			t.Fatalf("lookup while a removal waits: %+v %v", r, err)
		}
	}
	img, _ := store.Resolve(imaging.Viewer{Admin: true}, "alpine")
	release <- []ImageUser{{ID: "x", Name: "web", Owner: 0, Digest: img.Digest}}
	if a := <-done; !errors.Is(a.err, ErrImageInUse) || !containsStr(a.err.Error(), "web") {
		t.Fatalf("removal of an image a VM uses: %+v %v", a.r, a.err)
	}
}
