package state

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func sample(id string) *VM {
	return &VM{ID: id, Name: "web1", OwnerUID: 1000, Status: StatusCreated,
		Spec:      Spec{Image: "alpine:3", ImageDigest: "sha256:ab", CPUs: 1, Memory: 512 << 20, DiskSize: 1 << 30},
		CreatedAt: time.Unix(1700000000, 0).UTC(), UpdatedAt: time.Unix(1700000000, 0).UTC()}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	id := NewID()
	if !ValidID(id) || len(id) < 12 {
		t.Fatalf("bad id %q", id)
	}
	vm := sample(id)
	if err := s.Save(vm); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load(id)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "web1" || got.Spec.Memory != 512<<20 || got.Schema != SchemaVersion || !got.CreatedAt.Equal(vm.CreatedAt) {
		t.Fatalf("round trip: %+v", got)
	}
	ids, stray, err := s.IDs()
	if err != nil || len(ids) != 1 || ids[0] != id || len(stray) != 0 {
		t.Fatalf("IDs = %v %v %v", ids, stray, err)
	}
	// No temp files are left next to the record.
	ents, _ := os.ReadDir(s.Dir(id))
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Fatalf("temp file left: %s", e.Name())
		}
	}
}

func TestLoadRejectsDamage(t *testing.T) {
	s, _ := NewStore(t.TempDir())
	id := NewID()
	if err := s.Save(sample(id)); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(filepath.Join(s.Dir(id), "vm.json"))
	cases := []struct {
		name, body, want string
	}{
		{"truncated", string(good[:len(good)/2]), "unexpected EOF"},
		{"empty", "", "EOF"},
		{"garbage", "\x00\x01not json", "invalid character"},
		{"future schema", strings.Replace(string(good), `"schema": 1`, `"schema": 99`, 1), "schema version 99"},
		{"wrong id", strings.Replace(string(good), id, NewID(), 1), "does not match"},
		{"bad status", strings.Replace(string(good), `"created"`, `"flying"`, 1), `unknown status "flying"`},
		{"bad name", strings.Replace(string(good), `"web1"`, `"Web_1"`, 1), "Web_1"},
		{"unknown field", strings.Replace(string(good), `"schema": 1`, `"schema": 1, "evil": 2`, 1), "evil"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(s.Dir(id), "vm.json"), []byte(tc.body), 0o640); err != nil {
				t.Fatal(err)
			}
			_, err := s.Load(id)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("err = %v, want ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "vm.json") {
				t.Fatalf("err %q should name the file and say %q", err, tc.want)
			}
		})
	}
	if _, err := s.Load(NewID()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
}

func TestNames(t *testing.T) {
	for _, ok := range []string{"a", "web1", "my-vm-2", strings.Repeat("a", 63)} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("%q rejected: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "a-", "A", "a_b", "a.b", "a b", strings.Repeat("a", 64), "ä"} {
		if err := ValidateName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// A new VM's name cannot have the shape of an id (it would stand in for
// another VM's); names that merely contain hex are fine.
func TestNewNames(t *testing.T) {
	id := NewID()
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"web1", true},
		{"deadbeef", true},
		{id[:IDLen-1], true},
		{id + "0", true},
		{id, false},
		{strings.Repeat("0", IDLen), false},
		{"Bad_Name", false},
	} {
		err := ValidateNewName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateNewName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err == nil && ValidateName(tc.name) != nil {
			t.Errorf("%q is a new name but not a name", tc.name)
		}
	}
	// Records from before the rule still load.
	if err := ValidateName(id); err != nil {
		t.Errorf("an id-shaped name of an old record: %v", err)
	}
}

func TestRemoveAndSweep(t *testing.T) {
	s, _ := NewStore(t.TempDir())
	id := NewID()
	if err := s.Save(sample(id)); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveHandles(id, &Handles{}); err != nil {
		t.Fatal(err)
	}
	h, err := s.LoadHandles(id)
	if err != nil || h.Schema != SchemaVersion || h.Items == nil {
		t.Fatalf("handles: %+v %v", h, err)
	}
	if err := s.Remove(id); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(id); err != nil {
		t.Fatalf("second remove: %v", err)
	}
	// A delete interrupted after the rename leaves a grave that is not a VM.
	id2 := NewID()
	_ = s.Save(sample(id2))
	if err := os.Rename(s.Dir(id2), filepath.Join(s.Root, ".deleted-"+id2)); err != nil {
		t.Fatal(err)
	}
	ids, _, _ := s.IDs()
	if len(ids) != 0 {
		t.Fatalf("graves listed as VMs: %v", ids)
	}
	if err := s.SweepDeleted(); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(s.Root)
	if len(ents) != 0 {
		t.Fatalf("left behind: %v", ents)
	}
}
