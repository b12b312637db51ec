package flatten_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/paddock-vm/paddock/imaging/flatten"
)

// Options.Applied sees each entry once it is checked and applied, in
// stream order, as Entry left it, a regular file with the spill file
// holding its content (readable until Close); not a refused entry, nor a
// global header; and its error stops Flatten as it is.
func TestApplied(t *testing.T) {
	stop := errors.New("stop here")
	type seen struct{ name, content string }
	for _, tc := range []struct {
		name    string
		entries []tar.Header
		bodies  map[string]string
		failOn  string // Applied fails on this name
		want    []seen
		wantErr string
	}{
		{name: "in stream order, contents spilled",
			entries: []tar.Header{{Typeflag: tar.TypeReg, Name: "b"}, {Typeflag: tar.TypeDir, Name: "a/"},
				{Typeflag: tar.TypeReg, Name: "a/x"}, {Typeflag: tar.TypeReg, Name: "a/empty"},
				{Typeflag: tar.TypeSymlink, Name: "l", Linkname: "b"}, {Typeflag: tar.TypeLink, Name: "h", Linkname: "b"}},
			bodies: map[string]string{"b": "bee", "a/x": "ex"},
			want:   []seen{{"b", "bee"}, {"a/", ""}, {"a/x", "ex"}, {"a/empty", ""}, {"l", ""}, {"h", ""}}},
		{name: "a global header is not an entry",
			entries: []tar.Header{{Typeflag: tar.TypeXGlobalHeader, Name: "g", PAXRecords: map[string]string{"comment": "x"}}, {Typeflag: tar.TypeReg, Name: "f"}},
			bodies:  map[string]string{"f": "f"},
			want:    []seen{{"f", "f"}}},
		{name: "a refused entry is not seen",
			entries: []tar.Header{{Typeflag: tar.TypeReg, Name: "ok"}, {Typeflag: tar.TypeReg, Name: "../escape"}},
			bodies:  map[string]string{"ok": "1", "../escape": "2"},
			want:    []seen{{"ok", "1"}}, wantErr: "../escape"},
		{name: "its error stops Flatten",
			entries: []tar.Header{{Typeflag: tar.TypeReg, Name: "one"}, {Typeflag: tar.TypeReg, Name: "two"}, {Typeflag: tar.TypeReg, Name: "three"}},
			bodies:  map[string]string{"one": "1", "two": "2", "three": "3"},
			failOn:  "two", want: []seen{{"one", "1"}, {"two", "2"}}, wantErr: stop.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			tw := tar.NewWriter(&b)
			for _, h := range tc.entries {
				if h.Typeflag != tar.TypeXGlobalHeader {
					h.Mode, h.Size = 0o644, int64(len(tc.bodies[h.Name]))
				}
				if err := tw.WriteHeader(&h); err != nil {
					t.Fatal(err)
				}
				if _, err := tw.Write([]byte(tc.bodies[h.Name])); err != nil {
					t.Fatal(err)
				}
			}
			tw.Close()
			var got []seen
			opts := flatten.Options{ScratchDir: t.TempDir(), Literal: true,
				Entry: func(h *tar.Header) error { h.Uid = 4242; return nil },
				Applied: func(h *tar.Header, content string) error {
					if h.Uid != 4242 {
						return fmt.Errorf("%s: the header is not as Entry left it", h.Name)
					}
					body := ""
					if content != "" {
						raw, err := os.ReadFile(content)
						if err != nil {
							return err
						}
						body = string(raw)
					}
					got = append(got, seen{h.Name, body})
					if h.Name == tc.failOn {
						return stop
					}
					return nil
				}}
			res, err := flatten.Flatten(context.Background(), []flatten.Layer{flatten.ReaderLayer("l", &b)}, opts)
			if res != nil {
				res.Close()
			}
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			if tc.failOn != "" && !errors.Is(err, stop) {
				t.Fatalf("err = %v, want Applied's own", err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("Applied saw %v, want %v", got, tc.want)
			}
		})
	}
}
