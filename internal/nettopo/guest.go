package nettopo

import (
	"fmt"
	"net/netip"
)

// The commands a guest runs for the throughput figures, with busybox's dd
// and nc (the e2e and bench images have both: imagetest.BusyboxLayer).
// dd writes straight into the socket (nc -e): a `dd | nc` pipe would time
// busybox nc's small copy buffer, not the network (4.8 MB/s against 115
// under TCG, measured).
// TestBusyboxCommands runs these exact commands in the topology with the
// host's static busybox, so a guest failing them is the network's fault.

// GuestBlock is the dd block size; transfers are whole blocks.
const GuestBlock = 64 << 10

// Blocks rounds n bytes down to whole GuestBlocks (at least one).
func Blocks(n int64) int64 { return max(n/GuestBlock, 1) }

// FetchRequest is the line Fetch sends before it receives: GuestServe's
// server answers a connection only once it has read a line. The client
// speaks first because passt as Debian 12 ships it (0.0~git20230309)
// loses data a guest sends on a connection published with -t before the
// client has sent anything.
const FetchRequest = "GET /zeros\n"

// GuestSend is `sh -c` for sending Blocks(n)*GuestBlock zero bytes to the
// uplink's sink (UplinkIP:SinkPort): GuestSendTo that address.
func GuestSend(n int64) []string {
	return GuestSendTo(netip.AddrPortFrom(UplinkIP, SinkPort), n)
}

// GuestSendTo is `sh -c` for sending Blocks(n)*GuestBlock zero bytes to a
// sink at addr (StartSink), giving up when no connection is made in 30s;
// the sink times them (Sink.Next).
func GuestSendTo(addr netip.AddrPort, n int64) []string {
	return []string{"sh", "-c", fmt.Sprintf("exec nc -w 30 %s %d -e dd if=/dev/zero bs=%d count=%d 2>/dev/null", addr.Addr(), addr.Port(), GuestBlock, Blocks(n))}
}

// GuestServe is `sh -c` for a server on port giving every client that
// sends a line (FetchRequest) its own Blocks(n)*GuestBlock zero bytes,
// until GuestServeStop; the client times them (Fetch). A connection closed
// before a whole line gets nothing. It serves every connection, not just
// the first, because paddockd's port discovery may connect to a guest's
// new listener first (and may send a line: it then gets a few bytes and
// closes, which ends that connection's dd).
func GuestServe(port uint16, n int64) []string {
	return []string{"sh", "-c", fmt.Sprintf("echo $$ >%s; exec nc -ll -p %d -e sh -c 'read -r req && exec dd if=/dev/zero bs=%d count=%d 2>/dev/null'", servePID(port), port, GuestBlock, Blocks(n))}
}

// GuestServeStop is `sh -c` ending GuestServe(port, ...).
func GuestServeStop(port uint16) []string {
	return []string{"sh", "-c", fmt.Sprintf("kill $(cat %s)", servePID(port))}
}

func servePID(port uint16) string { return fmt.Sprintf("/tmp/nettopo-serve-%d.pid", port) }
