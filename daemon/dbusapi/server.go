// Package dbusapi is paddockd's D-Bus front-end, org.paddock1: a second
// front-end beside the varlink socket over the very same handlers. Every
// method call is routed, as its caller, into the varlink server's dispatch
// table (varlink.Server.Invoke), and every property change is fed by the
// Events actor's stream, the one varlink's Events serves: the two front-ends
// cannot drift apart.
//
// Who may see what. A caller is identified by the bus
// (GetConnectionCredentials: uid and groups) and judged by the same owner
// and admin rules as a varlink peer. A VM the caller may not see is "not
// found" on every path: its object, its properties, ListVMs,
// GetManagedObjects and the introspection of /org/paddock1/vm. Signals are
// never broadcast: each is sent (unicast) to every bus peer that has called
// paddockd (any method, or Manager.Subscribe) and may see the VM it is about,
// until that peer leaves the bus or calls Unsubscribe. A client that wants
// signals calls before it listens: GetManagedObjects, as ObjectManager
// clients do, is enough.
package dbusapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/godbus/dbus/v5"

	"github.com/paddock-vm/paddock/actors"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/varlink"
)

// Deps is what the front-end needs from the daemon.
type Deps struct {
	// Invoke runs one io.paddock.v1 method for a peer, passing fds as a
	// connection's descriptors and closing them (varlink.Server.Invoke).
	Invoke func(ctx context.Context, peer varlink.Peer, method string, params any, fds []*os.File) (json.RawMessage, error)
	// Caller judges a peer as the varlink socket does.
	Caller func(varlink.Peer) actors.Caller
	// Subscribe and Unsubscribe reach the Events actor.
	Subscribe   func(ctx context.Context, c actors.Caller, vmID string, n int) (uint64, <-chan api.Event, error)
	Unsubscribe func(id uint64)
	// MayCall admits a caller at all (nil: everyone the bus lets send to
	// us). The bus policy lets everyone send; the daemon applies the
	// varlink socket's gate here (root, itself, or the socket's group).
	MayCall func(varlink.Peer) error
	// Self is the daemon's own identity, an admin: the event feed reads
	// VMs as it.
	Self    varlink.Peer
	Version string
	Log     *slog.Logger
}

// Server is the org.paddock1 service on one bus connection.
type Server struct {
	deps Deps
	log  *slog.Logger
	conn *dbus.Conn
	ctx  context.Context
	stop context.CancelFunc
	done chan struct{}

	manager, vm, job, objects *iface

	mu      sync.Mutex
	peers   map[string]*peerEntry // bus peers that called: signal recipients
	vms     map[string]*vmState   // as last signalled, by id
	jobs    map[uint32]*job
	nextJob uint32
}

type peerEntry struct {
	peer  varlink.Peer
	muted bool // Unsubscribe
}

type vmState struct {
	owner uint32
	props properties
}

// eventBuffer is how far the feed may fall behind before it resyncs.
const eventBuffer = 4096

// Connect connects to bus ("system" or "session"), takes the name
// org.paddock1 and serves until Close.
func Connect(ctx context.Context, bus string, deps Deps) (*Server, error) {
	s := newServer(deps)
	var err error
	switch bus {
	case "system":
		s.conn, err = dbus.ConnectSystemBus(dbus.WithHandler(s), dbus.WithContext(s.ctx))
	case "session":
		s.conn, err = dbus.ConnectSessionBus(dbus.WithHandler(s), dbus.WithContext(s.ctx))
	default:
		err = fmt.Errorf("no bus named %q", bus)
	}
	if err != nil {
		s.stop()
		return nil, fmt.Errorf("connect to the %s bus: %w", bus, err)
	}
	if err := s.start(ctx); err != nil {
		s.stop()
		_ = s.conn.Close()
		return nil, err
	}
	return s, nil
}

