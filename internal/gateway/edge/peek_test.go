package edge

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/lbproxy"
)

// scriptConn is a connection that reads from r and records what is written to it.
type scriptConn struct {
	r       io.Reader
	written bytes.Buffer
}

func (c *scriptConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *scriptConn) Write(p []byte) (int, error)      { return c.written.Write(p) }
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// TestPeekClientHello checks the SNI the peek finds, that it never writes, and that the replay gives
// back every byte, read or not, in order.
func TestPeekClientHello(t *testing.T) {
	hello := ClientHello(t, "pass.test")
	tests := []struct {
		name    string
		in      []byte
		wantSNI string
	}{
		{name: "SNI", in: hello, wantSNI: "pass.test"},
		{name: "capitals are lowered", in: bytes.Replace(hello, []byte("pass.test"), []byte("PaSS.TesT"), 1),
			wantSNI: "pass.test"},
		// RFC 6066 forbids it and crypto/tls refuses the hello: the real handshake fails on it too.
		{name: "trailing dot", in: bytes.Replace(hello, []byte("pass.test"), []byte("pass.tes."), 1)},
		{name: "no SNI", in: ClientHello(t, "")},
		{name: "half a ClientHello", in: hello[:len(hello)/2]},
		{name: "not TLS", in: []byte("GET / HTTP/1.1\r\nHost: pass.test\r\n\r\n")},
		{name: "nothing", in: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			const after = "bytes after the hello"
			c := &scriptConn{r: io.MultiReader(bytes.NewReader(tc.in), bytes.NewReader([]byte(after)))}
			sni, replay := peekClientHello(c)
			if sni != tc.wantSNI {
				t.Errorf("SNI = %q, want %q", sni, tc.wantSNI)
			}
			if c.written.Len() != 0 {
				t.Errorf("the peek wrote %q to the client", c.written.Bytes())
			}
			got, err := io.ReadAll(replay)
			if err != nil {
				t.Fatal(err)
			}
			if want := append(bytes.Clone(tc.in), after...); !bytes.Equal(got, want) {
				t.Errorf("replay read %q, want %q", got, want)
			}
		})
	}
}

// TestSocketOf checks that socket options reach the TCP socket under the counting and PROXY-protocol
// wrappers.
func TestSocketOf(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	for _, trusted := range [][]netip.Prefix{nil, {netip.MustParsePrefix("127.0.0.1/32")}} {
		wl := lbproxy.Wrap(ln, trusted, lbproxy.Reject)
		d, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		raw, err := wl.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { raw.Close() })
		c, _ := (&connCount{}).admit(raw)
		if _, ok := socketOf(c).(*net.TCPConn); !ok {
			t.Errorf("with trusted %v: socketOf = %T, want *net.TCPConn", trusted, socketOf(c))
		}
	}
}

// BenchmarkPeekClientHello is the peek alone, on a ClientHello already in memory: what an active
// passthrough adds to each TLS connection's handshake.
func BenchmarkPeekClientHello(b *testing.B) {
	hello := ClientHello(b, "app.test")
	r := bytes.NewReader(hello)
	c := &scriptConn{r: r}
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(hello)
		if sni, _ := peekClientHello(c); sni != "app.test" {
			b.Fatalf("SNI = %q", sni)
		}
	}
}
