package main

import (
	"testing"
	"time"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/guestboot"
	"github.com/paddock-vm/paddock/internal/testwait"
)

func testState(policy string, cmd ...string) *initState {
	return &initState{
		cfg:     &guestboot.BootArgs{OnExit: guestboot.OnExitKeep},
		image:   &imageConfig{Cmd: cmd, Restart: policy, Env: []string{"PATH=/usr/bin:/bin"}},
		spawner: &agent.LocalSpawner{Reaper: agent.NewReaper(false)},
	}
}

func TestMainProcRestartPolicies(t *testing.T) {
	always := testState("no", "true")
	always.cfg.Restart = guestboot.RestartAlways
	cases := []struct {
		name string
		s    *initState
		// restarts: the main process is restarted (the test waits for two
		// restarts, then stops it); otherwise it runs once and its final
		// state must satisfy final.
		restarts bool
		final    func(agent.MainState) bool
	}{
		{name: "no runs once and records the exit status", s: testState("", "sh", "-c", "exit 3"),
			final: func(st agent.MainState) bool {
				return st.State == "exited" && st.Restarts == 0 && st.LastExit != nil && st.LastExit.Code == 3
			}},
		{name: "on-failure restarts after a failure", s: testState("on-failure", "sh", "-c", "exit 1"), restarts: true},
		{name: "on-failure does not restart after success", s: testState("on-failure", "true"),
			final: func(st agent.MainState) bool { return st.Restarts == 0 && st.LastExit != nil && st.LastExit.Code == 0 }},
		{name: "always (from the cmdline, over the image's no) restarts after success", s: always, restarts: true},
		{name: "a missing binary is reported, not retried under no", s: testState("", "/nonexistent"),
			final: func(st agent.MainState) bool {
				return st.State == "exited" && st.LastExit != nil && st.LastExit.Code == 127
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := newMainProc(tc.s)
			m.start()
			if tc.restarts {
				testwait.For(t, "two restarts", 5*time.Second, func() bool { return m.state().Restarts >= 2 })
				m.stop()
				<-m.finished
				return
			}
			<-m.finished
			if st := m.state(); !tc.final(st) {
				t.Fatalf("final state %+v", st)
			}
		})
	}
}
