package netfilter

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/errdefs"
	"github.com/paddock-vm/paddock/host/sysctl"
)

// Manager keeps paddock's tables in one network namespace. It is safe for
// concurrent use; operations are serialised. It holds no descriptor: each
// operation opens its own netlink socket.
type Manager struct {
	cfg Config
	ns  netns.NsHandle // netns.None(): the caller's own

	mu sync.Mutex
}

// New returns a Manager for cfg working in the network namespace ns
// (netns.None() for the calling process's; tests pass their own). The caller
// keeps ownership of ns, which must stay open while the Manager is used.
func New(cfg Config, ns netns.NsHandle) (*Manager, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.HostAccess = slices.Clone(cfg.HostAccess)
	return &Manager{cfg: cfg, ns: ns}, nil
}

// Config returns the effective configuration.
func (m *Manager) Config() Config { return m.cfg }

// BaseResult says what EnsureBase changed.
type BaseResult struct {
	// RulesChanged: tables, base chains or base rules were written (they
	// were missing or differed). False when everything was already right.
	RulesChanged bool
	// ForwardingEnabled: net.ipv4.ip_forward was off and EnsureBase turned
	// it on (the daemon logs this).
	ForwardingEnabled bool
}

// EnsureBase makes paddock's tables, base chains and base rules exactly
// what Config asks for, and turns on net.ipv4.ip_forward. When everything
// is already right nothing is written; otherwise the base rules are
// replaced in one atomic batch and VM rules are left as they are.
func (m *Manager) EnsureBase(ctx context.Context) (BaseResult, error) {
	var res BaseResult
	if err := ctx.Err(); err != nil {
		return res, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	old, changed, err := sysctl.Ensure(m.ns, "net/ipv4/ip_forward", "1")
	if err != nil {
		return res, fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	res.ForwardingEnabled = changed && old == "0"
	res.RulesChanged, err = m.batch("ensure base rules", func(c *nftables.Conn, st *state) (bool, error) {
		return m.queueBase(c, st)
	})
	return res, err
}

// ApplyVM makes the VM's rules (tagged VMTag(v.ID)) exactly those v asks for:
// anti-spoofing on its tap, DNAT for its published ports, its shared group.
// Old and new rules are swapped in one atomic batch; when the kernel already
// holds exactly these rules nothing is written (changed is false). The base
// is repaired in the same batch if it is missing or differs.
func (m *Manager) ApplyVM(ctx context.Context, v VM) (changed bool, err error) {
	if err := v.Validate(m.cfg); err != nil {
		return false, err
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	v.MAC = slices.Clone(v.MAC)
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.batch("apply rules of VM "+v.ID, func(c *nftables.Conn, st *state) (bool, error) {
		base, err := m.queueBase(c, st)
		if err != nil {
			return false, err
		}
		vm, err := m.queueVM(c, st, VMTag(v.ID), vmRules(m.cfg, v))
		return base || vm, err
	})
}

// ReleaseVM deletes every rule of the VM (and its group's chain when it was
// the last member) in one atomic batch. No rules, or no table, is success.
func (m *Manager) ReleaseVM(ctx context.Context, vmID string) error {
	if err := ValidVMID(vmID); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	_, err := m.batch("release rules of VM "+vmID, func(c *nftables.Conn, st *state) (bool, error) {
		return m.queueVM(c, st, VMTag(vmID), nil)
	})
	return err
}

// ProbeVM reports whether any rule carries the VM's tag.
func (m *Manager) ProbeVM(ctx context.Context, vmID string) (bool, error) {
	if err := ValidVMID(vmID); err != nil {
		return false, err
	}
	ids, err := m.owners(ctx)
	return ids[vmID], err
}

// ListVMs returns the ids of the VMs that own rules, sorted (for the
// daemon's orphan sweep).
func (m *Manager) ListVMs(ctx context.Context) ([]string, error) {
	ids, err := m.owners(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(ids))
	for id := range ids {
		out = append(out, id)
	}
	slices.Sort(out)
	return out, nil
}

func (m *Manager) owners(ctx context.Context) (map[string]bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := m.conn()
	if err != nil {
		return nil, classify("list paddock's rules", err)
	}
	st, err := m.read(c)
	if err != nil {
		return nil, classify("list paddock's rules", err)
	}
	ids := map[string]bool{}
	for _, id := range st.order {
		for _, r := range st.chains[id].rules {
			if vm, ok := ParseTag(tagOf(r)); ok {
				ids[vm] = true
			}
		}
	}
	return ids, nil
}

func (m *Manager) conn() (*nftables.Conn, error) {
	if m.ns.IsOpen() {
		return nftables.New(nftables.WithNetNSFd(int(m.ns)))
	}
	return nftables.New()
}

// batch reads the tables, lets queue add what must change to one batch and
// sends it. A batch that fails because the tables changed under it (a rule
// or chain gone, a chain still in use) is read and queued again, once.
func (m *Manager) batch(op string, queue func(*nftables.Conn, *state) (bool, error)) (bool, error) {
	for attempt := 0; ; attempt++ {
		c, err := m.conn()
		if err != nil {
			return false, classify(op, err)
		}
		st, err := m.read(c)
		if err != nil {
			return false, classify(op, err)
		}
		changed, err := queue(c, st)
		if err != nil {
			return false, fmt.Errorf("%s: %w", op, err)
		}
		if !changed {
			return false, nil
		}
		err = c.Flush()
		if err == nil {
			return true, nil
		}
		if attempt == 0 && (errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EBUSY)) {
			continue
		}
		return false, classify(op, err)
	}
}

// classify names the failures users can act on.
func classify(op string, err error) error {
	switch {
	case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES):
		return errdefs.Newf(errdefs.ErrPermissionDenied, "%s: nftables: %w (CAP_NET_ADMIN is needed)", op, err)
	case errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EAFNOSUPPORT) ||
		errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.ENOENT):
		// ENOENT here is a batch that failed twice: a chain type or an
		// expression the kernel does not know.
		return fmt.Errorf("%w: %s: %v", ErrNoNFTables, op, err)
	}
	return fmt.Errorf("%s: nftables: %w", op, err)
}

