package e2e

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/internal/testenv"
	"github.com/paddock-vm/paddock/state"
	"github.com/paddock-vm/paddock/varlink"
)

// Issue 10, findings 2 and 3: names are per user. Everything here runs
// against the real daemon as an unprivileged uid, with alice, bob and carol
// (an admin) as real uids.

// rawCallEnv makes the test binary a one-call varlink client: the
// dispatch-table test runs it as bob, so that SO_PEERCRED says bob.
const rawCallEnv = "PADDOCK_E2E_RAWCALL"

func init() {
	if req := os.Getenv(rawCallEnv); req != "" {
		os.Exit(rawCall(req))
	}
}

type rawRequest struct {
	Socket string          `json:"socket"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	FDs    int             `json:"fds"`  // /dev/null descriptors passed along
	More   bool            `json:"more"` // a streaming call
}

type rawResult struct {
	Error      string            `json:"error,omitempty"`
	Parameters json.RawMessage   `json:"parameters,omitempty"`
	Replies    []json.RawMessage `json:"replies,omitempty"`
}

func (r rawResult) String() string { b, _ := json.Marshal(r); return string(b) }

func rawCall(spec string) int {
	var req rawRequest
	if err := json.Unmarshal([]byte(spec), &req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := varlink.Dial(ctx, req.Socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer c.Close()
	var files []*os.File
	for i := 0; i < req.FDs; i++ {
		f, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		files = append(files, f)
	}
	var out rawResult
	if req.More {
		err = c.StreamFDs(ctx, req.Method, req.Params, files, func(p json.RawMessage) error {
			out.Replies = append(out.Replies, p)
			return nil
		})
	} else {
		var r json.RawMessage
		err = c.CallFDs(ctx, req.Method, req.Params, &r, files)
		out.Replies = append(out.Replies, r)
	}
	var ve *varlink.Error
	if errors.As(err, &ve) {
		out.Error, out.Parameters, out.Replies = ve.Name, ve.Parameters, nil
	} else if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return 2
	}
	return 0
}

var callerBin struct {
	once sync.Once
	path string
	err  error
}

// callAs makes one raw varlink call as cred through a copy of this test
// binary that cred may run.
func (e *env) callAs(t *testing.T, cred *syscall.Credential, method string, params any, fds int, more bool) rawResult {
	t.Helper()
	callerBin.once.Do(func() {
		self, err := os.Executable()
		if err != nil {
			callerBin.err = err
			return
		}
		callerBin.path = bin("e2e-rawcall")
		callerBin.err = copyFile(self, callerBin.path, 0o755)
	})
	if callerBin.err != nil {
		t.Fatal(callerBin.err)
	}
	p, err := json.Marshal(params)
	if err != nil {
		t.Fatal(err)
	}
	spec, _ := json.Marshal(rawRequest{Socket: e.socket, Method: api.Interface + "." + method, Params: p, FDs: fds, More: more})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, callerBin.path)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent", rawCallEnv + "=" + string(spec)}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s as uid %d: %v\n%s", method, cred.Uid, err, stderr.String())
	}
	var r rawResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("%s as uid %d: %v: %s", method, cred.Uid, err, out)
	}
	return r
}

func copyFile(from, to string, mode os.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(to, mode)
}

// userFiles is a directory every test user may read, holding a rootfs tar
// and an image config that alice (or bob) imports.
func userFiles(t *testing.T, owner int, secret string) (tarPath, cfgPath string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "pdk-names-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tarPath, cfgPath = filepath.Join(dir, "root.tar"), filepath.Join(dir, "config.json")
	if err := os.WriteFile(tarPath, imagetest.LayerTar(t, imagetest.Entry{Name: "./", Type: tar.TypeDir},
		imagetest.Entry{Name: "./etc/", Type: tar.TypeDir}, imagetest.Entry{Name: "./etc/owner", Body: secret}), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _ := json.Marshal(map[string]any{"Env": []string{"SECRET=" + secret}, "Cmd": []string{"/bin/sh"}})
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{tarPath, cfgPath} {
		if err := os.Chown(p, owner, socketGID); err != nil {
			t.Fatal(err)
		}
	}
	return tarPath, cfgPath
}

func importOut(t *testing.T, r result, what string) api.ImportOut {
	t.Helper()
	var out api.ImportOut
	if err := json.Unmarshal([]byte(r.ok(t, what)), &out); err != nil || out.Image == nil {
		t.Fatalf("%s: %v %s", what, err, r.stdout)
	}
	return out
}

// sameError checks that two CLI refusals are the same once each names its
// own reference: nobody learns from one whether the other thing exists.
func sameError(t *testing.T, what string, a result, refA string, b result, refB string) {
	t.Helper()
	if a.code == 0 || b.code == 0 {
		t.Fatalf("%s: want two refusals, got exit %d (%s) and %d (%s)", what, a.code, a.stdout, b.code, b.stdout)
	}
	if ea, eb := strings.ReplaceAll(a.stderr, refA, "REF"), strings.ReplaceAll(b.stderr, refB, "REF"); ea != eb || a.code != b.code {
		t.Errorf("%s: the refusals differ:\n%q\n%q", what, ea, eb)
	}
}

// A name that looks like nothing anyone has, in each form a reference takes.
var (
	missingDigest = "sha256:" + strings.Repeat("e", 64)
	missingID     = strings.Repeat("e", state.IDLen)
)

// legacyImage plants a record as paddockd stored it before names were per
// user (schema 1: names and owners in image.json), owned by uid.
func legacyImage(t *testing.T, stateDir, name string, uid uint32) string {
	t.Helper()
	img := imagetest.Seed(t, stateDir, name)
	dir := filepath.Join(stateDir, "images", strings.Replace(img.Digest, ":", "-", 1))
	rec := map[string]any{"schema": 1, "digest": img.Digest, "names": []string{name + ":latest"}, "size": img.Size,
		"created": img.Created, "rootfs": img.RootFS, "owners": []uint32{uid}}
	b, _ := json.Marshal(rec)
	if err := os.WriteFile(filepath.Join(dir, "image.json"), b, 0o640); err != nil {
		t.Fatal(err)
	}
	// The seed published the name the new way: an old store had no such file.
	if err := os.Remove(filepath.Join(stateDir, "images", "names.json")); err != nil {
		t.Fatal(err)
	}
	return img.Digest
}

// Finding 2: alice and bob each import app:1 with other content; each gets
// their own. bob can neither see nor touch alice's image: inspect, rm and
// create refuse it exactly as they refuse what does not exist, his image
// ls does not show it, and no config (her secret) reaches him. Content is
// shared underneath; only admins publish names everyone sees. Images from
// before stay their owners'.
func TestTwoUsersImageNames(t *testing.T) {
	testenv.RequireRoot(t, "runs the daemon and clients as other uids")
	testenv.RequireTool(t, "debugfs", "e2fsprogs")
	e := newEnv(t, fmt.Sprintf("[api]\nsocket_group = \"%d\"\nadmin_group = \"%d\"\n", socketGID, adminGID))
	oldDigest := legacyImage(t, e.state, "old-alice", aliceUID)
	imagetest.Seed(t, e.state, "alpine") // published, as before
	unprivilegedDaemon(t, e)

	aliceTar, aliceCfg := userFiles(t, aliceUID, "alice-secret")
	bobTar, bobCfg := userFiles(t, bobUID, "bob-secret")
	a := importOut(t, e.runAs(t, alice, nil, "image", "import", aliceTar, "--name", "app:1", "--config", aliceCfg, "--json"), "alice imports app:1")
	b := importOut(t, e.runAs(t, bob, nil, "image", "import", bobTar, "--name", "app:1", "--config", bobCfg, "--json"), "bob imports app:1")
	if a.Image.Digest == b.Image.Digest || !slices.Equal(a.Image.Names, []string{"app:1"}) || !slices.Equal(b.Image.Names, []string{"app:1"}) {
		t.Fatalf("alice's %+v and bob's %+v", a.Image, b.Image)
	}
	if !slices.Equal(b.Image.Owners, []uint32{bobUID}) {
		t.Fatalf("bob sees owners %v", b.Image.Owners)
	}
	// alice's VM from app:1 is made from alice's image, not the last import.
	var vm api.VM
	if err := json.Unmarshal([]byte(e.runAs(t, alice, nil, "create", "a1", "--image", "app:1", "--pull", "never", "--json").ok(t, "alice creates a1")), &vm); err != nil {
		t.Fatal(err)
	}
	if vm.Spec.ImageDigest != a.Image.Digest {
		t.Fatalf("alice's VM from app:1 got %s, want her %s (bob's is %s)", vm.Spec.ImageDigest, a.Image.Digest, b.Image.Digest)
	}
	e.runAs(t, bob, nil, "create", "b1", "--image", "app:1", "--pull", "never").ok(t, "bob creates b1")

	// bob on alice's image, by digest, digest prefix and her names, is
	// refused exactly like a reference to nothing.
	for _, args := range [][]string{{"image", "inspect"}, {"image", "rm", "--force"}, {"create", "b2", "--pull", "never", "--image"}} {
		for _, refs := range [][2]string{{a.Image.Digest, missingDigest}, {a.Image.Digest[:19], missingDigest[:19]}, {"old-alice", "old-nobody"}} {
			theirs := e.runAs(t, bob, nil, append(slices.Clone(args), refs[0])...)
			none := e.runAs(t, bob, nil, append(slices.Clone(args), refs[1])...)
			sameError(t, fmt.Sprintf("bob %v %s", args, refs[0]), theirs, refs[0], none, refs[1])
			if strings.Contains(theirs.stderr, "alice-secret") || strings.Contains(theirs.stderr, fmt.Sprint(aliceUID)) {
				t.Errorf("bob's refusal tells of alice: %s", theirs.stderr)
			}
		}
	}
	// bob's image ls: his and the public ones; no trace of alice's.
	lsOut := e.runAs(t, bob, nil, "image", "ls", "--json").ok(t, "bob's image ls")
	var imgs []api.Image
	if err := json.Unmarshal([]byte(lsOut), &imgs); err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, im := range imgs {
		seen = append(seen, strings.Join(im.Names, ","))
	}
	slices.Sort(seen)
	if !slices.Equal(seen, []string{"alpine:latest", "app:1"}) {
		t.Fatalf("bob lists %v", seen)
	}
	for _, leak := range []string{a.Image.Digest, oldDigest, "alice-secret", "old-alice", fmt.Sprint(aliceUID)} {
		if human := e.runAs(t, bob, nil, "image", "ls").ok(t, "image ls"); strings.Contains(lsOut+human, leak) {
			t.Errorf("bob's image ls shows %q:\n%s\n%s", leak, lsOut, human)
		}
	}
	// Each one's inspect: their own config, their own VMs.
	var insp api.InspectImageOut
	if err := json.Unmarshal([]byte(e.runAs(t, bob, nil, "image", "inspect", "app:1").ok(t, "bob inspects app:1")), &insp); err != nil {
		t.Fatal(err)
	}
	if insp.Image.Digest != b.Image.Digest || !strings.Contains(string(insp.Config), "bob-secret") || !slices.Equal(insp.UsedBy, []string{"b1"}) {
		t.Fatalf("bob's app:1: %+v %s used by %v", insp.Image, insp.Config, insp.UsedBy)
	}
	// Migration: alice's image from before is hers.
	if err := json.Unmarshal([]byte(e.runAs(t, alice, nil, "image", "inspect", "old-alice").ok(t, "alice inspects her old image")), &insp); err != nil || insp.Image.Digest != oldDigest {
		t.Fatalf("alice's old image: %+v %v", insp.Image, err)
	}

	// bob imports the very content alice has: it is shared underneath, but
	// he sees only his name and his uid, and his removal leaves hers.
	cp := func(src string) string {
		dst := filepath.Join(filepath.Dir(bobTar), "same-"+filepath.Base(src))
		if err := copyFile(src, dst, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dst, bobUID, socketGID); err != nil {
			t.Fatal(err)
		}
		return dst
	}
	same := importOut(t, e.runAs(t, bob, nil, "image", "import", cp(aliceTar), "--name", "mine:2", "--config", cp(aliceCfg), "--json"), "bob imports alice's content")
	if same.Image.Digest != a.Image.Digest || same.Cached || !slices.Equal(same.Image.Names, []string{"mine:2"}) || !slices.Equal(same.Image.Owners, []uint32{bobUID}) {
		t.Fatalf("bob's copy: %+v cached %v", same.Image, same.Cached)
	}
	e.runAs(t, bob, nil, "image", "rm", "mine:2").ok(t, "bob removes his copy")
	if err := json.Unmarshal([]byte(e.runAs(t, alice, nil, "image", "inspect", "app:1").ok(t, "alice inspects app:1")), &insp); err != nil ||
		insp.Image.Digest != a.Image.Digest || !slices.Equal(insp.UsedBy, []string{"a1"}) || !slices.Equal(insp.Image.Owners, []uint32{aliceUID}) {
		t.Fatalf("alice's app:1 after bob's removal: %+v used by %v (%v)", insp.Image, insp.UsedBy, err)
	}
	// bob cannot publish; carol (admin) can, and bob resolves her name
	// after his own.
	pubTar, pubCfg := userFiles(t, carolUID, "public-base")
	refused(t, "bob publishes", e.runAs(t, bob, nil, "image", "import", bobTar, "--name", "base:1", "--config", bobCfg, "--public"), "PermissionDenied", "admin")
	pub := importOut(t, e.runAs(t, carol, nil, "image", "import", pubTar, "--name", "base:1", "--config", pubCfg, "--public", "--json"), "carol publishes base:1")
	if !slices.Equal(pub.Image.Public, []string{"base:1"}) {
		t.Fatalf("carol's public import: %+v", pub.Image)
	}
	if err := json.Unmarshal([]byte(e.runAs(t, bob, nil, "image", "inspect", "base:1").ok(t, "bob inspects base:1")), &insp); err != nil || insp.Image.Digest != pub.Image.Digest {
		t.Fatalf("bob's base:1: %+v %v", insp.Image, err)
	}
	refused(t, "bob removes the public base:1", e.runAs(t, bob, nil, "image", "rm", "base:1"), "PermissionDenied", "public")
	// bob's own base:1 shadows the public one, for him only.
	e.runAs(t, bob, nil, "image", "import", bobTar, "--name", "base:1", "--config", bobCfg).ok(t, "bob names his base:1")
	for _, tc := range []struct {
		cred *syscall.Credential
		want string
	}{{bob, b.Image.Digest}, {alice, pub.Image.Digest}} {
		if err := json.Unmarshal([]byte(e.runAs(t, tc.cred, nil, "image", "inspect", "base:1").ok(t, "inspect base:1")), &insp); err != nil || insp.Image.Digest != tc.want {
			t.Errorf("uid %d: base:1 is %s, want %s (%v)", tc.cred.Uid, insp.Image.Digest, tc.want, err)
		}
	}
	// The admin sees every image and every owner.
	var all []api.Image
	if err := json.Unmarshal([]byte(e.runAs(t, carol, nil, "image", "ls", "--json").ok(t, "carol's image ls")), &all); err != nil || len(all) != 5 {
		t.Fatalf("carol lists %d images (%v), want 5: %+v", len(all), err, all)
	}
}

// Finding 3: a VM name cannot have the shape of an id; ids resolve before
// names; names are per user; bob's calls on alice's VM, by name, id or id
// prefix, are refused exactly like calls on a VM that does not exist.
func TestTwoUsersVMNames(t *testing.T) {
	testenv.RequireRoot(t, "runs the daemon and clients as other uids")
	e := newEnv(t, fmt.Sprintf("[api]\nsocket_group = \"%d\"\nadmin_group = \"%d\"\n", socketGID, adminGID))
	unprivilegedDaemon(t, e)
	var vm api.VM
	if err := json.Unmarshal([]byte(e.runAs(t, alice, nil, "create", "web", "--image", "alpine", "--json").ok(t, "alice creates web")), &vm); err != nil {
		t.Fatal(err)
	}
	refused(t, "bob names a VM after alice's id", e.runAs(t, bob, nil, "create", vm.ID, "--image", "alpine"), "InvalidArgument", "shape of a VM id")
	refused(t, "bob names a VM like an id", e.runAs(t, bob, nil, "create", missingID, "--image", "alpine"), "InvalidArgument", "shape of a VM id")
	// bob's own "web" is his business: alice's tells him nothing.
	var bobs api.VM
	if err := json.Unmarshal([]byte(e.runAs(t, bob, nil, "create", "web", "--image", "alpine", "--json").ok(t, "bob creates his web")), &bobs); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"inspect"}, {"start"}, {"stop", "--force"}, {"rm", "--force"}, {"set", "--cpus", "2"}, {"logs"}, {"stats"}} {
		for _, refs := range [][2]string{{vm.ID, missingID}, {vm.ID[:10], missingID[:10]}} {
			cmd := func(ref string) []string {
				return append([]string{args[0], ref}, args[1:]...)
			}
			sameError(t, fmt.Sprintf("bob %v on alice's %s", args, refs[0]), e.runAs(t, bob, nil, cmd(refs[0])...), refs[0], e.runAs(t, bob, nil, cmd(refs[1])...), refs[1])
		}
	}
	for _, tc := range []struct {
		cred *syscall.Credential
		ref  string
		want string
	}{
		{alice, "web", vm.ID}, {bob, "web", bobs.ID}, {alice, vm.ID, vm.ID}, {nil, vm.ID, vm.ID}, {nil, bobs.ID[:12], bobs.ID},
	} {
		var got api.VM
		if err := json.Unmarshal([]byte(e.runAs(t, tc.cred, nil, "inspect", tc.ref, "--json").ok(t, "inspect "+tc.ref)), &got); err != nil || got.ID != tc.want {
			t.Errorf("inspect %s: %s (%v), want %s", tc.ref, got.ID, err, tc.want)
		}
	}
	// Two users' VMs share a name: an admin gives an id.
	refused(t, "root inspects a name two users have", e.runAs(t, nil, nil, "inspect", "web"), "InvalidArgument", vm.ID, bobs.ID)
	// alice's VM is as she left it.
	var after api.VM
	if err := json.Unmarshal([]byte(e.runAs(t, alice, nil, "inspect", "web", "--json").ok(t, "alice inspects web")), &after); err != nil || after.Status != "created" || after.Spec.CPUs != vm.Spec.CPUs {
		t.Fatalf("alice's VM after bob's calls: %+v %v", after, err)
	}
}

// dispatchCase is how bob calls one method on what is alice's and on what
// does not exist (pairs), or, for a method with no target, what his answer
// must not hold (scoped).
type dispatchCase struct {
	fds    int
	more   bool
	pairs  []callPair
	scoped any // the parameters of a call that names nothing
}

type callPair struct {
	theirs, none       any
	refTheirs, refNone string
}

// Ownership over the dispatch table: for every method the daemon serves,
// bob's call on alice's VM or image is refused exactly like his call on
// something that does not exist, and a call that names nothing answers him
// nothing of hers. A method without a case here fails the test.
func TestTwoUsersOwnershipOverDispatch(t *testing.T) {
	testenv.RequireRoot(t, "runs the daemon and clients as other uids")
	testenv.RequireTool(t, "debugfs", "e2fsprogs")
	e := newEnv(t, fmt.Sprintf("[api]\nsocket_group = \"%d\"\nadmin_group = \"%d\"\n", socketGID, adminGID))
	unprivilegedDaemon(t, e)
	var vm api.VM
	if err := json.Unmarshal([]byte(e.runAs(t, alice, nil, "create", "alice-vm", "--image", "alpine", "--json").ok(t, "alice creates")), &vm); err != nil {
		t.Fatal(err)
	}
	tarPath, cfgPath := userFiles(t, aliceUID, "alice-secret")
	img := importOut(t, e.runAs(t, alice, nil, "image", "import", tarPath, "--name", "alice-app:1", "--config", cfgPath, "--json"), "alice imports")
	e.runAs(t, alice, nil, "create", "alice-vm2", "--image", "alice-app:1").ok(t, "alice creates from her image")
	digest := img.Image.Digest
	var ws api.WorkspaceOut
	if r := e.callAs(t, alice, "CreateWorkspace", map[string]any{"name": "alice-ws", "size": 64 << 20}, 0, false); r.Error != "" || len(r.Replies) != 1 || json.Unmarshal(r.Replies[0], &ws) != nil || ws.Workspace.ID == "" {
		t.Fatalf("alice creates a workspace: %s", r)
	}
	secrets := []string{vm.ID, "alice-vm", digest, "alice-app", "alice-secret", fmt.Sprint(aliceUID), ws.Workspace.ID, "alice-ws"}

	vmPairs := func(params func(ref string) any) []callPair {
		var out []callPair
		for _, refs := range [][2]string{{"alice-vm", "nobody-vm"}, {vm.ID, missingID}, {vm.ID[:10], missingID[:10]}} {
			out = append(out, callPair{params(refs[0]), params(refs[1]), refs[0], refs[1]})
		}
		return out
	}
	imagePairs := func(params func(ref string) any) []callPair {
		var out []callPair
		for _, refs := range [][2]string{{"alice-app:1", "nobody-app:1"}, {digest, missingDigest}, {digest[:19], missingDigest[:19]}} {
			out = append(out, callPair{params(refs[0]), params(refs[1]), refs[0], refs[1]})
		}
		return out
	}
	wsPairs := func(params func(ref string) any) []callPair {
		var out []callPair
		for _, refs := range [][2]string{{"alice-ws", "nobody-ws"}, {ws.Workspace.ID, missingID}} {
			out = append(out, callPair{params(refs[0]), params(refs[1]), refs[0], refs[1]})
		}
		return out
	}
	one := func(theirs, none any, refTheirs, refNone string) []callPair {
		return []callPair{{theirs, none, refTheirs, refNone}}
	}
	cases := map[string]dispatchCase{
		"Create": {pairs: imagePairs(func(r string) any { return map[string]any{"name": "bob-new", "image": r} })},
		"Get":    {pairs: vmPairs(func(r string) any { return map[string]any{"vm": r} })},
		"List":   {scoped: map[string]any{}},
		"Set":    {pairs: vmPairs(func(r string) any { return map[string]any{"vm": r, "cpus": 2} })},
		"Start":  {pairs: vmPairs(func(r string) any { return map[string]any{"vm": r} })},
		"Stop":   {pairs: vmPairs(func(r string) any { return map[string]any{"vm": r, "force": true} })},
		"Delete": {pairs: vmPairs(func(r string) any { return map[string]any{"vm": r, "force": true} })},
		"Events": {more: true, pairs: vmPairs(func(r string) any { return map[string]any{"vm": r} })},
		// Publishing is for admins: refused whatever the name.
		"PullImage":    {pairs: one(map[string]any{"ref": "alice-app:1", "public": true}, map[string]any{"ref": "nobody-app:1", "public": true}, "alice-app:1", "nobody-app:1")},
		"ImportImage":  {fds: 1, pairs: one(map[string]any{"source": "x", "name": "alice-app:1", "public": true}, map[string]any{"source": "x", "name": "nobody-app:1", "public": true}, "alice-app:1", "nobody-app:1")},
		"ListImages":   {scoped: map[string]any{}},
		"InspectImage": {pairs: imagePairs(func(r string) any { return map[string]any{"image": r} })},
		"RemoveImage":  {pairs: append(imagePairs(func(r string) any { return map[string]any{"image": r, "force": true} }), imagePairs(func(r string) any { return map[string]any{"image": r, "public": true} })...)},
		"PruneImages":  {scoped: map[string]any{}},
		// Kernels are the admins': refused whatever the name.
		"ImportKernel": {fds: 2, pairs: one(map[string]any{"name": "default", "kernel": "k", "modules": "m"}, map[string]any{"name": "nosuch", "kernel": "k", "modules": "m"}, "default", "nosuch")},
		"ListKernels":  {scoped: map[string]any{}},
		"RemoveKernel": {pairs: one(map[string]any{"name": "default"}, map[string]any{"name": "nosuch"}, "default", "nosuch")},
		"Exec":         {fds: 3, pairs: vmPairs(func(r string) any { return map[string]any{"vm": r, "command": []string{"true"}} })},
		"Logs":         {pairs: vmPairs(func(r string) any { return map[string]any{"vm": r} })},
		"Console":      {fds: 2, pairs: vmPairs(func(r string) any { return map[string]any{"vm": r} })},
		"Stats":        {pairs: vmPairs(func(r string) any { return map[string]any{"vm": r} })},
		"Version":      {scoped: map[string]any{}},
		"Info":         {scoped: map[string]any{}},
		// Admins only: refused to bob, telling nothing.
		"HostShutdown": {scoped: map[string]any{}},
		// Workspace names are per user: bob's create makes his own.
		"CreateWorkspace":   {scoped: map[string]any{"name": "bob-ws", "size": 64 << 20}},
		"ListWorkspaces":    {scoped: map[string]any{}},
		"InspectWorkspace":  {pairs: wsPairs(func(r string) any { return map[string]any{"workspace": r} })},
		"RemoveWorkspace":   {pairs: wsPairs(func(r string) any { return map[string]any{"workspace": r} })},
		"ExportWorkspace":   {fds: 1, pairs: wsPairs(func(r string) any { return map[string]any{"workspace": r} })},
		"ImportWorkspace":   {fds: 1, pairs: wsPairs(func(r string) any { return map[string]any{"workspace": r, "source": "x"} })},
		"SnapshotWorkspace": {pairs: wsPairs(func(r string) any { return map[string]any{"workspace": r, "snapshot": "s"} })},
		"RestoreWorkspace":  {pairs: wsPairs(func(r string) any { return map[string]any{"workspace": r, "snapshot": "s"} })},
		"CloneWorkspace":    {pairs: wsPairs(func(r string) any { return map[string]any{"workspace": r, "name": "bob-clone"} })},
		"ResizeWorkspace":   {pairs: wsPairs(func(r string) any { return map[string]any{"workspace": r, "size": 128 << 20} })},
		"PullWorkspace":     {fds: 1, pairs: wsPairs(func(r string) any { return map[string]any{"workspace": r, "path": "x"} })},
		"PushWorkspace":     {fds: 1, pairs: wsPairs(func(r string) any { return map[string]any{"workspace": r, "path": "x", "name": "x"} })},
		// Template names are per user; this daemon runs no VMs, so alice
		// has none: bob's removal of a name of hers answers like a name
		// nobody has (TestTemplates covers templates that exist).
		"CreateTemplate": {scoped: map[string]any{"name": "bob-t", "image": "alpine"}},
		"ListTemplates":  {scoped: map[string]any{}},
		"RemoveTemplate": {pairs: one(map[string]any{"template": "alice-tmpl"}, map[string]any{"template": "nobody-tmpl"}, "alice-tmpl", "nobody-tmpl")},
		"CopyOut":        {fds: 1, pairs: vmPairs(func(r string) any { return map[string]any{"vm": r, "path": "/etc/hostname"} })},
		"CopyIn":         {fds: 1, pairs: vmPairs(func(r string) any { return map[string]any{"vm": r, "path": "/tmp", "name": "x"} })},
	}

	// The methods the running daemon serves, from its own description.
	c, err := varlink.Dial(context.Background(), e.socket)
	if err != nil {
		t.Fatal(err)
	}
	var desc struct {
		Description string `json:"description"`
	}
	err = c.Call(context.Background(), "org.varlink.service.GetInterfaceDescription", map[string]string{"interface": api.Interface}, &desc)
	c.Close()
	methods := varlink.Methods(desc.Description)
	if err != nil || len(methods) == 0 {
		t.Fatalf("the daemon's interface description: %v (%d methods)", err, len(methods))
	}
	for _, method := range methods {
		t.Run(method, func(t *testing.T) {
			tc, ok := cases[method]
			if !ok {
				t.Fatalf("method %s has no ownership case: say how another user's call on it is refused", method)
			}
			if tc.scoped != nil {
				r := e.callAs(t, bob, method, tc.scoped, tc.fds, tc.more)
				all, _ := json.Marshal(r)
				for _, s := range secrets {
					if strings.Contains(string(all), s) {
						t.Errorf("bob's %s answer tells of alice (%q): %s", method, s, all)
					}
				}
				return
			}
			for _, p := range tc.pairs {
				theirs := e.callAs(t, bob, method, p.theirs, tc.fds, tc.more)
				none := e.callAs(t, bob, method, p.none, tc.fds, tc.more)
				if theirs.Error == "" || none.Error == "" {
					t.Errorf("%s on %s / %s: %s / %s, want two refusals", method, p.refTheirs, p.refNone, theirs, none)
					continue
				}
				a := strings.ReplaceAll(string(theirs.Parameters), p.refTheirs, "REF")
				b := strings.ReplaceAll(string(none.Parameters), p.refNone, "REF")
				if theirs.Error != none.Error || a != b {
					t.Errorf("%s: bob on alice's %s gets %s %s; on nothing %s %s", method, p.refTheirs, theirs.Error, theirs.Parameters, none.Error, none.Parameters)
				}
			}
		})
	}
	// Nothing of alice's changed under bob's calls.
	var after api.VM
	if err := json.Unmarshal([]byte(e.runAs(t, alice, nil, "inspect", "alice-vm", "--json").ok(t, "alice inspects")), &after); err != nil || after.Status != "created" || after.Spec.CPUs != vm.Spec.CPUs {
		t.Fatalf("alice's VM: %+v %v", after, err)
	}
	var wsAfter api.WorkspaceOut
	if r := e.callAs(t, alice, "InspectWorkspace", map[string]any{"workspace": "alice-ws"}, 0, false); r.Error != "" || json.Unmarshal(r.Replies[0], &wsAfter) != nil || wsAfter.Workspace.ID != ws.Workspace.ID {
		t.Fatalf("alice's workspace after bob's calls: %s", r)
	}
	var insp api.InspectImageOut
	if err := json.Unmarshal([]byte(e.runAs(t, alice, nil, "image", "inspect", "alice-app:1").ok(t, "alice inspects her image")), &insp); err != nil || insp.Image.Digest != digest {
		t.Fatalf("alice's image: %+v %v", insp.Image, err)
	}
}

// Finding 3, with VMs that run: bob's VM carries alice's VM's id as its
// name (as an older paddockd let him name it; a new one refuses). Ids
// resolve first, and the Stats actor reaches VMs by id only: alice's stats
// are her guest's (her VM has 256 MiB, his 384 MiB), and her VM's auto-stop
// stops her VM, not his.
func TestTwoUsersStatsAndAutoStopByID(t *testing.T) {
	testenv.RequireRoot(t, "runs clients as other uids")
	e, p, ns, demo := bootEnv(t, fmt.Sprintf("[api]\nsocket_group = \"%d\"\nadmin_group = \"%d\"\n[vm]\nrun = \"on\"\nstart_timeout = \"90s\"\nstop_timeout = \"10s\"\n[stats]\ninterval = \"1s\"\nidle_cpu = 0.3\n", socketGID, adminGID), nil)
	e.bootKit(t)
	e.runAs(t, alice, nil, "run", "--image", demo, "--name", "victim", "--memory", "256MiB").ok(t, "alice runs victim")
	victim := inspectAs(t, e, alice, "victim")
	refused(t, "bob names a VM after alice's id", e.runAs(t, bob, nil, "create", victim.ID, "--image", demo), "InvalidArgument", "shape of a VM id")
	e.runAs(t, bob, nil, "run", "--image", demo, "--name", "squat", "--memory", "384MiB").ok(t, "bob runs squat")
	squat := inspectAs(t, e, bob, "squat")

	// What an older paddockd allowed: bob's VM named after alice's id. The
	// daemon restarts around the change; the VMs keep running.
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("daemon exit %d", code)
	}
	path := filepath.Join(e.state, "vms", squat.ID, "vm.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	rec["name"] = victim.ID
	if b, err = json.Marshal(rec); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	e.daemon(t, inNetns(ns))

	for _, tc := range []struct {
		cred *syscall.Credential
		want string
	}{{alice, victim.ID}, {nil, victim.ID}, {bob, squat.ID}} {
		if got := inspectAs(t, e, tc.cred, victim.ID); got.ID != tc.want || got.Status != "running" {
			t.Fatalf("inspect %s: %s %s, want %s running", victim.ID, got.ID, got.Status, tc.want)
		}
	}
	// alice's stats are her guest's: its memory is hers.
	deadline := time.Now().Add(90 * time.Second)
	for {
		var st []api.VMStats
		out := e.runAs(t, alice, nil, "stats", victim.ID, "--json").ok(t, "alice's stats")
		if err := json.Unmarshal([]byte(out), &st); err != nil || len(st) != 1 {
			t.Fatalf("stats --json: %v %s", err, out)
		}
		if st[0].VMID != victim.ID || st[0].VMName != "victim" {
			t.Fatalf("alice's stats are of %s %q", st[0].VMID, st[0].VMName)
		}
		if g := st[0].Guest; g != nil {
			if g.MemTotal <= 0 || g.MemTotal > 256<<20 {
				t.Fatalf("alice's stats report a guest with %d bytes of memory: not her 256 MiB VM", g.MemTotal)
			}
			t.Logf("alice's guest: %d MiB", g.MemTotal>>20)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no guest figures for alice's VM: %s", out)
		}
		time.Sleep(time.Second)
	}
	// alice's auto-stop stops alice's VM.
	e.runAs(t, alice, nil, "set", "victim", "--auto-stop", "5s").ok(t, "alice sets auto-stop")
	deadline = time.Now().Add(2 * time.Minute)
	for {
		v := inspectAs(t, e, alice, "victim")
		if v.Status == "stopped" {
			if !strings.Contains(v.Reason, "auto-stop") {
				t.Fatalf("alice's VM stopped for %q", v.Reason)
			}
			break
		}
		if s := inspectAs(t, e, bob, squat.ID); s.Status != "running" {
			t.Fatalf("alice's auto-stop reached bob's VM: %s %q", s.Status, s.Reason)
		}
		if time.Now().After(deadline) {
			t.Fatalf("alice's VM still %s", v.Status)
		}
		time.Sleep(time.Second)
	}
	if s := inspectAs(t, e, bob, squat.ID); s.Status != "running" {
		t.Fatalf("bob's VM after alice's auto-stop: %s %q", s.Status, s.Reason)
	}
	e.runAs(t, alice, nil, "rm", "--force", "victim").ok(t, "alice removes victim")
	e.runAs(t, bob, nil, "rm", "--force", squat.ID).ok(t, "bob removes his VM")
	if l := e.leaks(t, ns); l.taps+l.vmms+l.loops+l.dirs != 0 {
		t.Fatalf("left behind: %+v %v", l, l.detail)
	}
}
