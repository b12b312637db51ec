package dbusapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/api"
)

// vmProps is the io.paddock.v1 record as org.paddock1.VM properties (all
// but Health and LastEventSeq, which only events carry).
func vmProps(v api.VM) properties {
	addr, network := v.IP, ""
	if v.Network != nil {
		network = v.Network.Mode
		if addr == "" {
			addr = v.Network.IP
		}
	}
	ports := make([]port, len(v.Spec.Ports))
	for i, p := range v.Spec.Ports {
		ports[i] = port{HostIP: p.HostIP, HostPort: int32(p.HostPort), GuestPort: int32(p.GuestPort), Proto: p.Proto}
	}
	return properties{
		"Id": dbus.MakeVariant(v.ID), "Name": dbus.MakeVariant(v.Name), "Owner": dbus.MakeVariant(v.OwnerUID),
		"Image": dbus.MakeVariant(v.Spec.Image), "State": dbus.MakeVariant(v.Status), "StateReason": dbus.MakeVariant(v.Reason),
		"Address": dbus.MakeVariant(addr), "Network": dbus.MakeVariant(network), "Ports": dbus.MakeVariant(ports),
		"CPUs": dbus.MakeVariant(int32(v.Spec.CPUs)), "Memory": dbus.MakeVariant(uint64(max(v.Spec.Memory, 0))),
		"DiskSize": dbus.MakeVariant(uint64(max(v.Spec.DiskSize, 0))), "AutoStop": dbus.MakeVariant(v.Spec.AutoStop),
		"CreatedAt": dbus.MakeVariant(v.CreatedAt),
	}
}

// liveProps is a VM read now, with what only events carry from the feed.
func (s *Server) liveProps(v api.VM) properties {
	p := vmProps(v)
	p["Health"], p["LastEventSeq"] = dbus.MakeVariant(""), dbus.MakeVariant(uint64(0))
	s.mu.Lock()
	if st, ok := s.vms[v.ID]; ok {
		p["Health"], p["LastEventSeq"] = st.props["Health"], st.props["LastEventSeq"]
	}
	s.mu.Unlock()
	return p
}

func (s *Server) fetch(id string) (api.VM, error) {
	var out api.VMOut
	err := s.invokeAs(s.ctx, s.deps.Self, "Get", api.VMRef{VM: id}, &out)
	if err == nil && out.VM.ID != id {
		err = notFound("VM " + id)
	}
	return out.VM, err
}

// feed turns every event of the Events actor into the signals of the VM it
// is about. It alone writes the properties signalled.
func (s *Server) feed(id uint64, events <-chan api.Event) {
	defer close(s.done)
	for {
		select {
		case <-s.ctx.Done():
			s.deps.Unsubscribe(id)
			return
		case ev, ok := <-events:
			if ok {
				s.apply(ev)
				continue
			}
			s.log.Warn("D-Bus: the event feed fell behind; resubscribing and resyncing properties")
			for {
				var err error
				if id, events, err = s.deps.Subscribe(s.ctx, s.selfCaller(), "", eventBuffer); err == nil {
					break
				}
				select {
				case <-s.ctx.Done():
					return
				case <-time.After(time.Second):
				}
			}
			if err := s.resync(s.ctx, true); err != nil {
				s.log.Warn("D-Bus: resync failed", "err", err)
			}
		}
	}
}

