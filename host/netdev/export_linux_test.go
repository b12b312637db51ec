package netdev

import (
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NewTestNamespace exposes the namespace harness to the external test
// package (contract_linux_test.go).
func NewTestNamespace(t *testing.T) (netns.NsHandle, *netlink.Handle) {
	t.Helper()
	tns := newNS(t)
	return tns.ns, tns.h
}