// state is what the kernel holds in paddock's tables.
type state struct {
	tables map[nftables.TableFamily]bool
	chains map[chainID]*kchain
	order  []chainID // the kernel's order, for stable iteration
}

type chainID struct {
	fam  nftables.TableFamily
	name string
}

type kchain struct {
	chain *nftables.Chain
	rules []*nftables.Rule
}

var families = []nftables.TableFamily{nftables.TableFamilyINet, nftables.TableFamilyBridge}

func (m *Manager) read(c *nftables.Conn) (*state, error) {
	st := &state{tables: map[nftables.TableFamily]bool{}, chains: map[chainID]*kchain{}}
	for _, fam := range families {
		tables, err := c.ListTablesOfFamily(fam)
		if err != nil {
			return nil, fmt.Errorf("list %s tables: %w", famName(fam), err)
		}
		for _, t := range tables {
			if t.Name == m.cfg.Table {
				st.tables[fam] = true
			}
		}
		if !st.tables[fam] {
			continue
		}
		chains, err := c.ListChainsOfTableFamily(fam)
		if err != nil {
			return nil, fmt.Errorf("list %s chains: %w", famName(fam), err)
		}
		for _, ch := range chains {
			if ch.Table == nil || ch.Table.Name != m.cfg.Table {
				continue
			}
			ch.Table = m.table(fam)
			rules, err := c.GetRules(ch.Table, ch)
			if err != nil {
				return nil, fmt.Errorf("list rules of %s %s %s: %w", famName(fam), m.cfg.Table, ch.Name, err)
			}
			id := chainID{fam, ch.Name}
			st.chains[id] = &kchain{chain: ch, rules: rules}
			st.order = append(st.order, id)
		}
	}
	return st, nil
}

func (m *Manager) table(fam nftables.TableFamily) *nftables.Table {
	return &nftables.Table{Name: m.cfg.Table, Family: fam}
}

func (m *Manager) chainOf(fam nftables.TableFamily, name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: m.table(fam)}
}

