package probe

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkClassify: the time to classify one port (HTTPS, HTTP and raw
// TCP listeners on loopback), as a ratio to a plain TCP connect+close to the
// same listener measured in the same run.
func BenchmarkClassify(b *testing.B) {
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {})
	tlsSrv := httptest.NewUnstartedServer(h)
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // probes end handshakes early
	tlsSrv.StartTLS()
	defer tlsSrv.Close()
	httpSrv := httptest.NewServer(h)
	defer httpSrv.Close()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	go func() {
		for {
			c, err := raw.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello\n"))
			c.Close()
		}
	}()
	for _, tc := range []struct {
		name string
		addr string
	}{{"https", tlsSrv.Listener.Addr().String()}, {"http", httpSrv.Listener.Addr().String()}, {"tcp", raw.Addr().String()}} {
		b.Run(tc.name, func(b *testing.B) {
			ap := netip.MustParseAddrPort(tc.addr)
			t0 := time.Now()
			for i := 0; i < 50; i++ {
				c, err := net.Dial("tcp", tc.addr)
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
			ref := time.Since(t0) / 50
			b.ResetTimer()
			t1 := time.Now()
			for i := 0; i < b.N; i++ {
				if _, err := Classify(context.Background(), ap, Options{}); err != nil {
					b.Fatal(err)
				}
			}
			per := time.Since(t1) / time.Duration(b.N)
			b.ReportMetric(float64(per.Microseconds()), "µs/port")
			b.ReportMetric(float64(per)/float64(ref), "x-connect")
		})
	}
}
