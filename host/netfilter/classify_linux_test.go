package netfilter

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/paddock-vm/paddock/errdefs"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err   error
		class error
		is    error
		text  string
	}{
		{unix.EOPNOTSUPP, errdefs.ErrUnavailable, ErrNoNFTables, "nftables is not available"},
		{unix.EAFNOSUPPORT, errdefs.ErrUnavailable, ErrNoNFTables, "nf_tables_bridge"},
		{unix.EPROTONOSUPPORT, errdefs.ErrUnavailable, ErrNoNFTables, "op: conn.Receive: protocol not supported"},
		{unix.ENOENT, errdefs.ErrUnavailable, ErrNoNFTables, "nft_chain_nat"},
		{unix.EPERM, errdefs.ErrPermissionDenied, unix.EPERM, "CAP_NET_ADMIN"},
		{unix.EINVAL, errdefs.ErrInternal, unix.EINVAL, "op: nftables: conn.Receive: invalid argument"},
	} {
		err := classify("op", fmt.Errorf("conn.Receive: %w", tc.err))
		if errdefs.Class(err) != tc.class || !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%v: got %q (class %v), want class %v, %v and %q", tc.err, err, errdefs.Class(err), tc.class, tc.is, tc.text)
		}
	}
}
