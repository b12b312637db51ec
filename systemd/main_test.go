package systemd

import (
	"fmt"
	"os"
	"testing"
)

// childEnv makes the test binary act as a child process of a test (inside a
// journal namespace, or under socket activation) instead of running tests.
const childEnv = "PADDOCK_SYSTEMD_TEST_CHILD"

func TestMain(m *testing.M) {
	switch c := os.Getenv(childEnv); c {
	case "":
		os.Exit(m.Run())
	case "journal":
		os.Exit(journalChild())
	case "listen":
		os.Exit(listenChild())
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", childEnv, c)
		os.Exit(2)
	}
}
