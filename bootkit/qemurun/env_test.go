package qemurun

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/paddock-vm/paddock/bootkit"
	"github.com/paddock-vm/paddock/internal/guesttest"
	"github.com/paddock-vm/paddock/internal/testenv"
)

// fixture is the shared guest fixture plus the bare reference initramfs:
// the agent as /init, no modules, booted with paddock.poweroff.
type fixture struct {
	*guesttest.Fixture
	bareInitrd string
}

var (
	bareOnce sync.Once
	bare     string
	bareErr  error
)

func getFixture(t testing.TB) *fixture {
	t.Helper()
	testenv.RequireRoot(t, "network namespaces, taps")
	f := guesttest.Kit(t)
	bareOnce.Do(func() {
		agentBin, err := os.ReadFile(f.Agent)
		if err != nil {
			bareErr = err
			return
		}
		var buf bytes.Buffer
		if bareErr = bootkit.WriteInitramfs(&buf, bootkit.InitramfsSpec{Init: agentBin, KitName: "bare"}); bareErr != nil {
			return
		}
		bare = filepath.Join(f.Dir, "bare.cpio.gz")
		bareErr = os.WriteFile(bare, buf.Bytes(), 0o644)
	})
	if bareErr != nil {
		t.Fatalf("bare initramfs: %v", bareErr)
	}
	return &fixture{Fixture: f, bareInitrd: bare}
}

func TestMain(m *testing.M) {
	code := m.Run()
	guesttest.Cleanup()
	os.Exit(code)
}