// apply signals one event. created: InterfacesAdded and VMNew; deleted:
// InterfacesRemoved and VMRemoved; any other: one PropertiesChanged with
// what changed and, always, LastEventSeq (the event's seq), so every event
// has its signal.
func (s *Server) apply(ev api.Event) {
	path := vmPath(ev.VMID)
	seq := dbus.MakeVariant(ev.Seq)
	switch ev.Kind {
	case api.EventCreated:
		v, err := s.fetch(ev.VMID)
		if err != nil {
			s.log.Debug("D-Bus: created VM gone before it was read", "vm_id", ev.VMID, "err", err)
			return
		}
		props := vmProps(v)
		if ev.Status != "" {
			props["State"] = dbus.MakeVariant(ev.Status)
		}
		props["Health"], props["LastEventSeq"] = dbus.MakeVariant(""), seq
		s.mu.Lock()
		s.vms[v.ID] = &vmState{owner: v.OwnerUID, props: props}
		s.mu.Unlock()
		s.emit(v.OwnerUID, ManagerPath, objMgrIface+".InterfacesAdded", path, map[string]properties{VMIface: props})
		s.emit(v.OwnerUID, ManagerPath, ManagerIface+".VMNew", path)
	case api.EventDeleted:
		s.mu.Lock()
		st := s.vms[ev.VMID]
		delete(s.vms, ev.VMID)
		s.mu.Unlock()
		if st == nil {
			return
		}
		s.emit(st.owner, ManagerPath, objMgrIface+".InterfacesRemoved", path, []string{VMIface})
		s.emit(st.owner, ManagerPath, ManagerIface+".VMRemoved", path)
	default:
		v, err := s.fetch(ev.VMID)
		s.mu.Lock()
		st := s.vms[ev.VMID]
		s.mu.Unlock()
		if st == nil {
			if err != nil {
				return
			}
			st = &vmState{owner: v.OwnerUID, props: vmProps(v)}
			st.props["Health"], st.props["LastEventSeq"] = dbus.MakeVariant(""), dbus.MakeVariant(uint64(0))
		}
		next := maps.Clone(st.props)
		if err == nil {
			// State changes only with the status events, in their order.
			for k, val := range vmProps(v) {
				if k != "State" && k != "StateReason" {
					next[k] = val
				}
			}
		}
		switch ev.Kind {
		case api.EventStatus:
			next["State"], next["StateReason"] = dbus.MakeVariant(ev.Status), dbus.MakeVariant(ev.Reason)
		case api.EventHealth:
			next["Health"] = dbus.MakeVariant(ev.Status)
		}
		next["LastEventSeq"] = seq
		changed := diff(st.props, next)
		s.mu.Lock()
		s.vms[ev.VMID] = &vmState{owner: st.owner, props: next}
		s.mu.Unlock()
		s.emit(st.owner, path, propsIface+".PropertiesChanged", VMIface, changed, []string{})
	}
}

func diff(old, next properties) properties {
	changed := properties{}
	for k, v := range next {
		if o, ok := old[k]; !ok || !reflect.DeepEqual(o.Value(), v.Value()) {
			changed[k] = v
		}
	}
	return changed
}

// resync reads every VM; with signal set it signals what differs from what
// was last signalled (after the feed fell behind).
func (s *Server) resync(ctx context.Context, signal bool) error {
	var out api.ListOut
	if err := s.invokeAs(ctx, s.deps.Self, "List", nil, &out); err != nil {
		return fmt.Errorf("list VMs: %w", err)
	}
	seen := map[string]bool{}
	for _, v := range out.VMs {
		seen[v.ID] = true
		s.mu.Lock()
		st := s.vms[v.ID]
		s.mu.Unlock()
		props := vmProps(v)
		props["Health"], props["LastEventSeq"] = dbus.MakeVariant(""), dbus.MakeVariant(uint64(0))
		if st != nil {
			props["Health"], props["LastEventSeq"] = st.props["Health"], st.props["LastEventSeq"]
		}
		s.mu.Lock()
		s.vms[v.ID] = &vmState{owner: v.OwnerUID, props: props}
		s.mu.Unlock()
		if !signal {
			continue
		}
		if st == nil {
			s.emit(v.OwnerUID, ManagerPath, objMgrIface+".InterfacesAdded", vmPath(v.ID), map[string]properties{VMIface: props})
			s.emit(v.OwnerUID, ManagerPath, ManagerIface+".VMNew", vmPath(v.ID))
		} else if changed := diff(st.props, props); len(changed) > 0 {
			s.emit(v.OwnerUID, vmPath(v.ID), propsIface+".PropertiesChanged", VMIface, changed, []string{})
		}
	}
	s.mu.Lock()
	var gone []*vmState
	var goneIDs []string
	for id, st := range s.vms {
		if !seen[id] {
			gone, goneIDs = append(gone, st), append(goneIDs, id)
			delete(s.vms, id)
		}
	}
	s.mu.Unlock()
	for i, st := range gone {
		if signal {
			s.emit(st.owner, ManagerPath, objMgrIface+".InterfacesRemoved", vmPath(goneIDs[i]), []string{VMIface})
			s.emit(st.owner, ManagerPath, ManagerIface+".VMRemoved", vmPath(goneIDs[i]))
		}
	}
	return nil
}

// --- VM methods and jobs -------------------------------------------------

// job is a long call (start, stop, restart) in flight: the method returns
// its path at once and JobDone reports the outcome, so a TCG boot never
// meets the bus's 25 s call timeout. A job's object lives until JobDone.
type job struct {
	id    uint32
	vm    string
	owner uint32
	op    string
}

