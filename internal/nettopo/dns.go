package nettopo

import (
	"encoding/binary"
	"net/netip"
	"strings"
)

// DNS wire constants (RFC 1035).
const (
	dnsHeaderLen = 12
	typeA        = 1
	classIN      = 1
	rcodeFormErr = 1
	rcodeNXName  = 3
	rcodeNotImp  = 4
	maxNameLen   = 255
	maxLabelLen  = 63
)

// dnsAnswer builds the reply to one query packet for a zone of one name
// (lower case, no trailing dot) with one IPv4 address: A for it answers the
// address, any other type for it answers no records, any other name is
// NXDOMAIN. It returns nil for what must not be answered (a response, a
// packet too short to carry an ID) and the question name it read ("" when
// there was none). Input is hostile: every length is checked.
func dnsAnswer(q []byte, name string, ip netip.Addr) (reply []byte, asked string) {
	if len(q) < dnsHeaderLen || q[2]&0x80 != 0 { // too short, or QR set: a response
		return nil, ""
	}
	id := binary.BigEndian.Uint16(q[0:2])
	rd := q[2] & 0x01
	opcode := (q[2] >> 3) & 0x0f
	errReply := func(rcode byte) []byte {
		h := make([]byte, dnsHeaderLen)
		binary.BigEndian.PutUint16(h[0:2], id)
		h[2] = 0x80 | opcode<<3 | rd
		h[3] = 0x80 | rcode // RA: resolvers otherwise call a reply lame
		return h
	}
	if opcode != 0 {
		return errReply(rcodeNotImp), ""
	}
	if binary.BigEndian.Uint16(q[4:6]) != 1 {
		return errReply(rcodeFormErr), ""
	}
	// The question: labels, then QTYPE and QCLASS.
	var labels []string
	off, total := dnsHeaderLen, 0
	for {
		if off >= len(q) {
			return errReply(rcodeFormErr), ""
		}
		l := int(q[off])
		off++
		if l == 0 {
			break
		}
		if l > maxLabelLen { // compression pointers have no place in a question
			return errReply(rcodeFormErr), ""
		}
		total += l + 1
		if total > maxNameLen || off+l > len(q) {
			return errReply(rcodeFormErr), ""
		}
		labels = append(labels, strings.ToLower(string(q[off:off+l])))
		off += l
	}
	if off+4 > len(q) {
		return errReply(rcodeFormErr), ""
	}
	qtype := binary.BigEndian.Uint16(q[off : off+2])
	qclass := binary.BigEndian.Uint16(q[off+2 : off+4])
	question := q[dnsHeaderLen : off+4]
	asked = strings.Join(labels, ".")

	var rcode byte
	var answer []byte
	switch {
	case asked != name:
		rcode = rcodeNXName
	case qtype == typeA && qclass == classIN && ip.Is4():
		answer = make([]byte, 16)
		binary.BigEndian.PutUint16(answer[0:2], 0xc000|dnsHeaderLen) // the name: a pointer to the question's
		binary.BigEndian.PutUint16(answer[2:4], typeA)
		binary.BigEndian.PutUint16(answer[4:6], classIN)
		binary.BigEndian.PutUint32(answer[6:10], 60) // TTL
		binary.BigEndian.PutUint16(answer[10:12], 4)
		a4 := ip.As4()
		copy(answer[12:16], a4[:])
	}
	reply = errReply(rcode)
	reply[2] |= 0x04 // AA: this server is the zone's authority
	binary.BigEndian.PutUint16(reply[4:6], 1)
	if answer != nil {
		binary.BigEndian.PutUint16(reply[6:8], 1)
	}
	reply = append(reply, question...)
	reply = append(reply, answer...)
	return reply, asked
}
