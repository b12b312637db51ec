package source

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"slices"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/errdefs"
)

// Caps on what a layout's small files may hold: each is read whole into
// memory, so a sparse or endless file must be refused before any read.
const (
	maxLayoutMarker = 64 << 10 // oci-layout
	maxIndex        = 4 << 20  // index.json and nested index blobs
	maxManifest     = 4 << 20
	maxConfig       = 8 << 20
)

// ErrLayoutEntry classes a layout file that is refused: not a regular file,
// reached through a symbolic link, too large, unreadable by the caller, or
// not what its descriptor says.
var ErrLayoutEntry = errdefs.New(errdefs.ErrInvalidArgument, "bad OCI layout entry")

// Access decides whether the caller that passed a layout directory may
// read one of its files or directories (given its stat); nil lets paddockd
// read whatever lies beneath the directory.
type Access func(st *unix.Stat_t) error

// ReadableBy is the Access of a caller with uid and groups, by the mode
// bits the kernel would apply (owner class first, then group, then other).
// Directories need search permission, files read permission. ACLs are not
// consulted: a file readable only through an ACL is refused.
func ReadableBy(uid uint32, gids []uint32) Access {
	return func(st *unix.Stat_t) error {
		bit := uint32(0o4) // read
		what := "readable"
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			bit, what = 0o1, "searchable"
		}
		perm := st.Mode & 0o777
		var ok bool
		switch {
		case st.Uid == uid:
			ok = perm&(bit<<6) != 0
		case slices.Contains(gids, st.Gid):
			ok = perm&(bit<<3) != 0
		default:
			ok = perm&bit != 0
		}
		if !ok {
			return fmt.Errorf("not %s by uid %d (owner %d:%d, mode %04o)", what, uid, st.Uid, st.Gid, perm)
		}
		return nil
	}
}

// layoutDir reads an OCI layout beneath a directory descriptor: every open
// is an openat2 with RESOLVE_BENEATH and RESOLVE_NO_SYMLINKS, so nothing
// outside the directory the caller opened, and no symbolic link inside it,
// is ever followed; only regular files are read.
type layoutDir struct {
	name   string // the directory as the user named it, for messages
	top    int    // borrowed: the caller's descriptor
	access Access

	mu    sync.Mutex
	blobs int // blobs/sha256, owned; -1 until opened
}

func (d *layoutDir) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.blobs >= 0 {
		_ = unix.Close(d.blobs)
		d.blobs = -1
	}
}

func (d *layoutDir) entryErr(rel string, format string, args ...any) error {
	return fmt.Errorf("OCI layout %s: %s: %s: %w", d.name, rel, fmt.Sprintf(format, args...), ErrLayoutEntry)
}

// openAt opens rel beneath dirfd with the layout's rules; want is
// S_IFREG or S_IFDIR. shown names the entry in messages.
func (d *layoutDir) openAt(dirfd int, rel, shown string, want uint32) (int, *unix.Stat_t, error) {
	// Non-blocking: a FIFO opened for reading would wait for a writer.
	// The type is checked on the open descriptor, after.
	flags := uint64(unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NOFOLLOW | unix.O_NONBLOCK)
	how := unix.OpenHow{Flags: flags, Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
	var fd int
	var err error
	for {
		fd, err = unix.Openat2(dirfd, rel, &how)
		if err != unix.EINTR {
			break
		}
	}
	switch {
	case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV):
		return -1, nil, d.entryErr(shown, "a symbolic link, or a path that leaves the layout directory: refused")
	case errors.Is(err, unix.ENOENT):
		return -1, nil, fmt.Errorf("OCI layout %s: %s: %w", d.name, shown, errdefs.Wrap(errdefs.ErrNotFound, os.ErrNotExist))
	case errors.Is(err, unix.EACCES):
		return -1, nil, d.entryErr(shown, "paddockd may not read it (a layout's files are opened as paddockd's own user: make them readable, or import a tar of the layout)")
	case err != nil:
		return -1, nil, fmt.Errorf("OCI layout %s: %s: %w", d.name, shown, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		_ = unix.Close(fd)
		return -1, nil, fmt.Errorf("OCI layout %s: %s: %w", d.name, shown, err)
	}
	if st.Mode&unix.S_IFMT != want {
		_ = unix.Close(fd)
		return -1, nil, d.entryErr(shown, "%s, not %s", fileKind(st.Mode), fileKind(want))
	}
	if d.access != nil {
		if err := d.access(&st); err != nil {
			_ = unix.Close(fd)
			return -1, nil, d.entryErr(shown, "%v", err)
		}
	}
	return fd, &st, nil
}

func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFLNK:
		return "a symbolic link"
	}
	return fmt.Sprintf("a file of type %#o", mode&unix.S_IFMT)
}

