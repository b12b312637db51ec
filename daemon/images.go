package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/imaging/source"
	"github.com/paddock-vm/paddock/varlink"
)

// imageToAPI shows an image to its caller: a user learns no other user's
// uid (owners is the caller's own, if it holds the image).
func imageToAPI(img *imaging.Image, caller actors.Caller) *api.Image {
	owners := []uint32{}
	for _, u := range img.Owners {
		if caller.Admin || u == caller.UID {
			owners = append(owners, u)
		}
	}
	return &api.Image{Digest: img.Digest, Names: orEmptyList(img.Names), Public: orEmptyList(img.Public), Size: img.Size, Created: stamp(img.Created), Owners: owners}
}

// knownConfig short-cuts the config digest of an unchanged local file whose
// image is already stored, so a re-import reads nothing.
type knownConfig struct {
	v1.Image
	digest string
}

func (k knownConfig) ConfigName() (v1.Hash, error) { return v1.NewHash(k.digest) }

// fileKey identifies a passed regular file by device, inode, size, mtime
// and the options that shape the image; "" for anything else.
func fileKey(f *os.File, in api.ImportIn) string {
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return ""
	}
	return fmt.Sprintf("%d:%d:%d:%d.%d:%s:%x", st.Dev, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec, in.Select, sha256.Sum256(in.Config))
}

func (d *Daemon) runImportHinted(ctx context.Context, c *varlink.Call, public bool, hint string, open func(context.Context) (*source.Image, error)) error {
	return d.runImportThen(ctx, c, public, open, func(img *imaging.Image) {
		if hint != "" {
			if err := d.images.SetHint(hint, img.Digest); err != nil {
				d.log.Debug("recording an import hint", "err", err)
			}
		}
	})
}

// runImport streams progress while the Import actor works, then replies
// with the image. A client that hangs up withdraws from the import.
func (d *Daemon) runImport(ctx context.Context, c *varlink.Call, public bool, open func(context.Context) (*source.Image, error)) error {
	return d.runImportThen(ctx, c, public, open, nil)
}

func (d *Daemon) runImportThen(ctx context.Context, c *varlink.Call, public bool, open func(context.Context) (*source.Image, error), then func(*imaging.Image)) error {
	var last time.Time
	var prev imaging.Progress
	caller := d.auth.caller(c.Peer)
	if public && !caller.Admin {
		return &actors.Error{Kind: actors.ErrPermissionDenied, Msg: "only an admin may publish an image (public): import it without public, for yourself"}
	}
	done, err := d.actors.ImportImage(ctx, caller, public, open, func(p imaging.Progress) {
		// Every change of phase or layer goes out; counts within one at most
		// every 200 ms.
		if !c.More || p.Phase == prev.Phase && p.Layer == prev.Layer && time.Since(last) < 200*time.Millisecond {
			return
		}
		last, prev = time.Now(), p
		_ = c.Continue(api.ImportOut{Progress: &api.ImportProgress{Phase: p.Phase, Layer: p.Layer, Layers: p.Layers, Digest: p.Digest,
			LayerBytes: p.LayerBytes, LayerSize: p.LayerSize, Bytes: p.Bytes, Total: p.Total, Built: p.Built, BuildSize: p.BuildSize}})
	})
	if err != nil {
		return importError(err)
	}
	if then != nil {
		then(done.Image)
	}
	return c.Reply(api.ImportOut{Image: imageToAPI(done.Image, caller), Cached: done.Cached})
}

// importError names what was wrong with the image as InvalidArgument (a
// source or entry the caller named that is bad or not there); other classes
// keep theirs, and the rest is Internal.
func importError(err error) error {
	var ae *actors.Error
	switch {
	case errors.As(err, &ae):
		return err
	case errdefs.IsInvalidArgument(err), errdefs.IsNotFound(err):
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "image", Msg: err.Error()}
	case errors.Is(err, context.Canceled):
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "image", Msg: "import canceled"}
	}
	// Registry and transport failures name the reference already.
	return fmt.Errorf("import failed: %w", err)
}

