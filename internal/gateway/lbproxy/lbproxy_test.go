package lbproxy

import (
	"io"
	"net"
	"net/netip"
	"testing"
)

func TestIsHeaderStart(t *testing.T) {
	v2 := string(v2Signature)
	for _, tc := range []struct {
		in           string
		header, done bool
	}{
		{"", false, false},
		{"PRO", false, false},
		{"PROXY ", true, true},
		{"PROXY TCP4 203.0.113.7 127.0.0.1 1 2\r\n", true, true},
		{"PROXYX", false, true},
		{"GET / HTTP/1.1\r\n", false, true},
		{"SSH-2.0-OpenSSH", false, true},
		{v2[:5], false, false},
		{v2 + "\x21", true, true},
		{"\r\n\r\nx", false, true},
		{"\x16\x03\x01", false, true}, // a TLS record
	} {
		header, done := IsHeaderStart([]byte(tc.in))
		if header != tc.header || done != tc.done {
			t.Errorf("IsHeaderStart(%q) = %v, %v; want %v, %v", tc.in, header, done, tc.header, tc.done)
		}
	}
}

func TestWrapWithoutTrustIsTheListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if Wrap(ln, nil, Reject) != ln {
		t.Fatal("Wrap with no trusted CIDR must not read headers from anyone")
	}
	if Wrap(ln, []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Reject) == ln {
		t.Fatal("Wrap with a trusted CIDR returned the bare listener")
	}
}

func TestIsTrusted(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}
	for addr, want := range map[string]bool{"10.1.2.3:5": true, "[::ffff:10.1.2.3]:5": true, "[2001:db8::1]:5": true, "192.0.2.1:5": false} {
		a, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := isTrusted(a, trusted); got != want {
			t.Errorf("isTrusted(%s) = %v, want %v", addr, got, want)
		}
	}
	if isTrusted(&net.UnixAddr{Name: "x"}, trusted) {
		t.Error("a unix address is trusted")
	}
}

// TestCloseWriteThroughTheHeader: behind a trusted balancer the gateway still half-closes, so the
// visitor reads end of output and can go on sending (a full close would lose what it sends next).
func TestCloseWriteThroughTheHeader(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := Wrap(raw, []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Reject)
	defer ln.Close()
	client, err := net.Dial("tcp", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.Write([]byte("PROXY TCP4 203.0.113.7 127.0.0.1 4000 443\r\nping")); err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	buf := make([]byte, 4)
	if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if got := server.RemoteAddr().String(); got != "203.0.113.7:4000" {
		t.Fatalf("RemoteAddr = %s, want the header's address", got)
	}
	if ok, err := CloseWrite(server); !ok || err != nil {
		t.Fatalf("CloseWrite = %v, %v; want a half-close of the socket under the header", ok, err)
	}
	if n, err := client.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("client read after half-close = %d, %v; want EOF", n, err)
	}
	if _, err := client.Write([]byte("more")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "more" {
		t.Fatalf("after half-close the server read %q, %v; the visitor's side must stay open", buf, err)
	}
	if ok, _ := CloseWrite(struct{ net.Conn }{server}); ok {
		t.Fatal("CloseWrite reported a half-close of a conn that has none")
	}
}
