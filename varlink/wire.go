// Package varlink implements the varlink wire protocol: NUL-terminated JSON
// messages over a stream socket. It holds a server with bounded reads,
// SO_PEERCRED identities and the org.varlink.service interface, and a small
// client.
package varlink

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Errors of the org.varlink.service interface.
const (
	ErrInterfaceNotFound    = "org.varlink.service.InterfaceNotFound"
	ErrMethodNotFound       = "org.varlink.service.MethodNotFound"
	ErrMethodNotImplemented = "org.varlink.service.MethodNotImplemented"
	ErrInvalidParameter     = "org.varlink.service.InvalidParameter"
	ErrPermissionDenied     = "org.varlink.service.PermissionDenied"
	ErrExpectedMore         = "org.varlink.service.ExpectedMore"
)

// ErrProtocol marks a message that is not a well-formed varlink call.
var ErrProtocol = errors.New("varlink protocol error")

// Request is one call as it arrives on the wire.
type Request struct {
	Method     string          `json:"method"`
	Parameters json.RawMessage `json:"parameters,omitempty"`
	More       bool            `json:"more,omitempty"`
	Oneway     bool            `json:"oneway,omitempty"`
	Upgrade    bool            `json:"upgrade,omitempty"`
}

// Reply is one answer as it leaves on the wire.
type Reply struct {
	Parameters any    `json:"parameters"`
	Continues  bool   `json:"continues,omitempty"`
	Error      string `json:"error,omitempty"`
}

var (
	methodRE = regexp.MustCompile(`^[a-z]([-]*[a-z0-9])*(\.[a-z0-9]([-]*[a-z0-9])*)+\.[A-Z][A-Za-z0-9]*$`)
	ifaceRE  = regexp.MustCompile(`^[a-z]([-]*[a-z0-9])*(\.[a-z0-9]([-]*[a-z0-9])*)+$`)
)

// ValidInterfaceName reports whether s is a syntactically valid interface name.
func ValidInterfaceName(s string) bool { return len(s) <= 255 && ifaceRE.MatchString(s) }

// DecodeRequest parses one message (without its NUL terminator). It never
// panics and rejects anything that is not a single JSON object naming a
// well-formed method with object parameters.
func DecodeRequest(b []byte) (*Request, error) { return decodeRequest(b, nil) }

// decodeRequest is DecodeRequest taking the names in known (checked once,
// by NewServer) as well-formed without matching them again per call.
func decodeRequest(b []byte, known map[string]Handler) (*Request, error) {
	var r Request
	// Unmarshal refuses trailing data too, without a Decoder's buffer and
	// copy per call.
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: malformed JSON: %v", ErrProtocol, err)
	}
	if _, ok := known[r.Method]; !ok && (!methodRE.MatchString(r.Method) || len(r.Method) > 255) {
		return nil, fmt.Errorf("%w: bad method name %q", ErrProtocol, truncate(r.Method, 80))
	}
	p := bytes.TrimSpace(r.Parameters)
	switch {
	case len(p) == 0 || bytes.Equal(p, []byte("null")):
		r.Parameters = json.RawMessage("{}")
	case p[0] != '{':
		return nil, fmt.Errorf("%w: parameters of %s must be an object", ErrProtocol, r.Method)
	}
	if r.More && r.Oneway {
		return nil, fmt.Errorf("%w: a call cannot be both more and oneway", ErrProtocol)
	}
	return &r, nil
}

// SplitMethod splits "a.b.c.Method" into interface and member.
func SplitMethod(m string) (iface, member string) {
	i := strings.LastIndexByte(m, '.')
	if i < 0 {
		return "", m
	}
	return m[:i], m[i+1:]
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// Error is a varlink error reply, as a Go error.
type Error struct {
	Name       string
	Parameters json.RawMessage
}

func (e *Error) Error() string {
	var m struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(e.Parameters, &m) == nil && m.Message != "" {
		return m.Message
	}
	if len(e.Parameters) > 0 && string(e.Parameters) != "{}" && string(e.Parameters) != "null" {
		return fmt.Sprintf("%s %s", e.Name, e.Parameters)
	}
	return e.Name
}

// Methods lists the method names declared in an interface description.
func Methods(description string) []string {
	var out []string
	for _, line := range strings.Split(description, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "method" {
			name := f[1]
			if i := strings.IndexByte(name, '('); i >= 0 {
				name = name[:i]
			}
			out = append(out, name)
		}
	}
	return out
}

// InterfaceName returns the name declared by an interface description.
func InterfaceName(description string) string {
	for _, line := range strings.Split(description, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "interface" {
			return f[1]
		}
	}
	return ""
}
