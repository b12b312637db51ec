package netdev_test

import (
	"context"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/paddock-vm/paddock/host/netdev"
	"github.com/paddock-vm/paddock/host/netdev/netdevtest"
)

type nsHost struct{ h *netlink.Handle }

func (n nsHost) AddForeign(name string) error {
	a := netlink.NewLinkAttrs()
	a.Name = name
	return n.h.LinkAdd(&netlink.Veth{LinkAttrs: a, PeerName: "pdkt-cpeer"})
}

func (n nsHost) RemoveForeign(name string) error {
	l, err := n.h.LinkByName(name)
	if err != nil {
		return err
	}
	return n.h.LinkDel(l)
}

func (n nsHost) Exists(name string) bool {
	_, err := n.h.LinkByName(name)
	return err == nil
}

// The real Manager passes the same contract as netdevtest.Fake.
func TestManagerContract(t *testing.T) {
	ns, h := netdev.NewTestNamespace(t)
	m, err := netdev.New(netdev.Config{}, ns)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	netdevtest.Contract(t, m, nsHost{h})
	if err := m.ReleaseBridge(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
}
