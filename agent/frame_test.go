package agent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	in := &Message{T: TypeOutput, Stream: 3, Fd: 2, Data: []byte("hello\x00world")}
	if err := WriteFrame(&buf, in, DefaultMaxFrame); err != nil {
		t.Fatal(err)
	}
	if got := binary.BigEndian.Uint32(buf.Bytes()); int(got) != buf.Len()-4 {
		t.Fatalf("header %d, body %d", got, buf.Len()-4)
	}
	out, err := ReadMessage(&buf, DefaultMaxFrame)
	if err != nil {
		t.Fatal(err)
	}
	if out.T != in.T || out.Stream != 3 || out.Fd != 2 || !bytes.Equal(out.Data, in.Data) {
		t.Fatalf("got %+v", out)
	}
}

func TestReadFrameRejects(t *testing.T) {
	hdr := func(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }
	cases := []struct {
		name  string
		input []byte
		want  error
		text  string
	}{
		{"100MiB header", hdr(100 << 20), ErrFrameTooLarge, "announces 104857600 bytes"},
		{"max+1", hdr(DefaultMaxFrame + 1), ErrFrameTooLarge, "limit is 1048576"},
		{"zero", hdr(0), ErrMalformed, "empty frame"},
		{"ascii garbage", []byte("HTTP/1.1 200 OK\r\n"), ErrFrameTooLarge, `"HTTP"`},
		{"truncated body", append(hdr(10), "abc"...), io.ErrUnexpectedEOF, ""},
		{"truncated header", []byte{0, 0}, io.ErrUnexpectedEOF, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ReadFrame(bytes.NewReader(c.input), DefaultMaxFrame)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if c.text != "" && !strings.Contains(err.Error(), c.text) {
				t.Fatalf("err = %v, want it to mention %q", err, c.text)
			}
		})
	}
}

func TestDecodeMessageRejects(t *testing.T) {
	for _, body := range []string{
		`not json`,
		`{"t":"bogus"}`,
		`{"t":"req","op":"ping"}`,
		`{"t":"res"}`,
		`{"t":"out","s":1,"fd":3}`,
		`{"t":"win","s":1,"n":0}`,
		`{"t":"win","s":1,"n":999999999}`,
		`{"t":"in","d":"aGk="}`,
		`[1,2,3]`,
	} {
		if _, err := DecodeMessage([]byte(body)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", body, err)
		}
	}
}

func TestWriteFrameTooLarge(t *testing.T) {
	m := &Message{T: TypeResponse, ID: 1, Body: []byte(`"` + strings.Repeat("x", 2000) + `"`)}
	if err := WriteFrame(io.Discard, m, 1000); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("err = %v", err)
	}
}

// FuzzReadFrame feeds arbitrary bytes to the decoder: it must never panic,
// never allocate past the limit, and a decoded message must re-encode.
func FuzzReadFrame(f *testing.F) {
	enc := func(m *Message) []byte {
		b, _ := EncodeFrame(m, DefaultMaxFrame)
		return b
	}
	f.Add(enc(&Message{T: TypeRequest, ID: 1, Op: OpPing, Body: []byte(`{}`)}))
	f.Add(enc(&Message{T: TypeOutput, Stream: 1, Fd: 1, Data: []byte("hi")}))
	f.Add(enc(&Message{T: TypeExit, Stream: 1, Body: []byte(`{"code":0}`)}))
	f.Add(enc(&Message{T: TypeWindow, Stream: 2, Fd: 1, N: 100}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte("GET / HTTP/1.0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		const limit = 4096
		r := bytes.NewReader(data)
		for {
			payload, err := ReadFrame(r, limit)
			if err != nil {
				return
			}
			if len(payload) > limit {
				t.Fatalf("payload of %d bytes over limit", len(payload))
			}
			m, err := DecodeMessage(payload)
			if err != nil {
				continue
			}
			if _, err := EncodeFrame(m, 4*limit); err != nil {
				t.Fatalf("re-encode: %v", err)
			}
		}
	})
}
