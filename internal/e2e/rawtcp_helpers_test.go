package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/hopgate/hopgate/internal/testutil/hoptest"
)

// Helpers of the raw-stream tests (issue 17): TCP tunnels on public ports, TLS passthrough by SNI and
// the PROXY protocol. Prefix rt.

// rtIOTimeout bounds every single read or write a raw-stream test makes.
const rtIOTimeout = 20 * time.Second

// rtPorts is a HOP_SERVER_TCP_PORTS range of n ports for one gateway.
func rtPorts(t testing.TB, n int) (low, high int) {
	t.Helper()
	low, high, err := hoptest.FreePortRange(n)
	if err != nil {
		t.Fatal(err)
	}
	return low, high
}

// rtEnv turns TCP tunnels on with the range low..high on 127.0.0.1, and the metrics listener.
func rtEnv(low, high int, extra ...string) []string {
	return append([]string{
		fmt.Sprintf("HOP_SERVER_TCP_PORTS=%d-%d", low, high),
		"HOP_SERVER_TCP_LISTEN_HOST=127.0.0.1",
		"HOP_SERVER_METRICS_LISTEN=127.0.0.1:0",
	}, extra...)
}

// rtStartGateway starts a gateway with TCP tunnels on a fresh range of n ports.
func rtStartGateway(t testing.TB, n int, extra ...string) (g *gateway, low, high int) {
	t.Helper()
	low, high = rtPorts(t, n)
	return startGateway(t, gatewayOptions{Env: rtEnv(low, high, extra...)}), low, high
}

// rtRegister registers domain in mode through the admin API, fails t unless it answers 201 with that
// mode, and returns the answer (the client key and the assigned port among it).
func rtRegister(t testing.TB, g *gateway, domain, mode string, port int, pp string) hoptest.Registration {
	t.Helper()
	reg, err := g.hop.RegisterMode(t.Context(), domain, mode, port, pp)
	if err != nil {
		t.Fatalf("register %s as %s (port %d, proxy protocol %q): %v", domain, mode, port, pp, err)
	}
	if reg.Mode != mode || reg.ProxyProtocol != pp || (port != 0 && reg.TCPPort != port) {
		t.Fatalf("register %s: answered mode %q, tcp_port %d, proxy_protocol %q; want %q, %d, %q",
			domain, reg.Mode, reg.TCPPort, reg.ProxyProtocol, mode, port, pp)
	}
	return reg
}

// rtAdmin calls the admin API for t (not g's own test) and decodes the JSON answer.
func rtAdmin(t testing.TB, g *gateway, method, path string, body any) (int, map[string]any) {
	t.Helper()
	code, b, err := g.hop.Admin(t.Context(), method, path, body)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s %s: %d with a body that is not JSON: %q", method, path, code, b)
	}
	return code, out
}

// rtStatus is domains/status of domain, which must answer 200.
func rtStatus(t testing.TB, g *gateway, domain string) map[string]any {
	t.Helper()
	code, out := rtAdmin(t, g, http.MethodGet, "/api/v1/admin/domains/status?domain="+url.QueryEscape(domain), nil)
	if code != http.StatusOK {
		t.Fatalf("status %s: %d %v", domain, code, out)
	}
	return out
}

// rtCheckMode fails t unless the JSON object m shows mode, port and proxy protocol.
func rtCheckMode(t testing.TB, what string, m map[string]any, mode string, port int, pp string) {
	t.Helper()
	gotPort, _ := m["tcp_port"].(float64)
	gotPP, _ := m["proxy_protocol"].(string)
	if m["mode"] != mode || int(gotPort) != port || gotPP != pp {
		t.Errorf("%s shows mode %v, tcp_port %v, proxy_protocol %v; want %q, %d, %q", what, m["mode"], m["tcp_port"], m["proxy_protocol"], mode, port, pp)
	}
}

// rtListed is the entry of domain in GET /domains.
func rtListed(t testing.TB, g *gateway, domain string) map[string]any {
	t.Helper()
	code, b, err := g.hop.Admin(t.Context(), http.MethodGet, "/api/v1/admin/domains", nil)
	if err != nil || code != http.StatusOK {
		t.Fatalf("list domains: %d %v %s", code, err, b)
	}
	// The list is an object with an array of domain objects under some key, or the array itself.
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("list domains: %v: %s", err, b)
	}
	var arrays [][]any
	switch v := doc.(type) {
	case []any:
		arrays = append(arrays, v)
	case map[string]any:
		for _, f := range v {
			if a, ok := f.([]any); ok {
				arrays = append(arrays, a)
			}
		}
	}
	for _, a := range arrays {
		for _, e := range a {
			if m, ok := e.(map[string]any); ok && m["domain"] == domain {
				return m
			}
		}
	}
	t.Fatalf("%s not in the list: %s", domain, b)
	return nil
}

