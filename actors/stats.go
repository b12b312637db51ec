package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/host/cgroup"
	"github.com/paddock-vm/paddock/host/vmm"
	"github.com/paddock-vm/paddock/state"
)

// Health states.
const (
	HealthHealthy     = "healthy"
	HealthDegraded    = "degraded"
	HealthUnreachable = "unreachable"
)

// StatsDeps are the Stats actor's touch-points, given at wiring time: it
// holds no pointer into the Manager or a VM.
type StatsDeps struct {
	Log *slog.Logger
	// Running lists the running VMs.
	Running func(ctx context.Context) ([]state.VM, error)
	// Agent returns a running VM's agent connection.
	Agent func(ctx context.Context, vmID string) (*agent.Client, error)
	// Stop stops a VM through its actor's normal stop path.
	Stop func(ctx context.Context, vmID, reason string) error
	// Classify probes a guest port from outside: https, http or tcp.
	Classify func(ctx context.Context, addr netip.AddrPort) (scheme, url string)
	Interval func() time.Duration
	// AutoStopDefault applies to VMs without their own auto_stop.
	AutoStopDefault func() time.Duration
	// IdleCPU is the guest CPU share (0..1) under which a VM counts as idle.
	IdleCPU float64
	// Parallel bounds concurrent collections (100 VMs do not stampede).
	Parallel int
	Events   *actor.PID
}

// Messages to the Stats actor.
type (
	// GetStats collects fresh figures and answers with *StatsResult.
	// VMID "" means every running VM the caller may see.
	GetStats struct {
		Caller Caller
		VMID   string
	}
	// Touch records user activity on a VM (exec, console, a user's stats
	// or ports request): paddock's own polling never sends it.
	Touch struct {
		VMID  string
		Cause string
	}
	// StatsResult answers GetStats.
	StatsResult struct {
		Stats []api.VMStats
		Err   error
	}
	statsTick      struct{}
	statsCollected struct {
		entries []*statsEntry
		partial bool // one VM only: others stay as they are
	}
)

// statsEntry is everything known about one running VM.
type statsEntry struct {
	vm       state.VM
	at       time.Time
	out      api.VMStats
	cpuUsec  uint64 // VMM CPU time, from cpuFrom
	cpuFrom  string // "cgroup" or "proc": a rate needs two figures of one source
	guestCPU []uint64
	// probed caches each port's classification by port, pid and process:
	// a listener is probed when it appears, not at every poll, so
	// paddock's probing never turns into guest load (TLS under TCG is dear).
	probed   map[string]api.Port
	activity time.Time
	cause    string
	// closed: the daemon closed the VM's agent connection while it was
	// sampled (its stop or delete began): a failure then says nothing of
	// the guest's health.
	closed bool
}

type statsActor struct {
	d       StatsDeps
	log     *slog.Logger
	entries map[string]*statsEntry
	touches map[string]Touch
	stop    chan struct{}
	running bool
	root    *actor.RootContext
}

func newStatsActor(d StatsDeps) actor.Actor {
	if d.Parallel <= 0 {
		d.Parallel = 4
	}
	if d.Interval == nil {
		d.Interval = func() time.Duration { return 10 * time.Second }
	}
	if d.AutoStopDefault == nil {
		d.AutoStopDefault = func() time.Duration { return 0 }
	}
	return &statsActor{d: d, log: d.Log.With("actor", NameStats)}
}