func newServer(deps Deps) *Server {
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	s := &Server{deps: deps, log: deps.Log, done: make(chan struct{}), peers: map[string]*peerEntry{}, vms: map[string]*vmState{}, jobs: map[uint32]*job{}}
	s.ctx, s.stop = context.WithCancel(context.Background())
	s.manager, s.vm, s.job, s.objects = surface(s)
	return s
}

func (s *Server) start(ctx context.Context) error {
	// Peers that leave the bus stop getting signals.
	if err := s.conn.AddMatchSignal(dbus.WithMatchSender("org.freedesktop.DBus"), dbus.WithMatchInterface("org.freedesktop.DBus"),
		dbus.WithMatchMember("NameOwnerChanged")); err != nil {
		return fmt.Errorf("watch NameOwnerChanged: %w", err)
	}
	sigs := make(chan *dbus.Signal, 256)
	s.conn.Signal(sigs)
	id, events, err := s.deps.Subscribe(ctx, s.selfCaller(), "", eventBuffer)
	if err != nil {
		return fmt.Errorf("subscribe to events: %w", err)
	}
	if err := s.resync(ctx, false); err != nil {
		s.deps.Unsubscribe(id)
		return err
	}
	reply, err := s.conn.RequestName(BusName, dbus.NameFlagDoNotQueue)
	if err != nil {
		s.deps.Unsubscribe(id)
		return fmt.Errorf("own %s: %w", BusName, err)
	}
	if reply != dbus.RequestNameReplyPrimaryOwner {
		s.deps.Unsubscribe(id)
		return fmt.Errorf("own %s: another connection owns it (reply %d)", BusName, reply)
	}
	go s.watchPeers(sigs)
	go s.feed(id, events)
	return nil
}

// Close releases the name and stops serving; jobs in flight finish in the
// varlink server's shutdown, which waits for them.
func (s *Server) Close() {
	s.stop()
	_, _ = s.conn.ReleaseName(BusName)
	_ = s.conn.Close()
	<-s.done
}

// UniqueName is the connection's unique bus name.
func (s *Server) UniqueName() string { return s.conn.Names()[0] }

func (s *Server) selfCaller() actors.Caller {
	c := s.deps.Caller(s.deps.Self)
	c.Admin = true
	return c
}

func (s *Server) watchPeers(sigs chan *dbus.Signal) {
	for {
		select {
		case <-s.ctx.Done():
			return
		case sig, ok := <-sigs:
			if !ok {
				return
			}
			if sig.Name != "org.freedesktop.DBus.NameOwnerChanged" || len(sig.Body) != 3 {
				continue
			}
			name, _ := sig.Body[0].(string)
			newOwner, _ := sig.Body[2].(string)
			if newOwner == "" && strings.HasPrefix(name, ":") {
				s.mu.Lock()
				delete(s.peers, name)
				s.mu.Unlock()
			}
		}
	}
}

// call is one method call being served: who made it, on what.
type call struct {
	ctx    context.Context
	sender string
	path   dbus.ObjectPath
	peer   varlink.Peer
	caller actors.Caller
}

// peer returns the sender's credentials, asking the bus the first time;
// a unique name is never reused, so they hold for the connection's life.
func (s *Server) peer(sender string) (varlink.Peer, error) {
	s.mu.Lock()
	e, ok := s.peers[sender]
	s.mu.Unlock()
	if ok {
		return e.peer, nil
	}
	var creds map[string]dbus.Variant
	if err := s.conn.BusObject().CallWithContext(s.ctx, "org.freedesktop.DBus.GetConnectionCredentials", 0, sender).Store(&creds); err != nil {
		return varlink.Peer{}, dbus.NewError("org.freedesktop.DBus.Error.AccessDenied", []any{"cannot read the caller's credentials: " + err.Error()})
	}
	uid, ok := creds["UnixUserID"].Value().(uint32)
	if !ok {
		return varlink.Peer{}, dbus.NewError("org.freedesktop.DBus.Error.AccessDenied", []any{"the bus reports no uid for the caller"})
	}
	// The bus reports every group, primary and supplementary alike.
	p := varlink.Peer{UID: uid, GID: math.MaxUint32}
	p.Groups, _ = creds["UnixGroupIDs"].Value().([]uint32)
	if pid, ok := creds["ProcessID"].Value().(uint32); ok {
		p.PID = int32(pid)
	}
	if s.deps.MayCall != nil {
		if err := s.deps.MayCall(p); err != nil {
			// Not the bus's AccessDenied: clients print only its name, and
			// this one says why.
			return varlink.Peer{}, dbus.NewError(ErrorPrefix+"PermissionDenied", []any{err.Error()})
		}
	}
	s.mu.Lock()
	if _, ok := s.peers[sender]; !ok {
		s.peers[sender] = &peerEntry{peer: p}
	}
	s.mu.Unlock()
	return p, nil
}

