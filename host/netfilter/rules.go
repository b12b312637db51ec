package netfilter

// What the rules are, built from small terms that each carry their nft
// expressions and the text nft would print for them (String, for tests,
// logs and errors). Nothing here talks to the kernel.

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Chain names.
const (
	chainPrerouting  = "prerouting"
	chainOutput      = "output"
	chainPostrouting = "postrouting"
	chainInput       = "input"
	chainForward     = "forward"
	chainPublished   = "published"
	chainGroups      = "groups"
	chainAntispoof   = "antispoof"
	// groupChainPrefix starts a shared group's chain (inet).
	groupChainPrefix = "grp-"
)

// chainSpec is a chain paddock keeps; hook == nil for a regular chain.
type chainSpec struct {
	fam  nftables.TableFamily
	name string
	typ  nftables.ChainType
	hook *nftables.ChainHook
	prio *nftables.ChainPriority
}

// bridgePriorityFilter is the bridge family's "filter" priority.
var bridgePriorityFilter = nftables.ChainPriorityRef(-200)

// baseChains are the chains EnsureBase keeps, in creation order (a chain is
// created before the rules that jump to it).
var baseChains = []chainSpec{
	{fam: nftables.TableFamilyINet, name: chainPublished},
	{fam: nftables.TableFamilyINet, name: chainGroups},
	{nftables.TableFamilyINet, chainPrerouting, nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest},
	{nftables.TableFamilyINet, chainOutput, nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest},
	{nftables.TableFamilyINet, chainPostrouting, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource},
	{nftables.TableFamilyINet, chainInput, nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter},
	{nftables.TableFamilyINet, chainForward, nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter},
	{fam: nftables.TableFamilyBridge, name: chainAntispoof},
	{nftables.TableFamilyBridge, chainPrerouting, nftables.ChainTypeFilter, nftables.ChainHookPrerouting, bridgePriorityFilter},
}

// rule is one rule: where it goes, who owns it, what it matches and does.
type rule struct {
	fam   nftables.TableFamily
	chain string
	tag   string
	terms []term
}

// term is a piece of a rule: a match, or the final statement.
type term struct {
	text  string
	exprs []expr.Any
}

func (r rule) String() string {
	parts := make([]string, 0, len(r.terms)+1)
	for _, t := range r.terms {
		parts = append(parts, t.text)
	}
	return fmt.Sprintf("%s %s: %s comment %q", famName(r.fam), r.chain, strings.Join(parts, " "), r.tag)
}

func (r rule) exprs() []expr.Any {
	var out []expr.Any
	for _, t := range r.terms {
		out = append(out, t.exprs...)
	}
	return out
}

func famName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyBridge:
		return "bridge"
	}
	return fmt.Sprintf("family %d", f)
}

