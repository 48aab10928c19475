package tlscork

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"io"
	"math/big"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func testCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "cork.test"},
		DNSNames:     []string{"cork.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// pair returns a server connection made by build over a loopback socket whose writes are counted,
// and a plain TLS client connected to it, both handshaken.
func pair(t *testing.T, build func(net.Conn, *tls.Config) net.Conn) (net.Conn, *countingConn, *tls.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	raw := <-accepted
	if raw == nil {
		t.Fatal("accept failed")
	}
	counted := &countingConn{Conn: raw}
	srv := build(counted, &tls.Config{Certificates: []tls.Certificate{testCert(t)}})
	tc := tls.Client(client, &tls.Config{InsecureSkipVerify: true})
	errc := make(chan error, 1)
	go func() { errc <- srv.(interface{ Handshake() error }).Handshake() }()
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(); tc.Close() })
	return srv, counted, tc
}

func TestOneWriteOneSystemCall(t *testing.T) {
	corked := func(c net.Conn, conf *tls.Config) net.Conn { return Server(c, conf) }
	plain := func(c net.Conn, conf *tls.Config) net.Conn { return tls.Server(c, conf) }
	tests := []struct {
		name      string
		build     func(net.Conn, *tls.Config) net.Conn
		size      int
		maxWrites int64
		minWrites int64
		why       string
	}{
		{"corked 200 KiB", corked, 200 << 10, 1, 1, "13 records in one write"},
		{"corked 1 MiB", corked, 1 << 20, 5, 4, "64 records, 16 to a write"},
		{"corked 10 bytes", corked, 10, 1, 1, "a small write stays one write"},
		{"corked 16 KiB, new connection", corked, 16 << 10, 1, 1, "crypto/tls starts with ~1 KiB records"},
		{"plain 16 KiB, new connection", plain, 16 << 10, 40, 2, "crypto/tls alone: a write per small record"},
		{"plain 200 KiB", plain, 200 << 10, 20, 13, "crypto/tls alone: one write per record"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, counted, client := pair(t, tc.build)
			msg := bytes.Repeat([]byte("hopgate!"), tc.size/8+1)[:tc.size]
			got := make(chan []byte, 1)
			go func() {
				b := make([]byte, len(msg))
				_, _ = io.ReadFull(client, b)
				got <- b
			}()
			before := counted.writes.Load()
			if n, err := srv.Write(msg); err != nil || n != len(msg) {
				t.Fatalf("Write: %d, %v", n, err)
			}
			writes := counted.writes.Load() - before
			if writes < tc.minWrites || writes > tc.maxWrites {
				t.Errorf("%d socket writes, want %d to %d (%s)", writes, tc.minWrites, tc.maxWrites, tc.why)
			}
			if b := <-got; !bytes.Equal(b, msg) {
				t.Errorf("client read different bytes")
			}
		})
	}
}

// TestConcurrentWritesKeepOrder writes length-prefixed messages from several goroutines, with the
// peer reading (and so the server possibly sending alerts or tickets) at the same time; every message
// must arrive whole.
func TestConcurrentWritesKeepOrder(t *testing.T) {
	srv, _, client := pair(t, func(c net.Conn, conf *tls.Config) net.Conn { return Server(c, conf) })
	const writers, each = 4, 50
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				size := 1 + (w*7919+i*104729)%(300<<10)
				msg := make([]byte, 8+size)
				binary.BigEndian.PutUint32(msg, uint32(size))
				binary.BigEndian.PutUint32(msg[4:], uint32(w))
				for j := 8; j < len(msg); j++ {
					msg[j] = byte(w)
				}
				if _, err := srv.Write(msg); err != nil {
					t.Errorf("Write: %v", err)
					return
				}
			}
		}()
	}
	for range writers * each {
		var hdr [8]byte
		if _, err := io.ReadFull(client, hdr[:]); err != nil {
			t.Fatalf("read header: %v", err)
		}
		size, w := binary.BigEndian.Uint32(hdr[:]), hdr[7]
		body := make([]byte, size)
		if _, err := io.ReadFull(client, body); err != nil {
			t.Fatalf("read body: %v", err)
		}
		if !bytes.Equal(body, bytes.Repeat([]byte{w}, int(size))) {
			t.Fatalf("message from writer %d arrived mixed with another", w)
		}
	}
	wg.Wait()
}

// TestWriteErrorSticks: once the socket fails, later writes fail too instead of sending records out
// of order.
func TestWriteErrorSticks(t *testing.T) {
	srv, counted, _ := pair(t, func(c net.Conn, conf *tls.Config) net.Conn { return Server(c, conf) })
	counted.Conn.Close()
	if _, err := srv.Write([]byte("one")); err == nil {
		t.Fatal("Write on a closed socket succeeded")
	}
	if _, err := srv.Write([]byte("two")); err == nil {
		t.Fatal("second Write succeeded")
	}
}

// TestWriteBeforeHandshake: a Write that runs the handshake itself must not hold the handshake's
// messages back (it would wait for a reply forever); it is simply not corked.
func TestWriteBeforeHandshake(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
		b := make([]byte, 100<<10)
		_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(tc, b); err != nil {
			got <- nil
			return
		}
		got <- b
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srv := Server(raw, &tls.Config{Certificates: []tls.Certificate{testCert(t)}})
	defer srv.Close()
	_ = srv.SetDeadline(time.Now().Add(5 * time.Second))
	msg := bytes.Repeat([]byte{7}, 100<<10)
	if _, err := srv.Write(msg); err != nil {
		t.Fatalf("Write with the handshake in it: %v", err)
	}
	if b := <-got; !bytes.Equal(b, msg) {
		t.Fatal("the client did not read the message")
	}
}
