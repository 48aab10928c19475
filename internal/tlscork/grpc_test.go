package tlscork

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"

	"google.golang.org/grpc/credentials"
)

// TestCredentialsCork checks that both ends of grpc's credentials come back corked: a 200 KiB write
// (13 records) is one socket write from the server and from the client.
func TestCredentialsCork(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srvCreds := Credentials(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{testCert(t)}}))
	cliCreds := Credentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})).Clone()
	type end struct {
		conn    net.Conn
		counted *countingConn
		err     error
	}
	served := make(chan end, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			served <- end{err: err}
			return
		}
		counted := &countingConn{Conn: raw}
		c, _, err := srvCreds.ServerHandshake(counted)
		served <- end{c, counted, err}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cliCounted := &countingConn{Conn: raw}
	cli, _, err := cliCreds.ClientHandshake(context.Background(), "cork.test", cliCounted)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srv := <-served
	if srv.err != nil {
		t.Fatal(srv.err)
	}
	defer srv.conn.Close()

	msg := bytes.Repeat([]byte("hopgate!"), 200<<10/8)
	for _, tc := range []struct {
		name    string
		from    net.Conn
		counted *countingConn
		to      net.Conn
	}{{"server", srv.conn, srv.counted, cli}, {"client", cli, cliCounted, srv.conn}} {
		got := make(chan []byte, 1)
		go func() {
			b := make([]byte, len(msg))
			_, _ = io.ReadFull(tc.to, b)
			got <- b
		}()
		before := tc.counted.writes.Load()
		if n, err := tc.from.Write(msg); err != nil || n != len(msg) {
			t.Fatalf("%s Write: %d, %v", tc.name, n, err)
		}
		if w := tc.counted.writes.Load() - before; w != 1 {
			t.Errorf("%s: %d socket writes for 200 KiB, want 1", tc.name, w)
		}
		if b := <-got; !bytes.Equal(b, msg) {
			t.Errorf("%s: peer read different bytes", tc.name)
		}
	}
}
