package main

import (
	"testing"
	"time"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/guestboot"
)

func testState(policy string, cmd ...string) *initState {
	return &initState{
		cfg:     &guestboot.BootArgs{OnExit: guestboot.OnExitKeep},
		image:   &imageConfig{Cmd: cmd, Restart: policy, Env: []string{"PATH=/usr/bin:/bin"}},
		spawner: &agent.LocalSpawner{Reaper: agent.NewReaper(false)},
	}
}

func waitState(t *testing.T, m *mainProc, ok func(agent.MainState) bool) agent.MainState {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := m.state()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("main state stuck at %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMainProcRestartPolicies(t *testing.T) {
	// no: runs once, exit status recorded
	m := newMainProc(testState("", "sh", "-c", "exit 3"))
	m.start()
	<-m.finished
	st := m.state()
	if st.State != "exited" || st.Restarts != 0 || st.LastExit == nil || st.LastExit.Code != 3 {
		t.Fatalf("no: %+v", st)
	}

	// on-failure: restarted after a failure, not after success
	m = newMainProc(testState("on-failure", "sh", "-c", "exit 1"))
	m.start()
	waitState(t, m, func(s agent.MainState) bool { return s.Restarts >= 2 })
	m.stop()
	<-m.finished

	m = newMainProc(testState("on-failure", "true"))
	m.start()
	<-m.finished
	if st := m.state(); st.Restarts != 0 || st.LastExit.Code != 0 {
		t.Fatalf("on-failure after success: %+v", st)
	}

	// always: restarted after success too; the cmdline overrides the image
	s := testState("no", "true")
	s.cfg.Restart = guestboot.RestartAlways
	m = newMainProc(s)
	m.start()
	waitState(t, m, func(s agent.MainState) bool { return s.Restarts >= 2 })
	m.stop()
	<-m.finished

	// a missing binary is reported, not retried under "no"
	m = newMainProc(testState("", "/nonexistent"))
	m.start()
	<-m.finished
	if st := m.state(); st.State != "exited" || st.LastExit.Code != 127 {
		t.Fatalf("missing binary: %+v", st)
	}
}
