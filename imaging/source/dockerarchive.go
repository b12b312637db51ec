package source

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// A docker save archive is read here rather than by go-containerregistry's
// tarball package, whose passes are neither bounded nor cancellable: it
// hashes or gzips every layer to make up a manifest, and reads entries
// through archive/tar, which expands a sparse entry's holes (a few KiB in
// the archive reading as terabytes of zeros). Here every entry read is a
// regular file whose bytes are in the archive, each scan stops at the
// caller's cancellation and at the unpack limit, and the layers' diff ids
// are the config's claims, which the importer checks.

// maxMetaSize bounds manifest.json and the config file.
const maxMetaSize = 16 << 20

// maxLinkHops bounds the links followed to reach an entry.
const maxLinkHops = 8

type dockerManifest []struct {
	Config   string
	RepoTags []string
	Layers   []string
}

func openDockerArchive(ctx context.Context, ref string, open opener, o Options) (*Image, error) {
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
	fail := func(err error) (*Image, error) { return nil, fmt.Errorf("docker archive %s: %w", ref, err) }
	b, err := readEntry(ctx, open, "manifest.json", o.maxUnpacked())
	if err != nil {
		return fail(err)
	}
	var m dockerManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return fail(fmt.Errorf("manifest.json: %w", err))
	}
	var all []string
	for _, d := range m {
		all = append(all, d.RepoTags...)
	}
	pick := -1
	switch {
	case tag != nil:
		for i, d := range m {
			for _, rt := range d.RepoTags {
				if t, err := name.NewTag(rt); err == nil && t.Name() == tag.Name() {
					pick = i
				}
			}
		}
		if pick < 0 && len(m) == 1 {
			pick = 0 // one image: the name is the one to record
		}
		if pick < 0 {
			return fail(fmt.Errorf("no image tagged %s; it holds %s: %w", o.Name, strings.Join(all, ", "), ErrNotFound))
		}
	case len(m) == 1:
		pick = 0
	case len(m) == 0:
		return fail(fmt.Errorf("manifest.json lists no image: %w", ErrNotFound))
	default:
		return fail(fmt.Errorf("holds %d images (%s); pick one with --name: %w", len(m), strings.Join(all, ", "), ErrAmbiguous))
	}
	desc := m[pick]
	config, err := readEntry(ctx, open, desc.Config, o.maxUnpacked())
	if err != nil {
		return fail(err)
	}
	cf, err := v1.ParseConfigFile(strings.NewReader(string(config)))
	if err != nil {
		return fail(fmt.Errorf("config %s: %w", desc.Config, err))
	}
	if len(cf.RootFS.DiffIDs) != len(desc.Layers) {
		return fail(fmt.Errorf("manifest.json lists %d layers but the config's rootfs.diff_ids names %d", len(desc.Layers), len(cf.RootFS.DiffIDs)))
	}
	img, err := partial.UncompressedToImage(&dockerCore{config: config})
	if err != nil {
		return fail(err)
	}
	blobs := make([]Blob, len(desc.Layers))
	for i, p := range desc.Layers {
		p := p
		blobs[i] = Blob{Open: func(ctx context.Context) (io.ReadCloser, error) {
			r, err := findEntry(ctx, open, p, o.maxUnpacked())
			if err != nil {
				return nil, fmt.Errorf("docker archive %s: %w", ref, err)
			}
			return r, nil
		}}
	}
	var names []string
	if tag != nil {
		names = []string{o.Name}
	} else {
		names = append([]string{}, desc.RepoTags...)
	}
	if err := validNames(names); err != nil {
		return fail(err)
	}
	return &Image{Kind: DockerArchive, Ref: ref, Names: names, Image: img, blobs: blobs}, nil
}

// dockerCore is the config of a docker archive's image; the importer reads
// its layers as Blobs, never through it.
type dockerCore struct{ config []byte }

func (c *dockerCore) RawConfigFile() ([]byte, error)      { return c.config, nil }
func (c *dockerCore) MediaType() (types.MediaType, error) { return types.DockerManifestSchema2, nil }
func (c *dockerCore) LayerByDiffID(v1.Hash) (partial.UncompressedLayer, error) {
	return nil, errors.New("docker archive layers are read as blobs")
}

// readEntry returns the whole entry at p, at most maxMetaSize bytes.
func readEntry(ctx context.Context, open opener, p string, limit int64) ([]byte, error) {
	r, err := findEntry(ctx, open, p, limit)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, maxMetaSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	if len(b) > maxMetaSize {
		return nil, fmt.Errorf("%s: over %d bytes", p, maxMetaSize)
	}
	return b, nil
}

// findEntry scans the archive for the regular file at p, following
// symlinks and hardlinks inside the archive, and returns a reader of its
// bytes. A sparse entry is refused: its holes are not in the archive.
func findEntry(ctx context.Context, open opener, p string, limit int64) (io.ReadCloser, error) {
	want := path.Clean(p)
	for hop := 0; hop <= maxLinkHops; hop++ {
		r, err := openScan(ctx, open, limit)
		if err != nil {
			return nil, err
		}
		tr := tar.NewReader(r)
		var hdr *tar.Header
		for {
			hdr, err = tr.Next()
			if err != nil {
				break
			}
			if path.Clean(hdr.Name) == want {
				break
			}
		}
		if err != nil {
			r.Close()
			if err == io.EOF {
				return nil, fmt.Errorf("no entry %s: %w", p, ErrNotFound)
			}
			return nil, fmt.Errorf("looking for %s: %w", p, err)
		}
		switch {
		case hdr.Typeflag == tar.TypeSymlink:
			want = path.Clean(path.Join(path.Dir(want), hdr.Linkname))
		case hdr.Typeflag == tar.TypeLink:
			want = path.Clean(hdr.Linkname)
		case isSparse(hdr):
			r.Close()
			return nil, fmt.Errorf("entry %s is a sparse file (%d bytes, most of them holes): refused: %w", hdr.Name, hdr.Size, ErrUnsupported)
		case hdr.Typeflag == tar.TypeReg:
			return readCloser{tr, r}, nil
		default:
			r.Close()
			return nil, fmt.Errorf("entry %s is not a regular file: %w", hdr.Name, ErrUnsupported)
		}
		r.Close()
		if strings.HasPrefix(want, "../") || want == ".." || path.IsAbs(want) {
			return nil, fmt.Errorf("entry %s links outside the archive: %w", p, ErrUnsupported)
		}
	}
	return nil, fmt.Errorf("entry %s: more than %d links: %w", p, maxLinkHops, ErrUnsupported)
}

// isSparse reports a GNU or PAX sparse entry.
func isSparse(h *tar.Header) bool {
	if h.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}
