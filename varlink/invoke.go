package varlink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
)

// ErrShuttingDown is what Invoke returns once Shutdown has begun waiting on
// the calls in flight.
var ErrShuttingDown = errors.New("varlink: the server is shutting down")

// Invoke runs one method in-process, for peer, through the same table,
// handlers and error mapping as a call that arrived on a connection: it is
// the seam another front-end (D-Bus) routes its calls through, so the two
// never serve different logic. params is marshalled to JSON as a client's
// parameters would be. It returns the final reply's parameters, or the
// error reply as an *Error. Streaming ("more") calls are not served here:
// a handler that answers with Continue gets ErrExpectedMore.
//
// fds are passed to the handler as a connection's SCM_RIGHTS descriptors
// are (Call.FDs), and closed when it returns, as those are.
func (s *Server) Invoke(ctx context.Context, peer Peer, method string, params any, fds []*os.File) (json.RawMessage, error) {
	defer closeAll(fds)
	raw, err := json.Marshal(orEmpty(params))
	if err != nil {
		return nil, NewError(ErrInvalidParameter, map[string]any{"parameter": "parameters", "message": fmt.Sprintf("encode parameters: %v", err)})
	}
	if !s.begin() {
		return nil, ErrShuttingDown
	}
	defer s.inflight.Done()
	var final *Reply
	if len(fds) > 0 {
		defer context.AfterFunc(ctx, func() { expire(fds) })()
	}
	call := &Call{Request: &Request{Method: method, Parameters: raw}, Peer: peer, FDs: fds, local: func(r *Reply) error {
		if r.Continues {
			return NewError(ErrExpectedMore, map[string]any{"message": method + " streams: not served in-process"})
		}
		final = r
		return nil
	}}
	h, errName, errParams := s.lookup(method)
	if h == nil {
		return nil, NewError(errName, errParams)
	}
	herr := s.run(ctx, h, call)
	if herr != nil && final == nil {
		return nil, s.cfg.MapError(herr)
	}
	if final == nil {
		return json.RawMessage("{}"), nil
	}
	b, err := json.Marshal(final.Parameters)
	if err != nil {
		return nil, s.cfg.MapError(fmt.Errorf("encode reply: %w", err))
	}
	if final.Error != "" {
		return nil, &Error{Name: final.Error, Parameters: b}
	}
	return b, nil
}
