package varlink

import (
	"context"
	"errors"
	"io"
	"os"
	"testing"
)

// Invoke runs the same handler a connection would, with the peer it is
// given, and turns replies, error replies and returned errors alike into
// what a client would have read.
func TestInvoke(t *testing.T) {
	s, err := NewServer(Config{
		Interfaces: map[string]string{"org.example.t": "interface org.example.t\n"},
		Methods: map[string]Handler{
			"org.example.t.Who": func(_ context.Context, c *Call) error {
				var in struct {
					Greeting string `json:"greeting"`
				}
				if err := c.Decode(&in); err != nil {
					return err
				}
				return c.Reply(map[string]any{"uid": c.Peer.UID, "greeting": in.Greeting})
			},
			"org.example.t.Named": func(_ context.Context, c *Call) error {
				return c.ReplyError("org.example.t.Nope", map[string]string{"message": "no"})
			},
			"org.example.t.Fails": func(context.Context, *Call) error { return errors.New("boom") },
			"org.example.t.Panics": func(_ context.Context, c *Call) error {
				var p *Peer
				return c.Reply(p.UID) // a nil pointer: the handler panics
			},
			"org.example.t.Streams": func(_ context.Context, c *Call) error {
				return c.Continue(nil)
			},
			"org.example.t.Read": func(_ context.Context, c *Call) error {
				b, err := io.ReadAll(c.FDs[0])
				if err != nil {
					return err
				}
				return c.Reply(map[string]any{"read": string(b), "fds": len(c.FDs)})
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	out, err := s.Invoke(ctx, Peer{UID: 1234}, "org.example.t.Who", map[string]string{"greeting": "hi"}, nil)
	if err != nil || string(out) != `{"greeting":"hi","uid":1234}` {
		t.Fatalf("Who = %s, %v", out, err)
	}
	var ve *Error
	if _, err := s.Invoke(ctx, Peer{}, "org.example.t.Who", map[string]string{"bogus": "x"}, nil); !errors.As(err, &ve) || ve.Name != ErrInvalidParameter {
		t.Errorf("unknown parameter: %v", err)
	}
	if _, err := s.Invoke(ctx, Peer{}, "org.example.t.Named", nil, nil); !errors.As(err, &ve) || ve.Name != "org.example.t.Nope" || ve.Error() != "no" {
		t.Errorf("Named: %v", err)
	}
	if _, err := s.Invoke(ctx, Peer{}, "org.example.t.Fails", nil, nil); !errors.As(err, &ve) || ve.Name != "org.varlink.service.Internal" {
		t.Errorf("Fails: %v", err)
	}
	// A handler's panic is the call's internal error; the server lives on.
	if _, err := s.Invoke(ctx, Peer{}, "org.example.t.Panics", nil, nil); !errors.As(err, &ve) || ve.Name != "org.varlink.service.Internal" {
		t.Errorf("Panics = %v", err)
	}
	// Descriptors reach the handler as a connection's do, and are closed
	// when it returns.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	_, _ = w.WriteString("through a descriptor")
	w.Close()
	if out, err := s.Invoke(ctx, Peer{}, "org.example.t.Read", nil, []*os.File{r}); err != nil || string(out) != `{"fds":1,"read":"through a descriptor"}` {
		t.Errorf("Read = %s, %v", out, err)
	}
	if _, err := r.Stat(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("the descriptor is still open after the call: %v", err)
	}
	if _, err := s.Invoke(ctx, Peer{}, "org.example.t.Streams", nil, nil); !errors.As(err, &ve) || ve.Name != ErrExpectedMore {
		t.Errorf("Streams: %v", err)
	}
	if _, err := s.Invoke(ctx, Peer{}, "org.example.t.Missing", nil, nil); !errors.As(err, &ve) || ve.Name != ErrMethodNotFound {
		t.Errorf("Missing: %v", err)
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Invoke(ctx, Peer{}, "org.example.t.Who", nil, nil); !errors.Is(err, ErrShuttingDown) {
		t.Errorf("after Shutdown: %v", err)
	}
}
