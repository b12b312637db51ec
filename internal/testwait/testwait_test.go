package testwait

import (
	"strings"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/internal/tbtest"
)

func TestFor(t *testing.T) {
	n := 0
	if f := tbtest.Run(t, func(tb testing.TB) { For(tb, "three polls", time.Minute, func() bool { n++; return n == 3 }) }); f.Failed() || n != 3 {
		t.Errorf("a condition that comes true: failed=%v (%s) after %d polls", f.Failed(), f.Msg(), n)
	}
	f := tbtest.Run(t, func(tb testing.TB) { For(tb, "never", time.Millisecond, func() bool { return false }) })
	if !f.Failed() || !strings.Contains(f.Msg(), "waiting for never") {
		t.Errorf("a condition that never holds: failed=%v %q", f.Failed(), f.Msg())
	}
}

func TestRecv(t *testing.T) {
	ch := make(chan int, 1)
	ch <- 7
	var got int
	if f := tbtest.Run(t, func(tb testing.TB) { got = Recv(tb, "seven", time.Minute, ch) }); f.Failed() || got != 7 {
		t.Errorf("a value sent: got %d, failed=%v (%s)", got, f.Failed(), f.Msg())
	}
	f := tbtest.Run(t, func(tb testing.TB) { Recv(tb, "nothing", time.Millisecond, ch) })
	if !f.Failed() || !strings.Contains(f.Msg(), "waiting for nothing") {
		t.Errorf("nothing sent: failed=%v %q", f.Failed(), f.Msg())
	}
}