// invoke routes one call into the shared dispatch table as its caller.
func (s *Server) invoke(c *call, method string, params any, out any) error {
	return s.invokeAs(c.ctx, c.peer, method, params, out)
}

func (s *Server) invokeAs(ctx context.Context, p varlink.Peer, method string, params any, out any) error {
	return s.invokeFDs(ctx, p, method, params, nil, out)
}

// invokeFDs is invokeAs passing descriptors (closed when the call ends).
func (s *Server) invokeFDs(ctx context.Context, p varlink.Peer, method string, params any, fds []*os.File, out any) error {
	raw, err := s.deps.Invoke(ctx, p, api.Interface+"."+method, params, fds)
	if err != nil {
		return dbusError(err)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return dbus.NewError(ErrorPrefix+"Internal", []any{fmt.Sprintf("decode the %s reply: %v", method, err)})
	}
	return nil
}

// errorNames maps io.paddock.v1 errors (made from the errdefs classes by
// the daemon's error table) to org.paddock1.Error.*.
var errorNames = map[string]string{
	api.ErrVMNotFound:            "NotFound",
	api.ErrImageNotFound:         "ImageNotFound",
	api.ErrWorkspaceNotFound:     "WorkspaceNotFound",
	api.ErrNameInUse:             "NameInUse",
	api.ErrInvalidArgument:       "InvalidArgument",
	varlink.ErrInvalidParameter:  "InvalidArgument",
	api.ErrInvalidState:          "InvalidState",
	api.ErrPermissionDenied:      "PermissionDenied",
	api.ErrImageInUse:            "ImageInUse",
	api.ErrUnavailable:           "Unavailable",
	api.ErrTimeout:               "Timeout",
	api.ErrInternal:              "Internal",
	varlink.ErrMethodNotFound:    "Internal",
	varlink.ErrInterfaceNotFound: "Internal",
}

func dbusError(err error) *dbus.Error {
	var de *dbus.Error
	if errors.As(err, &de) {
		return de
	}
	var ve *varlink.Error
	if errors.As(err, &ve) {
		name := errorNames[ve.Name]
		if name == "" {
			name = "Internal"
		}
		return dbus.NewError(ErrorPrefix+name, []any{ve.Error()})
	}
	if errors.Is(err, varlink.ErrShuttingDown) {
		return dbus.NewError(ErrorPrefix+"Unavailable", []any{"paddockd is shutting down"})
	}
	return dbus.NewError(ErrorPrefix+"Internal", []any{err.Error()})
}

func notFound(what string) *dbus.Error {
	return dbus.NewError(ErrorPrefix+"NotFound", []any{what + " not found"})
}

// --- objects -------------------------------------------------------------

var hexID = regexp.MustCompile(`^[0-9a-f]{1,64}$`)

// kind of object a path names.
type kind int

const (
	kindInner kind = iota // "/", "/org": introspection only
	kindManager
	kindVMDir
	kindVM
	kindJobDir
	kindJob
)

type object struct {
	s    *Server
	path dbus.ObjectPath
	kind kind
	id   string // VM id or job number
}

