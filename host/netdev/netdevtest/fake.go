// Package netdevtest provides a recording fake of netdev.Interface for unit
// tests of its callers (the VM actor, the orphan sweep). It models the same
// rules as the real Manager: deterministic names, adopt-if-tagged, "not found"
// is success on release, ErrNotOurs for untagged links, ErrNameTaken when a
// tap name is used by another link.
package netdevtest

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/paddock-vm/paddock/host/netdev"
)

// Op names an operation of netdev.Interface, for Calls and FailNext.
type Op string

// Operations.
const (
	OpEnsureBridge Op = "EnsureBridge"
	OpAcquireTap   Op = "AcquireTap"
	OpReleaseTap   Op = "ReleaseTap"
	OpProbeTap     Op = "ProbeTap"
	OpListOwned    Op = "ListOwned"
)

type link struct {
	name   string
	index  int
	typ    string // "tuntap", "bridge", "veth", ...
	alias  string
	master string
	owner  netdev.Owner
	up     bool
}

// Fake is an in-memory netdev.Interface. The zero value is not usable; call New.
type Fake struct {
	mu    sync.Mutex
	cfg   netdev.Config
	links map[string]*link
	next  int
	calls []string
	fail  map[Op][]error
}

var _ netdev.Interface = (*Fake)(nil)

// New returns an empty fake host for cfg (defaults applied).
func New(cfg netdev.Config) *Fake {
	return &Fake{cfg: cfg.WithDefaults(), links: map[string]*link{}, next: 2, fail: map[Op][]error{}}
}

// FailNext makes the next call of op return err (queued: several calls
// queue several failures). A failing call records "<op> ... -> error" and
// changes nothing.
func (f *Fake) FailNext(op Op, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[op] = append(f.fail[op], err)
}

func (f *Fake) takeFail(op Op) error {
	q := f.fail[op]
	if len(q) == 0 {
		return nil
	}
	f.fail[op] = q[1:]
	return q[0]
}

func (f *Fake) record(format string, args ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

// Calls returns the recorded calls, one line each, e.g.
// "AcquireTap vm1 owner=1000:1000 -> pdk-vm1 created".
func (f *Fake) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// ResetCalls forgets the recorded calls.
func (f *Fake) ResetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
}

// AddForeign adds a link paddock does not own (alias may be empty) — e.g. to
// check that a caller survives ErrNotOurs.
func (f *Fake) AddForeign(name, typ, alias string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.links[name] = &link{name: name, index: f.nextIndex(), typ: typ, alias: alias, up: true}
}

// AddOrphan adds the tagged tap of vmID as a crashed daemon would have left
// it, for orphan-sweep tests. It returns the tap name.
func (f *Fake) AddOrphan(vmID string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := netdev.TapName(vmID)
	f.links[name] = &link{name: name, index: f.nextIndex(), typ: "tuntap", alias: netdev.TapAlias(vmID), master: f.cfg.Bridge, owner: netdev.NoOwner, up: true}
	return name
}

// Remove deletes a link behind paddock's back (as an administrator would).
func (f *Fake) Remove(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.links, name)
}

// Taps returns the names of the paddock taps present, sorted.
func (f *Fake) Taps() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, l := range f.links {
		if f.ours(l) {
			out = append(out, l.name)
		}
	}
	slices.Sort(out)
	return out
}