func (d *Daemon) sourceOptions() source.Options {
	cfg := d.config()
	return source.Options{Insecure: cfg.Images.InsecureRegistries, MaxUnpackedSize: int64(cfg.Images.MaxUnpackedSize)}
}

func (d *Daemon) pullImage(ctx context.Context, c *varlink.Call) error {
	var in api.PullIn
	if err := c.Decode(&in); err != nil {
		return err
	}
	if in.Ref == "" {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "ref", Msg: "no image reference given"}
	}
	opts, err := pullOptions(d.sourceOptions(), in, d.auth.caller(c.Peer))
	if err != nil {
		return err
	}
	return d.runImport(ctx, c, in.Public, func(ctx context.Context) (*source.Image, error) {
		return source.Pull(ctx, in.Ref, opts)
	})
}

// pullOptions decides what a caller's pull may use: the caller's own
// credentials when it sent them, else paddockd's for an admin and none for
// anyone else; plain HTTP to a registry the config does not list is an
// admin's call.
func pullOptions(opts source.Options, in api.PullIn, caller actors.Caller) (source.Options, error) {
	if in.Insecure {
		host, _, _ := strings.Cut(in.Ref, "/")
		if !slices.Contains(opts.Insecure, host) {
			if !caller.Admin {
				return opts, &actors.Error{Kind: actors.ErrPermissionDenied, VM: in.Ref,
					Msg: fmt.Sprintf("only an admin may reach %s over plain HTTP: ask one to add it to images.insecure_registries", host)}
			}
			opts.Insecure = append(slices.Clone(opts.Insecure), host)
		}
	}
	switch {
	case in.Auth != nil:
		r, err := name.ParseReference(in.Ref)
		if err != nil {
			return opts, &actors.Error{Kind: actors.ErrInvalidArgument, Field: "ref", Msg: fmt.Sprintf("image reference %+q: %v", in.Ref, err)}
		}
		opts.Keychain = source.Credentials(r.Context().RegistryStr(), authn.AuthConfig{Username: in.Auth.Username, Password: in.Auth.Password,
			Auth: in.Auth.Auth, IdentityToken: in.Auth.IdentityToken, RegistryToken: in.Auth.RegistryToken})
	case caller.Admin:
		opts.Keychain = authn.DefaultKeychain
	}
	return opts, nil
}

func (d *Daemon) importImage(ctx context.Context, c *varlink.Call) error {
	var in api.ImportIn
	if err := c.Decode(&in); err != nil {
		return err
	}
	if len(c.FDs) != 1 {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "source", Msg: fmt.Sprintf("ImportImage needs the file or directory %q passed as one file descriptor, got %d", in.Source, len(c.FDs))}
	}
	if len(in.Config) > 0 && !json.Valid(in.Config) {
		return &actors.Error{Kind: actors.ErrInvalidArgument, Field: "config", Msg: "config is not valid JSON"}
	}
	// The caller opened the file with its own rights; the daemon reads
	// through that descriptor and never opens the caller's path itself.
	// It is duplicated so the import can outlive this call when another
	// caller joins the same flight.
	fd, err := unix.FcntlInt(c.FDs[0].Fd(), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return fmt.Errorf("dup descriptor of %s: %w", in.Source, err)
	}
	f := os.NewFile(uintptr(fd), in.Source)
	opts := d.sourceOptions()
	opts.Name, opts.Config = in.Name, in.Config
	opts.Access = layoutAccess(d.auth.caller(c.Peer), c.Peer)
	hint := fileKey(f, in)
	return d.runImportHinted(ctx, c, in.Public, hint, func(ctx context.Context) (*source.Image, error) {
		if digest := d.images.Hint(hint); hint != "" && digest != "" {
			if cached, _ := d.images.Get(digest); cached != nil && cached.Verified {
				// Unchanged file, image stored: nothing needs reading.
				names := []string{}
				if in.Name != "" {
					names = append(names, in.Name)
				}
				return &source.Image{Kind: source.RootfsTar, Ref: in.Source, Names: names, Image: knownConfig{digest: digest},
					HintOnly: true, Release: func() { _ = f.Close() }}, nil
			}
		}
		img, err := openPassed(ctx, f, in, opts)
		if err != nil {
			_ = f.Close()
			return nil, err
		}
		img.Ref = in.Source
		prev := img.Release
		img.Release = func() {
			if prev != nil {
				prev()
			}
			_ = f.Close()
		}
		return img, nil
	})
}