// LookupObject implements dbus.Handler: every path of the tree, known or
// not; whether the caller may see the VM or job is decided per call.
func (s *Server) LookupObject(path dbus.ObjectPath) (dbus.ServerObject, bool) {
	p := string(path)
	o := &object{s: s, path: path}
	switch {
	case p == "/" || p == "/org":
		o.kind = kindInner
	case path == ManagerPath:
		o.kind = kindManager
	case p == vmDir:
		o.kind = kindVMDir
	case p == jobDir:
		o.kind = kindJobDir
	case strings.HasPrefix(p, vmDir+"/") && hexID.MatchString(p[len(vmDir)+1:]):
		o.kind, o.id = kindVM, p[len(vmDir)+1:]
	case strings.HasPrefix(p, jobDir+"/"):
		if _, err := strconv.ParseUint(p[len(jobDir)+1:], 10, 32); err != nil {
			return nil, false
		}
		o.kind, o.id = kindJob, p[len(jobDir)+1:]
	default:
		return nil, false
	}
	return o, true
}

func (o *object) ifaces() []*iface {
	switch o.kind {
	case kindManager:
		return []*iface{o.s.manager, o.s.objects}
	case kindVM:
		return []*iface{o.s.vm}
	case kindJob:
		return []*iface{o.s.job}
	}
	return nil
}

// LookupInterface implements dbus.ServerObject.
func (o *object) LookupInterface(name string) (dbus.Interface, bool) {
	switch name {
	case introIface:
		return &ifaceMethods{o: o, table: map[string]*member{"Introspect": {name: "Introspect", out: []arg{{"xml", ""}}, fn: o.introspect}}}, true
	case propsIface:
		if len(o.ifaces()) == 0 {
			return nil, false
		}
		return &ifaceMethods{o: o, table: map[string]*member{
			"Get":    {name: "Get", in: []arg{{"interface", ""}, {"property", ""}}, out: []arg{{"value", dbus.Variant{}}}, fn: o.propGet},
			"GetAll": {name: "GetAll", in: []arg{{"interface", ""}}, out: []arg{{"properties", properties{}}}, fn: o.propGetAll},
			"Set":    {name: "Set", in: []arg{{"interface", ""}, {"property", ""}, {"value", dbus.Variant{}}}, fn: o.propSet},
		}}, true
	}
	table := map[string]*member{}
	found := false
	for _, i := range o.ifaces() {
		if name != "" && i.name != name {
			continue
		}
		found = true
		for k := range i.methods {
			if _, dup := table[i.methods[k].name]; !dup {
				table[i.methods[k].name] = &i.methods[k]
			}
		}
	}
	if !found {
		return nil, false
	}
	return &ifaceMethods{o: o, table: table}, true
}

type ifaceMethods struct {
	o     *object
	table map[string]*member
}

// LookupMethod implements dbus.Interface.
func (i *ifaceMethods) LookupMethod(name string) (dbus.Method, bool) {
	m, ok := i.table[name]
	if !ok {
		return nil, false
	}
	return &boundMethod{o: i.o, m: m}, true
}

type boundMethod struct {
	o *object
	m *member
}

// DecodeArguments implements dbus.ArgumentDecoder: the sender travels with
// the arguments, so every call knows its caller.
func (b *boundMethod) DecodeArguments(_ *dbus.Conn, sender string, _ *dbus.Message, body []any) ([]any, error) {
	if len(body) != len(b.m.in) {
		return nil, dbus.ErrMsgInvalidArg
	}
	ptrs := make([]any, len(b.m.in))
	for i, a := range b.m.in {
		ptrs[i] = reflect.New(reflect.TypeOf(a.val)).Interface()
	}
	if err := dbus.Store(body, ptrs...); err != nil {
		return nil, dbus.ErrMsgInvalidArg
	}
	in := make([]any, len(ptrs))
	for i, p := range ptrs {
		in[i] = reflect.ValueOf(p).Elem().Interface()
	}
	return []any{sender, in}, nil
}

