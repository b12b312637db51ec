// Package version holds the build's version string, set by the Makefile
// with -ldflags "-X github.com/paddock-vm/paddock/version.Version=...".
package version

// Version of this build.
var Version = "dev"