// readSmall reads a whole small regular file, refusing one larger than
// limit before reading anything.
func (d *layoutDir) readSmall(dirfd int, rel, shown string, limit int64) ([]byte, error) {
	fd, st, err := d.openAt(dirfd, rel, shown, unix.S_IFREG)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), shown)
	defer f.Close()
	if st.Size > limit {
		return nil, d.entryErr(shown, "%d bytes, more than the %d a layout allows", st.Size, limit)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %s: %w", d.name, shown, err)
	}
	if int64(len(b)) > limit {
		return nil, d.entryErr(shown, "grew past the %d bytes a layout allows while read", limit)
	}
	return b, nil
}

// blobDir opens blobs/sha256 (each step checked) once.
func (d *layoutDir) blobDir() (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.blobs >= 0 {
		return d.blobs, nil
	}
	b, _, err := d.openAt(d.top, "blobs", "blobs", unix.S_IFDIR)
	if err != nil {
		return -1, err
	}
	defer unix.Close(b)
	s, _, err := d.openAt(b, "sha256", "blobs/sha256", unix.S_IFDIR)
	if err != nil {
		return -1, err
	}
	d.blobs = s
	return s, nil
}

func blobName(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }

// checkDigest refuses a digest a blob path cannot be made of.
func (d *layoutDir) checkDigest(h v1.Hash) error {
	if h.Algorithm != "sha256" || len(h.Hex) != 64 || strings.Trim(h.Hex, "0123456789abcdef") != "" {
		return d.entryErr(h.String(), "only sha256 blobs are read")
	}
	return nil
}

// openBlob opens the blob desc names and checks its size against desc.
func (d *layoutDir) openBlob(desc v1.Descriptor) (*os.File, error) {
	if err := d.checkDigest(desc.Digest); err != nil {
		return nil, err
	}
	dir, err := d.blobDir()
	if err != nil {
		return nil, err
	}
	shown := blobName(desc.Digest)
	fd, st, err := d.openAt(dir, desc.Digest.Hex, shown, unix.S_IFREG)
	if err != nil {
		return nil, err
	}
	if st.Size != desc.Size {
		_ = unix.Close(fd)
		return nil, d.entryErr(shown, "%d bytes, its descriptor says %d", st.Size, desc.Size)
	}
	return os.NewFile(uintptr(fd), shown), nil
}

// readBlob reads a small blob whole and verifies its digest.
func (d *layoutDir) readBlob(desc v1.Descriptor, limit int64) ([]byte, error) {
	shown := blobName(desc.Digest)
	if desc.Size > limit {
		return nil, d.entryErr(shown, "its descriptor says %d bytes, more than the %d a layout allows", desc.Size, limit)
	}
	f, err := d.openBlob(desc)
	if err != nil {
		return nil, err
	}
	rc := d.verifying(f, desc)
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// verifying reads a blob through its digest: more bytes than the
// descriptor's size, fewer, or other content fail the read naming the blob.
func (d *layoutDir) verifying(f *os.File, desc v1.Descriptor) io.ReadCloser {
	return &verifiedBlob{d: d, f: f, want: desc.Digest, size: desc.Size, h: sha256.New(), name: blobName(desc.Digest)}
}

type verifiedBlob struct {
	d    *layoutDir
	f    *os.File
	want v1.Hash
	size int64
	n    int64
	h    hash.Hash
	name string
	err  error
}

func (v *verifiedBlob) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	// Read one byte beyond the size, to see a blob that is longer.
	if rest := v.size - v.n + 1; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := v.f.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	switch {
	case v.n > v.size:
		v.err = v.d.entryErr(v.name, "longer than the %d bytes its descriptor says", v.size)
		return 0, v.err
	case err == io.EOF && v.n < v.size:
		v.err = v.d.entryErr(v.name, "%d bytes, its descriptor says %d", v.n, v.size)
		return n, v.err
	case err == io.EOF:
		if got := hex.EncodeToString(v.h.Sum(nil)); got != v.want.Hex {
			v.err = v.d.entryErr(v.name, "content is sha256:%s, not the digest that names it", got)
			return n, v.err
		}
	}
	return n, err
}

func (v *verifiedBlob) Close() error { return v.f.Close() }

