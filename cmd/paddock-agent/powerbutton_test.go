package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestHasKey(t *testing.T) {
	for _, tc := range []struct {
		bitmap string
		want   bool
	}{
		{"10000000000000 0\n", true}, // the ACPI "Power Button" device
		{"0", false},
		{"", false},
		{"fffffffffffffffe", false}, // bit 116 is in the second word
		{"ffefffffffffffff ffffffffffffffff", false},
		{"0 10000000000000 0", true}, // a higher word in front changes nothing
		{"zz 0", false},              // not hex
		{"10000000000000", false},
	} {
		if got := hasKey(tc.bitmap, keyPower); got != tc.want {
			t.Errorf("hasKey(%q) = %v, want %v", tc.bitmap, got, tc.want)
		}
	}
}

func TestPowerButtons(t *testing.T) {
	sys := t.TempDir()
	for name, dev := range map[string][2]string{
		"event0": {"Power Button", "10000000000000 0"},
		"event1": {"AT Translated Set 2 keyboard", "402000000 3803078f800d001 feffffdfffefffff fffffffffffffffe"},
		"event2": {"Sleep Button", "4000 0 0"},
	} {
		d := filepath.Join(sys, name, "device", "capabilities")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		_ = os.WriteFile(filepath.Join(d, "key"), []byte(dev[1]+"\n"), 0o644)
		_ = os.WriteFile(filepath.Join(sys, name, "device", "name"), []byte(dev[0]+"\n"), 0o644)
	}
	got := powerButtons(sys)
	want := map[string]string{"/dev/input/event0": "Power Button", "/dev/input/event1": "AT Translated Set 2 keyboard"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("powerButtons = %v, want %v", got, want)
	}
}

func inputEvent(typ, code uint16, value int32) []byte {
	ev := make([]byte, inputEventSize)
	binary.NativeEndian.PutUint16(ev[16:], typ)
	binary.NativeEndian.PutUint16(ev[18:], code)
	binary.NativeEndian.PutUint32(ev[20:], uint32(value))
	return ev
}

// oneByte returns reads of one byte, as a device never does, to prove
// events are reassembled.
type oneByte struct{ r io.Reader }

func (o oneByte) Read(p []byte) (int, error) { return o.r.Read(p[:1]) }

func TestWaitPowerPress(t *testing.T) {
	const evSyn, keyA = 0, 30
	press := bytes.Join([][]byte{
		inputEvent(evKey, keyA, 1), inputEvent(evSyn, 0, 0),
		inputEvent(evKey, keyPower, 0), // a release alone is no press
		inputEvent(evKey, keyPower, 1), inputEvent(evSyn, 0, 0),
	}, nil)
	if err := waitPowerPress(bytes.NewReader(press)); err != nil {
		t.Fatalf("press: %v", err)
	}
	if err := waitPowerPress(oneByte{bytes.NewReader(press)}); err != nil {
		t.Fatalf("press in one-byte reads: %v", err)
	}
	noPress := bytes.Join([][]byte{inputEvent(evKey, keyA, 1), inputEvent(evKey, keyPower, 0)}, nil)
	if err := waitPowerPress(bytes.NewReader(noPress)); !errors.Is(err, io.EOF) {
		t.Fatalf("no press: %v", err)
	}
}
