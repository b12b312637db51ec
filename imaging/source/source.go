// Package source opens the images a user has — registry references, OCI
// layout directories, `docker save` archives and plain rootfs tars — as
// go-containerregistry images for the import pipeline.
package source

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/imaging/layoutref"
)

// Sentinel errors callers branch on.
var (
	ErrNotFound    = errdefs.New(errdefs.ErrNotFound, "image not found in source")
	ErrAmbiguous   = errdefs.New(errdefs.ErrInvalidArgument, "source holds several images")
	ErrUnsupported = errdefs.New(errdefs.ErrInvalidArgument, "unsupported image source")
	ErrPlatform    = errdefs.New(errdefs.ErrNotFound, "no linux/amd64 image")
	ErrTooLarge    = errdefs.New(errdefs.ErrInvalidArgument, "archive over the unpack limit")
)

// Kind names where an image came from.
type Kind string

// The source kinds.
const (
	Registry      Kind = "registry"
	OCILayout     Kind = "oci-layout"
	DockerArchive Kind = "docker-archive"
	RootfsTar     Kind = "rootfs-tar"
)

// Image is an opened image, ready to flatten.
type Image struct {
	Kind  Kind
	Ref   string // as the user gave it
	Names []string
	v1.Image
	// Release frees what the source holds open (a passed file descriptor);
	// nil when there is nothing to free. Call it once the image is imported.
	Release func()
	// HintOnly: only the config digest is known (an unchanged file whose
	// image is stored); it can serve a cached import and nothing else.
	HintOnly bool

	// blobs, when set, are the layers (docker archives, rootfs tars).
	blobs []Blob
	// rootfs is a rootfs tar's image-to-be: Image stays nil until Complete
	// is given the layer's diff id, which only reading the layer tells.
	rootfs *v1.ConfigFile
}

// Options tune opening.
type Options struct {
	// Insecure lists registries (host[:port]) reached over plain HTTP.
	Insecure []string
	// MaxUnpackedSize bounds what scanning a local archive may read (a
	// compressed docker archive is decompressed to find each entry); the
	// importer's limit of the same name. Default 16 GiB.
	MaxUnpackedSize int64
	// Platform to pick from an index; default linux/amd64.
	Platform *v1.Platform
	// Name and Config apply to rootfs tars: the name to record, and an
	// optional image config as JSON (an OCI config, or its "config" object:
	// Entrypoint, Cmd, Env, ...).
	Name   string
	Config []byte
	// Keychain resolves registry credentials; nil pulls anonymously (the
	// daemon decides whose credentials a pull may use).
	Keychain authn.Keychain
	// Access checks each file and directory of an OCI layout against the
	// rights of the caller that passed it; nil checks nothing.
	Access Access
}

func (o *Options) maxUnpacked() int64 {
	if o.MaxUnpackedSize > 0 {
		return o.MaxUnpackedSize
	}
	return 16 << 30
}

func (o *Options) platform() v1.Platform {
	if o.Platform != nil {
		return *o.Platform
	}
	return v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
}

// Pull opens an image reference from a registry.
func Pull(ctx context.Context, ref string, o Options) (*Image, error) {
	var nopts []name.Option
	for _, h := range o.Insecure {
		if strings.HasPrefix(ref, h+"/") {
			nopts = append(nopts, name.Insecure)
		}
	}
	r, err := name.ParseReference(ref, nopts...)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", ref, err)
	}
	kc := o.Keychain
	if kc == nil {
		kc = authn.NewMultiKeychain() // resolves to anonymous
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithAuthFromKeychain(kc), remote.WithPlatform(o.platform()))
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	if err := checkPlatform(img, o.platform(), ref); err != nil {
		return nil, err
	}
	names := []string{}
	if t, ok := r.(name.Tag); ok {
		names = append(names, t.Name())
	}
	return &Image{Kind: Registry, Ref: ref, Names: names, Image: img}, nil
}

func checkPlatform(img v1.Image, want v1.Platform, ref string) error {
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("%s: read config: %w", ref, err)
	}
	if cf.OS != "" && (cf.OS != want.OS || cf.Architecture != want.Architecture) {
		return fmt.Errorf("%s is %s/%s: %w", ref, cf.OS, cf.Architecture, ErrPlatform)
	}
	return nil
}

// Import opens a local path: an OCI layout directory (PATH, PATH:tag or
// PATH@sha256:...), a docker save archive, or a plain rootfs tar (gzip,
// zstd or uncompressed).
func Import(ctx context.Context, path string, o Options) (*Image, error) {
	base, sel := layoutref.Split(path)
	f, err := os.Open(base)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", base, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("import %s: %w", base, err)
	}
	var img *Image
	switch {
	case fi.IsDir():
		img, err = ImportDir(f, base, sel, o)
	case sel != "":
		err = fmt.Errorf("import %s: a tag or digest selects only within an OCI layout directory: %w", path, ErrUnsupported)
	default:
		img, err = ImportFile(ctx, f, base, o)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	prev := img.Release
	img.Release = func() {
		if prev != nil {
			prev()
		}
		f.Close()
	}
	return img, nil
}

// ImportDir opens the OCI layout in the open directory dir, reading only
// regular files beneath it and following no symbolic link (o.Access adds
// the caller's permission check); name is how the user named it, sel picks
// a tag or digest. The caller keeps dir open until the image is released.
func ImportDir(dir *os.File, name, sel string, o Options) (*Image, error) {
	d, im, err := openLayoutDir(dir, name, o.Access)
	if err != nil {
		return nil, err
	}
	img, err := openLayout(d, im, sel, o)
	if err != nil {
		d.Close()
		return nil, err
	}
	img.Release = d.Close
	return img, nil
}

// ImportFile opens a docker save archive or a plain rootfs tar from an open
// file, reading it only through the descriptor (positioned reads, so one
// file serves every reader at once). ref names it in messages. The caller
// keeps f open until the image is released.
func ImportFile(ctx context.Context, f *os.File, ref string, o Options) (*Image, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", ref, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("import %s: not a regular file or directory: %w", ref, ErrUnsupported)
	}
	size := fi.Size()
	open := func() *io.SectionReader { return io.NewSectionReader(f, 0, size) }
	isDocker, err := isDockerArchive(ctx, open, o.maxUnpacked())
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", ref, err)
	}
	if isDocker {
		return openDockerArchive(ctx, ref, open, o)
	}
	return openRootfsTar(ref, open, size, o)
}

func openLayout(ld *layoutDir, im *v1.IndexManifest, sel string, o Options) (*Image, error) {
	dir := ld.name
	var hits []v1.Descriptor
	for _, d := range im.Manifests {
		tag := d.Annotations[refName]
		switch {
		case sel == "":
			hits = append(hits, d)
		case strings.HasPrefix(sel, "sha256:") && d.Digest.String() == sel:
			hits = append(hits, d)
		case tag == sel || strings.HasSuffix(tag, ":"+sel):
			hits = append(hits, d)
		}
	}
	if len(hits) == 0 {
		return nil, fmt.Errorf("OCI layout %s has no image %q; it holds %s: %w", dir, sel, layoutChoices(dir, im.Manifests), ErrNotFound)
	}
	if len(hits) > 1 {
		return nil, fmt.Errorf("OCI layout %s holds %d images; pick one: %s: %w", dir, len(hits), layoutChoices(dir, hits), ErrAmbiguous)
	}
	d := hits[0]
	names, err := layoutNames(d.Annotations[refName], o.Name)
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: image %s: %w", dir, d.Digest, err)
	}
	var img v1.Image
	switch {
	case d.MediaType.IsIndex():
		child, err := ld.index(d)
		if err != nil {
			return nil, err
		}
		img, err = pickLayoutPlatform(ld, child, o.platform())
		if err != nil {
			return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
		}
	case d.MediaType.IsImage():
		img, err = ld.image(d)
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("OCI layout %s: entry of media type %q: %w", dir, d.MediaType, ErrUnsupported)
	}
	return &Image{Kind: OCILayout, Ref: dir, Names: names, Image: img}, nil
}

// layoutChoices names each image of a layout the way import selects it:
// DIR:TAG when its tag (or the part after the tag's last colon) picks it
// alone, else DIR@DIGEST. At most 20, then a count of the rest.
func layoutChoices(dir string, ds []v1.Descriptor) string {
	const most = 20
	suffixes := map[string]int{}
	for _, d := range ds {
		if tag := d.Annotations[refName]; tag != "" {
			suffixes[tagSelector(tag)]++
		}
	}
	var out []string
	for i, d := range ds {
		if i == most {
			out = append(out, fmt.Sprintf("and %d more", len(ds)-most))
			break
		}
		tag := d.Annotations[refName]
		if sel := tagSelector(tag); tag != "" && suffixes[sel] == 1 {
			out = append(out, dir+":"+sel)
		} else {
			out = append(out, dir+"@"+d.Digest.String())
		}
	}
	if len(out) == 0 {
		return "no images"
	}
	return strings.Join(out, ", ")
}

