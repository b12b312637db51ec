package nettopo

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

// query builds a DNS query: id 0x1234, RD set, the given question.
func query(flags2 byte, qdcount uint16, qname []byte, qtype uint16) []byte {
	q := []byte{0x12, 0x34, flags2, 0x00, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(q[4:6], qdcount)
	q = append(q, qname...)
	return binary.BigEndian.AppendUint32(q, uint32(qtype)<<16|classIN)
}

func wire(labels ...string) []byte {
	var b []byte
	for _, l := range labels {
		b = append(append(b, byte(len(l))), l...)
	}
	return append(b, 0)
}

func TestDNSAnswer(t *testing.T) {
	ip := netip.MustParseAddr("192.0.2.1")
	const zone = "uplink.paddock.test"
	name := wire("uplink", "paddock", "test")
	tests := []struct {
		name    string
		q       []byte
		nilOut  bool
		rcode   byte
		answers uint16
		asked   string
	}{
		{"A for the name", query(0x01, 1, name, typeA), false, 0, 1, zone},
		{"case does not matter", query(0x01, 1, wire("UPLINK", "Paddock", "TEST"), typeA), false, 0, 1, zone},
		{"AAAA for the name: no records", query(0x01, 1, name, 28), false, 0, 0, zone},
		{"another name", query(0x01, 1, wire("example", "test"), typeA), false, rcodeNXName, 0, "example.test"},
		{"a response is not answered", query(0x81, 1, name, typeA), true, 0, 0, ""},
		{"too short for a header", []byte{1, 2, 3}, true, 0, 0, ""},
		{"two questions", query(0x01, 2, name, typeA), false, rcodeFormErr, 0, ""},
		{"no question", query(0x01, 0, nil, typeA)[:12], false, rcodeFormErr, 0, ""},
		{"not a query opcode", query(0x01|2<<3, 1, name, typeA), false, rcodeNotImp, 0, ""},
		{"compression pointer in the question", query(0x01, 1, []byte{0xc0, 0x0c}, typeA), false, rcodeFormErr, 0, ""},
		{"label runs past the end", append(query(0x01, 1, nil, typeA)[:12], 9, 'a'), false, rcodeFormErr, 0, ""},
		{"no QTYPE/QCLASS", append(query(0x01, 1, nil, typeA)[:12], name...), false, rcodeFormErr, 0, ""},
		{"name longer than 255", query(0x01, 1, wire(long(63), long(63), long(63), long(63)), typeA), false, rcodeFormErr, 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, asked := dnsAnswer(tc.q, zone, ip)
			if tc.nilOut {
				if r != nil {
					t.Fatalf("answered % x", r)
				}
				return
			}
			if len(r) < dnsHeaderLen {
				t.Fatalf("reply % x", r)
			}
			if id := binary.BigEndian.Uint16(r[0:2]); id != 0x1234 {
				t.Errorf("id %#x", id)
			}
			if r[2]&0x80 == 0 || r[2]&0x01 == 0 {
				t.Errorf("flags %#x: want QR and RD echoed", r[2])
			}
			if got := r[3] & 0x0f; got != tc.rcode {
				t.Errorf("rcode %d, want %d", got, tc.rcode)
			}
			if got := binary.BigEndian.Uint16(r[6:8]); got != tc.answers {
				t.Errorf("ancount %d, want %d", got, tc.answers)
			}
			if asked != tc.asked {
				t.Errorf("asked %q, want %q", asked, tc.asked)
			}
			if tc.answers == 1 {
				qlen := len(tc.q) - dnsHeaderLen
				if !bytes.Equal(r[dnsHeaderLen:dnsHeaderLen+qlen], tc.q[dnsHeaderLen:]) {
					t.Errorf("question not echoed: % x", r)
				}
				rr := r[dnsHeaderLen+qlen:]
				want := []byte{0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1}
				if !bytes.Equal(rr, want) {
					t.Errorf("answer % x, want % x", rr, want)
				}
			}
		})
	}
}

func long(n int) string { return string(bytes.Repeat([]byte{'a'}, n)) }

func TestGuestCommands(t *testing.T) {
	tests := []struct {
		got, want []string
	}{
		{GuestSend(3 << 20), []string{"sh", "-c", "exec nc -w 30 192.0.2.1 5001 -e dd if=/dev/zero bs=65536 count=48 2>/dev/null"}},
		{GuestSend(10), []string{"sh", "-c", "exec nc -w 30 192.0.2.1 5001 -e dd if=/dev/zero bs=65536 count=1 2>/dev/null"}},
		{GuestServe(8080, 1<<20), []string{"sh", "-c", "echo $$ >/tmp/nettopo-serve-8080.pid; exec nc -ll -p 8080 -e sh -c 'read -r req && exec dd if=/dev/zero bs=65536 count=16 2>/dev/null'"}},
		{GuestServeStop(8080), []string{"sh", "-c", "kill $(cat /tmp/nettopo-serve-8080.pid)"}},
	}
	for _, tc := range tests {
		if len(tc.got) != 3 || tc.got[2] != tc.want[2] {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}