func tagOf(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

// queueBase queues what makes the tables, base chains and base rules right,
// and reports whether anything was queued.
func (m *Manager) queueBase(c *nftables.Conn, st *state) (bool, error) {
	changed := false
	for _, fam := range families {
		if !st.tables[fam] {
			c.AddTable(m.table(fam))
			changed = true
		}
	}
	want := map[chainID][]rule{}
	for _, r := range baseRules(m.cfg) {
		id := chainID{r.fam, r.chain}
		want[id] = append(want[id], r)
	}
	accept := nftables.ChainPolicyAccept
	for _, cs := range baseChains {
		id := chainID{cs.fam, cs.name}
		kc := st.chains[id]
		spec := &nftables.Chain{Name: cs.name, Table: m.table(cs.fam), Type: cs.typ, Hooknum: cs.hook, Priority: cs.prio}
		if cs.hook != nil {
			spec.Policy = &accept
		}
		var have []*nftables.Rule
		switch {
		case kc == nil:
			c.AddChain(spec)
			changed = true
		case !chainMatches(kc.chain, cs):
			// A hook cannot be changed in place: empty, delete, re-create.
			for _, r := range kc.rules {
				if err := c.DelRule(r); err != nil {
					return false, err
				}
			}
			c.DelChain(m.chainOf(cs.fam, cs.name))
			c.AddChain(spec)
			changed = true
		default:
			for _, r := range kc.rules {
				if tagOf(r) == BaseTag {
					have = append(have, r)
				}
			}
		}
		same, err := sameRules(have, want[id])
		if err != nil {
			return false, err
		}
		if same {
			continue
		}
		changed = true
		for _, r := range have {
			if err := c.DelRule(r); err != nil {
				return false, err
			}
		}
		for _, r := range want[id] {
			m.addRule(c, r)
		}
	}
	return changed, nil
}

func chainMatches(k *nftables.Chain, cs chainSpec) bool {
	if cs.hook == nil {
		return k.Hooknum == nil
	}
	return k.Hooknum != nil && *k.Hooknum == *cs.hook &&
		k.Priority != nil && *k.Priority == *cs.prio &&
		k.Type == cs.typ &&
		(k.Policy == nil || *k.Policy == nftables.ChainPolicyAccept)
}

// queueVM queues what replaces the rules tagged tag with want (nil: delete
// them), and reports whether anything was queued.
func (m *Manager) queueVM(c *nftables.Conn, st *state, tag string, want []rule) (bool, error) {
	have := map[chainID][]*nftables.Rule{}
	for _, id := range st.order {
		for _, r := range st.chains[id].rules {
			if tagOf(r) == tag {
				have[id] = append(have[id], r)
			}
		}
	}
	wantBy := map[chainID][]rule{}
	for _, r := range want {
		id := chainID{r.fam, r.chain}
		wantBy[id] = append(wantBy[id], r)
	}
	same := len(have) == len(wantBy)
	for id, rs := range wantBy {
		if !same {
			break
		}
		ok, err := sameRules(have[id], rs)
		if err != nil {
			return false, err
		}
		same = ok
	}
	if same {
		return false, nil
	}
	for _, id := range st.order {
		for _, r := range have[id] {
			if err := c.DelRule(r); err != nil {
				return false, err
			}
		}
	}
	for _, r := range want {
		id := chainID{r.fam, r.chain}
		if strings.HasPrefix(r.chain, groupChainPrefix) && st.chains[id] == nil {
			c.AddChain(m.chainOf(r.fam, r.chain))
			st.chains[id] = &kchain{} // once per batch
		}
	}
	for _, r := range want {
		m.addRule(c, r)
	}
	// A group chain left empty and unreferenced goes too.
	for _, id := range st.order {
		if !strings.HasPrefix(id.name, groupChainPrefix) || wantBy[id] != nil {
			continue
		}
		if len(st.chains[id].rules) != len(have[id]) {
			continue // other members remain
		}
		if referenced(st, have, id) {
			continue
		}
		c.DelChain(m.chainOf(id.fam, id.name))
	}
	return true, nil
}

// referenced reports whether a rule not about to be deleted jumps to id.
func referenced(st *state, deleted map[chainID][]*nftables.Rule, id chainID) bool {
	for _, cid := range st.order {
		if cid.fam != id.fam {
			continue
		}
		for _, r := range st.chains[cid].rules {
			if slices.Contains(deleted[cid], r) {
				continue
			}
			for _, e := range r.Exprs {
				if v, ok := e.(*expr.Verdict); ok && v.Chain == id.name {
					return true
				}
			}
		}
	}
	return false
}

func (m *Manager) addRule(c *nftables.Conn, r rule) {
	c.AddRule(&nftables.Rule{
		Table:    m.table(r.fam),
		Chain:    m.chainOf(r.fam, r.chain),
		Exprs:    r.exprs(),
		UserData: userdata.AppendString(nil, userdata.TypeComment, r.tag),
	})
}

// sameRules reports whether the kernel's rules are want, in order.
func sameRules(have []*nftables.Rule, want []rule) (bool, error) {
	if len(have) != len(want) {
		return false, nil
	}
	for i, r := range want {
		if tagOf(have[i]) != r.tag {
			return false, nil
		}
		k1, err := ruleKey(r.fam, have[i].Exprs)
		if err != nil {
			return false, nil // an expression this library cannot write back: replace it
		}
		k2, err := ruleKey(r.fam, r.exprs())
		if err != nil {
			return false, fmt.Errorf("rule %s: %w", r, err)
		}
		if k1 != k2 {
			return false, nil
		}
	}
	return true, nil
}
