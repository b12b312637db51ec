// Command paddockd is paddock's supervisor daemon.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/paddock-vm/paddock/config"
	"github.com/paddock-vm/paddock/daemon"
	"github.com/paddock-vm/paddock/version"
)

func main() {
	fs := flag.NewFlagSet("paddockd", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "configuration file (TOML); none means built-in defaults")
	check := fs.Bool("check-config", false, "validate the configuration and exit")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: paddockd [--config FILE] [--check-config] [--version]\n       paddockd [--config FILE] launcher\n\nRuns small Linux VMs from OCI images. Usually started by systemd (paddock.socket).\n`launcher` starts VMMs for paddockd instead (paddock-guests.service), so that they\nlive outside paddock.service.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	launcher := fs.NArg() == 1 && fs.Arg(0) == "launcher"
	if fs.NArg() > 0 && !launcher {
		fmt.Fprintf(os.Stderr, "paddockd: unexpected argument %q\n", fs.Arg(0))
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println("paddockd", version.Version)
		return
	}
	if *check {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			fmt.Fprintln(os.Stderr, "paddockd:", err)
			os.Exit(1)
		}
		fmt.Printf("configuration ok: state_dir=%s socket=%s\n", cfg.StateDir, cfg.API.Socket)
		return
	}
	if launcher {
		if err := daemon.RunLauncher(context.Background(), *cfgPath); err != nil {
			fmt.Fprintln(os.Stderr, "paddockd launcher:", err)
			os.Exit(1)
		}
		return
	}
	if err := daemon.Run(context.Background(), *cfgPath); err != nil {
		fmt.Fprintln(os.Stderr, "paddockd:", err)
		os.Exit(1)
	}
}
