package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func (c *cli) newCompletionCommand(root *cobra.Command) *cobra.Command {
	cmd := &cobra.Command{Use: "completion bash|zsh|fish", Short: "Print a shell completion script", Args: exactly(1, "one of bash, zsh, fish"), ValidArgs: []string{"bash", "zsh", "fish"}}
	cmd.RunE = func(_ *cobra.Command, a []string) error {
		switch a[0] {
		case "bash":
			return root.GenBashCompletionV2(c.out, true)
		case "zsh":
			return root.GenZshCompletion(c.out)
		case "fish":
			return root.GenFishCompletion(c.out, true)
		}
		return usageError{fmt.Errorf("unknown shell %q: want bash, zsh or fish", a[0])}
	}
	return cmd
}
