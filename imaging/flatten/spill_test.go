package flatten

import (
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"testing"

	"archive/tar"
)

func tarOf(t *testing.T, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		body := h.Linkname // body smuggled in Linkname for regular files
		if h.Typeflag == tar.TypeReg {
			h.Linkname, h.Size = "", int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			io.WriteString(tw, body)
		}
	}
	tw.Close()
	return buf.Bytes()
}

// TestSpillReclaimed: content dropped by later layers gives its scratch
// blocks back, while content still reachable through a hardlink does not.
func TestSpillReclaimed(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 1<<18) // 4 MiB, not zero
	l1 := tarOf(t,
		&tar.Header{Name: "dropped", Typeflag: tar.TypeReg, Linkname: big, Mode: 0o644},
		&tar.Header{Name: "kept", Typeflag: tar.TypeReg, Linkname: big, Mode: 0o644},
		&tar.Header{Name: "link", Typeflag: tar.TypeLink, Linkname: "kept"},
	)
	l2 := tarOf(t,
		&tar.Header{Name: ".wh.dropped", Typeflag: tar.TypeReg},
		&tar.Header{Name: ".wh.kept", Typeflag: tar.TypeReg},
	)
	res, err := Flatten(context.Background(), []Layer{ReaderLayer("l1", bytes.NewReader(l1)), ReaderLayer("l2", bytes.NewReader(l2))},
		Options{ScratchDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	ents, err := os.ReadDir(res.spill.dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 {
		t.Errorf("spill holds %d files after one of two contents was whited out; want 1", len(ents))
	}
	var out bytes.Buffer
	if err := res.Emit(context.Background(), &out); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&out)
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		if h.Name == "link" {
			b, _ := io.ReadAll(tr)
			if string(b) != big {
				t.Errorf("hardlinked content lost when its first name was whited out")
			}
			return
		}
	}
	t.Error("link not emitted")
}