func (j *job) props() properties {
	return properties{"Id": dbus.MakeVariant(j.id), "VM": dbus.MakeVariant(vmPath(j.vm)), "Operation": dbus.MakeVariant(j.op), "State": dbus.MakeVariant("running")}
}

func (s *Server) jobOf(c *call, id string) (*job, error) {
	n, _ := strconv.ParseUint(id, 10, 32)
	s.mu.Lock()
	j := s.jobs[uint32(n)]
	s.mu.Unlock()
	if j == nil || !c.caller.May(j.owner) {
		return nil, notFound("job " + id)
	}
	return j, nil
}

func (s *Server) jobsFor(c *call) []*job {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*job
	for _, j := range s.jobs {
		if c.caller.May(j.owner) {
			out = append(out, j)
		}
	}
	return out
}

func vmIDOf(c *call) string { return strings.TrimPrefix(string(c.path), vmDir+"/") }

// runJob checks the VM is the caller's to see, then runs work as the caller
// in the background; what work returns besides its error is JobDone's
// message.
func (s *Server) runJob(c *call, op string, work func(ctx context.Context, id string) (string, error)) ([]any, error) {
	id := vmIDOf(c)
	var out api.VMOut
	if err := s.invoke(c, "Get", api.VMRef{VM: id}, &out); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.nextJob++
	j := &job{id: s.nextJob, vm: id, owner: out.VM.OwnerUID, op: op}
	s.jobs[j.id] = j
	s.mu.Unlock()
	// The varlink server's shutdown waits for the calls a job makes; the
	// bus going away does not cut them short.
	ctx := context.WithoutCancel(s.ctx)
	go func() {
		msg, err := work(ctx, id)
		result, name := "done", ""
		if err != nil {
			de := dbusError(err)
			result, name, msg = "failed", de.Name, ""
			if len(de.Body) > 0 {
				msg = fmt.Sprint(de.Body[0])
			}
		}
		s.mu.Lock()
		delete(s.jobs, j.id)
		s.mu.Unlock()
		s.emit(j.owner, ManagerPath, ManagerIface+".JobDone", j.id, jobPath(j.id), vmPath(id), op, result, name, msg)
	}()
	return []any{jobPath(j.id)}, nil
}

func (s *Server) startVM(c *call, _ []any) ([]any, error) {
	return s.runJob(c, "start", func(ctx context.Context, id string) (string, error) {
		return "", s.invokeAs(ctx, c.peer, "Start", api.VMRef{VM: id}, nil)
	})
}

func (s *Server) stopVM(c *call, _ []any) ([]any, error) {
	return s.runJob(c, "stop", func(ctx context.Context, id string) (string, error) {
		return "", s.invokeAs(ctx, c.peer, "Stop", api.StopIn{VM: id}, nil)
	})
}

func (s *Server) restartVM(c *call, _ []any) ([]any, error) {
	return s.runJob(c, "restart", func(ctx context.Context, id string) (string, error) {
		err := s.invokeAs(ctx, c.peer, "Stop", api.StopIn{VM: id}, nil)
		var de *dbus.Error
		if err != nil && !(errors.As(err, &de) && de.Name == ErrorPrefix+"InvalidState") {
			return "", err
		}
		return "", s.invokeAs(ctx, c.peer, "Start", api.VMRef{VM: id}, nil)
	})
}

func (s *Server) killVM(c *call, _ []any) ([]any, error) {
	return nil, s.invoke(c, "Stop", api.StopIn{VM: vmIDOf(c), Force: true}, nil)
}

func (s *Server) deleteVM(c *call, _ []any) ([]any, error) {
	return nil, s.invoke(c, "Delete", api.StopIn{VM: vmIDOf(c)}, nil)
}

func (s *Server) setVM(c *call, in []any) ([]any, error) {
	params, _ := plain(in[0]).(map[string]any)
	if _, ok := params["vm"]; ok {
		return nil, dbus.NewError(ErrorPrefix+"InvalidArgument", []any{"options: vm is the object's, not an option"})
	}
	params["vm"] = vmIDOf(c)
	return nil, s.invoke(c, "Set", params, nil)
}

