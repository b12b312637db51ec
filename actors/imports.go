package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/imaging/source"
)

// ErrImageNotFound and ErrImageInUse are the image store's refusals.
var (
	ErrImageNotFound = errdefs.New(errdefs.ErrNotFound, "image not found")
	ErrImageInUse    = errdefs.New(errdefs.ErrFailedPrecondition, "image in use")
)

// ImportImage asks the Import actor to open and import an image. The actor
// answers on Done exactly once and sends progress on Progress (dropped when
// full). Cancel the request with CancelImport{ID}.
type ImportImage struct {
	ID       uint64
	Caller   Caller
	Open     func(context.Context) (*source.Image, error)
	Progress chan imaging.Progress
	Done     chan ImportDone
}

// ImportDone answers ImportImage.
type ImportDone struct {
	Image  *imaging.Image
	Cached bool
	Err    error
}

// CancelImport withdraws one waiter; the flight stops when none remain.
type CancelImport struct{ ID uint64 }

// ListImages, GetImage, RemoveImage, PruneImages are answered with *ImageResult.
type (
	ListImages  struct{}
	GetImage    struct{ Ref string }
	RemoveImage struct {
		Caller Caller
		Ref    string
		Force  bool
	}
	PruneImages struct{ Caller Caller }
)

// ImageResult answers the image store requests.
type ImageResult struct {
	Image   *imaging.Image
	Images  []*imaging.Image
	Removed []string
	Err     error
}

// ImageUsers reports the names of VMs using an image digest; the daemon
// wires it to the Manager so the Import actor holds no pointer into it.
type ImageUsers func(digest string) []string

type opened struct {
	req *ImportImage
	img *source.Image
	err error
}

type finished struct {
	digest string
	img    *imaging.Image
	err    error
}

type flight struct {
	mu      sync.Mutex // waiters is read by the import goroutine for progress
	cancel  context.CancelFunc
	src     *source.Image
	waiters []*ImportImage
	owners  []uint32
}

type importActor struct {
	log      *slog.Logger
	importer *imaging.Importer
	users    ImageUsers
	flights  map[string]*flight
	opening  map[uint64]context.CancelFunc
}

func newImportActor(log *slog.Logger, im *imaging.Importer, users ImageUsers) actor.Actor {
	return &importActor{log: log.With("actor", NameImport), importer: im, users: users}
}

func (a *importActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.flights, a.opening = map[string]*flight{}, map[uint64]context.CancelFunc{}
		if a.importer != nil {
			if err := a.importer.Store.Sweep(); err != nil {
				a.log.Warn("sweeping interrupted imports", "err", err)
			}
		}
	case *actor.Stopping:
		for _, f := range a.flights {
			f.cancel()
		}
		for _, c := range a.opening {
			c()
		}
	case *Ping:
		ctx.Respond(&Pong{From: NameImport})
	case *ImportImage:
		if a.importer == nil {
			m.Done <- ImportDone{Err: errorf(ErrNotYet, "image import is not configured")}
			return
		}
		// Opening may talk to a registry: do it off the mailbox.
		octx, cancel := context.WithCancel(context.Background())
		a.opening[m.ID] = cancel
		self := ctx.Self()
		root := ctx.ActorSystem().Root
		go func() {
			img, err := m.Open(octx)
			root.Send(self, &opened{req: m, img: img, err: err})
		}()
	case *opened:
		cancel, live := a.opening[m.req.ID]
		delete(a.opening, m.req.ID)
		if !live {
			release(m.img) // canceled while opening
			return
		}
		if m.err != nil {
			cancel()
			m.req.Done <- ImportDone{Err: m.err}
			return
		}
		// Registry sources fetch layers with the context they were opened
		// with: it lives until the source is released.
		prev := m.img.Release
		m.img.Release = func() {
			cancel()
			if prev != nil {
				prev()
			}
		}
		a.join(ctx, m.req, m.img)
	case *finished:
		f := a.flights[m.digest]
		delete(a.flights, m.digest)
		if f == nil {
			return
		}
		release(f.src)
		img := m.img
		if m.err == nil && img != nil {
			img, m.err = a.claim(img.Digest, f.owners)
		}
		if m.err != nil {
			a.log.Warn("import failed", "image_digest", m.digest, "err", m.err)
		} else {
			a.log.Info("image imported", "image_digest", img.Digest, "names", strings.Join(img.Names, ","), "size", img.Size)
		}
		for _, w := range f.snapshot() {
			w.Done <- ImportDone{Image: img, Err: m.err}
		}
	case *CancelImport:
		if c, ok := a.opening[m.ID]; ok {
			c()
			delete(a.opening, m.ID)
			return
		}
		for d, f := range a.flights {
			f.mu.Lock()
			f.waiters = slices.DeleteFunc(f.waiters, func(w *ImportImage) bool { return w.ID == m.ID })
			left := len(f.waiters)
			f.mu.Unlock()
			if left == 0 {
				a.log.Info("import canceled: no one waits for it", "image_digest", d)
				f.cancel()
			}
		}
	case *ListImages:
		imgs, err := a.importer.Store.List()
		ctx.Respond(&ImageResult{Images: imgs, Err: err})
	case *GetImage:
		img, err := a.resolve(m.Ref)
		ctx.Respond(&ImageResult{Image: img, Err: err})
	case *RemoveImage:
		removed, err := a.remove(m)
		ctx.Respond(&ImageResult{Removed: removed, Err: err})
	case *PruneImages:
		ctx.Respond(a.prune(m.Caller))
	}
}

