package nettopo

import "fmt"

// The commands a guest runs for the throughput figures, with busybox's dd
// and nc (the e2e and bench images have both: imagetest.BusyboxLayer).
// TestBusyboxCommands runs these exact commands in the topology with the
// host's static busybox, so a guest failing them is the network's fault.

// GuestBlock is the dd block size; transfers are whole blocks.
const GuestBlock = 64 << 10

// Blocks rounds n bytes down to whole GuestBlocks (at least one).
func Blocks(n int64) int64 { return max(n/GuestBlock, 1) }

// GuestSend is `sh -c` for sending Blocks(n)*GuestBlock zero bytes to the
// uplink's sink (UplinkIP:SinkPort); the sink times them (Sink.Next).
func GuestSend(n int64) []string {
	return []string{"sh", "-c", fmt.Sprintf("dd if=/dev/zero bs=%d count=%d 2>/dev/null | nc %s %d", GuestBlock, Blocks(n), UplinkIP, SinkPort)}
}

// GuestServe is `sh -c` for serving Blocks(n)*GuestBlock zero bytes to the
// first client on port, then exiting; the client times them (Receive).
func GuestServe(port uint16, n int64) []string {
	return []string{"sh", "-c", fmt.Sprintf("dd if=/dev/zero bs=%d count=%d 2>/dev/null | nc -l -p %d", GuestBlock, Blocks(n), port)}
}
