package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/vishvananda/netns"

	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/imaging/imagetest"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// imgUsers is a daemon running as its own unprivileged uid inside a network
// namespace the test made, and two unprivileged users of it.
type imgUsers struct {
	e          *env
	p          *proc
	ns         string
	alice, bob *syscall.Credential
	files      string // where the users' own files live
}

// newImgUsers starts the daemon; seed, when set, runs on the state
// directory first (as an older paddock would have left it).
func newImgUsers(t *testing.T, seed func(state string)) *imgUsers {
	t.Helper()
	testenv.RequireRoot(t, "runs the daemon and clients as other uids")
	setpriv := testenv.RequireTool(t, "setpriv", "util-linux")
	testenv.RequireTool(t, "debugfs", "e2fsprogs")
	ns := newNetns(t)
	e := newEnv(t, fmt.Sprintf("[api]\nsocket_group = \"%d\"\n", socketGID))
	for _, d := range []string{"run", "cache"} {
		if err := os.MkdirAll(filepath.Join(e.dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if seed != nil {
		seed(e.state)
	}
	chownTree(t, e.dir, daemonUID, daemonUID)
	nsenter := testenv.RequireTool(t, "nsenter", "util-linux")
	p := e.daemon(t, func(c *exec.Cmd) {
		c.Path = nsenter // nsenter and setpriv exec in place: the pid is paddockd's
		c.Args = []string{nsenter, "--net=/run/netns/" + ns, "--", setpriv, fmt.Sprintf("--reuid=%d", daemonUID), fmt.Sprintf("--regid=%d", daemonUID),
			fmt.Sprintf("--groups=%d", socketGID), "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
			bin("paddockd"), "--config", e.cfg}
		c.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent"}
	})
	files := filepath.Join(e.dir, "files")
	if err := os.Mkdir(files, 0o755); err != nil {
		t.Fatal(err)
	}
	as := func(uid int) *syscall.Credential {
		return &syscall.Credential{Uid: uint32(uid), Gid: socketGID, Groups: []uint32{}}
	}
	return &imgUsers{e: e, p: p, ns: ns, alice: as(aliceUID), bob: as(bobUID), files: files}
}

// file writes a file only uid may read, for that user to import.
func (u *imgUsers) file(t *testing.T, uid int, name string, body []byte) string {
	t.Helper()
	p := filepath.Join(u.files, name)
	if err := os.WriteFile(p, body, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, uid, socketGID); err != nil {
		t.Fatal(err)
	}
	return p
}

// cpu is the daemon's CPU time so far, in seconds.
func (u *imgUsers) cpu(t *testing.T) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", u.p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100
}

// serveIn serves h on 127.0.0.1 inside the namespace ns, where the daemon
// runs: the listening socket is made on a thread that has entered ns.
func serveIn(t *testing.T, ns string, h http.Handler) string {
	t.Helper()
	var ln net.Listener
	var lerr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // this thread ends in ns: never unlocked, so it dies with the goroutine
		nh, err := netns.GetFromName(ns)
		if err != nil {
			lerr = err
			return
		}
		defer nh.Close()
		if err := netns.Set(nh); err != nil {
			lerr = err
			return
		}
		ln, lerr = net.Listen("tcp", "127.0.0.1:0")
	}()
	<-done
	if lerr != nil {
		t.Fatalf("listen in %s: %v", ns, lerr)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return ln.Addr().String()
}

func gzipped(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func osReleaseLayer(t *testing.T, name string) []byte {
	return imagetest.LayerTar(t, imagetest.Entry{Name: "etc/", Type: tar.TypeDir}, imagetest.Entry{Name: "etc/os-release", Body: "NAME=" + name + "\n"})
}

// rootfsOf is the stored base of digest.
func rootfsOf(state, digest string) string {
	return filepath.Join(state, "images", strings.Replace(digest, ":", "-", 1), "rootfs.ext4")
}

// Finding 1 of issue 10: image content was trusted by its claimed digest.
// alice imports a copy of a public image's config with her own layer, named
// as that image; bob's later pull of the real image would have booted her
// root filesystem. Now her import is refused, naming the layer, and bob
// gets the registry's content. An entry an older paddock stored that way
// is rebuilt from verified layers by the next pull.
func TestTwoUsersSquattedImageRefused(t *testing.T) {
	realLayer, evilLayer := osReleaseLayer(t, "real"), osReleaseLayer(t, "squatter")
	real := imagetest.Parts{Config: imagetest.ConfigFor("WHO=real", realLayer), Layers: [][]byte{gzipped(t, realLayer)}}
	digest := imagetest.Digest(real.Config)
	// Another release of the image, squatted before this paddock: the store
	// holds alice's layer under its real digest, unverified.
	oldRealLayer := osReleaseLayer(t, "real-11")
	old := imagetest.Parts{Config: imagetest.ConfigFor("WHO=real-11", oldRealLayer), Layers: [][]byte{gzipped(t, oldRealLayer)}}
	oldDigest := imagetest.Digest(old.Config)
	u := newImgUsers(t, func(state string) {
		seedUnverified(t, state, oldDigest, "squatter", aliceUID)
	})
	mux := http.NewServeMux()
	mux.Handle("/v2/distro/", real.Handler("distro", "12"))
	mux.Handle("/v2/distro11/", old.Handler("distro11", "11"))
	mux.HandleFunc("/v2/", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	reg := serveIn(t, u.ns, mux)
	ref := reg + "/distro:12"

	// The attack, by two routes: a docker archive and an OCI layout.
	squat := imagetest.Parts{Config: real.Config, Layers: [][]byte{evilLayer}}
	archive := u.file(t, aliceUID, "squat.tar", squat.DockerArchive(t, ref, nil))
	lay := filepath.Join(u.files, "squat-layout")
	imagetest.Parts{Config: real.Config, Layers: [][]byte{gzipped(t, evilLayer)}}.WriteLayout(t, lay, "12")
	chownTree(t, lay, aliceUID, socketGID)
	for _, args := range [][]string{{"image", "import", archive}, {"image", "import", lay + ":12", "--name", reg + "/distro"}} {
		r := u.e.cli(t, u.alice, args...)
		if r.code != 1 || !strings.Contains(r.stderr, "layer 1 of 1") || !strings.Contains(r.stderr, "diff id "+imagetest.Digest(realLayer)) {
			t.Fatalf("alice %v: want refused naming the layer and its diff id, got %+v", args, r)
		}
		t.Logf("alice %s: refused: %s", args[2], strings.TrimSpace(r.stderr))
	}
	if _, err := os.Stat(filepath.Dir(rootfsOf(u.e.state, digest))); !os.IsNotExist(err) {
		t.Fatalf("alice's import left an entry under the real digest: %v", err)
	}

	// bob pulls the real image and gets the registry's content.
	for _, tc := range []struct{ ref, digest, want string }{
		{ref, digest, "NAME=real"},
		{reg + "/distro11:11", oldDigest, "NAME=real-11"}, // rebuilt over the squatted entry
	} {
		var out api.ImportOut
		if err := json.Unmarshal([]byte(u.e.cli(t, u.bob, "image", "pull", tc.ref, "--json").ok(t, "bob pull "+tc.ref)), &out); err != nil {
			t.Fatal(err)
		}
		if out.Cached || out.Image == nil || out.Image.Digest != tc.digest {
			t.Fatalf("bob pull %s: %+v, want a fresh import of %s", tc.ref, out, tc.digest)
		}
		if got := debugfs(t, rootfsOf(u.e.state, tc.digest), "cat /etc/os-release"); !strings.Contains(got, tc.want+"\n") {
			t.Fatalf("bob's %s boots %q, want %q", tc.ref, got, tc.want)
		}
		var stored imaging.Image
		b, _ := os.ReadFile(filepath.Join(filepath.Dir(rootfsOf(u.e.state, tc.digest)), "image.json"))
		if err := json.Unmarshal(b, &stored); err != nil || !stored.Verified {
			t.Fatalf("stored %s: %s %v, want verified", tc.ref, b, err)
		}
	}
	// Once the real image is stored (verified), alice's copy is answered
	// from the store: her layer is never read, and the base stays bob's.
	if out := u.e.cli(t, u.alice, "image", "import", archive).ok(t, "alice again"); !strings.Contains(out, digest[7:19]) {
		t.Logf("alice again: %s", out)
	}
	if got := debugfs(t, rootfsOf(u.e.state, digest), "cat /etc/os-release"); !strings.Contains(got, "NAME=real\n") {
		t.Fatalf("after alice's second import the image boots %q", got)
	}
}

// seedUnverified stores a base holding os-release NAME=name under digest,
// without the verified mark, as paddock stored images before it checked
// content.
func seedUnverified(t *testing.T, state, digest, name string, owner uint32) {
	t.Helper()
	store, err := imaging.OpenStore(state)
	if err != nil {
		t.Fatal(err)
	}
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc", "os-release"), []byte("NAME="+name+"\n"), 0o644)
	dir := store.Dir(digest)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", tree, filepath.Join(dir, "rootfs.ext4"), "8M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	if err := store.Add(&imaging.Image{Digest: digest, RootFS: "rootfs.ext4"}); err != nil {
		t.Fatal(err)
	}
	if err := store.Hold(imaging.UserNamespace(owner), digest, []string{"distro11:11"}); err != nil {
		t.Fatal(err)
	}
}

// zstdOf compresses n bytes of head followed by chunk repeated, returning
// the blob and the sha256 of what it decompresses to.
func zstdOf(t *testing.T, head, chunk []byte, n int64) ([]byte, string) {
	t.Helper()
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	w := func(b []byte) { zw.Write(b); h.Write(b) }
	w(head)
	for left := n - int64(len(head)); left > 0; left -= int64(len(chunk)) {
		w(chunk[:min(int64(len(chunk)), left)])
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func tarHeader(t *testing.T, name string, size int64) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := tar.NewWriter(&b).WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes() // a PAX header first when the size needs one
}

// Finding 4 of issue 10: decompression bombs got past max_unpacked_size.
// Each bomb is refused, naming the layer or entry, after reading a little;
// the log has the daemon's CPU seconds and the bytes for each. The blob
// cache keeps nothing unverified, and an import whose client hangs up stops.
func TestTwoUsersImageBombs(t *testing.T) {
	u := newImgUsers(t, nil)
	zeros := make([]byte, 1<<20)
	small := imagetest.LayerTar(t, imagetest.Entry{Name: "a", Body: "a"})
	small = small[:len(small)-1024] // its end-of-archive marker: zeros follow anyway

	// A rootfs tar: 4 GiB of zeros, zstd (a tar whose end-of-archive marker
	// is followed by gigabytes).
	zeroBomb, _ := zstdOf(t, small, zeros, 4<<30)
	// A rootfs tar naming one 32 GiB file, over max_unpacked_size (16 GiB).
	fileBomb, _ := zstdOf(t, tarHeader(t, "huge", 32<<30), zeros, 64<<20)
	// A sparse file of almost 16 TiB: a tar, then holes.
	sparse := u.file(t, aliceUID, "sparse.tar", imagetest.LayerTar(t, imagetest.Entry{Name: "a", Body: "a"}))
	if err := os.Truncate(sparse, 16<<40-1<<20); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path string
		unpacked   int64
		want       []string
	}{
		{"zstd bomb", u.file(t, aliceUID, "zeros.tar.zst", zeroBomb), 4 << 30, []string{"layer 1 of 1", "follow the end of the tar archive"}},
		{"one huge file", u.file(t, aliceUID, "huge.tar.zst", fileBomb), 32 << 30, []string{"layer 1 of 1", `entry "huge"`, "max_unpacked_size"}},
		{"sparse file", sparse, 16<<40 - 1<<20, []string{"layer 1 of 1", "follow the end of the tar archive"}},
	} {
		fi, _ := os.Stat(tc.path)
		cpu0, t0 := u.cpu(t), time.Now()
		r := u.e.cli(t, u.alice, "image", "import", tc.path, "--name", "bomb:1")
		wall, cpu := time.Since(t0), u.cpu(t)-cpu0
		if r.code != 1 {
			t.Fatalf("%s: %+v", tc.name, r)
		}
		for _, w := range tc.want {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("%s: %q does not name %q", tc.name, r.stderr, w)
			}
		}
		t.Logf("%s: %d-byte file reading as %d bytes: refused in %v, daemon CPU %.2f s: %s",
			tc.name, fi.Size(), tc.unpacked, wall.Round(time.Millisecond), cpu, strings.TrimSpace(r.stderr))
	}

	// From a registry, honest about its digests: a 512 MiB tail of zeros
	// after the tar's end. It is refused, and the blob cache keeps nothing.
	tailBomb, tailDiff := zstdOf(t, small, zeros, 512<<20)
	cfg := strings.Replace(string(imagetest.ConfigFor("X=1", nil)), imagetest.Digest(nil), tailDiff, 1)
	parts := imagetest.Parts{Config: []byte(cfg), Layers: [][]byte{tailBomb}}
	reg := serveIn(t, u.ns, parts.Handler("tail", "1"))
	cpu0, t0 := u.cpu(t), time.Now()
	r := u.e.cli(t, u.bob, "image", "pull", reg+"/tail:1")
	if r.code != 1 || !strings.Contains(r.stderr, "follow the end of the tar archive") || !strings.Contains(r.stderr, "layer 1 of 1") {
		t.Fatalf("pull of a blob with a tail: %+v", r)
	}
	t.Logf("registry blob of %d bytes reading as %d: refused in %v, daemon CPU %.2f s", len(tailBomb), 512<<20,
		time.Since(t0).Round(time.Millisecond), u.cpu(t)-cpu0)
	blobs := filepath.Join(u.e.dir, "cache", "blobs")
	if ents, err := os.ReadDir(blobs); err != nil || len(ents) != 0 {
		t.Fatalf("blob cache after a refused blob: %v %v", ents, err)
	}

	// A client that hangs up: 4 GiB of 64 KiB files of zeros, within every
	// limit, so it would be imported to the end if nobody stopped it.
	var entry []byte
	entry = append(entry, tarHeader(t, "f", 64<<10)...)
	entry = append(entry, make([]byte, 64<<10)...)
	long, _ := zstdOf(t, nil, entry, 4<<30/int64(len(entry))*int64(len(entry)))
	longPath := u.file(t, aliceUID, "long.tar.zst", long)
	cmd := exec.Command(bin("paddock"), "--socket", u.e.socket, "image", "import", longPath, "--name", "long:1")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: u.alice}
	cpuStart := u.cpu(t)
	c := start(t, cmd)
	u.p.waitLog(t, "importing image", longPath)
	// Hang up once the daemon is well into it.
	for deadline := time.Now().Add(30 * time.Second); u.cpu(t)-cpuStart < 0.3; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the daemon did not start working on the import:\n%s", u.p.stderr.String())
		}
	}
	c.signal(t, syscall.SIGKILL)
	cpu0, t0 = u.cpu(t), time.Now()
	u.p.waitLog(t, "import canceled: no one waits for it")
	u.p.waitLog(t, "import failed", "context canceled")
	t.Logf("client hung up: the import of %d bytes (reading as 4 GiB) stopped %v later, daemon CPU %.2f s meanwhile",
		len(long), time.Since(t0).Round(time.Millisecond), u.cpu(t)-cpu0)
	if strings.Contains(u.p.stderr.String(), "long:1") {
		t.Fatalf("the abandoned import was stored:\n%s", u.p.stderr.String())
	}
	for _, d := range []string{filepath.Join(u.e.dir, "cache", "scratch"), blobs} {
		if ents, _ := os.ReadDir(d); len(ents) != 0 {
			t.Errorf("%s left: %v", d, ents)
		}
	}
	var imgs []api.Image
	if err := json.Unmarshal([]byte(u.e.cli(t, u.alice, "image", "ls", "--json").ok(t, "image ls")), &imgs); err != nil {
		t.Fatal(err)
	}
	for _, img := range imgs {
		for _, n := range img.Names {
			if strings.HasPrefix(n, "bomb:") || strings.HasPrefix(n, "long:") || strings.Contains(n, "/tail:") {
				t.Fatalf("a bomb was stored: %+v", img)
			}
		}
	}
}