// Call implements dbus.Method.
func (b *boundMethod) Call(args ...any) ([]any, error) {
	sender, _ := args[0].(string)
	in, _ := args[1].([]any)
	s := b.o.s
	p, err := s.peer(sender)
	if err != nil {
		return nil, err
	}
	c := &call{ctx: s.ctx, sender: sender, path: b.o.path, peer: p, caller: s.deps.Caller(p)}
	out, err := b.m.fn(c, in)
	if err != nil {
		return nil, dbusError(err)
	}
	return out, nil
}

func (b *boundMethod) NumArguments() int       { return len(b.m.in) }
func (b *boundMethod) NumReturns() int         { return len(b.m.out) }
func (b *boundMethod) ArgumentValue(i int) any { return b.m.in[i].val }
func (b *boundMethod) ReturnValue(i int) any   { return b.m.out[i].val }
func (o *object) vmPeer(c *call) error         { return o.s.visibleVM(c, o.id) }
func vmPath(id string) dbus.ObjectPath         { return dbus.ObjectPath(vmDir + "/" + id) }
func jobPath(id uint32) dbus.ObjectPath        { return dbus.ObjectPath(fmt.Sprintf("%s/%d", jobDir, id)) }
func (s *Server) visibleVM(c *call, id string) error {
	return s.invoke(c, "Get", api.VMRef{VM: id}, nil)
}

func (o *object) introspect(c *call, _ []any) ([]any, error) {
	var children []string
	switch o.kind {
	case kindInner:
		children = []string{map[string]string{"/": "org", "/org": "paddock1"}[string(o.path)]}
	case kindManager:
		children = []string{"job", "vm"}
	case kindVMDir:
		vms, err := o.s.list(c)
		if err != nil {
			return nil, err
		}
		for _, v := range vms {
			children = append(children, v.ID)
		}
	case kindJobDir:
		for _, j := range o.s.jobsFor(c) {
			children = append(children, strconv.FormatUint(uint64(j.id), 10))
		}
	case kindVM:
		if err := o.vmPeer(c); err != nil {
			return nil, err
		}
	case kindJob:
		if _, err := o.s.jobOf(c, o.id); err != nil {
			return nil, err
		}
	}
	return []any{nodeXML(o.ifaces(), children)}, nil
}

// props returns an object's properties of one interface, as the caller
// may see them.
func (o *object) props(c *call, name string) (properties, error) {
	switch {
	case o.kind == kindManager && (name == ManagerIface || name == ""):
		return properties{"Version": dbus.MakeVariant(o.s.deps.Version)}, nil
	case o.kind == kindManager && name == objMgrIface:
		return properties{}, nil
	case o.kind == kindVM && (name == VMIface || name == ""):
		var out api.VMOut
		if err := o.s.invoke(c, "Get", api.VMRef{VM: o.id}, &out); err != nil {
			return nil, err
		}
		if out.VM.ID != o.id {
			return nil, notFound("VM " + o.id)
		}
		return o.s.liveProps(out.VM), nil
	case o.kind == kindJob && (name == JobIface || name == ""):
		j, err := o.s.jobOf(c, o.id)
		if err != nil {
			return nil, err
		}
		return j.props(), nil
	}
	return nil, dbus.NewError("org.freedesktop.DBus.Error.UnknownInterface", []any{"no interface " + name + " here"})
}

func (o *object) propGet(c *call, in []any) ([]any, error) {
	props, err := o.props(c, in[0].(string))
	if err != nil {
		return nil, err
	}
	v, ok := props[in[1].(string)]
	if !ok {
		return nil, dbus.NewError("org.freedesktop.DBus.Error.UnknownProperty", []any{"no property " + in[1].(string)})
	}
	return []any{v}, nil
}

func (o *object) propGetAll(c *call, in []any) ([]any, error) {
	props, err := o.props(c, in[0].(string))
	if err != nil {
		return nil, err
	}
	return []any{props}, nil
}

func (o *object) propSet(c *call, in []any) ([]any, error) {
	if _, err := o.props(c, in[0].(string)); err != nil {
		return nil, err
	}
	return nil, dbus.NewError("org.freedesktop.DBus.Error.PropertyReadOnly", []any{"properties are read-only; call Set(a{sv}) on org.paddock1.VM"})
}

