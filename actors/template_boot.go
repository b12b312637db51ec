package actors

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/host/netdev"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/state"
)

// TemplateBoot is what a VM resumed from a template starts from (the
// daemon's Host.Template reads it from the template store, refusing a
// template that is not ready or whose kit or VMM changed).
type TemplateBoot struct {
	Name  string
	Disk  string // the frozen disk, base of the VM's own layer
	State string // the saved VMM state
	// StateSHA256 and StateSize are checked before the VMM reads State.
	StateSHA256 string
	StateSize   int64
	// MemorySHA256 and MemorySize, when the guest's memory was saved apart
	// (vmm.MemPath(State)), are checked before the VMM maps it.
	MemorySHA256 string
	MemorySize   int64
}

// identitySeedBytes is the fresh entropy each resumed guest gets.
const identitySeedBytes = 64

// identity is what the guest resumed for this VM must take before it runs:
// the VM's name, MAC and addresses, a fresh seed, its own config.
func (a *vmActor) identity(b *bootPlan) *agent.IdentityRequest {
	req := &agent.IdentityRequest{Hostname: a.vm.Name, Seed: make([]byte, identitySeedBytes), Config: b.guestCfg}
	if _, err := io.ReadFull(rand.Reader, req.Seed); err != nil {
		panic("crypto/rand: " + err.Error()) // never fails on Linux
	}
	for _, ip := range b.args.IPs {
		req.IPs = append(req.IPs, ip.String())
	}
	for _, gw := range b.args.Gateways {
		req.Gateways = append(req.Gateways, gw.String())
	}
	for _, d := range b.args.DNS {
		req.DNS = append(req.DNS, d.String())
	}
	if b.vmm.Tap != nil || b.vmm.Stream != nil {
		req.MAC = netdev.GuestMAC(a.id).String()
	}
	return req
}

// verifyState refuses a saved state that is not the one saved: a torn or
// swapped file must never be half-loaded into a guest. Each of its files is
// hashed once per daemon and file identity (tens to hundreds of MB: a
// quarter second of CPU here, per resume otherwise); any write, truncation
// or replacement changes the identity (ctime cannot be set back), so it is
// hashed again.
func verifyState(tb *TemplateBoot) error {
	if err := verifyFile(tb.Name, "state", tb.State, tb.StateSHA256, tb.StateSize); err != nil {
		return err
	}
	if tb.MemorySHA256 == "" {
		return nil
	}
	return verifyFile(tb.Name, "memory", vmm.MemPath(tb.State), tb.MemorySHA256, tb.MemorySize)
}

// verifyFile checks one file of a template's saved state (what: "state" or
// "memory") against its recorded size and digest.
func verifyFile(template, what, path, sum string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("template %s: saved %s: %w", template, what, err)
	}
	defer f.Close()
	id, idErr := stateIdentity(f)
	if idErr == nil && verifiedStates.has(path, id, sum) {
		return nil
	}
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, size+1))
	if err != nil {
		return fmt.Errorf("template %s: read saved %s: %w", template, what, err)
	}
	if n != size || hex.EncodeToString(h.Sum(nil)) != sum {
		return fmt.Errorf("template %s: the saved %s is damaged (%d bytes, want %d, or its digest differs): remove the template and make it again", template, what, n, size)
	}
	if idErr == nil {
		verifiedStates.add(path, id, sum)
	}
	return nil
}

// fileIdentity tells one version of a file from another.
type fileIdentity struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64
}

func stateIdentity(f *os.File) (fileIdentity, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fileIdentity{}, err
	}
	return fileIdentity{dev: st.Dev, ino: st.Ino, size: st.Size, mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}, nil
}

// stateCache remembers which state files were hashed and found right.
type stateCache struct {
	mu sync.Mutex
	ok map[string]verifiedState
}

type verifiedState struct {
	id     fileIdentity
	sha256 string
}

var verifiedStates = &stateCache{ok: map[string]verifiedState{}}

func (c *stateCache) has(path string, id fileIdentity, sum string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.ok[path]
	return ok && v.id == id && v.sha256 == sum
}

// remember records path, as it is now, as hashed to sum (by its maker).
func (c *stateCache) remember(path, sum string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	if id, err := stateIdentity(f); err == nil {
		c.add(path, id, sum)
	}
}

func (c *stateCache) forget(path string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.ok, path)
}

func (c *stateCache) add(path string, id fileIdentity, sum string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ok[path] = verifiedState{id: id, sha256: sum}
}

// planRestore makes b the resume of the VM's template: its layer over the
// template's frozen disk, the VMM fed the saved state.
func (a *vmActor) planRestore(b *bootPlan) error {
	if a.host.Template == nil {
		return fmt.Errorf("this daemon keeps no templates")
	}
	tb, err := a.host.Template(a.vm.Spec.Template)
	if err != nil {
		return err
	}
	b.restore, b.rootfs, b.vmm.Incoming = tb, tb.Disk, tb.State
	return nil
}

// TemplateBootFrom is Host.Template over store: a VM made from a template
// reads it straight from the store, refusing one not ready or stale.
func TemplateBootFrom(store *state.TemplateStore) func(id string) (*TemplateBoot, error) {
	return func(id string) (*TemplateBoot, error) {
		t, err := store.Load(id)
		if err != nil {
			return nil, fmt.Errorf("the VM's template is gone (%w): the VM can only be deleted", err)
		}
		if t.Status != state.TemplateReady {
			return nil, fmt.Errorf("template %s is not ready", t.Name)
		}
		if p := state.Changed(t.Parts); p != "" {
			return nil, fmt.Errorf("template %s is stale: %s changed since it was saved", t.Name, p)
		}
		return &TemplateBoot{Name: t.Name, Disk: store.Path(id, state.TemplateDisk), State: store.Path(id, state.TemplateState),
			StateSHA256: t.StateSHA256, StateSize: t.StateSize, MemorySHA256: t.MemorySHA256, MemorySize: t.MemorySize}, nil
	}
}
