// Command paddock is the command-line client of paddockd. Each command
// lives in its own file; output.go holds what they share.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/paddock-vm/paddock/version"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	c := &cli{out: stdout, errOut: stderr}
	root := c.commands()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	if code, ok := exitCode(err); ok {
		return code
	}
	var ue usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		fmt.Fprintf(stderr, "paddock: %s\nRun 'paddock --help' for usage.\n", termSafe(err.Error()))
		return exitUsage
	}
	fmt.Fprintf(stderr, "paddock: %s\n", termSafe(err.Error()))
	return exitFailure
}

func (c *cli) commands() *cobra.Command {
	root := &cobra.Command{
		Use:           "paddock",
		Short:         "Run small Linux VMs from OCI images",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.Version,
	}
	root.PersistentFlags().StringVar(&c.socket, "socket", defaultSocket(), "paddockd's varlink socket (env PADDOCK_SOCKET)")
	root.PersistentFlags().BoolVar(&c.json, "json", false, "print JSON for scripts")
	root.PersistentFlags().DurationVar(&c.timeout, "timeout", 5*time.Minute, "how long to wait for the daemon (a boot under TCG on a busy host can take long)")
	root.CompletionOptions.DisableDefaultCmd = true
	root.AddCommand(
		c.newCreateCommand(), c.newRunCommand(), c.newLsCommand(), c.newInspectCommand(), c.newSetCommand(),
		c.newStartCommand(), c.newStopCommand(), c.newKillCommand(), c.newRestartCommand(), c.newRmCommand(),
		c.newExecCommand(), c.newCpCommand(), c.newLogsCommand(), c.newConsoleCommand(),
		c.newStatsCommand(), c.newPingCommand(), c.newHealthCommand(), c.newPortsCommand(),
		c.newEventsCommand(), c.newVersionCommand(), c.newInfoCommand(), c.newCompletionCommand(root),
		c.newImageCommand(), c.newKernelCommand(), c.newWorkspaceCommand(), c.newTemplateCommand(), c.newManpageCommand(root), c.newHostShutdownCommand(),
	)
	usageErrors(root)
	return root
}

// usageErrors makes every flag error of cmd and its subcommands a usage
// error (exit 2).
func usageErrors(cmd *cobra.Command) {
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	for _, sub := range cmd.Commands() {
		usageErrors(sub)
	}
}

type usageError struct{ error }

func isCobraUsage(err error) bool {
	s := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "accepts ", "requires at least", "requires exactly", "invalid argument", "flag needs an argument", "required flag"} {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// exitError carries a command's own exit code out of paddock exec.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// exitCode maps a command's own exit status through.
func exitCode(err error) (int, bool) {
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code, true
	}
	return 0, false
}