// refName is the annotation that tags an image in an OCI layout.
const refName = "org.opencontainers.image.ref.name"

// tagSelector is what follows DIR: to pick a tagged image: the tag, or for
// a full reference (name:tag) its tag.
func tagSelector(tag string) string {
	if i := strings.LastIndex(tag, ":"); i >= 0 && !strings.Contains(tag[i:], "/") {
		return tag[i+1:]
	}
	return tag
}

func pickLayoutPlatform(ld *layoutDir, im *v1.IndexManifest, p v1.Platform) (v1.Image, error) {
	for _, d := range im.Manifests {
		if d.Platform != nil && d.Platform.OS == p.OS && d.Platform.Architecture == p.Architecture && d.MediaType.IsImage() {
			return ld.image(d)
		}
	}
	return nil, fmt.Errorf("index has %d manifests: %w", len(im.Manifests), ErrPlatform)
}

// isDockerArchive reports whether a (possibly compressed) tar holds a
// docker save manifest.json at its top.
func isDockerArchive(ctx context.Context, open opener, limit int64) (bool, error) {
	r, err := openScan(ctx, open, limit)
	if err != nil {
		return false, err
	}
	defer r.Close()
	tr := tar.NewReader(r)
	prev := ""
	for i := 0; i < 10000; i++ {
		h, err := tr.Next()
		if err == io.EOF {
			return false, nil
		}
		if err != nil {
			if e := ctx.Err(); e != nil {
				return false, e
			}
			if errors.Is(err, ErrTooLarge) {
				return false, fmt.Errorf("looking for manifest.json past entry %q: %w", prev, err)
			}
			return false, fmt.Errorf("not a tar archive: %w", err)
		}
		prev = h.Name
		n := strings.TrimPrefix(h.Name, "./")
		if n == "manifest.json" {
			return true, nil
		}
		// Anything a docker archive does not hold before its manifest.json
		// says "rootfs" at once: no entry of a rootfs is ever skipped (nor,
		// when compressed, decompressed) to tell.
		if top, _, nested := strings.Cut(strings.TrimSuffix(n, "/"), "/"); nested || h.Typeflag == tar.TypeDir {
			if top != "blobs" && !hexName.MatchString(top) {
				return false, nil
			}
		} else if h.Typeflag == tar.TypeReg && !dockerTopFile(n, h.Size) {
			return false, nil
		}
	}
	return false, nil
}

var (
	hexName   = regexp.MustCompile(`^(sha256:)?[0-9a-f]{64}$`)
	layerName = regexp.MustCompile(`^[0-9a-f]{64}\.(tar|tar\.gz|tgz|tar\.zst)$`)
)

// dockerTopFile reports a regular file a docker archive may hold at its
// top (before its manifest.json): small metadata (JSON files, repositories,
// a config named by its digest) or a layer named by its digest.
func dockerTopFile(n string, size int64) bool {
	if layerName.MatchString(n) {
		return true
	}
	meta := strings.HasSuffix(n, ".json") || n == "repositories" || n == "oci-layout" || hexName.MatchString(n)
	return meta && size <= maxMetaSize
}

// openRootfsTar opens a plain rootfs tar: one uncompressed layer (the tar,
// decompressed), whose diff id the importer learns while flattening it.
func openRootfsTar(path string, open opener, size int64, o Options) (*Image, error) {
	if o.Name == "" {
		return nil, fmt.Errorf("rootfs tar %s: give it a name with --name: %w", path, ErrUnsupported)
	}
	if err := ValidName(o.Name); err != nil {
		return nil, err
	}
	cf := &v1.ConfigFile{OS: "linux", Architecture: runtime.GOARCH}
	if len(o.Config) > 0 {
		b := o.Config
		var c v1.Config
		// Accept either a whole OCI config ({"config": {...}}) or its "config" object.
		var whole struct {
			Config *v1.Config `json:"config"`
		}
		if err := json.Unmarshal(b, &whole); err == nil && whole.Config != nil {
			c = *whole.Config
		} else if err := json.Unmarshal(b, &c); err != nil {
			return nil, fmt.Errorf("image config: %w", err)
		}
		cf.Config = c
	}
	blob := Blob{Size: size, Open: func(context.Context) (io.ReadCloser, error) { return io.NopCloser(open()), nil }}
	return &Image{Kind: RootfsTar, Ref: path, Names: []string{o.Name}, blobs: []Blob{blob}, rootfs: cf}, nil
}

