package agent

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// inbuf receives one direction of a stream's data. It enforces the window it
// granted the sender and hands credit back as its reader consumes data, so
// it never holds more than StreamWindow bytes.
type inbuf struct {
	mu        sync.Mutex
	cond      *sync.Cond
	buf       []byte
	eof       bool
	err       error
	allowance int         // bytes the sender may still send
	consumed  int         // bytes read since the last grant
	grant     func(n int) // sends a window message; called without mu held
	window    int         // initial allowance
}

func newInbuf(window int, grant func(int)) *inbuf {
	b := &inbuf{allowance: window, window: window, grant: grant}
	b.cond = sync.NewCond(&b.mu)
	return b
}

// push appends data from the peer; it fails when the peer overran its window.
func (b *inbuf) push(p []byte, eof bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.eof && len(p) > 0 {
		return errors.New("data after end of stream")
	}
	if len(p) > b.allowance {
		return fmt.Errorf("peer sent %d bytes with only %d bytes of window left", len(p), b.allowance)
	}
	b.allowance -= len(p)
	b.buf = append(b.buf, p...)
	if eof {
		b.eof = true
	}
	b.cond.Broadcast()
	return nil
}

// fail ends the buffer with err (readers get err after the buffered data).
func (b *inbuf) fail(err error) {
	b.mu.Lock()
	if b.err == nil {
		b.err = err
	}
	b.cond.Broadcast()
	b.mu.Unlock()
}

func (b *inbuf) Read(p []byte) (int, error) {
	b.mu.Lock()
	for len(b.buf) == 0 && !b.eof && b.err == nil {
		b.cond.Wait()
	}
	if len(b.buf) == 0 {
		err := b.err
		if b.eof {
			err = io.EOF
		}
		b.mu.Unlock()
		return 0, err
	}
	n := copy(p, b.buf)
	b.buf = b.buf[n:]
	if len(b.buf) == 0 {
		b.buf = nil
	}
	b.consumed += n
	var grant int
	// Hand credit back in batches: when a quarter window was consumed, or
	// when the buffer ran dry.
	if !b.eof && (b.consumed >= b.window/4 || len(b.buf) == 0) {
		grant = b.consumed
		b.consumed = 0
		b.allowance += grant
	}
	b.mu.Unlock()
	if grant > 0 && b.grant != nil {
		for grant > 0 { // a window message carries at most StreamWindow
			g := min(grant, StreamWindow)
			b.grant(g)
			grant -= g
		}
	}
	return n, nil
}

// credit is the sender's view of a window.
type credit struct {
	mu     sync.Mutex
	cond   *sync.Cond
	n      int
	closed bool
}

func newCredit(n int) *credit {
	c := &credit{n: n}
	c.cond = sync.NewCond(&c.mu)
	return c
}

// take blocks until some credit is available and takes up to max of it.
func (c *credit) take(max int) (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.n == 0 && !c.closed {
		c.cond.Wait()
	}
	if c.closed {
		return 0, false
	}
	n := min(c.n, max)
	c.n -= n
	return n, true
}

func (c *credit) add(n int) {
	c.mu.Lock()
	c.n += n
	c.cond.Broadcast()
	c.mu.Unlock()
}

func (c *credit) close() {
	c.mu.Lock()
	c.closed = true
	c.cond.Broadcast()
	c.mu.Unlock()
}
