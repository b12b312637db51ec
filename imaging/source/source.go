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
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/cache"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
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
}

// Options tune opening.
type Options struct {
	// Insecure lists registries (host[:port]) reached over plain HTTP.
	Insecure []string
	// BlobCache, when set, keeps compressed layer blobs by digest so that
	// images sharing layers download them once.
	BlobCache string
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
	if o.BlobCache != "" {
		img = cache.Image(img, cache.NewFilesystemCache(o.BlobCache))
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
	open := func() (io.ReadCloser, error) { return io.NopCloser(io.NewSectionReader(f, 0, size)), nil }
	isDocker, err := isDockerArchive(open)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", ref, err)
	}
	if isDocker {
		return openDockerArchive(ref, open, o)
	}
	return openRootfsTar(ctx, ref, open, o)
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
func isDockerArchive(open func() (io.ReadCloser, error)) (bool, error) {
	f, err := open()
	if err != nil {
		return false, err
	}
	defer f.Close()
	r, err := decompress(f)
	if err != nil {
		return false, err
	}
	tr := tar.NewReader(r)
	for i := 0; i < 10000; i++ {
		h, err := tr.Next()
		if err == io.EOF {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("not a tar archive: %w", err)
		}
		n := strings.TrimPrefix(h.Name, "./")
		if n == "manifest.json" {
			return true, nil
		}
		// A rootfs has directories at its top; docker archives do not.
		if strings.Contains(strings.TrimSuffix(n, "/"), "/") || h.Typeflag == tar.TypeDir && n != "" {
			return false, nil
		}
	}
	return false, nil
}

func openDockerArchive(path string, open func() (io.ReadCloser, error), o Options) (*Image, error) {
	var tag *name.Tag
	if o.Name != "" {
		if err := ValidName(o.Name); err != nil {
			return nil, err
		}
		t, err := name.NewTag(o.Name)
		if err != nil {
			return nil, fmt.Errorf("name %+q: %w", o.Name, err)
		}
		tag = &t
	}
	img, err := tarball.Image(tarball.Opener(open), tag)
	if err != nil {
		return nil, fmt.Errorf("docker archive %s: %w", path, err)
	}
	names, err := dockerTags(open)
	if err != nil {
		return nil, fmt.Errorf("docker archive %s: %w", path, err)
	}
	if tag != nil {
		names = []string{o.Name}
	} else if len(names) > 1 {
		return nil, fmt.Errorf("docker archive %s holds %d images (%s); pick one with --name: %w", path, len(names), strings.Join(names, ", "), ErrAmbiguous)
	}
	if err := validNames(names); err != nil {
		return nil, fmt.Errorf("docker archive %s: %w", path, err)
	}
	return &Image{Kind: DockerArchive, Ref: path, Names: names, Image: img}, nil
}

func dockerTags(open func() (io.ReadCloser, error)) ([]string, error) {
	f, err := open()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			return nil, fmt.Errorf("no manifest.json: %w", err)
		}
		if strings.TrimPrefix(h.Name, "./") != "manifest.json" {
			continue
		}
		var m []struct{ RepoTags []string }
		if err := json.NewDecoder(io.LimitReader(tr, 16<<20)).Decode(&m); err != nil {
			return nil, fmt.Errorf("manifest.json: %w", err)
		}
		var tags []string
		for _, e := range m {
			tags = append(tags, e.RepoTags...)
		}
		return tags, nil
	}
}

func openRootfsTar(_ context.Context, path string, open func() (io.ReadCloser, error), o Options) (*Image, error) {
	if o.Name == "" {
		return nil, fmt.Errorf("rootfs tar %s: give it a name with --name: %w", path, ErrUnsupported)
	}
	if err := ValidName(o.Name); err != nil {
		return nil, err
	}
	layer, err := newRawLayer(func() (io.ReadCloser, error) {
		f, err := open()
		if err != nil {
			return nil, err
		}
		r, err := decompress(f)
		if err != nil {
			f.Close()
			return nil, err
		}
		return readCloser{r, f}, nil
	})
	if err != nil {
		return nil, fmt.Errorf("rootfs tar %s: %w", path, err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("rootfs tar %s: %w", path, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
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
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, err
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	return &Image{Kind: RootfsTar, Ref: path, Names: []string{o.Name}, Image: img}, nil
}

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

// decompress sniffs gzip and zstd; anything else passes through.
func decompress(r io.Reader) (io.Reader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		return gzip.NewReader(br)
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		d, err := zstd.NewReader(br)
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	}
	return br, nil
}
