package imaging_test

import (
	"errors"
	"testing"

	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/imaging/imagetest"
)

func TestResolve(t *testing.T) {
	dir := t.TempDir()
	a := imagetest.Seed(t, dir, "alpine:3.20")
	b := imagetest.Seed(t, dir, "debian")
	st, err := imaging.OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		ref  string
		want *imaging.Image
		err  error
	}{
		{"alpine:3.20", a, nil},
		{"debian", b, nil},
		{"debian:latest", b, nil},
		{a.Digest, a, nil},
		{a.Digest[:7+8], a, nil},
		{"alpine", nil, imaging.ErrImageNotFound},
		{"nosuch:1", nil, imaging.ErrImageNotFound},
		{"", nil, imaging.ErrImageNotFound},
	}
	for _, tc := range cases {
		got, err := st.Resolve(tc.ref)
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("Resolve(%q) err = %v, want %v", tc.ref, err, tc.err)
			}
			continue
		}
		if err != nil || got.Digest != tc.want.Digest {
			t.Errorf("Resolve(%q) = %v, %v", tc.ref, got, err)
		}
	}
	imgs, err := st.List()
	if err != nil || len(imgs) != 2 {
		t.Fatalf("List = %d, %v", len(imgs), err)
	}
}
