// Package lbproxy reads the PROXY protocol header (v1 or v2) that a load balancer in front of the
// gateway puts on each connection, so that the gateway sees the visitor's address instead of the
// balancer's: on the HTTPS and plain-HTTP listeners and on every TCP-mode port alike.
package lbproxy

import (
	"net"
	"net/netip"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// HeaderTimeout bounds the wait for a trusted balancer's header.
const HeaderTimeout = 5 * time.Second

// Untrusted says what a listener does with a connection from a peer outside the trusted CIDRs.
type Untrusted int

const (
	// Reject refuses a connection from an untrusted peer that starts with a PROXY header (its first
	// read fails); one without is served. For protocols whose client speaks first (HTTP, TLS): the
	// check costs no wait.
	Reject Untrusted = iota
	// Pass hands an untrusted peer's connection on untouched, without reading anything: for TCP
	// ports, where the server may speak first and a read would wait for the client. The caller
	// refuses a forged header itself when the first bytes arrive (see IsHeaderStart).
	Pass
)

// Wrap returns a listener whose connections from trusted peers must start with a PROXY header and
// report its source as RemoteAddr; untrusted peers are handled as u says. With no trusted CIDRs it
// returns ln itself: no header is read from anyone.
func Wrap(ln net.Listener, trusted []netip.Prefix, u Untrusted) net.Listener {
	if len(trusted) == 0 {
		return ln
	}
	return &proxyproto.Listener{
		Listener:          ln,
		ReadHeaderTimeout: HeaderTimeout,
		ConnPolicy: func(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
			if isTrusted(o.Upstream, trusted) {
				return proxyproto.REQUIRE, nil
			}
			if u == Pass {
				return proxyproto.SKIP, nil
			}
			return proxyproto.REJECT, nil
		},
	}
}

func isTrusted(a net.Addr, trusted []netip.Prefix) bool {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return false
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return false
	}
	ip = ip.Unmap()
	for _, p := range trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// v2Signature starts every PROXY protocol v2 header.
var v2Signature = []byte("\r\n\r\n\x00\r\nQUIT\n")

// IsHeaderStart tells whether b, the first bytes a peer sent, may be the start of a PROXY header (v1
// "PROXY " or the v2 signature). done is false while b is too short to tell.
func IsHeaderStart(b []byte) (header, done bool) {
	for _, sig := range [][]byte{[]byte("PROXY "), v2Signature} {
		n := min(len(b), len(sig))
		if string(b[:n]) == string(sig[:n]) {
			if n == len(sig) {
				return true, true
			}
			return false, false
		}
	}
	return false, true
}

// CloseWrite half-closes c, looking through a PROXY-protocol wrapper (which has no CloseWrite of
// its own and writes straight to the socket under it). ok is false when neither can be half-closed.
func CloseWrite(c net.Conn) (ok bool, err error) {
	for _, conn := range []net.Conn{c, Raw(c)} {
		if cw, can := conn.(interface{ CloseWrite() error }); can {
			return true, cw.CloseWrite()
		}
	}
	return false, nil
}

// Raw returns the connection under a PROXY-protocol wrapper (for socket options), or c itself.
func Raw(c net.Conn) net.Conn {
	if pc, ok := c.(*proxyproto.Conn); ok {
		return pc.Raw()
	}
	return c
}
