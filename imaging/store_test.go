package imaging_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/paddock-vm/paddock/imaging"
	"github.com/paddock-vm/paddock/imaging/imagetest"
)

const (
	alice = 61001
	bob   = 61002
)

var (
	asAlice = imaging.Viewer{Namespace: imaging.UserNamespace(alice)}
	asBob   = imaging.Viewer{Namespace: imaging.UserNamespace(bob)}
	asAdmin = imaging.Viewer{Namespace: imaging.UserNamespace(0), Admin: true}
)

// content records an image's content (no rootfs: names are what these
// tests are about) and returns its digest.
func content(t *testing.T, st *imaging.Store, seed string) string {
	t.Helper()
	sum := sha256.Sum256([]byte(seed))
	d := "sha256:" + hex.EncodeToString(sum[:])
	if err := st.Add(&imaging.Image{Digest: d, Created: time.Now(), RootFS: "rootfs.ext4"}); err != nil {
		t.Fatal(err)
	}
	return d
}

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
		got, err := st.Resolve(asBob, tc.ref)
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
	imgs, err := st.List(asBob)
	if err != nil || len(imgs) != 2 {
		t.Fatalf("List = %d, %v", len(imgs), err)
	}
}

// Names are per owner: alice's app:1 and bob's app:1 are different images;
// public names come after a user's own; what a user may not see resolves
// exactly like what does not exist.
func TestNamespaces(t *testing.T) {
	st, err := imaging.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	aliceApp, bobApp, pub, shadow := content(t, st, "alice app"), content(t, st, "bob app"), content(t, st, "public base"), content(t, st, "alice base")
	for _, h := range []struct {
		ns     imaging.Namespace
		digest string
		names  []string
	}{
		{imaging.UserNamespace(alice), aliceApp, []string{"app:1", "secret-app"}},
		{imaging.UserNamespace(bob), bobApp, []string{"app:1"}},
		{imaging.PublicNamespace, pub, []string{"base:1", "base:2"}},
		{imaging.UserNamespace(alice), shadow, []string{"base:1"}},
	} {
		if err := st.Hold(h.ns, h.digest, h.names); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		who   imaging.Viewer
		ref   string
		want  string // "" is not found
		match imaging.Match
	}{
		{asAlice, "app:1", aliceApp, imaging.MatchOwn},
		{asBob, "app:1", bobApp, imaging.MatchOwn},
		{asAlice, "base:1", shadow, imaging.MatchOwn}, // her own name shadows the public one
		{asBob, "base:1", pub, imaging.MatchPublic},
		{asBob, "base:2", pub, imaging.MatchPublic},
		{asBob, pub, pub, imaging.MatchDigest},
		{asBob, "secret-app", "", 0},
		{asBob, aliceApp, "", 0},
		{asBob, aliceApp[:7+10], "", 0},
		{asAlice, bobApp, "", 0},
		{asAdmin, aliceApp, aliceApp, imaging.MatchDigest},
		{asAdmin, "app:1", "", 0}, // an admin's own names, then public ones
		{asAdmin, "base:1", pub, imaging.MatchPublic},
	} {
		img, m, err := st.Lookup(tc.who, tc.ref)
		if tc.want == "" {
			if !errors.Is(err, imaging.ErrImageNotFound) {
				t.Errorf("uid %d: Lookup(%q) = %v, %v; want not found", tc.who.UID, tc.ref, img, err)
			}
			continue
		}
		if err != nil || img.Digest != tc.want || m != tc.match {
			t.Errorf("uid %d: Lookup(%q) = %v %v %v, want %s %v", tc.who.UID, tc.ref, img, m, err, tc.want, tc.match)
		}
	}

	// The refusal for another user's image is the refusal for nothing.
	hidden := []string{"secret-app", aliceApp, aliceApp[:7+10]}
	missing := []string{"no-such-app", "sha256:" + strings.Repeat("e", 64), "sha256:" + strings.Repeat("e", 10)}
	for i := range hidden {
		_, err1 := st.Resolve(asBob, hidden[i])
		_, err2 := st.Resolve(asBob, missing[i])
		if err1 == nil || err2 == nil || strings.ReplaceAll(err1.Error(), hidden[i], "X") != strings.ReplaceAll(err2.Error(), missing[i], "X") {
			t.Errorf("bob's error for %q (%v) differs from the one for %q (%v)", hidden[i], err1, missing[i], err2)
		}
	}

	digests := func(imgs []*imaging.Image) []string {
		var out []string
		for _, img := range imgs {
			out = append(out, img.Digest)
		}
		slices.Sort(out)
		return out
	}
	sorted := func(ds ...string) []string { slices.Sort(ds); return ds }
	for _, tc := range []struct {
		who  imaging.Viewer
		want []string
	}{
		{asAlice, sorted(aliceApp, pub, shadow)},
		{asBob, sorted(bobApp, pub)},
		{asAdmin, sorted(aliceApp, bobApp, pub, shadow)},
	} {
		imgs, err := st.List(tc.who)
		if err != nil || !slices.Equal(digests(imgs), tc.want) {
			t.Errorf("uid %d lists %v (%v), want %v", tc.who.UID, digests(imgs), err, tc.want)
		}
		for _, img := range imgs {
			if img.Digest == aliceApp && !tc.who.Admin && tc.who.UID != alice {
				t.Errorf("uid %d sees alice's image", tc.who.UID)
			}
		}
	}
	// Names as each viewer sees them.
	for _, tc := range []struct {
		who    imaging.Viewer
		digest string
		names  string
		owners []uint32
	}{
		{asAlice, aliceApp, "app:1,secret-app:latest", []uint32{alice}},
		{asAlice, pub, "base:2", []uint32{}}, // base:1 is hers elsewhere
		{asBob, pub, "base:1,base:2", []uint32{}},
		{asAdmin, aliceApp, "", []uint32{alice}},
	} {
		img, err := st.View(tc.who, tc.digest)
		if err != nil || img == nil || strings.Join(img.Names, ",") != tc.names || !slices.Equal(img.Owners, tc.owners) {
			t.Errorf("uid %d views %s as %+v (%v), want names %q owners %v", tc.who.UID, tc.digest, img, err, tc.names, tc.owners)
		}
	}
	if img, err := st.View(asBob, aliceApp); img != nil || err != nil {
		t.Errorf("bob views alice's image: %+v %v", img, err)
	}

	// A name moves within its namespace only.
	if err := st.Hold(imaging.UserNamespace(bob), bobApp, []string{"base:1"}); err != nil {
		t.Fatal(err)
	}
	if img, _ := st.Resolve(asAlice, "base:1"); img == nil || img.Digest != shadow {
		t.Errorf("bob's tag moved alice's name: %+v", img)
	}
	// Release drops one namespace's hold; the image is held while anyone holds it.
	if err := st.Hold(imaging.UserNamespace(bob), aliceApp, []string{"same-content"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ns   imaging.Namespace
		d    string
		held bool
	}{
		{imaging.UserNamespace(alice), aliceApp, true}, // bob still holds it
		{imaging.UserNamespace(bob), aliceApp, false},
		{imaging.PublicNamespace, pub, false},
	} {
		held, err := st.Release(tc.ns, tc.d)
		if err != nil || held != tc.held {
			t.Errorf("Release(%v, %s) = %v, %v; want held %v", tc.ns, tc.d, held, err, tc.held)
		}
	}
	if _, err := st.Resolve(asAlice, "app:1"); !errors.Is(err, imaging.ErrImageNotFound) {
		t.Errorf("alice's released name still resolves: %v", err)
	}
	if _, err := st.Resolve(asBob, "base:2"); !errors.Is(err, imaging.ErrImageNotFound) {
		t.Errorf("an unpublished name still resolves: %v", err)
	}
	// Removing content removes every name of it.
	if err := st.Remove(bobApp); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(st.Root, "names.json"))
	if strings.Contains(string(b), bobApp) {
		t.Errorf("names.json keeps a removed image:\n%s", b)
	}
}

