// Command seed records a small real ext4 image in a state directory, for the
// demo until `paddock image import` lands: go run ./imaging/imagetest/seed DIR NAME
package main

import (
	"fmt"
	"os"

	"github.com/paddock-vm/paddock/imaging/imagetest"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: seed STATE_DIR NAME[:TAG]")
		os.Exit(2)
	}
	img, err := imagetest.SeedImage(os.Args[1], os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "seed:", err)
		os.Exit(1)
	}
	fmt.Println(img.Digest)
}
