package actors

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"reflect"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/api"
	"github.com/paddock-vm/paddock/state"
)

// goodAgent serves the real agent protocol over a socket pair.
func goodAgent(t testing.TB) *agent.Client {
	t.Helper()
	h, g := net.Pipe()
	srv := agent.NewServer(agent.ServerConfig{AgentVersion: "test",
		Health: func() agent.Health { return agent.Health{Status: "ok", Main: agent.MainState{State: "running"}} },
		Stats: func() (agent.Stats, error) {
			return agent.Stats{MemTotal: 256 << 20, MemAvailable: 200 << 20, CPU: []uint64{1, 0, 1, 100, 0, 0, 0, 0}}, nil
		},
		Ports: func() ([]agent.Port, error) { return []agent.Port{{Proto: "tcp", Addr: "0.0.0.0", Port: 8080}}, nil },
	})
	go srv.ServeConn(context.Background(), g)
	c, err := agent.NewClient(context.Background(), h, &agent.ClientOptions{RequestTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// badAgent answers hello properly, then misbehaves on every later request.
func badAgent(t testing.TB, how string) *agent.Client {
	t.Helper()
	h, g := net.Pipe()
	go func() {
		defer g.Close()
		for {
			b, err := agent.ReadFrame(g, agent.DefaultMaxFrame)
			if err != nil {
				return
			}
			var m agent.Message
			if json.Unmarshal(b, &m) != nil {
				return
			}
			if m.Op == agent.OpHello {
				body, _ := json.Marshal(agent.HelloInfo{Protocol: agent.ProtocolVersion})
				agent.WriteFrame(g, &agent.Message{T: agent.TypeResponse, ID: m.ID, Body: body}, agent.DefaultMaxFrame)
				continue
			}
			switch how {
			case "garbage":
				g.Write([]byte{0, 0, 0, 9, '{', 'x', 'x', 'x', 'x', 'x', 'x', 'x', 'x'})
			case "huge":
				var hdr [4]byte
				binary.BigEndian.PutUint32(hdr[:], 100<<20) // announces 100 MiB
				g.Write(hdr[:])
			case "silent":
			}
		}
	}()
	c, err := agent.NewClient(context.Background(), h, &agent.ClientOptions{RequestTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestStatsSurvivesMisbehavingAgents(t *testing.T) {
	vms := []state.VM{}
	clients := map[string]*agent.Client{}
	add := func(name string, c *agent.Client) {
		id := state.NewID()
		vms = append(vms, state.VM{ID: id, Name: name, Status: state.StatusRunning, Net: &state.NetRuntime{IP: "10.77.0.9/16"}})
		clients[id] = c
	}
	add("good", goodAgent(t))
	add("garbage", badAgent(t, "garbage"))
	add("huge", badAgent(t, "huge"))
	add("silent", badAgent(t, "silent"))
	probes := 0
	sys := actor.NewActorSystem()
	defer sys.Shutdown()
	d := StatsDeps{
		Log:     testLogger(),
		Running: func(context.Context) ([]state.VM, error) { return vms, nil },
		Agent:   func(_ context.Context, id string) (*agent.Client, error) { return clients[id], nil },
		Stop:    func(context.Context, string, string) error { return nil },
		Classify: func(context.Context, netip.AddrPort) (string, string) {
			probes++
			return "http", "http://10.77.0.9:8080/"
		},
		Interval:        func() time.Duration { return time.Hour },
		AutoStopDefault: func() time.Duration { return 0 },
		Parallel:        2,
	}
	pid := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return newStatsActor(d) }))
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	for round := 0; round < 2; round++ {
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		res, err := request[*StatsResult](ctx, sys.Root, pid, &GetStats{Caller: Caller{Admin: true}})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		st := res.Stats
		if len(st) != 4 {
			t.Fatalf("got %d entries", len(st))
		}
		for _, s := range st {
			switch s.VMName {
			case "good":
				if s.Health != HealthHealthy || s.Guest == nil || s.Guest.MemTotal != 256<<20 || len(s.Ports) != 1 || s.Ports[0].Scheme != "http" {
					t.Fatalf("good VM: %+v", s)
				}
			default:
				if s.Health == HealthHealthy || s.HealthReason == "" {
					t.Fatalf("%s: %s %q, want degraded or unreachable with a reason", s.VMName, s.Health, s.HealthReason)
				}
			}
		}
		// Bad agents cost at most their request deadlines, in parallel.
		if took := time.Since(t0); took > 10*time.Second {
			t.Fatalf("a round took %s", took)
		}
	}
	if probes != 1 {
		t.Fatalf("the good VM's port was probed %d times in two rounds, want once (cached)", probes)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 50<<20 {
		t.Fatalf("heap grew by %d MiB: a 100 MiB announcement was buffered", grew>>20)
	}
}

func testLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkStatsPoll: daemon CPU per VM per poll (stats, health, ping,
// ports; ports cached) over 50 VMs served by the real agent protocol code
// in-process (not booted guests: guest-side cost is not counted), as a
// ratio to the CPU of one plain agent ping measured in the same run.
func BenchmarkStatsPoll(b *testing.B) {
	const n = 50
	var vms []state.VM
	clients := map[string]*agent.Client{}
	for i := 0; i < n; i++ {
		id := state.NewID()
		vms = append(vms, state.VM{ID: id, Name: id[:8], Status: state.StatusRunning, Net: &state.NetRuntime{IP: "10.77.0.9/16"}})
		clients[id] = goodAgent(b)
	}
	sys := actor.NewActorSystem()
	defer sys.Shutdown()
	d := StatsDeps{Log: testLogger(),
		Running:         func(context.Context) ([]state.VM, error) { return vms, nil },
		Agent:           func(_ context.Context, id string) (*agent.Client, error) { return clients[id], nil },
		Stop:            func(context.Context, string, string) error { return nil },
		Classify:        func(context.Context, netip.AddrPort) (string, string) { return "http", "" },
		Interval:        func() time.Duration { return time.Hour },
		AutoStopDefault: func() time.Duration { return 0 },
		Parallel:        4}
	pid := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return newStatsActor(d) }))
	poll := func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := request[*StatsResult](ctx, sys.Root, pid, &GetStats{Caller: Caller{Admin: true}}); err != nil {
			b.Fatal(err)
		}
	}
	poll() // warm: ports classified once
	c := clients[vms[0].ID]
	const pings = 2000
	p0 := cpuTime()
	for i := 0; i < pings; i++ {
		if _, err := c.Ping(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	pingCPU := (cpuTime() - p0) / pings
	b.ResetTimer()
	t0 := cpuTime()
	for i := 0; i < b.N; i++ {
		poll()
	}
	perVM := (cpuTime() - t0) / time.Duration(b.N*n)
	b.ReportMetric(float64(perVM.Microseconds()), "cpu-µs/vm/poll")
	b.ReportMetric(float64(pingCPU.Microseconds()), "ping-cpu-µs")
	b.ReportMetric(float64(perVM)/float64(pingCPU), "x-ping")
}

// The guest's mount figures are read only for the VM's own workspace paths,
// in the VM's order; a lying guest adds nothing and wraps nothing.
func TestWorkspaceUse(t *testing.T) {
	ws := []state.WorkspaceMount{{Name: "proj", Path: "/workspace"}, {Name: "data", Path: "/data"}}
	for _, tc := range []struct {
		name   string
		mounts []agent.MountStats
		want   []api.WorkspaceUse
	}{
		{"both", []agent.MountStats{{Path: "/data", Total: 100, Free: 40}, {Path: "/workspace", Total: 10, Free: 1}},
			[]api.WorkspaceUse{{Name: "proj", Path: "/workspace", Used: 9, Free: 1}, {Name: "data", Path: "/data", Used: 60, Free: 40}}},
		{"one failed to mount", []agent.MountStats{{Path: "/data", Total: 100, Free: 40}},
			[]api.WorkspaceUse{{Name: "data", Path: "/data", Used: 60, Free: 40}}},
		{"claims of other paths", []agent.MountStats{{Path: "/", Total: 1, Free: 1}, {Path: "/etc", Total: 5, Free: 2}}, nil},
		{"free above total", []agent.MountStats{{Path: "/workspace", Total: 1, Free: 2}}, nil},
		{"beyond int64", []agent.MountStats{{Path: "/workspace", Total: math.MaxUint64, Free: 0}}, nil},
		{"none", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := workspaceUse(ws, tc.mounts); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestStatsForgetsVMsGoneWhileSampled: a VM deleted, or restarted on
// another VMM, or whose agent connection the daemon closed (its stop or
// delete began) while its sample was taken fails its checks for that
// reason alone; no health change is reported for it. One still running on
// the same VMM that fails them is reported.
func TestStatsForgetsVMsGoneWhileSampled(t *testing.T) {
	withVMM := func(name string, pid int) state.VM {
		return state.VM{ID: state.NewID(), Name: name, Status: state.StatusRunning, Runtime: state.Runtime{VMM: &state.VMMRuntime{PID: pid}}}
	}
	// PIDs above any pid_max: no host process is read for them.
	const p = 1 << 30
	gone, restarted, broken, closing := withVMM("gone", p+1), withVMM("restarted", p+2), withVMM("broken", p+3), withVMM("closing", p+5)
	closed := goodAgent(t)
	closed.Close()
	listed := 0
	running := func(context.Context) ([]state.VM, error) {
		listed++
		if listed == 1 {
			return []state.VM{gone, restarted, broken, closing}, nil
		}
		again := restarted
		again.Runtime.VMM = &state.VMMRuntime{PID: p + 4}
		return []state.VM{again, broken, closing}, nil
	}
	sys := actor.NewActorSystem()
	defer sys.Shutdown()
	events := make(chan api.Event, 8)
	drained := make(chan struct{})
	sink := sys.Root.Spawn(actor.PropsFromFunc(func(c actor.Context) {
		switch m := c.Message().(type) {
		case *emit:
			events <- m.Event
		case *Ping:
			close(drained)
		}
	}))
	d := StatsDeps{
		Log:     testLogger(),
		Running: running,
		Agent: func(_ context.Context, id string) (*agent.Client, error) {
			if id == closing.ID {
				return closed, nil
			}
			return nil, errors.New("connection refused")
		},
		Stop:            func(context.Context, string, string) error { return nil },
		Classify:        func(context.Context, netip.AddrPort) (string, string) { return "tcp", "" },
		Interval:        func() time.Duration { return time.Hour },
		AutoStopDefault: func() time.Duration { return 0 },
		Events:          sink,
	}
	pid := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return newStatsActor(d) }))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := request[*StatsResult](ctx, sys.Root, pid, &GetStats{Caller: Caller{Admin: true}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Stats) != 1 || res.Stats[0].VMName != "broken" || res.Stats[0].Health == HealthHealthy {
		t.Fatalf("stats %+v, want only the broken VM's, unhealthy", res.Stats)
	}
	select {
	case ev := <-events:
		if ev.VMName != "broken" || ev.Kind != api.EventHealth {
			t.Fatalf("event %+v, want the broken VM's health", ev)
		}
	case <-ctx.Done():
		t.Fatal("no health event for the broken VM")
	}
	// Nothing else reaches the sink: its events were sent before the
	// answer, so they are all ahead of a message sent after it.
	sys.Root.Send(sink, &Ping{})
	<-drained
	select {
	case ev := <-events:
		t.Fatalf("a health event for %s (%s), which was gone while sampled", ev.VMName, ev.Status)
	default:
	}
}