// Schema 1 records (one namespace for everyone) move into names.json: an
// image with owners becomes theirs, one without is published.
func TestMigrate(t *testing.T) {
	st, err := imaging.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	legacy := func(seed string, names []string, owners []uint32) string {
		sum := sha256.Sum256([]byte(seed))
		d := "sha256:" + hex.EncodeToString(sum[:])
		if err := os.MkdirAll(st.Dir(d), 0o750); err != nil {
			t.Fatal(err)
		}
		rec := map[string]any{"schema": 1, "digest": d, "names": names, "size": 1, "created": time.Now(), "rootfs": "rootfs.ext4"}
		if owners != nil {
			rec["owners"] = owners
		}
		b, _ := json.Marshal(rec)
		if err := os.WriteFile(filepath.Join(st.Dir(d), "image.json"), b, 0o640); err != nil {
			t.Fatal(err)
		}
		return d
	}
	owned := legacy("owned", []string{"mine:1"}, []uint32{alice})
	seeded := legacy("seeded", []string{"base"}, nil)
	n, err := st.Migrate()
	if err != nil || n != 2 {
		t.Fatalf("Migrate = %d, %v", n, err)
	}
	for _, tc := range []struct {
		who  imaging.Viewer
		ref  string
		want string
	}{
		{asAlice, "mine:1", owned},
		{asBob, "mine:1", ""},
		{asBob, owned, ""},
		{asBob, "base", seeded},
		{asAlice, "base:latest", seeded},
	} {
		img, err := st.Resolve(tc.who, tc.ref)
		if tc.want == "" {
			if !errors.Is(err, imaging.ErrImageNotFound) {
				t.Errorf("uid %d resolves %q after migration: %v %v", tc.who.UID, tc.ref, img, err)
			}
			continue
		}
		if err != nil || img.Digest != tc.want {
			t.Errorf("uid %d: Resolve(%q) = %v %v, want %s", tc.who.UID, tc.ref, img, err, tc.want)
		}
	}
	if n, err := st.Migrate(); n != 0 || err != nil {
		t.Fatalf("second Migrate = %d, %v", n, err)
	}
	b, _ := os.ReadFile(filepath.Join(st.Dir(owned), "image.json"))
	if strings.Contains(string(b), `"names"`) || strings.Contains(string(b), `"owners"`) || !strings.Contains(string(b), `"schema": 2`) {
		t.Fatalf("migrated image.json:\n%s", b)
	}
}