// openLayoutDir opens the layout beneath the directory descriptor dir.
func openLayoutDir(dir *os.File, name string, access Access) (*layoutDir, *v1.IndexManifest, error) {
	d := &layoutDir{name: name, top: int(dir.Fd()), blobs: -1, access: access}
	if access != nil {
		var st unix.Stat_t
		if err := unix.Fstat(d.top, &st); err != nil {
			return nil, nil, fmt.Errorf("OCI layout %s: %w", name, err)
		}
		if err := access(&st); err != nil {
			return nil, nil, fmt.Errorf("OCI layout %s: %v: %w", name, err, ErrLayoutEntry)
		}
	}
	if _, err := d.readSmall(d.top, "oci-layout", "oci-layout", maxLayoutMarker); err != nil {
		if errdefs.IsNotFound(err) {
			return nil, nil, fmt.Errorf("import %s: a directory must be an OCI layout (no oci-layout file): %w", name, ErrUnsupported)
		}
		return nil, nil, err
	}
	b, err := d.readSmall(d.top, "index.json", "index.json", maxIndex)
	if err != nil {
		return nil, nil, err
	}
	var im v1.IndexManifest
	if err := json.Unmarshal(b, &im); err != nil {
		return nil, nil, d.entryErr("index.json", "%v", err)
	}
	return d, &im, nil
}

// index reads a nested image index blob.
func (d *layoutDir) index(desc v1.Descriptor) (*v1.IndexManifest, error) {
	b, err := d.readBlob(desc, maxIndex)
	if err != nil {
		return nil, err
	}
	var im v1.IndexManifest
	if err := json.Unmarshal(b, &im); err != nil {
		return nil, d.entryErr(blobName(desc.Digest), "%v", err)
	}
	return &im, nil
}

// image is the image a manifest descriptor names.
func (d *layoutDir) image(desc v1.Descriptor) (v1.Image, error) {
	raw, err := d.readBlob(desc, maxManifest)
	if err != nil {
		return nil, err
	}
	m, err := v1.ParseManifest(strings.NewReader(string(raw)))
	if err != nil {
		return nil, d.entryErr(blobName(desc.Digest), "manifest: %v", err)
	}
	for _, l := range m.Layers {
		if err := d.checkDigest(l.Digest); err != nil {
			return nil, err
		}
	}
	return partial.CompressedToImage(&layoutImage{d: d, desc: desc, raw: raw, m: m})
}

// layoutImage is an image of a layout, read beneath its directory.
type layoutImage struct {
	d    *layoutDir
	desc v1.Descriptor
	raw  []byte
	m    *v1.Manifest

	once   sync.Once
	config []byte
	cerr   error
}

func (li *layoutImage) MediaType() (types.MediaType, error) { return li.desc.MediaType, nil }
func (li *layoutImage) RawManifest() ([]byte, error)        { return li.raw, nil }
func (li *layoutImage) Manifest() (*v1.Manifest, error)     { return li.m, nil }
func (li *layoutImage) Descriptor() (*v1.Descriptor, error) {
	return &li.desc, nil
}

func (li *layoutImage) RawConfigFile() ([]byte, error) {
	li.once.Do(func() { li.config, li.cerr = li.d.readBlob(li.m.Config, maxConfig) })
	return li.config, li.cerr
}

func (li *layoutImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if h == li.m.Config.Digest {
		return &layoutBlob{d: li.d, desc: li.m.Config}, nil
	}
	for _, l := range li.m.Layers {
		if l.Digest == h {
			return &layoutBlob{d: li.d, desc: l}, nil
		}
	}
	return nil, fmt.Errorf("OCI layout %s: no layer %s in manifest %s", li.d.name, h, li.desc.Digest)
}

// layoutBlob is a layer blob, opened anew (and verified) at each read.
type layoutBlob struct {
	d    *layoutDir
	desc v1.Descriptor
}

func (b *layoutBlob) Digest() (v1.Hash, error)            { return b.desc.Digest, nil }
func (b *layoutBlob) Size() (int64, error)                { return b.desc.Size, nil }
func (b *layoutBlob) MediaType() (types.MediaType, error) { return b.desc.MediaType, nil }
func (b *layoutBlob) Descriptor() (*v1.Descriptor, error) { return &b.desc, nil }
func (b *layoutBlob) Compressed() (io.ReadCloser, error) {
	f, err := b.d.openBlob(b.desc)
	if err != nil {
		return nil, err
	}
	return b.d.verifying(f, b.desc), nil
}