// execVM runs a command in the VM with the caller's sockets as its stdin,
// stdout and stderr (as io.paddock.v1 Exec takes them); the job ends with
// the command, and JobDone's message is "exit N" or "signal N".
func (s *Server) execVM(c *call, in []any) ([]any, error) {
	files, err := passedSockets(in[2:], "stdin", "stdout", "stderr")
	if err != nil {
		return nil, err
	}
	argv, _ := in[0].([]string)
	params, _ := plain(in[1]).(map[string]any)
	if params == nil {
		params = map[string]any{}
	}
	for _, k := range []string{"vm", "command"} {
		if _, ok := params[k]; ok {
			closeFiles(files)
			return nil, dbus.NewError(ErrorPrefix+"InvalidArgument", []any{"options: " + k + " is not an option (the object and the command argument say it)"})
		}
	}
	params["vm"], params["command"] = vmIDOf(c), argv
	out, err := s.runJob(c, "exec", func(ctx context.Context, _ string) (string, error) {
		var r api.ExecOut
		if err := s.invokeFDs(ctx, c.peer, "Exec", params, files, &r); err != nil {
			return "", err
		}
		if r.Signal != 0 {
			return fmt.Sprintf("signal %d", r.Signal), nil
		}
		return fmt.Sprintf("exit %d", r.ExitCode), nil
	})
	if err != nil {
		closeFiles(files)
	}
	return out, err
}

// openConsole attaches the caller's sockets to the VM's serial console
// (input, output) until the caller closes them or sends the detach key.
func (s *Server) openConsole(c *call, in []any) ([]any, error) {
	files, err := passedSockets(in, "input", "output")
	if err != nil {
		return nil, err
	}
	out, err := s.runJob(c, "console", func(ctx context.Context, id string) (string, error) {
		return "", s.invokeFDs(ctx, c.peer, "Console", api.VMRef{VM: id}, files, nil)
	})
	if err != nil {
		closeFiles(files)
	}
	return out, err
}

// getStats is the VM's io.paddock.v1 Stats figures by name, nested
// objects as a{sv}.
func (s *Server) getStats(c *call, _ []any) ([]any, error) {
	var out api.StatsOut
	if err := s.invoke(c, "Stats", api.StatsIn{VM: vmIDOf(c)}, &out); err != nil {
		return nil, err
	}
	if len(out.Stats) != 1 {
		return nil, dbus.NewError(ErrorPrefix+"Internal", []any{fmt.Sprintf("%d sets of figures for one VM", len(out.Stats))})
	}
	v, err := variants(out.Stats[0])
	if err != nil {
		return nil, dbus.NewError(ErrorPrefix+"Internal", []any{err.Error()})
	}
	return []any{v}, nil
}

// passedSockets takes the descriptors a caller passed (godbus received them
// and they are ours to close) as files, refusing what is not one.
func passedSockets(in []any, names ...string) ([]*os.File, error) {
	files := make([]*os.File, 0, len(names))
	for i, name := range names {
		fd, ok := in[i].(dbus.UnixFD)
		if !ok || fd < 0 {
			closeFiles(files)
			for _, v := range in[i+1 : len(names)] {
				if fd, ok := v.(dbus.UnixFD); ok && fd >= 0 {
					_ = unix.Close(int(fd))
				}
			}
			return nil, dbus.NewError(ErrorPrefix+"InvalidArgument", []any{name + ": no file descriptor passed"})
		}
		// Non-blocking, so the file waits in the poller and its
		// deadlines work (as a varlink connection's descriptors do).
		_ = unix.SetNonblock(int(fd), true)
		files = append(files, os.NewFile(uintptr(fd), name))
	}
	return files, nil
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		_ = f.Close()
	}
}

// variants turns a JSON-shaped value into a{sv}: objects a{sv}, arrays av,
// integers x, other numbers d, strings s, booleans b; nulls are left out.
func variants(v any) (map[string]dbus.Variant, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		return nil, err
	}
	return variantMap(m), nil
}

func variantMap(m map[string]any) map[string]dbus.Variant {
	out := make(map[string]dbus.Variant, len(m))
	for k, e := range m {
		if e != nil {
			out[k] = variantOf(e)
		}
	}
	return out
}

func variantOf(v any) dbus.Variant {
	switch x := v.(type) {
	case map[string]any:
		return dbus.MakeVariant(variantMap(x))
	case []any:
		l := make([]dbus.Variant, 0, len(x))
		for _, e := range x {
			if e != nil {
				l = append(l, variantOf(e))
			}
		}
		return dbus.MakeVariant(l)
	case json.Number:
		if n, err := x.Int64(); err == nil {
			return dbus.MakeVariant(n)
		}
		f, _ := x.Float64()
		return dbus.MakeVariant(f)
	}
	return dbus.MakeVariant(v)
}
