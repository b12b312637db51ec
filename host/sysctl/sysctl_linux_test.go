package sysctl

import (
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

func TestBadNames(t *testing.T) {
	for _, name := range []string{"", "/net/ipv4/ip_forward", "net/../kernel/x", "net//ipv4", "net.ipv4.ip_forward/"} {
		if _, err := Get(netns.None(), name); err == nil || !strings.Contains(err.Error(), "sysctl name") {
			t.Errorf("Get(%q): %v", name, err)
		}
		if _, _, err := Ensure(netns.None(), name, "1"); err == nil || !strings.Contains(err.Error(), "sysctl name") {
			t.Errorf("Ensure(%q): %v", name, err)
		}
	}
}

func TestGet(t *testing.T) {
	v, err := Get(netns.None(), "net/ipv4/ip_forward")
	if err != nil || (v != "0" && v != "1") {
		t.Errorf("ip_forward = %q, %v", v, err)
	}
}
