package e2e

import (
	"io"
	"log"
	"syscall"
)

func nilLogger() *log.Logger { return log.New(io.Discard, "", 0) }

func syscallKill(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }
