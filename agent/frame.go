package agent

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Framing: every message is a 4-byte big-endian length N followed by N bytes
// of JSON (one Message). 0 < N <= the reader's limit. Both sides enforce a
// limit (DefaultMaxFrame unless configured) before allocating anything.

// DefaultMaxFrame is the default limit on a frame's payload.
const DefaultMaxFrame = 1 << 20

// MaxChunk is the largest data payload carried in one frame (before base64).
const MaxChunk = 32 << 10

// ErrFrameTooLarge is wrapped by ReadFrame for a header announcing more than
// the limit and by WriteFrame for a message that does not fit.
var ErrFrameTooLarge = errors.New("frame too large")

// ErrMalformed is wrapped for frames that are not a valid Message.
var ErrMalformed = errors.New("malformed frame")

// ReadFrame reads one frame's payload, at most max bytes. It never allocates
// more than the announced size, and only after checking it against max.
func ReadFrame(r io.Reader, max int) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 {
		return nil, fmt.Errorf("%w: empty frame", ErrMalformed)
	}
	if uint64(n) > uint64(max) {
		return nil, fmt.Errorf("%w: header announces %d bytes, limit is %d (header bytes %q)", ErrFrameTooLarge, n, max, hdr[:])
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("reading %d-byte frame: %w", n, err)
	}
	return buf, nil
}

// DecodeMessage parses a frame payload into a Message and checks its shape.
func DecodeMessage(payload []byte) (*Message, error) {
	var m Message
	if err := json.Unmarshal(payload, &m); err != nil {
		return nil, fmt.Errorf("%w: %v (starts %q)", ErrMalformed, err, truncate(payload, 32))
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return &m, nil
}

// ReadMessage reads and decodes one message.
func ReadMessage(r io.Reader, max int) (*Message, error) {
	b, err := ReadFrame(r, max)
	if err != nil {
		return nil, err
	}
	return DecodeMessage(b)
}

// EncodeFrame returns the framed encoding of m (header included).
func EncodeFrame(m *Message, max int) ([]byte, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(body) > max {
		return nil, fmt.Errorf("%w: message of %d bytes, limit is %d", ErrFrameTooLarge, len(body), max)
	}
	buf := make([]byte, 4, 4+len(body))
	binary.BigEndian.PutUint32(buf, uint32(len(body)))
	return append(buf, body...), nil
}

// WriteFrame writes m as one frame with a single Write call.
func WriteFrame(w io.Writer, m *Message, max int) error {
	buf, err := EncodeFrame(m, max)
	if err != nil {
		return err
	}
	_, err = w.Write(buf)
	return err
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
