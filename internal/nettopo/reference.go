//go:build linux

package nettopo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"
)

// Reference addresses: the benchmarking range of RFC 2544, apart from the
// topology's.
var (
	refSenderIP   = netip.MustParseAddr("198.18.0.1")
	refReceiverIP = netip.MustParseAddr("198.18.0.2")
)

// VethReference is the yardstick of the network bench: n bytes over TCP
// from one fresh namespace to another over a plain veth pair (MTU 1500, as
// a VM's tap), timed at the receiving end like every figure compared to it.
// Both namespaces are gone when it returns; a leak is an error.
func VethReference(ctx context.Context, n int64) (res Result, err error) {
	a, err := NewNetns("pdknt-refa")
	if err != nil {
		return Result{}, err
	}
	var names = []string{a.Name}
	var b *Netns
	defer func() {
		errs := []error{err, a.Close()}
		if b != nil {
			errs = append(errs, b.Close())
		}
		for _, name := range names {
			errs = append(errs, CheckGone(name))
		}
		err = errors.Join(errs...)
	}()
	if b, err = NewNetns("pdknt-refb"); err != nil {
		return Result{}, err
	}
	names = append(names, b.Name)
	p := pair{inner: b, innerIP: refReceiverIP, outer: a, outerName: "ntref0", outerIP: refSenderIP}
	if err := p.wire(); err != nil {
		return Result{}, err
	}
	return Transfer(ctx, a, b, netip.AddrPortFrom(refReceiverIP, SinkPort), n)
}

// Transfer sends n bytes from a namespace to a listener it makes at addr
// in another (Send to Receive) and returns what the receiver measured.
// Every socket is closed when it returns.
func Transfer(ctx context.Context, from, to *Netns, addr netip.AddrPort, n int64) (Result, error) {
	ln, err := to.Listen("tcp", addr.String())
	if err != nil {
		return Result{}, err
	}
	defer ln.Close()
	type got struct {
		res Result
		err error
	}
	recv := make(chan got, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			recv <- got{err: err}
			return
		}
		defer c.Close()
		r, err := Receive(ctx, c)
		recv <- got{r, err}
	}()
	c, err := from.Dial(ctx, "tcp", addr.String())
	if err != nil {
		ln.Close() // ends the Accept
		<-recv
		return Result{}, err
	}
	sendErr := Send(ctx, c, n)
	c.Close()
	r := <-recv
	if err := errors.Join(sendErr, r.err); err != nil {
		return r.res, err
	}
	if r.res.Bytes != n {
		return r.res, fmt.Errorf("received %d bytes of %d", r.res.Bytes, n)
	}
	return r.res, nil
}

// Fetch connects from a namespace to addr, sends FetchRequest and receives
// until the sender ends (Receive). A refused connection, or one closed
// before its first byte, is retried every 100ms until ctx ends: a guest's
// listener (GuestServe behind a published port) comes up a moment after
// the command starts.
func Fetch(ctx context.Context, from *Netns, addr string) (Result, error) {
	for {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := from.Dial(dctx, "tcp", addr)
		cancel()
		if err == nil {
			var res Result
			_, rerr := io.WriteString(c, FetchRequest)
			if rerr == nil {
				res, rerr = Receive(ctx, c)
			}
			c.Close()
			if rerr == nil && res.Bytes > 0 {
				return res, nil
			}
			err = rerr
			if err == nil {
				err = errors.New("closed before the first byte")
			}
		}
		select {
		case <-ctx.Done():
			return Result{}, fmt.Errorf("fetching from %s: %w (last: %v)", addr, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