// --- signals -------------------------------------------------------------

// emit sends one signal to every peer that called and may see a VM of
// owner: never broadcast, so no one learns of another user's VMs.
func (s *Server) emit(owner uint32, path dbus.ObjectPath, name string, body ...any) {
	s.mu.Lock()
	var to []string
	for sender, e := range s.peers {
		if !e.muted && s.deps.Caller(e.peer).May(owner) {
			to = append(to, sender)
		}
	}
	s.mu.Unlock()
	sort.Strings(to)
	dot := strings.LastIndex(name, ".")
	for _, dest := range to {
		msg := &dbus.Message{Type: dbus.TypeSignal, Headers: map[dbus.HeaderField]dbus.Variant{
			dbus.FieldPath:        dbus.MakeVariant(path),
			dbus.FieldInterface:   dbus.MakeVariant(name[:dot]),
			dbus.FieldMember:      dbus.MakeVariant(name[dot+1:]),
			dbus.FieldDestination: dbus.MakeVariant(dest),
		}, Body: body}
		if len(body) > 0 {
			msg.Headers[dbus.FieldSignature] = dbus.MakeVariant(dbus.SignatureOf(body...))
		}
		if c := s.conn.Send(msg, nil); c.Err != nil {
			s.log.Debug("D-Bus signal not sent", "signal", name, "to", dest, "err", c.Err)
		}
	}
}

// --- manager -------------------------------------------------------------

// plain turns a{sv} values into what encoding/json writes as the varlink
// parameters they stand for.
func plain(v any) any {
	switch x := v.(type) {
	case dbus.Variant:
		return plain(x.Value())
	case map[string]dbus.Variant:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = plain(e)
		}
		return m
	case []map[string]dbus.Variant:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = plain(e)
		}
		return l
	case []dbus.Variant:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = plain(e)
		}
		return l
	}
	return v
}

func (s *Server) createVM(c *call, in []any) ([]any, error) {
	var out api.VMOut
	if err := s.invoke(c, "Create", plain(in[0]), &out); err != nil {
		return nil, err
	}
	return []any{vmPath(out.VM.ID)}, nil
}

func (s *Server) getVM(c *call, in []any) ([]any, error) {
	var out api.VMOut
	if err := s.invoke(c, "Get", api.VMRef{VM: in[0].(string)}, &out); err != nil {
		return nil, err
	}
	return []any{vmPath(out.VM.ID)}, nil
}

func (s *Server) list(c *call) ([]api.VM, error) {
	var out api.ListOut
	if err := s.invoke(c, "List", nil, &out); err != nil {
		return nil, err
	}
	return out.VMs, nil
}

func (s *Server) listVMs(c *call, _ []any) ([]any, error) {
	vms, err := s.list(c)
	if err != nil {
		return nil, err
	}
	paths := make([]dbus.ObjectPath, len(vms))
	for i, v := range vms {
		paths[i] = vmPath(v.ID)
	}
	return []any{paths}, nil
}

func (s *Server) getManagedObjects(c *call, _ []any) ([]any, error) {
	vms, err := s.list(c)
	if err != nil {
		return nil, err
	}
	out := make(map[dbus.ObjectPath]map[string]properties, len(vms))
	for _, v := range vms {
		out[vmPath(v.ID)] = map[string]properties{VMIface: s.liveProps(v)}
	}
	return []any{out}, nil
}

// subscribe makes the caller a recipient of signals again (its first call
// of any method did it already).
func (s *Server) subscribe(c *call, _ []any) ([]any, error) { return nil, s.mute(c.sender, false) }

func (s *Server) unsubscribe(c *call, _ []any) ([]any, error) { return nil, s.mute(c.sender, true) }

func (s *Server) mute(sender string, muted bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.peers[sender]; ok {
		e.muted = muted
	}
	return nil
}