func (a *statsActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.entries, a.touches = map[string]*statsEntry{}, map[string]Touch{}
		a.root = ctx.ActorSystem().Root
		a.stop = make(chan struct{})
		self, root := ctx.Self(), ctx.ActorSystem().Root
		// An explicit ticker, not SetReceiveTimeout (protoactor caveat).
		go func(stop chan struct{}) {
			for {
				iv := a.d.Interval()
				select {
				case <-stop:
					return
				case <-time.After(iv):
					root.Send(self, &statsTick{})
				}
			}
		}(a.stop)
	case *actor.Stopping, *actor.Restarting:
		if a.stop != nil {
			close(a.stop)
			a.stop = nil
		}
	case *Ping:
		ctx.Respond(&Pong{From: NameStats})
	case *Touch:
		if e, ok := a.entries[m.VMID]; ok {
			e.activity, e.cause = time.Now(), m.Cause
		} else {
			a.touches[m.VMID] = *m
		}
	case *statsTick:
		if a.running {
			return // the previous round is still collecting
		}
		a.running = true
		self, root := ctx.Self(), ctx.ActorSystem().Root
		prev := a.snapshot()
		go func() {
			root.Send(self, &statsCollected{entries: a.collectAll(prev, "")})
		}()
	case *statsCollected:
		if !m.partial {
			a.running = false
		}
		a.merge(m.entries, !m.partial)
		a.autoStop(ctx)
	case *GetStats:
		// A direct call refreshes in the background of the caller's
		// request: collect off the mailbox, answer when done.
		sender := ctx.Sender()
		prev := a.snapshot()
		root := ctx.ActorSystem().Root
		self := ctx.Self()
		go func() {
			entries := a.collectAll(prev, m.VMID)
			// Copy the answer out before the entries go to the actor,
			// which owns them from then on.
			var out []api.VMStats
			for _, e := range entries {
				if m.Caller.May(e.vm.OwnerUID) {
					out = append(out, e.out)
				}
			}
			sort.Slice(out, func(i, j int) bool { return out[i].VMName < out[j].VMName })
			root.Send(self, &statsCollected{entries: entries, partial: m.VMID != ""})
			root.Send(sender, &StatsResult{Stats: out})
		}()
	}
}

// snapshot copies the previous figures that rates are computed against.
func (a *statsActor) snapshot() map[string]statsEntry {
	out := make(map[string]statsEntry, len(a.entries))
	for id, e := range a.entries {
		out[id] = *e
	}
	for id, t := range a.touches {
		if _, ok := out[id]; !ok {
			out[id] = statsEntry{activity: time.Now(), cause: t.Cause}
		}
	}
	return out
}

func (a *statsActor) merge(entries []*statsEntry, full bool) {
	seen := map[string]bool{}
	for _, e := range entries {
		seen[e.vm.ID] = true
		old, had := a.entries[e.vm.ID]
		if had && old.activity.After(e.activity) {
			e.activity, e.cause = old.activity, old.cause
		}
		if (!had && e.out.Health != HealthHealthy) || (had && old.out.Health != e.out.Health) {
			a.healthChanged(e, old, had)
		}
		if t, ok := a.touches[e.vm.ID]; ok {
			e.activity, e.cause = time.Now(), t.Cause
			delete(a.touches, e.vm.ID)
		}
		e.out.LastActivity = stamp(e.activity)
		e.out.ActivityCause = e.cause
		a.entries[e.vm.ID] = e
	}
	if full {
		for id := range a.entries {
			if !seen[id] {
				delete(a.entries, id) // no longer running
			}
		}
	}
}