// State renders the fake host as canonical text, one link per line sorted by
// name, for golden comparisons:
//
//	bridge paddock0 alias=paddock:bridge up
//	tuntap pdk-vm1 alias=paddock:vm:vm1 master=paddock0 owner=1000:1000 up
func (f *Fake) State() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := make([]string, 0, len(f.links))
	for n := range f.links {
		names = append(names, n)
	}
	slices.Sort(names)
	var b strings.Builder
	for _, n := range names {
		l := f.links[n]
		fmt.Fprintf(&b, "%s %s", l.typ, l.name)
		if l.alias != "" {
			fmt.Fprintf(&b, " alias=%s", l.alias)
		}
		if l.master != "" {
			fmt.Fprintf(&b, " master=%s", l.master)
		}
		if l.typ == "tuntap" {
			fmt.Fprintf(&b, " owner=%s", l.owner)
		}
		if l.up {
			b.WriteString(" up")
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func (f *Fake) nextIndex() int { f.next++; return f.next }

func (f *Fake) ours(l *link) bool {
	kind, id, ok := netdev.ParseAlias(l.alias)
	return ok && kind == netdev.KindTap && l.typ == "tuntap" && netdev.TapName(id) == l.name
}

func (f *Fake) gateway() netip.Prefix {
	a, err := netdev.NewAllocator(f.cfg.Subnet)
	if err != nil {
		return netip.Prefix{}
	}
	return a.GatewayPrefix()
}

func (f *Fake) ensureBridge() (*netdev.Bridge, error) {
	name := f.cfg.Bridge
	l := f.links[name]
	created := false
	switch {
	case l == nil:
		l = &link{name: name, index: f.nextIndex(), typ: "bridge", alias: netdev.BridgeAlias, up: true}
		f.links[name] = l
		created = true
	case l.typ != "bridge" || l.alias != netdev.BridgeAlias:
		return nil, fmt.Errorf("bridge %s (alias %q): %w", name, l.alias, netdev.ErrNotOurs)
	}
	l.up = true
	return &netdev.Bridge{Name: name, Ifindex: l.index, MAC: netdev.BridgeMAC(name), Gateway: f.gateway(), MTU: f.mtu(), Created: created}, nil
}

func (f *Fake) mtu() int {
	if f.cfg.MTU > 0 {
		return f.cfg.MTU
	}
	return 1500
}

// EnsureBridge implements netdev.Interface.
func (f *Fake) EnsureBridge(ctx context.Context) (*netdev.Bridge, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.pre(ctx, OpEnsureBridge); err != nil {
		f.record("EnsureBridge -> %v", err)
		return nil, err
	}
	br, err := f.ensureBridge()
	if err != nil {
		f.record("EnsureBridge -> %v", err)
		return nil, err
	}
	f.record("EnsureBridge -> %s created=%v", br.Name, br.Created)
	return br, nil
}

func (f *Fake) pre(ctx context.Context, op Op) error {
	if err := f.takeFail(op); err != nil {
		return err
	}
	if ctx != nil && op != OpReleaseTap {
		return ctx.Err()
	}
	return nil
}

// AcquireTap implements netdev.Interface.
func (f *Fake) AcquireTap(ctx context.Context, vmID string, owner netdev.Owner) (*netdev.Tap, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fail := func(err error) (*netdev.Tap, error) {
		f.record("AcquireTap %s owner=%s -> %v", vmID, owner, err)
		return nil, err
	}
	if err := netdev.ValidVMID(vmID); err != nil {
		return fail(err)
	}
	if err := f.pre(ctx, OpAcquireTap); err != nil {
		return fail(err)
	}
	br, err := f.ensureBridge()
	if err != nil {
		return fail(err)
	}
	name := netdev.TapName(vmID)
	tap := &netdev.Tap{Name: name, MAC: netdev.GuestMAC(vmID), HostMAC: netdev.HostMAC(vmID), Alias: netdev.TapAlias(vmID), VMID: vmID, Bridge: br.Name}
	l := f.links[name]
	what := "created"
	switch {
	case l == nil:
		l = &link{name: name, index: f.nextIndex(), typ: "tuntap", alias: tap.Alias, owner: owner}
		f.links[name] = l
	case l.alias != tap.Alias || l.typ != "tuntap":
		return fail(fmt.Errorf("tap %s for VM %s: a %s link with alias %q exists: %w", name, vmID, l.typ, l.alias, netdev.ErrNameTaken))
	default:
		tap.Adopted = true
		what = "adopted"
		if owner.UID >= 0 {
			l.owner.UID = owner.UID
		}
		if owner.GID >= 0 {
			l.owner.GID = owner.GID
		}
	}
	l.master, l.up = br.Name, true
	tap.Ifindex = l.index
	f.record("AcquireTap %s owner=%s -> %s %s", vmID, owner, name, what)
	return tap, nil
}

// ReleaseTap implements netdev.Interface.
func (f *Fake) ReleaseTap(ctx context.Context, name string, ifindex int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	done := func(res string, err error) error {
		if err != nil {
			res = err.Error()
		}
		f.record("ReleaseTap %s %d -> %s", name, ifindex, res)
		return err
	}
	if err := f.pre(ctx, OpReleaseTap); err != nil {
		return done("", err)
	}
	var l *link
	switch {
	case name != "":
		l = f.links[name]
	case ifindex > 0:
		for _, c := range f.links {
			if c.index == ifindex {
				l = c
			}
		}
	default:
		return done("", fmt.Errorf("release tap: no name or ifindex"))
	}
	if l == nil {
		return done("absent", nil)
	}
	if !f.ours(l) {
		return done("", fmt.Errorf("release tap %s: %s link with alias %q: %w", l.name, l.typ, l.alias, netdev.ErrNotOurs))
	}
	delete(f.links, l.name)
	return done("deleted", nil)
}

// ProbeTap implements netdev.Interface.
func (f *Fake) ProbeTap(name string) (exists, ours bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.takeFail(OpProbeTap); err != nil {
		f.record("ProbeTap %s -> %v", name, err)
		return false, false, err
	}
	l := f.links[name]
	exists = l != nil
	ours = exists && f.ours(l)
	f.record("ProbeTap %s -> exists=%v ours=%v", name, exists, ours)
	return exists, ours, nil
}

// ListOwned implements netdev.Interface.
func (f *Fake) ListOwned(ctx context.Context) ([]netdev.Owned, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.pre(ctx, OpListOwned); err != nil {
		f.record("ListOwned -> %v", err)
		return nil, err
	}
	var out []netdev.Owned
	for _, l := range f.links {
		kind, id, ok := netdev.ParseAlias(l.alias)
		if !ok {
			continue
		}
		o := netdev.Owned{Kind: kind, Name: l.name, Ifindex: l.index, VMID: id, Alias: l.alias, Type: l.typ}
		switch kind {
		case netdev.KindTap:
			o.Valid = f.ours(l)
		case netdev.KindBridge:
			o.Valid = l.typ == "bridge"
		}
		out = append(out, o)
	}
	slices.SortFunc(out, func(a, b netdev.Owned) int { return a.Ifindex - b.Ifindex })
	f.record("ListOwned -> %d", len(out))
	return out, nil
}
