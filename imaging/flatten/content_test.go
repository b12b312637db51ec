package flatten_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/imaging/flatten"
)

// Options.Content is offered each non-empty regular file's content
// before the spill, with a path of its own: what it takes is read by it
// and Applied and Walk see the path it was given (nothing written there
// by flatten); what it declines is spilled as before; a content it finds
// cut short is refused as the spill refuses it.
func TestContent(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cut     bool // the last content is truncated
		wantErr string
	}{
		{name: "taken and declined"},
		{name: "cut short", cut: true, wantErr: "content truncated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			tw := tar.NewWriter(&b)
			for _, f := range []struct{ name, body string }{{"take-me", "taken body"}, {"leave-me", "spilled body"}, {"empty", ""}} {
				if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.body))}); err != nil {
					t.Fatal(err)
				}
				io.WriteString(tw, f.body)
			}
			tw.Close()
			stream := b.Bytes()
			if tc.cut {
				stream = stream[:512+5]
			}
			scratch := t.TempDir()
			offered := map[string]string{} // name -> path
			applied := map[string]string{} // name -> content path
			opts := flatten.Options{ScratchDir: scratch, Literal: true, RequireEnd: !tc.cut,
				Content: func(h *tar.Header, r io.Reader, path string) (bool, error) {
					offered[h.Name] = path
					if !strings.HasPrefix(h.Name, "take") {
						return false, nil
					}
					if _, err := os.Stat(path); !os.IsNotExist(err) {
						t.Errorf("%s: %s exists before it is made: %v", h.Name, path, err)
					}
					body := make([]byte, h.Size)
					if _, err := io.ReadFull(r, body); err != nil {
						return false, err
					}
					// what a Stream giving up does: the content at its path
					return true, os.WriteFile(path, bytes.ToUpper(body), 0o600)
				},
				Applied: func(h *tar.Header, content string) error { applied[h.Name] = content; return nil },
			}
			res, err := flatten.Flatten(context.Background(), []flatten.Layer{flatten.ReaderLayer("", bytes.NewReader(stream))}, opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				if res != nil {
					res.Close()
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer res.Close()
			if _, ok := offered["empty"]; ok || len(offered) != 2 {
				t.Errorf("offered %v, want the two non-empty files", offered)
			}
			if applied["take-me"] != offered["take-me"] {
				t.Errorf("Applied saw %q for the taken content, want %q", applied["take-me"], offered["take-me"])
			}
			if p := applied["leave-me"]; p == "" || p == offered["leave-me"] {
				t.Errorf("Applied saw %q for the spilled content, want a spill file", p)
			}
			got := map[string]string{}
			if err := res.Walk(context.Background(), func(e flatten.Entry) error {
				if e.ContentPath != "" {
					b, err := os.ReadFile(e.ContentPath)
					if err != nil {
						return err
					}
					got[e.Header.Name] = string(b)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if got["take-me"] != "TAKEN BODY" || got["leave-me"] != "spilled body" {
				t.Errorf("contents %q", got)
			}
		})
	}
}
