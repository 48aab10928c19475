package edge

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"
)

// SetHandshakeTimeout shortens the handshake deadline until the test ends. Call it before start, so
// that the servers of the test are gone when it is put back.
func SetHandshakeTimeout(t testing.TB, d time.Duration) {
	old := handshakeTimeout
	handshakeTimeout = d
	t.Cleanup(func() { handshakeTimeout = old })
}

// ClientHello returns the ClientHello record a TLS client for sni sends (without SNI when sni is "").
func ClientHello(tb testing.TB, sni string) []byte {
	tb.Helper()
	a, b := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = tls.Client(a, &tls.Config{ServerName: sni, InsecureSkipVerify: sni == ""}).Handshake()
	}()
	defer func() { a.Close(); b.Close(); <-done }()
	rec := make([]byte, 5)
	if _, err := io.ReadFull(b, rec); err != nil {
		tb.Fatal(err)
	}
	rec = append(rec, make([]byte, int(rec[3])<<8|int(rec[4]))...)
	if _, err := io.ReadFull(b, rec[5:]); err != nil {
		tb.Fatal(err)
	}
	return rec
}
