package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The ACPI power button (QEMU's QMP system_powerdown; on -M microvm it is
// signalled through the GED device, whose event handler notifies the PNP0C0C
// power button) reaches userspace as KEY_POWER on an input event device: the
// kernel's "button" driver reports the key, "evdev" gives it a
// /dev/input/event* node (both are modules in Debian's kernel, loaded from
// the boot kit). Without an init that listens, the kernel does nothing with
// it: the agent is that listener, so a guest whose agent protocol is wedged
// or never came up still powers off cleanly on the power button.

// Input event constants (linux/input-event-codes.h).
const (
	evKey    = 0x01
	keyPower = 116
)

// inputEventSize is sizeof(struct input_event) on 64-bit Linux: a struct
// timeval (16 bytes), type and code (2 bytes each), value (4 bytes).
const inputEventSize = 24

// hasKey reports whether a sysfs capability bitmap (capabilities/key: hex
// words of the kernel's long size, most significant first) has bit code set.
func hasKey(bitmap string, code int) bool {
	words := strings.Fields(bitmap)
	idx := code / bits.UintSize
	if idx >= len(words) {
		return false
	}
	w, err := strconv.ParseUint(words[len(words)-1-idx], 16, bits.UintSize)
	return err == nil && w&(1<<(code%bits.UintSize)) != 0
}

// powerButtons lists the event devices that report KEY_POWER, reading the
// input class under sys (/sys/class/input), as /dev/input/eventN paths with
// the device's name.
func powerButtons(sys string) map[string]string {
	out := map[string]string{}
	ents, _ := filepath.Glob(filepath.Join(sys, "event*"))
	sort.Strings(ents)
	for _, e := range ents {
		caps, err := os.ReadFile(filepath.Join(e, "device", "capabilities", "key"))
		if err != nil || !hasKey(string(caps), keyPower) {
			continue
		}
		name, _ := os.ReadFile(filepath.Join(e, "device", "name"))
		out["/dev/input/"+filepath.Base(e)] = strings.TrimSpace(string(name))
	}
	return out
}

// waitPowerPress reads input events from r until a KEY_POWER press (value
// 1), and returns nil then, or the read error.
func waitPowerPress(r io.Reader) error {
	buf := make([]byte, inputEventSize*16)
	for {
		n, err := io.ReadAtLeast(r, buf, inputEventSize)
		for off := 0; off+inputEventSize <= n; off += inputEventSize {
			ev := buf[off : off+inputEventSize]
			typ := binary.NativeEndian.Uint16(ev[16:])
			code := binary.NativeEndian.Uint16(ev[18:])
			value := int32(binary.NativeEndian.Uint32(ev[20:]))
			if typ == evKey && code == keyPower && value == 1 {
				return nil
			}
		}
		if err != nil {
			return err
		}
	}
}

// watchPowerButton finds the power button (retrying for a moment: the
// device appears as its driver binds) and calls onPress on its first press.
// It returns an error when there is no button to watch.
func watchPowerButton(onPress func(), debug bool) error {
	var buttons map[string]string
	for i := 0; i < 20; i++ {
		if buttons = powerButtons("/sys/class/input"); len(buttons) > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(buttons) == 0 {
		return errors.New("no input device reports KEY_POWER")
	}
	var opened int
	for dev, name := range buttons {
		f, err := os.Open(dev)
		if err != nil {
			logf("power button %s: %v", dev, err)
			continue
		}
		opened++
		if debug {
			logf("power button: watching %s (%s)", dev, name)
		}
		go func() {
			defer f.Close()
			if err := waitPowerPress(f); err != nil {
				logf("power button %s: %v", dev, err)
				return
			}
			logf("power button pressed (%s)", name)
			onPress()
		}()
	}
	if opened == 0 {
		return fmt.Errorf("cannot open %d power button device(s)", len(buttons))
	}
	return nil
}