// healthChanged logs and emits a health transition.
func (a *statsActor) healthChanged(e *statsEntry, old *statsEntry, had bool) {
	prev := ""
	if had {
		prev = old.out.Health
	}
	a.log.Info("vm health", "vm_id", e.vm.ID, "vm_name", e.vm.Name, "op", "health", "health", e.out.Health, "previous", prev, "reason", e.out.HealthReason)
	if a.d.Events != nil && a.root != nil {
		a.root.Send(a.d.Events, &emit{Owner: e.vm.OwnerUID, Event: api.Event{Kind: api.EventHealth, VMID: e.vm.ID, VMName: e.vm.Name,
			Status: e.out.Health, PreviousStatus: prev, Reason: e.out.HealthReason}})
	}
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// collectAll gathers every running VM (or one) with bounded concurrency; a
// slow or dead agent delays only its own VM.
func (a *statsActor) collectAll(prev map[string]statsEntry, only string) []*statsEntry {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vms, err := a.d.Running(ctx)
	if err != nil {
		a.log.Warn("listing running VMs for stats", "err", err)
		return nil
	}
	sem := make(chan struct{}, a.d.Parallel)
	var mu sync.Mutex
	var wg sync.WaitGroup
	var out []*statsEntry
	for _, vm := range vms {
		if only != "" && vm.ID != only {
			continue
		}
		vm := vm
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			e := a.collect(ctx, vm, prev[vm.ID])
			mu.Lock()
			out = append(out, e)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return a.stillRunning(ctx, out)
}

// stillRunning drops the failed samples of VMs that stopped or were deleted
// while they were sampled (their agent went away for that reason alone,
// which is no health change to report): those whose agent connection the
// daemon closed meanwhile, and those no longer running on the same VMM (a
// VM restarted meanwhile is another VMM). Healthy samples need no second
// look.
func (a *statsActor) stillRunning(ctx context.Context, out []*statsEntry) []*statsEntry {
	out = slices.DeleteFunc(out, func(e *statsEntry) bool { return e.closed })
	if !slices.ContainsFunc(out, func(e *statsEntry) bool { return e.out.Health != HealthHealthy }) {
		return out
	}
	vms, err := a.d.Running(ctx)
	if err != nil {
		return out
	}
	pids := make(map[string]int, len(vms))
	for _, vm := range vms {
		pids[vm.ID] = vmmPID(vm)
	}
	return slices.DeleteFunc(out, func(e *statsEntry) bool {
		pid, ok := pids[e.vm.ID]
		return e.out.Health != HealthHealthy && (!ok || pid != vmmPID(e.vm))
	})
}

func vmmPID(vm state.VM) int {
	if rt := vm.Runtime.VMM; rt != nil {
		return rt.PID
	}
	return 0
}

// collect reads one VM: host figures from /proc and sysfs, guest figures,
// health and ports through the agent (every call bounded).
func (a *statsActor) collect(ctx context.Context, vm state.VM, prev statsEntry) *statsEntry {
	now := time.Now()
	e := &statsEntry{vm: vm, at: now, activity: prev.activity, cause: prev.cause, probed: map[string]api.Port{}}
	if e.activity.IsZero() {
		e.activity, e.cause = now, "started"
	}
	s := api.VMStats{VMID: vm.ID, VMName: vm.Name, Time: stamp(now)}
	if rt := vm.Runtime.VMM; rt != nil && rt.PID > 0 {
		if u := readVMMUsage(rt.PID, vmmCgroup(rt, vm.ID)); u.haveCPU {
			e.cpuUsec, e.cpuFrom = u.cpuUsec, u.cpuFrom
			s.Host.CPUSeconds = float64(u.cpuUsec) / 1e6
			s.Host.RSS = u.memory
			if prev.cpuUsec > 0 && prev.cpuFrom == u.cpuFrom && u.cpuUsec >= prev.cpuUsec && !prev.at.IsZero() {
				s.Host.CPURate = float64(u.cpuUsec-prev.cpuUsec) / 1e6 / now.Sub(prev.at).Seconds()
			}
		}
	}
	for _, f := range vm.Runtime.DiskFiles {
		var st fileBlocks
		if st.read(f) {
			s.Host.DiskUsed += st.bytes
		}
	}
	if tap := vm.Runtime.Tap; tap != nil {
		s.Host.RxBytes, s.Host.TxBytes = sysCounter(tap.Name, "rx_bytes"), sysCounter(tap.Name, "tx_bytes")
		s.Host.RxPackets, s.Host.TxPackets = sysCounter(tap.Name, "rx_packets"), sysCounter(tap.Name, "tx_packets")
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := a.d.Agent(actx, vm.ID)
	if err != nil {
		s.Health, s.HealthReason = HealthUnreachable, "agent: "+err.Error()
		e.out = s
		return e
	}
	t0 := time.Now()
	rtt := time.Duration(0)
	if _, err := c.Ping(actx); err != nil {
		s.Health, s.HealthReason = HealthUnreachable, "ping: "+err.Error()
		e.out, e.closed = s, errors.Is(err, agent.ErrClosed)
		return e
	}
	rtt = time.Since(t0)
	s.PingMS = float64(rtt.Microseconds()) / 1000
	gs, err := c.Stats(actx)
	if err == nil {
		g := &api.GuestStats{MemTotal: int64(gs.MemTotal), MemAvailable: int64(gs.MemAvailable), Load1: gs.Load1,
			Uptime: float64(gs.UptimeNS) / 1e9, RootUsed: int64(gs.DiskTotal - gs.DiskFree), RootFree: int64(gs.DiskFree), Procs: gs.Procs, Inbound: gs.Inbound,
			Workspaces: workspaceUse(vm.Spec.Workspaces, gs.Mounts)}
		e.guestCPU = gs.CPU
		if busy, total := cpuDelta(prev.guestCPU, gs.CPU); total > 0 {
			g.CPURate = busy / total
		}
		s.Guest = g
	}
	hSent := time.Now()
	h, herr := c.Health(actx)
	if herr == nil && h.TimeNS > 0 {
		// The guest read its clock about halfway through the round trip.
		mid := hSent.Add(time.Since(hSent) / 2)
		skew := time.Duration(h.TimeNS - mid.UnixNano())
		s.ClockSkewMS = float64(skew.Microseconds()) / 1000
		s.RootWritable = &h.RootWritable
	}
	e.closed = errors.Is(err, agent.ErrClosed) || errors.Is(herr, agent.ErrClosed)
	switch {
	case herr != nil:
		s.Health, s.HealthReason = HealthDegraded, "health: "+herr.Error()
	case err != nil:
		s.Health, s.HealthReason = HealthDegraded, "stats: "+err.Error()
	case h.Status != "ok":
		s.Health, s.HealthReason = HealthDegraded, healthReason(h)
	case !h.RootWritable:
		s.Health, s.HealthReason = HealthDegraded, "the root file system is read-only or full"
	case abs(s.ClockSkewMS) > maxSkewMS:
		s.Health, s.HealthReason = HealthDegraded, fmt.Sprintf("guest clock is off by %.1fs", s.ClockSkewMS/1000)
	default:
		s.Health = HealthHealthy
	}
	if herr == nil {
		s.Main = h.Main.State
		if h.Main.LastExit != nil {
			s.MainExit = h.Main.LastExit.String()
		}
		if s.Guest != nil {
			s.Guest.Sessions = h.Sessions
		}
	}
	s.Ports = a.ports(actx, c, vm, prev.probed, e.probed)
	// Activity that keeps a VM alive: sessions, inbound connections, CPU.
	if s.Guest != nil {
		switch {
		case s.Guest.Sessions > 0:
			e.activity, e.cause = now, "exec session open"
		case s.Guest.Inbound > 0:
			e.activity, e.cause = now, "inbound TCP connection"
		case s.Guest.CPURate > a.d.IdleCPU:
			e.activity, e.cause = now, fmt.Sprintf("guest CPU %.0f%%", s.Guest.CPURate*100)
		}
	}
	s.LastActivity, s.ActivityCause = stamp(e.activity), e.cause
	if limit := a.limit(vm); limit > 0 {
		s.AutoStopAt = stamp(e.activity.Add(limit))
	}
	e.out = s
	return e
}

// limit is a VM's auto-stop: its own, else the configured default.
func (a *statsActor) limit(vm state.VM) time.Duration {
	if vm.Spec.AutoStop != "" {
		if d, err := time.ParseDuration(vm.Spec.AutoStop); err == nil {
			return d
		}
	}
	return a.d.AutoStopDefault()
}

func healthReason(h agent.Health) string {
	switch {
	case h.BootError != "":
		return "boot error: " + h.BootError
	case h.Main.State == "exited" && h.Main.LastExit != nil:
		return "main process exited: " + h.Main.LastExit.String()
	}
	return "agent says " + h.Status
}

// ports lists the guest's listeners, probed from outside through the tap;
// the set is rebuilt in full every time, so a port that comes back shows again.
func (a *statsActor) ports(ctx context.Context, c *agent.Client, vm state.VM, known, probed map[string]api.Port) []api.Port {
	ps, err := c.Ports(ctx)
	if err != nil {
		return nil
	}
	var guest netip.Addr
	if vm.Net != nil {
		if p, err := netip.ParsePrefix(vm.Net.IP); err == nil {
			guest = p.Addr()
		}
	}
	seen := map[int]bool{}
	var out []api.Port
	for _, p := range ps {
		if !strings.HasPrefix(p.Proto, "tcp") || seen[p.Port] || p.Command == "paddock-agent" {
			continue
		}
		if ip, err := netip.ParseAddr(p.Addr); err == nil && ip.IsLoopback() {
			continue // not reachable from outside the guest
		}
		seen[p.Port] = true
		key := fmt.Sprintf("%d/%d/%s", p.Port, p.PID, p.Command)
		ap, ok := known[key]
		if !ok {
			ap = api.Port{Proto: "tcp", Port: p.Port, PID: p.PID, Process: p.Command, Scheme: "tcp"}
			if guest.IsValid() && a.d.Classify != nil {
				ap.Scheme, ap.URL = a.d.Classify(ctx, netip.AddrPortFrom(guest, uint16(p.Port)))
			}
		}
		probed[key] = ap
		out = append(out, ap)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Port < out[j].Port })
	return out
}

// autoStop stops VMs idle for longer than their auto-stop.
func (a *statsActor) autoStop(ctx actor.Context) {
	now := time.Now()
	for id, e := range a.entries {
		limit := a.limit(e.vm)
		if limit <= 0 || e.out.Health == HealthUnreachable {
			e.out.AutoStopAt = ""
			continue
		}
		at := e.activity.Add(limit)
		e.out.AutoStopAt = stamp(at)
		if now.Before(at) {
			continue
		}
		reason := fmt.Sprintf("auto-stop: idle for %s (last activity %s: %s)", limit, e.activity.UTC().Format(time.RFC3339), e.cause)
		a.log.Info("auto-stopping an idle VM", "vm_id", id, "vm_name", e.vm.Name, "op", "auto-stop", "reason", reason)
		delete(a.entries, id)
		go func(id, reason string) {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := a.d.Stop(sctx, id, reason); err != nil {
				a.log.Warn("auto-stop failed", "vm_id", id, "err", err)
			}
		}(id, reason)
	}
}

const clockTicks = 100 // USER_HZ on Linux

// maxSkewMS is the guest clock offset beyond which a VM is degraded.
const maxSkewMS = 5000

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}

// vmmUsage is a VMM's CPU time and memory.
type vmmUsage struct {
	cpuUsec uint64
	cpuFrom string // "cgroup" or "proc"
	haveCPU bool
	memory  int64 // memory.current, or the resident set
	memFrom string
}

// readVMMUsage reads a VMM's figures from its cgroup cg (cpu.stat's
// usage_usec, memory.current), falling back per figure to /proc/<pid>
// (utime+stime, RSS) where the cgroup has none: no cgroup, or no memory
// controller (a hybrid host's cgroup v2 hierarchy has none; cpu.stat is
// there without the cpu controller).
func readVMMUsage(pid int, cg string) vmmUsage {
	var u vmmUsage
	if cg != "" {
		c := cgroup.ReadUsage(cg)
		if c.HaveCPU {
			u.cpuUsec, u.cpuFrom, u.haveCPU = c.CPUUsec, "cgroup", true
		}
		if c.HaveMemory {
			u.memory, u.memFrom = c.Memory, "cgroup"
		}
	}
	if u.haveCPU && u.memFrom != "" {
		return u
	}
	ticks, rss, ok := procStats(pid)
	if !ok {
		return u
	}
	if !u.haveCPU {
		u.cpuUsec, u.cpuFrom, u.haveCPU = ticks*(1e6/clockTicks), "proc", true
	}
	if u.memFrom == "" {
		u.memory, u.memFrom = rss, "proc"
	}
	return u
}

// vmmCgroup is the VMM's own cgroup from its handle in vm.json, "" for
// none or one that is not named for this VM.
func vmmCgroup(rt *state.VMMRuntime, vmID string) string {
	cg := vmmFromMirror(rt, vmID).Cgroup
	if cg == "" || filepath.Base(cg) != vmm.Tag(vmID) {
		return ""
	}
	return cg
}

func procStats(pid int) (ticks uint64, rss int64, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 22 {
		return 0, 0, false
	}
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	pages, _ := strconv.ParseInt(f[21], 10, 64)
	return ut + st, pages * int64(os.Getpagesize()), true
}

type fileBlocks struct{ bytes int64 }

func sysCounter(dev, name string) int64 {
	b, err := os.ReadFile(filepath.Join("/sys/class/net", dev, "statistics", name))
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// cpuDelta returns busy and total ticks between two /proc/stat cpu lines.
func cpuDelta(prev, cur []uint64) (busy, total float64) {
	if len(prev) < 4 || len(cur) < 4 || len(prev) != len(cur) {
		return 0, 0
	}
	var idle float64
	for i := range cur {
		if cur[i] < prev[i] {
			return 0, 0
		}
		d := float64(cur[i] - prev[i])
		total += d
		if i == 3 || i == 4 { // idle, iowait
			idle += d
		}
	}
	return total - idle, total
}

// workspaceUse pairs the VM's workspaces with the guest's figures for their
// mount points. The guest's list is only read for the paths the VM mounts
// (a guest can claim anything); a workspace it does not report (its mount
// failed) is left out.
func workspaceUse(ws []state.WorkspaceMount, mounts []agent.MountStats) []api.WorkspaceUse {
	var out []api.WorkspaceUse
	for _, w := range ws {
		for _, m := range mounts[:min(len(mounts), agent.MaxMountStats)] {
			if m.Path == w.Path && m.Free <= m.Total && m.Total <= math.MaxInt64 {
				out = append(out, api.WorkspaceUse{Name: w.Name, Path: w.Path, Used: int64(m.Total - m.Free), Free: int64(m.Free)})
				break
			}
		}
	}
	return out
}
