// Command services is a tiny static server for test images: one HTTP, one
// HTTPS (self-signed ECDSA certificate made at start) and one raw TCP port.
//
//	services [-http :8080] [-https :8443] [-tcp :9000]
//
// An empty flag turns that listener off. SIGUSR1 closes the HTTPS listener
// (and its connections), SIGUSR2 reopens it on the same address, so a test
// can make a port vanish and come back. SIGTERM or SIGINT exits.
// Build with CGO_ENABLED=0.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	httpAddr := flag.String("http", ":8080", "HTTP listen address (empty: off)")
	httpsAddr := flag.String("https", ":8443", "HTTPS listen address (empty: off)")
	tcpAddr := flag.String("tcp", ":9000", "raw TCP listen address (empty: off)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("services: ")

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1, syscall.SIGUSR2)

	if *httpAddr != "" {
		ln := mustListen("http", *httpAddr)
		srv := &http.Server{Handler: say("hello from http\n"), ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln)
	}
	if *tcpAddr != "" {
		ln := mustListen("tcp", *tcpAddr)
		go serveTCP(ln)
	}
	var tlsSrv *tlsServer // nil while HTTPS is closed
	var tlsCfg *tls.Config
	if *httpsAddr != "" {
		cert, err := selfSigned()
		if err != nil {
			log.Fatalf("certificate: %v", err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}}
		tlsSrv = serveTLS(mustListen("https", *httpsAddr), tlsCfg)
		// Reopen where it was, even if the flag asked for port 0.
		*httpsAddr = tlsSrv.ln.Addr().String()
	}

	for sig := range sigs {
		switch sig {
		case syscall.SIGUSR1:
			if tlsSrv != nil {
				tlsSrv.close()
				tlsSrv = nil
				log.Printf("https closed")
			}
		case syscall.SIGUSR2:
			if tlsSrv == nil && tlsCfg != nil {
				ln, err := net.Listen("tcp", *httpsAddr)
				if err != nil {
					log.Printf("https reopen: %v", err)
					continue
				}
				log.Printf("https listening on %s", ln.Addr())
				tlsSrv = serveTLS(ln, tlsCfg)
			}
		default:
			log.Printf("%v: exiting", sig)
			return
		}
	}
}

func mustListen(name, addr string) net.Listener {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("%s: %v", name, err)
	}
	log.Printf("%s listening on %s", name, ln.Addr())
	return ln
}

func say(body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, body)
	})
}

type tlsServer struct {
	ln  net.Listener
	srv *http.Server
}

// close stops serving: the port is closed when it returns.
func (s *tlsServer) close() {
	s.ln.Close()
	s.srv.Close()
}

// serveTLS serves HTTPS on ln until the returned server is closed.
func serveTLS(ln net.Listener, cfg *tls.Config) *tlsServer {
	srv := &http.Server{
		Handler:           say("hello from https\n"),
		TLSConfig:         cfg,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0), // probes end handshakes early
	}
	go srv.ServeTLS(ln, "", "")
	return &tlsServer{ln, srv}
}

// serveTCP writes a greeting to every connection and closes it.
func serveTCP(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Printf("tcp: %v", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(c, "hello from tcp\n")
		}()
	}
}

// selfSigned makes an ECDSA P-256 certificate for localhost, valid from a
// day ago for a year (clients of test images skip verification anyway).
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "paddock test services"},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:             now.Add(-24 * time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
