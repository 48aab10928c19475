package lbproxy

import (
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