// Complete makes a rootfs tar's image once its layer's diff id (and its
// uncompressed size) are known: the config, and so the digest, name it.
// The same tar gives the same digest however it is compressed.
func (img *Image) Complete(diffID v1.Hash, size int64) error {
	if img.rootfs == nil {
		return fmt.Errorf("image %s: not a rootfs tar", img.Ref)
	}
	layer := &rawLayer{open: func() (io.ReadCloser, error) {
		return nil, errors.New("a rootfs tar's layer is read as a blob")
	}, hash: diffID, size: size}
	base, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return fmt.Errorf("rootfs tar %s: %w", img.Ref, err)
	}
	cf, err := base.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = img.rootfs.OS, img.rootfs.Architecture
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config = img.rootfs.Config
	out, err := mutate.ConfigFile(base, cf)
	if err != nil {
		return err
	}
	img.Image = mutate.MediaType(out, types.OCIManifestSchema1)
	return nil
}

// Pending reports a rootfs tar whose digest is not known yet.
func (img *Image) Pending() bool { return img.rootfs != nil && img.Image == nil }

type readCloser struct {
	io.Reader
	io.Closer
}

// Decompress reads rc's gzip or zstd stream, or rc as it is when it is
// neither; closing the result closes rc.
func Decompress(rc io.ReadCloser) (io.ReadCloser, error) {
	r, err := decompress(rc)
	if err != nil {
		rc.Close()
		return nil, err
	}
	return readCloser{r, closers{r, rc}}, nil
}

// closers closes the decompressor (when it is one), then the stream.
type closers struct {
	r  io.Reader
	rc io.Closer
}

func (c closers) Close() error {
	if dc, ok := c.r.(io.Closer); ok {
		_ = dc.Close()
	}
	return c.rc.Close()
}

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// decompress sniffs gzip and zstd; anything else passes through.
func decompress(r io.Reader) (io.Reader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, gzipMagic):
		return gzip.NewReader(br)
	case bytes.HasPrefix(magic, zstdMagic):
		d, err := zstd.NewReader(br)
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	}
	return br, nil
}

// opener opens a local source file afresh, positioned at its start.
type opener func() *io.SectionReader

// openScan opens a local archive for a scan of its entries: an uncompressed
// one stays seekable (archive/tar skips entries without reading them); a
// compressed one is decompressed. Either way every byte read counts against
// limit, and reading stops when ctx ends.
func openScan(ctx context.Context, open opener, limit int64) (*scanner, error) {
	sr := open()
	magic := make([]byte, 4)
	n, _ := sr.ReadAt(magic, 0)
	magic = magic[:n]
	if !bytes.HasPrefix(magic, gzipMagic) && !bytes.HasPrefix(magic, zstdMagic) {
		return &scanner{ctx: ctx, r: sr, seek: sr, limit: limit}, nil
	}
	dr, err := Decompress(io.NopCloser(sr))
	if err != nil {
		return nil, err
	}
	return &scanner{ctx: ctx, r: dr, c: dr, limit: limit}, nil
}

// scanner is a bounded, cancellable reader of a local archive.
type scanner struct {
	ctx   context.Context
	r     io.Reader
	seek  io.Seeker // set when skipping costs nothing
	c     io.Closer
	n     int64
	limit int64
}

func (s *scanner) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		return 0, err
	}
	if s.n >= s.limit {
		return 0, fmt.Errorf("read %d bytes of the archive (max_unpacked_size): %w", s.limit, ErrTooLarge)
	}
	if int64(len(p)) > s.limit-s.n {
		p = p[:s.limit-s.n]
	}
	n, err := s.r.Read(p)
	s.n += int64(n)
	return n, err
}

// Seek lets archive/tar skip entries of an uncompressed archive; a
// compressed one has no Seek, so archive/tar reads (and counts) them.
func (s *scanner) Seek(off int64, whence int) (int64, error) {
	if s.seek == nil {
		return 0, errors.ErrUnsupported
	}
	return s.seek.Seek(off, whence)
}

func (s *scanner) Close() error {
	if s.c != nil {
		return s.c.Close()
	}
	return nil
}