// join adds a request to the flight of its digest, starting one if needed.
func (a *importActor) join(ctx actor.Context, req *ImportImage, src *source.Image) {
	digest, err := imaging.Key(src)
	if err != nil {
		release(src)
		req.Done <- ImportDone{Err: err}
		return
	}
	// A rootfs tar's digest is learnt while it is read: its flight is its own.
	key := digest
	if key == "" {
		key = fmt.Sprintf("pending-%d", req.ID)
	}
	if f, ok := a.flights[key]; ok {
		release(src) // the flight's own source serves this waiter too
		f.mu.Lock()
		f.waiters = append(f.waiters, req)
		f.mu.Unlock()
		f.owners = append(f.owners, req.Caller.UID)
		return
	}
	if img, err := a.cached(digest, src.Names); err != nil || img != nil {
		release(src)
		if err == nil {
			img, err = a.claim(digest, []uint32{req.Caller.UID})
		}
		req.Done <- ImportDone{Image: img, Cached: err == nil, Err: err}
		return
	}
	if src.HintOnly {
		release(src)
		req.Done <- ImportDone{Err: fmt.Errorf("image %s changed while it was being imported; import it again", src.Ref)}
		return
	}
	fctx, cancel := context.WithCancel(context.Background())
	f := &flight{cancel: cancel, src: src, waiters: []*ImportImage{req}, owners: []uint32{req.Caller.UID}}
	a.flights[key] = f
	self, root := ctx.Self(), ctx.ActorSystem().Root
	a.log.Info("importing image", "image_digest", digest, "source", src.Ref, "kind", string(src.Kind))
	go func() {
		img, err := a.importer.Import(fctx, src, func(p imaging.Progress) {
			// Progress is best effort: a full channel drops the report.
			for _, w := range f.snapshot() {
				select {
				case w.Progress <- p:
				default:
				}
			}
		})
		cancel()
		root.Send(self, &finished{digest: key, img: img, err: err})
	}()
}

// cached is the stored, verified image for digest, or nil ("" is unknown).
func (a *importActor) cached(digest string, names []string) (*imaging.Image, error) {
	if digest == "" {
		return nil, nil
	}
	return a.importer.Cached(digest, names)
}

func (f *flight) snapshot() []*ImportImage {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.waiters)
}

func (a *importActor) claim(digest string, uids []uint32) (*imaging.Image, error) {
	img, err := a.importer.Store.Get(digest)
	if err != nil || img == nil {
		return img, err
	}
	changed := false
	for _, u := range uids {
		changed = img.AddOwner(u) || changed
	}
	if changed {
		if err := a.importer.Store.Add(img); err != nil {
			return nil, err
		}
	}
	return img, nil
}

func (a *importActor) resolve(ref string) (*imaging.Image, error) {
	img, err := a.importer.Store.Resolve(ref)
	if errors.Is(err, imaging.ErrImageNotFound) || errors.Is(err, imaging.ErrAmbiguous) {
		return nil, &Error{Kind: ErrImageNotFound, VM: ref, Msg: err.Error()}
	}
	return img, err
}

func (a *importActor) remove(m *RemoveImage) ([]string, error) {
	img, err := a.resolve(m.Ref)
	if err != nil {
		return nil, err
	}
	if _, busy := a.flights[img.Digest]; busy {
		return nil, &Error{Kind: ErrImageInUse, VM: m.Ref, Msg: fmt.Sprintf("image %s is being imported", m.Ref)}
	}
	if !m.Caller.Admin && !slices.Contains(img.Owners, m.Caller.UID) {
		return nil, &Error{Kind: ErrPermissionDenied, VM: m.Ref, Msg: fmt.Sprintf("image %s was imported by another user", m.Ref)}
	}
	if !m.Caller.Admin && len(img.Owners) > 1 {
		// Others still claim it: drop only this caller's claim.
		img.Owners = slices.DeleteFunc(img.Owners, func(u uint32) bool { return u == m.Caller.UID })
		return nil, a.importer.Store.Add(img)
	}
	if users := a.users(img.Digest); len(users) > 0 && !m.Force {
		sort.Strings(users)
		return nil, &Error{Kind: ErrImageInUse, VM: m.Ref, Msg: fmt.Sprintf("image %s is used by %d VM(s): %s (remove them first, or force)", m.Ref, len(users), strings.Join(users, ", "))}
	}
	if err := a.importer.Store.Remove(img.Digest); err != nil {
		return nil, err
	}
	a.log.Info("image removed", "image_digest", img.Digest)
	return []string{img.Digest}, nil
}

func (a *importActor) prune(c Caller) *ImageResult {
	imgs, err := a.importer.Store.List()
	if err != nil {
		return &ImageResult{Err: err}
	}
	var removed []string
	for _, img := range imgs {
		if _, busy := a.flights[img.Digest]; busy || len(a.users(img.Digest)) > 0 {
			continue
		}
		if !c.Admin && (len(img.Owners) != 1 || img.Owners[0] != c.UID) {
			continue
		}
		if err := a.importer.Store.Remove(img.Digest); err != nil {
			return &ImageResult{Removed: removed, Err: err}
		}
		removed = append(removed, img.Digest)
	}
	return &ImageResult{Removed: removed}
}

func release(src *source.Image) {
	if src != nil && src.Release != nil {
		src.Release()
	}
}