// rtErrorText is the "error" field of an admin API answer.
func rtErrorText(out map[string]any) string {
	s, _ := out["error"].(string)
	return s
}

// rtAddr is the gateway's public TCP address for port.
func rtAddr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// rtTarget is a TCP target in the test process: it echoes what it reads and half-closes once the
// other side has (an SSH-like stream in miniature), counting connections (the agent's health checks
// among them) and bytes. With proxyHeader
// each connection must start with a PROXY header, which is parsed (github.com/pires/go-proxyproto)
// and recorded rather than echoed.
type rtTarget struct {
	addr    string
	conns   atomic.Int64
	bytes   atomic.Int64 // everything read, PROXY headers included
	headers chan rtHeader
	ln      net.Listener
	mu      sync.Mutex
	open    map[net.Conn]bool
	wg      sync.WaitGroup
}

// rtHeader is what a proxy-header target read at the start of one connection.
type rtHeader struct {
	h   *proxyproto.Header
	err error
}

func rtNewTarget(t testing.TB, proxyHeader bool) *rtTarget {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tg := &rtTarget{addr: ln.Addr().String(), ln: ln, open: map[net.Conn]bool{}, headers: make(chan rtHeader, 64)}
	tg.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tg.conns.Add(1)
			tg.mu.Lock()
			tg.open[c] = true
			tg.mu.Unlock()
			tg.wg.Go(func() {
				defer func() {
					tg.mu.Lock()
					delete(tg.open, c)
					tg.mu.Unlock()
					c.Close()
				}()
				tg.serve(c, proxyHeader)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		tg.mu.Lock()
		for c := range tg.open {
			c.Close()
		}
		tg.mu.Unlock()
		tg.wg.Wait()
	})
	return tg
}

// countingReader counts what passes into n.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	c.n.Add(int64(k))
	return k, err
}

func (tg *rtTarget) serve(c net.Conn, proxyHeader bool) {
	var r io.Reader = countingReader{c, &tg.bytes}
	if proxyHeader {
		var read atomic.Int64
		br := bufio.NewReaderSize(countingReader{r, &read}, 64<<10)
		_ = c.SetReadDeadline(time.Now().Add(rtIOTimeout))
		h, err := proxyproto.Read(br)
		_ = c.SetReadDeadline(time.Time{})
		if err != nil && read.Load() == 0 {
			return // the agent's health check of its target: it connects and closes
		}
		select {
		case tg.headers <- rtHeader{h, err}:
		default:
		}
		if err != nil {
			return
		}
		r = br
	}
	buf := make([]byte, 256<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				_ = c.(*net.TCPConn).CloseWrite()
				// Wait for the other side to close, so that the half-close is seen through.
				_ = c.SetReadDeadline(time.Now().Add(rtIOTimeout))
				_, _ = io.Copy(io.Discard, c)
			}
			return
		}
	}
}

// header waits for the PROXY header of the next connection.
func (tg *rtTarget) header(t testing.TB) *proxyproto.Header {
	t.Helper()
	select {
	case h := <-tg.headers:
		if h.err != nil {
			t.Fatalf("the target read no PROXY header: %v", h.err)
		}
		return h.h
	case <-time.After(rtIOTimeout):
		t.Fatal("no connection with a PROXY header reached the target")
		return nil
	}
}

// rtDial connects to addr, closed at cleanup.
func rtDial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// rtDialFrom connects to addr from the loopback address src (a balancer on 127.0.0.2, say).
func rtDialFrom(t testing.TB, src, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// rtExchange writes msg and reads the same number of bytes back, which must be msg (an echo).
func rtExchange(c net.Conn, msg string) error {
	_ = c.SetDeadline(time.Now().Add(rtIOTimeout))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(msg))
	if n, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read the echo: got %q: %w", got[:n], err)
	}
	if string(got) != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// rtRoundTrip is one whole short connection: dial, exchange msg, half-close, read to EOF.
func rtRoundTrip(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := rtExchange(c, msg); err != nil {
		return err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return fmt.Errorf("close write: %w", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(rtIOTimeout))
	rest, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("read to EOF after the half-close: %w", err)
	}
	if len(rest) > 0 {
		return fmt.Errorf("%d more bytes after the echo: %q", len(rest), rest)
	}
	return nil
}

