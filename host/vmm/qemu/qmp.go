package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// maxQMPLine bounds one QMP message (QEMU's replies to the commands used
// here are a few hundred bytes; events can be larger).
const maxQMPLine = 1 << 20

// qmpTimeout bounds a QMP exchange when ctx has no deadline.
const qmpTimeout = 5 * time.Second

// QMPError is an error reply from QEMU's monitor.
type QMPError struct {
	Class, Desc string
}

func (e *QMPError) Error() string { return "qmp: " + e.Class + ": " + e.Desc }

// qmpConn is one QMP session. QEMU's QMP server takes one client at a time,
// so the driver opens a session per operation and closes it at once.
type qmpConn struct {
	c  net.Conn
	rd *bufio.Reader
}

type qmpMsg struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
	ID    string          `json:"id"`
}

// dialQMP connects to the QMP socket, reads the greeting and leaves
// capabilities negotiation mode.
func dialQMP(ctx context.Context, path string) (*qmpConn, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, qmpTimeout)
		defer cancel()
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	q := &qmpConn{c: c, rd: bufio.NewReaderSize(c, 4096)}
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	m, err := q.read()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp: greeting: %w", err)
	}
	if m.QMP == nil {
		c.Close()
		return nil, errors.New("qmp: no greeting")
	}
	if err := q.execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmpConn) Close() error { return q.c.Close() }

func (q *qmpConn) read() (*qmpMsg, error) {
	var line []byte
	for {
		chunk, isPrefix, err := q.rd.ReadLine()
		if err != nil {
			return nil, err
		}
		line = append(line, chunk...)
		if len(line) > maxQMPLine {
			return nil, fmt.Errorf("message longer than %d bytes", maxQMPLine)
		}
		if !isPrefix {
			break
		}
	}
	var m qmpMsg
	if err := json.Unmarshal(line, &m); err != nil {
		return nil, fmt.Errorf("malformed message %.100q: %w", line, err)
	}
	return &m, nil
}

// execute runs one command and decodes its return value into out (nil to
// ignore it). Events that arrive meanwhile are skipped.
func (q *qmpConn) execute(ctx context.Context, cmd string, args, out any) error {
	q.deadline(ctx)
	req := map[string]any{"execute": cmd, "id": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := q.c.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	return q.await(ctx, cmd, out)
}

// deadline bounds the session's next exchange by ctx (qmpTimeout without
// one).
func (q *qmpConn) deadline(ctx context.Context) {
	if dl, ok := ctx.Deadline(); ok {
		_ = q.c.SetDeadline(dl)
	} else {
		_ = q.c.SetDeadline(time.Now().Add(qmpTimeout))
	}
}

// await reads cmd's reply, skipping events.
func (q *qmpConn) await(ctx context.Context, cmd string, out any) error {
	stop := context.AfterFunc(ctx, func() { _ = q.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	for {
		m, err := q.read()
		if err != nil {
			return fmt.Errorf("qmp %s: %w", cmd, err)
		}
		if m.Event != "" || m.QMP != nil {
			continue
		}
		if m.Error != nil {
			return fmt.Errorf("qmp %s: %w", cmd, &QMPError{Class: m.Error.Class, Desc: m.Error.Desc})
		}
		if m.Return == nil {
			return fmt.Errorf("qmp %s: reply without return or error", cmd)
		}
		if out != nil {
			if err := json.Unmarshal(m.Return, out); err != nil {
				return fmt.Errorf("qmp %s: %w", cmd, err)
			}
		}
		return nil
	}
}

// qmpDo opens a session on path, runs cmd and closes it.
func qmpDo(ctx context.Context, path, cmd string, args, out any) error {
	q, err := dialQMP(ctx, path)
	if err != nil {
		return err
	}
	defer q.Close()
	return q.execute(ctx, cmd, args, out)
}