// openPassed opens a passed file, or a passed OCI layout directory. A
// directory is read beneath its descriptor only (no symbolic links, regular
// files only), and what a non-admin caller could not read is refused.
func openPassed(ctx context.Context, f *os.File, in api.ImportIn, opts source.Options) (*source.Image, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", in.Source, err)
	}
	if !fi.IsDir() {
		if in.Select != "" {
			return nil, fmt.Errorf("import %s: a tag or digest selects only within an OCI layout directory: %w", in.Source, source.ErrUnsupported)
		}
		return source.ImportFile(ctx, f, in.Source, opts)
	}
	return source.ImportDir(f, in.Source, in.Select, opts)
}

// layoutAccess is what a caller may read of a directory it passed: an
// admin anything beneath it, anyone else what its own uid and groups (as
// its connection carries them) could.
func layoutAccess(caller actors.Caller, p varlink.Peer) source.Access {
	if caller.Admin {
		return nil
	}
	return source.ReadableBy(p.UID, append([]uint32{p.GID}, p.Groups...))
}

func (d *Daemon) listImages(ctx context.Context, c *varlink.Call) error {
	if err := c.Decode(&struct{}{}); err != nil {
		return err
	}
	caller := d.auth.caller(c.Peer)
	r, err := d.actors.Images(ctx, &actors.ListImages{Caller: caller})
	if err != nil {
		return err
	}
	out := api.ImagesOut{Images: []api.Image{}}
	for _, img := range r.Images {
		out.Images = append(out.Images, *imageToAPI(img, caller))
	}
	return c.Reply(out)
}

func (d *Daemon) inspectImage(ctx context.Context, c *varlink.Call) error {
	var in api.ImageRef
	if err := c.Decode(&in); err != nil {
		return err
	}
	caller := d.auth.caller(c.Peer)
	r, err := d.actors.Images(ctx, &actors.GetImage{Caller: caller, Ref: in.Image})
	if err != nil {
		return err
	}
	cfg, err := os.ReadFile(filepath.Join(d.images.Dir(r.Image.Digest), "config.json"))
	if err != nil || !json.Valid(cfg) {
		cfg = []byte("{}")
	}
	users, err := d.actors.ImageUsers(ctx, caller, r.Image.Digest)
	if err != nil {
		return err
	}
	return c.Reply(api.InspectImageOut{Image: *imageToAPI(r.Image, caller), Config: cfg, UsedBy: users})
}

func (d *Daemon) removeImage(ctx context.Context, c *varlink.Call) error {
	var in api.RemoveImageIn
	if err := c.Decode(&in); err != nil {
		return err
	}
	r, err := d.actors.Images(ctx, &actors.RemoveImage{Caller: d.auth.caller(c.Peer), Ref: in.Image, Force: in.Force, Public: in.Public})
	if err != nil {
		return err
	}
	return c.Reply(api.RemovedOut{Removed: orEmptyList(r.Removed)})
}

func (d *Daemon) pruneImages(ctx context.Context, c *varlink.Call) error {
	if err := c.Decode(&struct{}{}); err != nil {
		return err
	}
	r, err := d.actors.Images(ctx, &actors.PruneImages{Caller: d.auth.caller(c.Peer)})
	if err != nil {
		return err
	}
	return c.Reply(api.RemovedOut{Removed: orEmptyList(r.Removed)})
}

func orEmptyList(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
