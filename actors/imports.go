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
// full). Cancel the request with CancelImport{ID}. The image's names go to
// the caller's own namespace, or with Public (admins only) to the public
// one every user resolves after their own.
type ImportImage struct {
	ID       uint64
	Caller   Caller
	Public   bool
	Open     func(context.Context) (*source.Image, error)
	Progress chan imaging.Progress
	Done     chan ImportDone

	names []string // what this request's source names the image
}

// namespace is where the request's names go.
func (m *ImportImage) namespace() imaging.Namespace {
	if m.Public {
		return imaging.PublicNamespace
	}
	return imaging.UserNamespace(m.Caller.UID)
}

// ImportDone answers ImportImage. Cached says the caller (or, for a public
// import, the public namespace) held the image already.
type ImportDone struct {
	Image  *imaging.Image
	Cached bool
	Err    error
}

// CancelImport withdraws one waiter; the flight stops when none remain.
type CancelImport struct{ ID uint64 }

// ListImages, GetImage, RemoveImage, PruneImages are answered with
// *ImageResult. Each sees what its caller may see: the images the caller
// holds and the public ones (every image, for an admin); anything else is
// not found, exactly like what does not exist.
type (
	ListImages struct{ Caller Caller }
	GetImage   struct {
		Caller Caller
		Ref    string
	}
	// RemoveImage drops the caller's hold on an image: its names in the
	// caller's namespace and its ownership. An admin naming a digest drops
	// every hold; Public (admins only) drops the image's public names. The
	// content goes when no one holds it and no VM uses it.
	RemoveImage struct {
		Caller Caller
		Ref    string
		Force  bool
		Public bool
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

// ImageUser is a VM or a template that uses an image.
type ImageUser struct {
	ID, Name string
	Owner    uint32
	Digest   string
	// Template marks a template (made from the image): a forced removal
	// of the image sweeps it, as its VMs need the image's config.
	Template bool
}

// label names u for a refusal: "web", or "template t1".
func (u ImageUser) label() string {
	if u.Template {
		return "template " + orID(u.Name, u.ID)
	}
	return orID(u.Name, u.ID)
}

// ImageUsers reports which VMs and templates (every user's) use which
// image; the daemon wires it to the Manager and the Templates actor so the
// Import actor holds no pointer into them. The Import actor calls it off
// its mailbox.
type ImageUsers func() ([]ImageUser, error)

// ImageGone tells the templates that the caller's image digest is gone:
// the caller's templates made from it go with it. Called off the mailbox.
type ImageGone func(c Caller, digest string) error

// usersKnown carries the answer of ImageUsers back into the Import actor,
// to the continuation of the request that asked.
type usersKnown struct {
	users []ImageUser
	err   error
	then  func(actor.Context, []ImageUser, error)
}

// withUsers asks which VMs use which image without blocking the mailbox:
// then runs in the actor once the Manager has answered.
func (a *importActor) withUsers(ctx actor.Context, then func(actor.Context, []ImageUser, error)) {
	self, root := ctx.Self(), ctx.ActorSystem().Root
	go func() {
		users, err := a.users()
		root.Send(self, &usersKnown{users: users, err: err, then: then})
	}()
}

// usersOf picks the users of one image.
func usersOf(users []ImageUser, digest string) []ImageUser {
	var out []ImageUser
	for _, u := range users {
		if u.Digest == digest {
			out = append(out, u)
		}
	}
	return out
}

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
}

type importActor struct {
	log      *slog.Logger
	importer *imaging.Importer
	users    ImageUsers
	gone     ImageGone
	flights  map[string]*flight
	opening  map[uint64]context.CancelFunc
}

func newImportActor(log *slog.Logger, im *imaging.Importer, users ImageUsers, gone ImageGone) actor.Actor {
	return &importActor{log: log.With("actor", NameImport), importer: im, users: users, gone: gone}
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
		if m.err == nil && m.img == nil {
			m.err = fmt.Errorf("import of %s ended without an image", m.digest)
		}
		if m.err != nil {
			a.log.Warn("import failed", "image_digest", m.digest, "err", m.err)
			for _, w := range f.snapshot() {
				w.Done <- ImportDone{Err: m.err}
			}
			return
		}
		// m.digest is the flight's key; a rootfs tar's digest is learnt as
		// it is read.
		a.log.Info("image imported", "image_digest", m.img.Digest, "size", m.img.Size)
		// Each waiter that is still there holds it under its own names.
		for _, w := range f.snapshot() {
			w.Done <- a.hold(w, m.img.Digest)
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
		if a.importer == nil {
			ctx.Respond(&ImageResult{Err: errorf(ErrNotYet, "image import is not configured")})
			return
		}
		imgs, err := a.importer.Store.List(m.Caller.viewer())
		ctx.Respond(&ImageResult{Images: imgs, Err: err})
	case *GetImage:
		if a.importer == nil {
			ctx.Respond(&ImageResult{Err: errorf(ErrNotYet, "image import is not configured")})
			return
		}
		img, _, err := a.lookup(m.Caller.viewer(), m.Ref)
		ctx.Respond(&ImageResult{Image: img, Err: err})
	case *RemoveImage:
		if a.importer == nil {
			ctx.Respond(&ImageResult{Err: errorf(ErrNotYet, "image import is not configured")})
			return
		}
		if _, _, err := a.lookup(a.removeViewer(m), m.Ref); err != nil {
			ctx.Respond(&ImageResult{Err: err})
			return
		}
		sender := ctx.Sender()
		a.withUsers(ctx, func(ctx actor.Context, users []ImageUser, err error) {
			if err != nil {
				ctx.Send(sender, &ImageResult{Err: fmt.Errorf("remove image %s: which VMs use it is unknown: %w", m.Ref, err)})
				return
			}
			// Looked up again: the store may have changed meanwhile.
			removed, err := a.remove(m, users)
			if err != nil || a.gone == nil || !hasTemplate(m.Caller, users, removed) {
				ctx.Send(sender, &ImageResult{Removed: removed, Err: err})
				return
			}
			// The caller's templates of it go too (a forced removal), off
			// the mailbox; the answer waits for them so a template list
			// right after never shows one.
			root := ctx.ActorSystem().Root
			go func() {
				if err := a.gone(m.Caller, removed[0]); err != nil {
					err = fmt.Errorf("image %s removed, but not its templates: %w", m.Ref, err)
					root.Send(sender, &ImageResult{Removed: removed, Err: err})
					return
				}
				root.Send(sender, &ImageResult{Removed: removed})
			}()
		})
	case *PruneImages:
		if a.importer == nil {
			ctx.Respond(&ImageResult{Err: errorf(ErrNotYet, "image import is not configured")})
			return
		}
		sender := ctx.Sender()
		a.withUsers(ctx, func(ctx actor.Context, users []ImageUser, err error) {
			if err != nil {
				ctx.Send(sender, &ImageResult{Err: fmt.Errorf("prune: which VMs use which image is unknown: %w", err)})
				return
			}
			ctx.Send(sender, a.prune(m.Caller, users))
		})
	case *usersKnown:
		m.then(ctx, m.users, m.err)
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
	if req.Public && !req.Caller.Admin {
		release(src)
		req.Done <- ImportDone{Err: &Error{Kind: ErrPermissionDenied, VM: src.Ref, Msg: "only an admin may publish an image (public)"}}
		return
	}
	req.names = slices.Clone(src.Names)
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
		return
	}
	if img, err := a.cached(digest); err != nil || img != nil {
		release(src)
		if err != nil {
			req.Done <- ImportDone{Err: err}
			return
		}
		req.Done <- a.hold(req, digest)
		return
	}
	if src.HintOnly {
		release(src)
		req.Done <- ImportDone{Err: fmt.Errorf("image %s changed while it was being imported; import it again", src.Ref)}
		return
	}
	fctx, cancel := context.WithCancel(context.Background())
	f := &flight{cancel: cancel, src: src, waiters: []*ImportImage{req}}
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
func (a *importActor) cached(digest string) (*imaging.Image, error) {
	if digest == "" {
		return nil, nil
	}
	return a.importer.Cached(digest)
}

func (f *flight) snapshot() []*ImportImage {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.waiters)
}

// hold gives a stored image to one request: its names go to the request's
// namespace (a user's own, or the public one) and the caller holds it. The
// answer shows the image as the caller sees it.
func (a *importActor) hold(req *ImportImage, digest string) ImportDone {
	ns := req.namespace()
	had, err := a.importer.Store.Holds(ns, digest)
	if err != nil {
		return ImportDone{Err: err}
	}
	if err := a.importer.Store.Hold(ns, digest, req.names); err != nil {
		return ImportDone{Err: err}
	}
	img, err := a.importer.Store.View(req.Caller.viewer(), digest)
	if err == nil && img == nil {
		err = fmt.Errorf("image %s vanished while it was being imported", digest)
	}
	return ImportDone{Image: img, Cached: had, Err: err}
}

// lookup resolves ref as v sees it; what v may not see is not found.
func (a *importActor) lookup(v imaging.Viewer, ref string) (*imaging.Image, imaging.Match, error) {
	img, m, err := a.importer.Store.Lookup(v, ref)
	if errors.Is(err, imaging.ErrImageNotFound) || errors.Is(err, imaging.ErrAmbiguous) {
		return nil, 0, &Error{Kind: ErrImageNotFound, VM: ref, Msg: err.Error()}
	}
	return img, m, err
}

// removeViewer is how a removal looks at the store: as its caller, or with
// Public as the public namespace (admins only: others find nothing there to
// remove, and are told why).
func (a *importActor) removeViewer(m *RemoveImage) imaging.Viewer {
	if m.Public {
		return imaging.Viewer{Namespace: imaging.PublicNamespace}
	}
	return m.Caller.viewer()
}

func (a *importActor) remove(m *RemoveImage, all []ImageUser) ([]string, error) {
	if m.Public && !m.Caller.Admin {
		return nil, &Error{Kind: ErrPermissionDenied, VM: m.Ref, Msg: fmt.Sprintf("only an admin removes public images (%s)", m.Ref)}
	}
	v := a.removeViewer(m)
	img, match, err := a.lookup(v, m.Ref)
	if err != nil {
		return nil, err
	}
	if _, busy := a.flights[img.Digest]; busy {
		return nil, &Error{Kind: ErrImageInUse, VM: m.Ref, Msg: fmt.Sprintf("image %s is being imported", m.Ref)}
	}
	ns, purge := v.Namespace, false
	switch {
	case match == imaging.MatchPublic && !m.Caller.Admin:
		return nil, publicRefusal(m.Ref)
	case match == imaging.MatchPublic:
		ns = imaging.PublicNamespace
	case match == imaging.MatchDigest && m.Caller.Admin && !m.Public:
		purge = true // an admin takes the content off the host
	case match == imaging.MatchDigest:
		held, err := a.importer.Store.Holds(ns, img.Digest)
		if err != nil {
			return nil, err
		}
		if !held { // seen only because it is public
			return nil, publicRefusal(m.Ref)
		}
	}
	users := usersOf(all, img.Digest)
	mine := visibleUsers(m.Caller, users)
	if len(mine) > 0 && !m.Force {
		return nil, &Error{Kind: ErrImageInUse, VM: m.Ref, Msg: fmt.Sprintf("image %s is used by %s: %s (remove them first, or force: its templates go with it)", m.Ref, countUsers(m.Caller, users), strings.Join(mine, ", "))}
	}
	held := false
	if purge {
		err = a.importer.Store.Purge(img.Digest)
	} else {
		held, err = a.importer.Store.Release(ns, img.Digest)
	}
	if err != nil {
		return nil, err
	}
	// The content stays while anyone holds it or a VM the caller may not
	// see uses it; a forced removal passes the caller's own VMs.
	if !held && len(users) == len(mine) {
		if err := a.importer.Store.Remove(img.Digest); err != nil {
			return nil, err
		}
		a.log.Info("image removed", "image_digest", img.Digest)
	}
	return []string{img.Digest}, nil
}

func publicRefusal(ref string) error {
	return &Error{Kind: ErrPermissionDenied, VM: ref, Msg: fmt.Sprintf("image %s is public: only an admin removes it", ref)}
}

// visibleUsers names the VMs and templates among users that c may see,
// sorted.
func visibleUsers(c Caller, users []ImageUser) []string {
	var out []string
	for _, u := range users {
		if c.May(u.Owner) {
			out = append(out, u.label())
		}
	}
	sort.Strings(out)
	return out
}

// countUsers says "2 VM(s)", "1 template(s)" or both, of those c may see.
func countUsers(c Caller, users []ImageUser) string {
	vms, tmpls := 0, 0
	for _, u := range users {
		switch {
		case !c.May(u.Owner):
		case u.Template:
			tmpls++
		default:
			vms++
		}
	}
	switch {
	case tmpls == 0:
		return fmt.Sprintf("%d VM(s)", vms)
	case vms == 0:
		return fmt.Sprintf("%d template(s)", tmpls)
	}
	return fmt.Sprintf("%d VM(s) and %d template(s)", vms, tmpls)
}

// hasTemplate says whether the removed image had templates c may see.
func hasTemplate(c Caller, users []ImageUser, removed []string) bool {
	if len(removed) == 0 {
		return false
	}
	for _, u := range usersOf(users, removed[0]) {
		if u.Template && c.May(u.Owner) {
			return true
		}
	}
	return false
}

// prune drops the caller's hold on every image none of its VMs uses (an
// admin: removes every image no VM uses); content goes when no one holds
// it and no VM uses it.
func (a *importActor) prune(c Caller, all []ImageUser) *ImageResult {
	imgs, err := a.importer.Store.List(c.viewer())
	if err != nil {
		return &ImageResult{Err: err}
	}
	ns := imaging.UserNamespace(c.UID)
	removed := []string{}
	for _, img := range imgs {
		if _, busy := a.flights[img.Digest]; busy {
			continue
		}
		if !c.Admin && !slices.Contains(img.Owners, c.UID) {
			continue // public, or not the caller's
		}
		users := usersOf(all, img.Digest)
		if len(visibleUsers(c, users)) > 0 {
			continue
		}
		var err error
		held := false
		if c.Admin {
			err = a.importer.Store.Purge(img.Digest)
		} else {
			held, err = a.importer.Store.Release(ns, img.Digest)
		}
		if err == nil && !held && len(users) == 0 {
			err = a.importer.Store.Remove(img.Digest)
		}
		if err != nil {
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