// rtWaitServes waits until a connection to addr gets an echo (the gateway's listener and the agent's
// path both up).
func rtWaitServes(t testing.TB, addr string, d time.Duration) {
	t.Helper()
	var last error
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if last = rtRoundTripWithin(addr, "ping\n", 3*time.Second); last == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s does not serve after %s: %v", addr, d, last)
}

// rtRoundTripWithin is rtRoundTrip bounded by d as a whole.
func rtRoundTripWithin(addr, msg string, d time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- rtRoundTrip(addr, msg) }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		return fmt.Errorf("no answer within %s", d)
	}
}

// rtClosedByPeer waits for c to be closed by the other side: a read returns EOF or a reset, not a
// timeout and not data.
func rtClosedByPeer(c net.Conn, within time.Duration) error {
	_ = c.SetReadDeadline(time.Now().Add(within))
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			return fmt.Errorf("got %q, want the connection closed", buf[:n])
		}
		var ne net.Error
		switch {
		case err == nil:
			continue
		case errors.As(err, &ne) && ne.Timeout():
			return fmt.Errorf("still open after %s", within)
		default:
			return nil // EOF or reset
		}
	}
}

// rtScrape returns every sample of /metrics at addr whose series starts with prefix, by series.
func rtScrape(t testing.TB, addr, prefix string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for line := range strings.Lines(opsScrape(t, addr)) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("parse %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// rtSum adds up the samples of metric (an exact name, so that _count and _sum of a histogram are
// apart) whose labels include every one of labels (like `mode="tcp"`).
func rtSum(samples map[string]float64, metric string, labels ...string) float64 {
	var sum float64
	for series, v := range samples {
		name, rest, _ := strings.Cut(series, "{")
		if name != metric {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(rest, l)
		}
		if ok {
			sum += v
		}
	}
	return sum
}

// rtLogEntries decodes the JSON lines of p whose msg is msg.
func rtLogEntries(p *process, msg string) []map[string]any {
	var out []map[string]any
	for _, l := range lines(p, `"`+msg+`"`) {
		var e map[string]any
		if json.Unmarshal([]byte(l), &e) == nil && e["msg"] == msg {
			out = append(out, e)
		}
	}
	return out
}

// rtNum reads a numeric log field, which may be written as a number or a string.
func rtNum(e map[string]any, field string) float64 {
	switch v := e[field].(type) {
	case float64:
		return v
	case string:
		f, _ := strconv.ParseFloat(v, 64)
		return f
	}
	return -1
}

// rtWriteProxyHeader writes a PROXY header of version (1 or 2) naming src as the visitor and dst as
// the address it connected to.
func rtWriteProxyHeader(t testing.TB, c net.Conn, version byte, src, dst string) {
	t.Helper()
	h := &proxyproto.Header{Version: version, Command: proxyproto.PROXY, TransportProtocol: proxyproto.TCPv4,
		SourceAddr: rtTCPAddr(t, src), DestinationAddr: rtTCPAddr(t, dst)}
	_ = c.SetWriteDeadline(time.Now().Add(rtIOTimeout))
	if _, err := h.WriteTo(c); err != nil {
		t.Fatalf("write PROXY header: %v", err)
	}
	_ = c.SetWriteDeadline(time.Time{})
}

func rtTCPAddr(t testing.TB, s string) *net.TCPAddr {
	t.Helper()
	a, err := net.ResolveTCPAddr("tcp", s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// rtProxyDialer dials addr from src and writes a PROXY header naming visitor before handing the
// connection to an HTTP transport (which then speaks TLS over it): a load balancer in miniature.
func rtProxyDialer(src, addr string, version byte, visitor string) func(ctx context.Context, network, _ string) (net.Conn, error) {
	return func(ctx context.Context, network, _ string) (net.Conn, error) {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		va, err := net.ResolveTCPAddr("tcp", visitor)
		if err != nil {
			c.Close()
			return nil, err
		}
		h := &proxyproto.Header{Version: version, Command: proxyproto.PROXY, TransportProtocol: proxyproto.TCPv4,
			SourceAddr: va, DestinationAddr: c.RemoteAddr()}
		var b bytes.Buffer
		if _, err := h.WriteTo(&b); err != nil {
			c.Close()
			return nil, err
		}
		if _, err := c.Write(b.Bytes()); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
}