// baseRules are the rules tagged BaseTag, per chain in order.
func baseRules(c Config) []rule {
	br := c.Bridge
	inet := func(chain string, terms ...term) rule {
		return rule{nftables.TableFamilyINet, chain, BaseTag, terms}
	}
	loopback := netip.MustParsePrefix("127.0.0.0/8")
	var rs []rule
	rs = append(rs,
		inet(chainPrerouting, jump(chainPublished)),
		inet(chainOutput, jump(chainPublished)),
	)
	if c.NAT {
		rs = append(rs, inet(chainPostrouting, ifname(false, br, false), ip4(), ipAddr(false, c.Subnet), masquerade()))
	}
	rs = append(rs,
		// Host-originated traffic to 127.0.0.1 that a published port sent out
		// of the bridge: the guest must answer someone it can reach.
		inet(chainPostrouting, ifname(false, br, true), ip4(), ipAddr(false, loopback), masquerade()),

		inet(chainInput, ifname(true, br, true), ctState(), accept()),
		// route_localnet on the bridge must not open the host's loopback
		// services to guests.
		inet(chainInput, ifname(true, br, true), ip4(), ipAddr(true, loopback), drop()),
	)
	// A guest may ping its gateway (how people check a VM's network) and
	// nothing more of the host's ICMP.
	rs = append(rs, inet(chainInput, ifname(true, br, true), ip4(), ipAddr(true, netip.PrefixFrom(c.Gateway, 32)), icmpEcho(), accept()))
	for _, a := range c.HostAccess {
		rs = append(rs, inet(chainInput, ifname(true, br, true), ip4(), ipAddr(true, netip.PrefixFrom(c.Gateway, 32)), l4proto(a.Proto), dport(a.Port), accept()))
	}
	rs = append(rs,
		inet(chainInput, ifname(true, br, true), drop()),

		inet(chainForward, ifname(false, br, true), ctState(), accept()),
		inet(chainForward, ifname(false, br, true), ctStatusDNAT(), accept()),
		inet(chainForward, ifname(true, br, true), ifname(false, br, true), jump(chainGroups)),
		inet(chainForward, ifname(true, br, true), ifname(false, br, true), drop()),
		inet(chainForward, ifname(false, br, true), drop()),
		inet(chainForward, ifname(true, br, true), ctState(), accept()),
	)
	if c.NAT {
		rs = append(rs, inet(chainForward, ifname(true, br, true), accept()))
	} else {
		rs = append(rs, inet(chainForward, ifname(true, br, true), drop()))
	}
	bridge := func(terms ...term) rule {
		return rule{nftables.TableFamilyBridge, chainPrerouting, BaseTag, terms}
	}
	// Taps are recognised by name: matching the bridge (meta ibrname) needs
	// nft_meta_bridge, which not every kernel has.
	rs = append(rs,
		bridge(ifnamePrefix(c.TapPrefix), jump(chainAntispoof)),
		bridge(ifnamePrefix(c.TapPrefix), drop()),
	)
	return rs
}

// vmRules are the rules of one VM (tagged VMTag(v.ID)).
func vmRules(c Config, v VM) []rule {
	tag := VMTag(v.ID)
	var rs []rule
	bridge := func(terms ...term) rule {
		return rule{nftables.TableFamilyBridge, chainAntispoof, tag, terms}
	}
	host := netip.PrefixFrom(v.IP, 32)
	rs = append(rs,
		bridge(ifname(true, v.Tap, true), etherSaddr(v.MAC), etherType(unix.ETH_P_IP), ipAddr(false, host), accept()),
		bridge(ifname(true, v.Tap, true), etherSaddr(v.MAC), etherType(unix.ETH_P_ARP), arpEthernetIPv4(), arpSender(v.MAC, v.IP), accept()),
		bridge(ifname(true, v.Tap, true), drop()),
	)
	for _, p := range v.Ports {
		dst := fibDaddrLocal()
		if p.HostIP.IsValid() {
			dst = ipAddr(true, netip.PrefixFrom(p.HostIP, 32))
		}
		rs = append(rs, rule{nftables.TableFamilyINet, chainPublished, tag,
			[]term{ip4(), dst, l4proto(p.Proto), dport(p.HostPort), dnat(v.IP, p.GuestPort)}})
	}
	if v.Group != "" {
		g := groupChain(v.Group)
		rs = append(rs,
			rule{nftables.TableFamilyINet, chainGroups, tag, []term{ip4(), ipAddr(false, host), jump(g)}},
			rule{nftables.TableFamilyINet, g, tag, []term{ip4(), ipAddr(true, host), accept()}},
		)
	}
	return rs
}

// groupChain names the chain of a shared group: a hash, so any group name
// the caller chooses makes a valid, fixed-length chain name.
func groupChain(group string) string {
	sum := sha256.Sum256([]byte(group))
	return fmt.Sprintf("%s%x", groupChainPrefix, sum[:8])
}

// Terms. Every match loads into register 1 and compares it.

func ifnameBytes(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func cmpOp(eq bool) (expr.CmpOp, string) {
	if eq {
		return expr.CmpOpEq, ""
	}
	return expr.CmpOpNeq, "!= "
}

// ifname matches the input (in) or output interface name.
func ifname(in bool, name string, eq bool) term {
	key, word := expr.MetaKeyOIFNAME, "oifname"
	if in {
		key, word = expr.MetaKeyIIFNAME, "iifname"
	}
	op, neg := cmpOp(eq)
	return term{fmt.Sprintf("%s %s%q", word, neg, name), []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: ifnameBytes(name)},
	}}
}

// ifnamePrefix matches input interfaces whose name starts with prefix.
func ifnamePrefix(prefix string) term {
	return term{fmt.Sprintf("iifname %q", prefix+"*"), []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(prefix)},
	}}
}

