package main

import (
	"os"
	"sync"
	"time"

	"github.com/paddock-vm/paddock/agent"
	"github.com/paddock-vm/paddock/guestboot"
	"golang.org/x/sys/unix"
)

// mainProc runs the image's entrypoint + cmd with its Env, WorkingDir and
// User, output to the console, restarting it per the policy.
type mainProc struct {
	s      *initState
	argv   []string
	policy string

	mu       sync.Mutex
	st       agent.MainState
	proc     agent.Proc
	stopped  bool
	finished chan struct{}
}

func newMainProc(s *initState) *mainProc {
	policy := s.image.Restart
	if s.cfg.Restart != "" {
		policy = s.cfg.Restart
	}
	if policy == "" {
		policy = guestboot.RestartNo
	}
	return &mainProc{s: s, argv: s.image.argv(), policy: policy, finished: make(chan struct{}),
		st: agent.MainState{State: "starting", Argv: s.image.argv()}}
}

func (m *mainProc) state() agent.MainState {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.st
	return st
}

func (m *mainProc) start() { go m.loop() }

func (m *mainProc) loop() {
	defer close(m.finished)
	backoff := 100 * time.Millisecond
	for {
		m.mu.Lock()
		if m.stopped {
			m.mu.Unlock()
			return
		}
		proc, err := m.s.spawner.Spawn(agent.SpawnSpec{
			Argv: m.argv, Env: m.s.image.Env, Dir: m.s.image.WorkingDir, User: m.s.image.user(),
			Output: os.Stdout,
		})
		if err != nil {
			logf("main process %q: %v", m.argv, err)
			m.st.State = "exited"
			m.st.LastExit = &agent.ExitStatus{Code: 127}
			m.proc = nil
		} else {
			m.proc = proc
			m.st.State = "running"
			m.st.PID = proc.PID()
		}
		m.mu.Unlock()

		started := time.Now()
		var st agent.ExitStatus
		if err != nil {
			st = agent.ExitStatus{Code: 127}
		} else {
			st = proc.Wait()
			logf("main process %d: %v", proc.PID(), st)
		}
		m.mu.Lock()
		m.st.LastExit = &st
		m.st.PID = 0
		m.proc = nil
		stopped := m.stopped
		again := !stopped && (m.policy == guestboot.RestartAlways || (m.policy == guestboot.RestartOnFailure && (st.Code != 0 || st.Signal != 0)))
		if again {
			m.st.State = "restarting"
			m.st.Restarts++
		} else {
			m.st.State = "exited"
		}
		m.mu.Unlock()
		if !again {
			if !stopped && m.s.cfg.OnExit == guestboot.OnExitPowerOff {
				go m.s.shutdown(false)
			}
			return
		}
		if time.Since(started) > 10*time.Second {
			backoff = 100 * time.Millisecond
		}
		time.Sleep(backoff)
		backoff = min(backoff*2, 10*time.Second)
	}
}

// stop prevents restarts (the process itself is stopped by the shutdown's
// kill of every process).
func (m *mainProc) stop() {
	m.mu.Lock()
	m.stopped = true
	m.mu.Unlock()
}

// shutdown stops every process (SIGTERM, grace period, SIGKILL), syncs,
// unmounts and powers off (or reboots). It never returns.
func (s *initState) shutdown(reboot bool) {
	s.stopOnce.Do(func() {
		s.mu.Lock()
		s.stopping = true
		main, stopTimeout := s.main, s.cfg.StopTimeout
		s.mu.Unlock()
		logf("shutting down")
		// A frozen workspace would block every writer below, and the sync
		// of the power-off.
		s.freezer.ThawAll()
		if main != nil {
			main.stop()
		}
		_ = unix.Kill(-1, unix.SIGTERM)
		deadline := time.Now().Add(stopTimeout)
		for s.reaper.HasChildren() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if s.reaper.HasChildren() {
			logf("processes left after %v: SIGKILL", stopTimeout)
			_ = unix.Kill(-1, unix.SIGKILL)
			deadline = time.Now().Add(2 * time.Second)
			for s.reaper.HasChildren() && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
		}
		unix.Sync()
		unmountAll()
		powerOff(reboot)
	})
	select {} // a second caller waits for the power-off
}