// ip4 restricts an inet rule to IPv4 (before any IPv4 header match).
func ip4() term {
	return term{"meta nfproto ipv4", []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}}
}

// ipAddr matches the IPv4 destination (dst) or source address against p.
func ipAddr(dst bool, p netip.Prefix) term {
	off, word := uint32(12), "saddr"
	if dst {
		off, word = 16, "daddr"
	}
	text := fmt.Sprintf("ip %s %s", word, p.Addr())
	es := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4}}
	if p.Bits() < 32 {
		mask := net.CIDRMask(p.Bits(), 32)
		es = append(es, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)})
		text = fmt.Sprintf("ip %s %s", word, p.Masked())
	}
	a := p.Masked().Addr().As4()
	es = append(es, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]})
	return term{text, es}
}

func protoNum(proto string) byte {
	if proto == "udp" {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

func l4proto(proto string) term {
	return term{"meta l4proto " + proto, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{protoNum(proto)}},
	}}
}

// icmpEcho matches ICMP echo requests (after ip4).
func icmpEcho() term {
	return term{"icmp type echo-request", []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{8}},
	}}
}

// dport matches the transport destination port (after l4proto).
func dport(port uint16) term {
	return term{fmt.Sprintf("th dport %d", port), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}}
}

// ctState matches established and related connections.
func ctState() term {
	return term{"ct state established,related", []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}}
}

// ipsDstNAT is IPS_DST_NAT, the conntrack status bit of a DNATed connection.
const ipsDstNAT = 1 << 5

// ctStatusDNAT matches connections whose destination was translated.
func ctStatusDNAT() term {
	return term{"ct status dnat", []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}}
}

// fibDaddrLocal matches packets to any address of the host.
func fibDaddrLocal() term {
	return term{"fib daddr type local", []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}}
}

func etherSaddr(mac net.HardwareAddr) term {
	return term{"ether saddr " + mac.String(), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(mac)},
	}}
}

func etherType(t uint16) term {
	name := map[uint16]string{unix.ETH_P_IP: "ip", unix.ETH_P_ARP: "arp"}[t]
	return term{"ether type " + name, []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(t)},
	}}
}

// arpEthernetIPv4 matches ARP for IPv4 over Ethernet (htype 1, ptype ip,
// hlen 6, plen 4): the only layout whose sender fields arpSender reads.
func arpEthernetIPv4() term {
	return term{"arp htype 1 arp ptype ip arp hlen 6 arp plen 4", []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 0, Len: 6},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 1, 0x08, 0x00, 6, 4}},
	}}
}

// arpSender matches the sender hardware and protocol addresses (one
// 10-byte load: they are adjacent).
func arpSender(mac net.HardwareAddr, ip netip.Addr) term {
	a := ip.As4()
	data := append(append([]byte{}, mac...), a[:]...)
	return term{fmt.Sprintf("arp saddr ether %s arp saddr ip %s", mac, ip), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 10},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data},
	}}
}

func accept() term {
	return term{"accept", []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}}
}

func drop() term {
	return term{"drop", []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}}
}

func jump(chain string) term {
	return term{"jump " + chain, []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}}
}

func masquerade() term {
	return term{"masquerade", []expr.Any{&expr.Masq{}}}
}

// dnat translates to ip:port. The range's max registers repeat the min ones,
// as the kernel reports them back, so the rule compares equal to its copy.
func dnat(ip netip.Addr, port uint16) term {
	a := ip.As4()
	return term{fmt.Sprintf("dnat ip to %s:%d", ip, port), []expr.Any{
		&expr.Immediate{Register: 1, Data: a[:]},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: 2, RegProtoMax: 2, Specified: true},
	}}
}

// ruleKey is a rule's identity for comparison with the kernel's copy: its
// expressions as marshalled for the kernel.
func ruleKey(fam nftables.TableFamily, es []expr.Any) (string, error) {
	var b []byte
	for _, e := range es {
		m, err := expr.Marshal(byte(fam), e)
		if err != nil {
			return "", fmt.Errorf("marshal %T: %w", e, err)
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(m)))
		b = append(b, m...)
	}
	return string(b), nil
}
