package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/net/http2"
)

// reCanary is a loopback listener that stands for an address an attacker names (a metadata service,
// an admin port): the agent must never connect to it. It counts what it accepts and closes it.
type reCanary struct {
	ln      net.Listener
	accepts atomic.Int64
	probes  atomic.Int64
	// reported is the foreign count the last call of foreign returned.
	reported atomic.Int64
}

func reNewCanary(t testing.TB) *reCanary {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &reCanary{ln: ln}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.accepts.Add(1)
			_ = conn.Close()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
	})
	return c
}

func (c *reCanary) addr() string { return c.ln.Addr().String() }

// foreign is how many connections other than the test's own probes the canary has accepted since
// the previous call, so that a failure names the case that caused it. It first
// connects once itself and waits until that connection is counted: the listener accepts in order,
// so any connection the agent made before is counted by then.
func (c *reCanary) foreign(t testing.TB) int64 {
	t.Helper()
	want := c.accepts.Load() + 1
	conn, err := net.DialTimeout("tcp", c.addr(), 5*time.Second)
	if err != nil {
		t.Fatalf("probe the canary: %v", err)
	}
	_ = conn.Close()
	c.probes.Add(1)
	waitFor(t, 10*time.Second, "the canary to count its probe", func() bool { return c.accepts.Load() >= want })
	total := c.accepts.Load() - c.probes.Load()
	return total - c.reported.Swap(total)
}

// reHit is one request a reTarget received.
type reHit struct {
	Method, Host, URI, Body string
	// BodyDone: the target finished reading the body (Body then ends with the read error, if any).
	BodyDone bool
}

// reTarget is a tenant's target that records every request (before it answers) and answers with the
// request target it saw; it accepts WebSocket upgrades too.
type reTarget struct {
	url  string
	mu   sync.Mutex
	hits []reHit
}

func reNewTarget(t testing.TB) (*reTarget, string) {
	t.Helper()
	rt := &reTarget{}
	s := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		// Recorded on arrival: a request counts as having reached the target even if its body fails.
		rt.mu.Lock()
		i := len(rt.hits)
		rt.hits = append(rt.hits, reHit{Method: r.Method, Host: r.Host, URI: r.RequestURI})
		rt.mu.Unlock()
		if r.Header.Get("Upgrade") == "" {
			b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			body := string(b)
			if err != nil {
				body += " [read error: " + err.Error() + "]"
			}
			rt.mu.Lock()
			rt.hits[i].Body, rt.hits[i].BodyDone = body, true
			rt.mu.Unlock()
		}
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			c, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
			defer cancel()
			_ = c.Write(ctx, websocket.MessageText, []byte(r.RequestURI))
			_ = c.Close(websocket.StatusNormalClosure, "")
			return
		}
		_, _ = io.WriteString(w, "target saw "+r.RequestURI)
	})
	rt.url = s.URL
	return rt, s.URL
}

// with returns the requests whose URI contains s.
func (rt *reTarget) with(s string) []reHit {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	var out []reHit
	for _, h := range rt.hits {
		if strings.Contains(h.URI, s) {
			out = append(out, h)
		}
	}
	return out
}

// byMethod returns the requests with this method.
func (rt *reTarget) byMethod(m string) []reHit {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	var out []reHit
	for _, h := range rt.hits {
		if h.Method == m {
			out = append(out, h)
		}
	}
	return out
}

const reWSHeaders = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"

// reServe starts a gateway with opts and one agent for domain in front of a recording target, and
// returns the gateway's port too, for the Host headers of raw requests.
func reServe(t testing.TB, domain string, opts gatewayOptions) (*reTarget, *gateway, string) {
	t.Helper()
	target, targetURL := reNewTarget(t)
	g := startGateway(t, opts)
	g.startAgent(domain, g.register(domain), targetURL)
	_, port, _ := net.SplitHostPort(g.addr)
	return target, g, port
}

// TestReliabilitySSRF: whatever request target, Host or method a visitor sends, the agent dials its
// configured target and nothing else: a canary listener on the address the attacker names never
// gets a connection. Each case either reaches the target with an origin-form request target (a
// path, never a URL with a host the target could be made to dial) or is refused with a 4xx.
func TestReliabilitySSRF(t *testing.T) {
	t.Parallel()
	const domain = "ssrf.example.test"
	canary := reNewCanary(t)
	ca := canary.addr()
	target, g, port := reServe(t, domain, gatewayOptions{})
	hostport := net.JoinHostPort(domain, port)
	host := "Host: " + hostport + "\r\n"

	// check asserts the outcome of one case: code is one of want; a 2xx/101 reached the target
	// exactly once with uri as its request target, a refusal did not reach it; the canary saw nothing.
	check := func(t *testing.T, code int, want []int, hits []reHit, uri string) {
		t.Helper()
		t.Logf("status %d; the target saw %+v", code, hits)
		if !slices.Contains(want, code) {
			t.Errorf("status %d, want one of %v", code, want)
		}
		switch {
		case code < 400 && len(hits) != 1:
			t.Errorf("answered %d but the target saw the request %d times", code, len(hits))
		case code < 400 && hits[0].URI != uri:
			t.Errorf("the target saw request target %q, want %q", hits[0].URI, uri)
		case code >= 400 && len(hits) > 0:
			t.Errorf("refused with %d but the target saw %+v", code, hits)
		}
		for _, h := range hits {
			if !strings.HasPrefix(h.URI, "/") {
				t.Errorf("the target got a request target that is not a path: %q", h.URI)
			}
		}
		if n := canary.foreign(t); n != 0 {
			t.Fatalf("the canary at %s (the address the visitor named) got %d connections", ca, n)
		}
	}

	h1 := []struct {
		name   string
		sni    string // "" sends no SNI
		raw    string
		marker string // what the target's URI holds if it was reached; "" for CONNECT
		want   []int
		uri    string // the request target the target must see when reached
	}{
		{"absolute-form naming the canary", domain,
			"GET http://" + ca + "/ssrf/abs-canary HTTP/1.1\r\n" + host + "\r\n", "/ssrf/abs-canary", []int{421}, ""},
		{"absolute-form naming the canary, no SNI", "",
			"GET http://" + ca + "/ssrf/abs-canary-nosni HTTP/1.1\r\n" + host + "\r\n", "/ssrf/abs-canary-nosni", []int{404}, ""},
		{"absolute-form naming the metadata address", domain,
			"GET http://169.254.169.254/ssrf/latest/meta-data/ HTTP/1.1\r\n" + host + "\r\n", "/ssrf/latest", []int{421}, ""},
		{"absolute-form of the tenant with the canary in the path", domain,
			"GET https://" + hostport + "//" + ca + "/ssrf/abs-path HTTP/1.1\r\n" + host + "\r\n", "/ssrf/abs-path", []int{200}, "//" + ca + "/ssrf/abs-path"},
		{"absolute-form with the canary as userinfo", domain,
			"GET http://" + ca + "@" + hostport + "/ssrf/abs-userinfo HTTP/1.1\r\n" + host + "\r\n", "/ssrf/abs-userinfo", []int{200}, "/ssrf/abs-userinfo"},
		{"absolute-form with userinfo naming the canary as host", domain,
			"GET http://" + domain + "@" + ca + "/ssrf/abs-userinfo-host HTTP/1.1\r\n" + host + "\r\n", "/ssrf/abs-userinfo-host", []int{421}, ""},
		{"double-slash path naming the canary", domain,
			"GET //" + ca + "/ssrf/dslash HTTP/1.1\r\n" + host + "\r\n", "/ssrf/dslash", []int{200}, "//" + ca + "/ssrf/dslash"},
		{"double-slash path naming the canary, POST with a body", domain,
			"POST //" + ca + "/ssrf/dslash-post HTTP/1.1\r\n" + host + "Content-Length: 5\r\n\r\nhello", "/ssrf/dslash-post", []int{200}, "//" + ca + "/ssrf/dslash-post"},
		{"Host with userinfo naming the canary", domain,
			"GET /ssrf/host-userinfo HTTP/1.1\r\nHost: " + domain + "@" + ca + "\r\n\r\n", "/ssrf/host-userinfo", []int{400}, ""},
		{"Host with the canary as userinfo", domain,
			"GET /ssrf/host-userinfo2 HTTP/1.1\r\nHost: " + ca + "@" + hostport + "\r\n\r\n", "/ssrf/host-userinfo2", []int{400}, ""},
		{"CONNECT to the canary", domain,
			"CONNECT " + ca + " HTTP/1.1\r\nHost: " + ca + "\r\n\r\n", "", []int{421}, ""},
		{"CONNECT to the canary with the tenant's Host", domain,
			"CONNECT " + ca + " HTTP/1.1\r\n" + host + "\r\n", "", []int{421}, ""},
		// The agent sends CONNECT to its own target, as "CONNECT /": the target, not the visitor,
		// decides what it means. (Refusing it at the edge with 405 would be fine too.)
		{"CONNECT to the tenant", domain,
			"CONNECT " + hostport + " HTTP/1.1\r\n" + host + "\r\n", "", []int{200, 405}, "/"},
		{"WebSocket, absolute-form naming the canary", domain,
			"GET http://" + ca + "/ssrf/ws-abs HTTP/1.1\r\n" + host + reWSHeaders + "\r\n", "/ssrf/ws-abs", []int{421}, ""},
		{"WebSocket, double-slash path naming the canary", domain,
			"GET //" + ca + "/ssrf/ws-dslash HTTP/1.1\r\n" + host + reWSHeaders + "\r\n", "/ssrf/ws-dslash", []int{101}, "//" + ca + "/ssrf/ws-dslash"},
		{"WebSocket, absolute-form with the canary as userinfo", domain,
			"GET http://" + ca + "@" + hostport + "/ssrf/ws-userinfo HTTP/1.1\r\n" + host + reWSHeaders + "\r\n", "/ssrf/ws-userinfo", []int{101}, "/ssrf/ws-userinfo"},
		{"WebSocket, Host with userinfo naming the canary", domain,
			"GET /ssrf/ws-host-userinfo HTTP/1.1\r\nHost: " + domain + "@" + ca + "\r\n" + reWSHeaders + "\r\n", "/ssrf/ws-host-userinfo", []int{400}, ""},
	}
	for _, tc := range h1 {
		t.Run("h1/"+tc.name, func(t *testing.T) {
			connects := len(target.byMethod(http.MethodConnect))
			code, body, err := abRawH1(t, g.forTest(t), tc.sni, tc.raw)
			if err != nil {
				t.Fatalf("no response: %v", err)
			}
			t.Logf("body %.120q", body)
			hits := target.with("\x00none")
			if tc.marker != "" {
				hits = target.with(tc.marker)
			} else if n := target.byMethod(http.MethodConnect); len(n) > connects {
				hits = n[connects:]
			}
			check(t, code, tc.want, hits, tc.uri)
		})
	}

	h2 := []struct {
		name   string
		kv     []string
		marker string
		want   []string // :status, or "RST" for a refused stream
		uri    string
	}{
		{"double-slash :path naming the canary",
			[]string{":method", "GET", ":scheme", "https", ":authority", hostport, ":path", "//" + ca + "/ssrf/h2-dslash"}, "/ssrf/h2-dslash", []string{"200"}, "//" + ca + "/ssrf/h2-dslash"},
		// Go's HTTP/2 server takes an absolute :path: r.URL.Host is then the canary while r.Host is
		// the :authority. The gateway routes by r.Host and forwards only the path.
		{"absolute URL as :path",
			[]string{":method", "GET", ":scheme", "https", ":authority", hostport, ":path", "http://" + ca + "/ssrf/h2-abs"}, "/ssrf/h2-abs", []string{"200", "400", "RST"}, "/ssrf/h2-abs"},
		{":authority of the canary",
			[]string{":method", "GET", ":scheme", "https", ":authority", ca, ":path", "/ssrf/h2-authority"}, "/ssrf/h2-authority", []string{"421"}, ""},
		{":authority with userinfo naming the canary",
			[]string{":method", "GET", ":scheme", "https", ":authority", domain + "@" + ca, ":path", "/ssrf/h2-userinfo"}, "/ssrf/h2-userinfo", []string{"421", "400", "RST"}, ""},
		{":authority with the canary as userinfo",
			[]string{":method", "GET", ":scheme", "https", ":authority", ca + "@" + hostport, ":path", "/ssrf/h2-userinfo2"}, "/ssrf/h2-userinfo2", []string{"421", "400", "RST"}, ""},
		{"CONNECT to the canary",
			[]string{":method", "CONNECT", ":authority", ca}, "", []string{"421"}, ""},
		{"CONNECT to the tenant",
			[]string{":method", "CONNECT", ":authority", hostport}, "", []string{"200", "405", "RST"}, "/"},
		{"extended CONNECT WebSocket, double-slash :path naming the canary",
			[]string{":method", "CONNECT", ":protocol", "websocket", ":scheme", "https", ":authority", hostport, ":path", "//" + ca + "/ssrf/h2-ws", "sec-websocket-version", "13"}, "/ssrf/h2-ws", []string{"RST", "200"}, "//" + ca + "/ssrf/h2-ws"},
	}
	for _, tc := range h2 {
		t.Run("h2/"+tc.name, func(t *testing.T) {
			connects := len(target.byMethod(http.MethodConnect))
			st := abH2Request(t, g.forTest(t), domain, tc.kv...)
			status := st.Status[1]
			code := 0
			if status == "" {
				if !abStreamEnded(st, 1) {
					t.Fatalf("no answer at all")
				}
				status = "RST"
				t.Logf("RST_STREAM %v, GOAWAY %v (%v)", st.Rst[1], st.GoAway, st.GoAwayCode)
				code = 400 // for check: a refusal
			} else {
				_, _ = fmt.Sscan(status, &code)
			}
			if !slices.Contains(tc.want, status) {
				t.Errorf("answer %s, want one of %v", status, tc.want)
			}
			hits := target.with("\x00none")
			if tc.marker != "" {
				hits = target.with(tc.marker)
			} else if n := target.byMethod(http.MethodConnect); len(n) > connects {
				hits = n[connects:]
			}
			check(t, code, []int{code}, hits, tc.uri)
		})
	}

	// The Go client, as a browser would, for a body (the agent sends those with http.Transport,
	// which dials req.URL.Host) and for a WebSocket client.
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("client/POST to a double-slash path naming the canary/h2=%v", h2), func(t *testing.T) {
			marker := fmt.Sprintf("/ssrf/client-post-%v", h2)
			res := gwDo(t, g.forTest(t).httpClient(h2), http.MethodPost, g.url(domain, "//"+ca+marker), nil, strings.NewReader("hello"))
			hits := target.with(marker)
			check(t, res.code, []int{200}, hits, "//"+ca+marker)
			if len(hits) == 1 && hits[0].Body != "hello" {
				t.Errorf("the target got body %q", hits[0].Body)
			}
		})
	}
	t.Run("client/WebSocket to a double-slash path naming the canary", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, res, err := websocket.Dial(ctx, g.url(domain, "//"+ca+"/ssrf/client-ws"), &websocket.DialOptions{HTTPClient: g.forTest(t).httpClient(false)})
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.CloseNow()
		_, msg, err := c.Read(ctx)
		if err != nil || string(msg) != "//"+ca+"/ssrf/client-ws" {
			t.Errorf("first message %q, %v; want the request target the target saw", msg, err)
		}
		check(t, res.StatusCode, []int{101}, target.with("/ssrf/client-ws"), "//"+ca+"/ssrf/client-ws")
	})
	if n := canary.accepts.Load() - canary.probes.Load(); n != 0 {
		t.Errorf("the canary got %d connections in all", n)
	}
	abAlive(t, g)
}

// reH2Fields is n header fields of about 4 KiB each whose HPACK sizes (name + value + 32, RFC 7541
// §4.1) add up to exactly size, after the pseudo-header fields kv. size must leave room for them.
func reH2Fields(kv []string, size int) []string {
	used := 0
	for i := 0; i+1 < len(kv); i += 2 {
		used += len(kv[i]) + len(kv[i+1]) + 32
	}
	const value = 4000
	for j := 0; ; j++ {
		name := fmt.Sprintf("x-fill-%04d", j)
		if used+2*(len(name)+value+32) > size {
			// The last field takes what is left, so that the sum is exact.
			kv = append(kv, name, strings.Repeat("z", size-used-len(name)-32))
			return kv
		}
		kv = append(kv, name, strings.Repeat(string(rune('a'+j%26)), value))
		used += len(name) + value + 32
	}
}

// reH2Send writes block as HEADERS (with END_STREAM) plus CONTINUATION frames of at most 16 KiB
// (the smallest SETTINGS_MAX_FRAME_SIZE, always allowed); END_HEADERS goes on the last frame only
// if end. It returns the first write error (the server may close the connection on the way).
func reH2Send(h *abH2, id uint32, block []byte, first, end bool) error {
	const frame = 16 << 10
	for off := 0; off < len(block) || off == 0; off += frame {
		chunk := block[off:min(off+frame, len(block))]
		last := end && off+frame >= len(block)
		err := h.write(func(fr *http2.Framer) error {
			if first && off == 0 {
				return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: chunk, EndStream: true, EndHeaders: last})
			}
			return fr.WriteContinuation(id, last, chunk)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// TestReliabilityH2HeaderTooLarge: an HTTP/2 request whose header list is over the gateway's
// SETTINGS_MAX_HEADER_LIST_SIZE never reaches the target. Go's HTTP/2 server answers 431 on the
// stream (and keeps the connection) when the block ends soon after the limit; it cannot when the
// client goes on sending: it then stops decoding and ends the connection with GOAWAY (CVE-2023-45288),
// as it does for one field longer than the whole limit (an HPACK string it refuses to buffer).
func TestReliabilityH2HeaderTooLarge(t *testing.T) {
	t.Parallel()
	const domain = "h2hdr.example.test"
	target, g, port := reServe(t, domain, gatewayOptions{})
	authority := net.JoinHostPort(domain, port)
	pseudo := func(path string) []string {
		return []string{":method", "GET", ":scheme", "https", ":authority", authority, ":path", path}
	}
	// dial opens a connection and waits for the gateway's SETTINGS, which carry the limit.
	dial := func(t *testing.T) (*abH2, int) {
		h := abDialH2(t, g.forTest(t), domain, abH2Opts{})
		if !h.await(10*time.Second, func(s abH2State) bool { return s.Settings[http2.SettingMaxHeaderListSize] > 0 }) {
			t.Fatalf("no SETTINGS_MAX_HEADER_LIST_SIZE from the gateway: %+v", h.state().Settings)
		}
		limit := int(h.state().Settings[http2.SettingMaxHeaderListSize])
		t.Logf("SETTINGS_MAX_HEADER_LIST_SIZE %d, SETTINGS_MAX_FRAME_SIZE %d", limit, h.state().Settings[http2.SettingMaxFrameSize])
		if limit > 2<<20 {
			t.Fatalf("header list limit %d: more than twice HTTP/1.1's 1 MiB", limit)
		}
		return h, limit
	}

	t.Run("just over the limit: 431", func(t *testing.T) {
		h, limit := dial(t)
		// The fields up to limit-12 KiB, then one of about 14 KiB in the last frame: the server
		// decodes it all (each frame is under twice what is left), finds the list too long and
		// answers 431 with the HPACK state intact.
		const left = 12 << 10
		var head, over []byte
		_ = h.write(func(*http2.Framer) error {
			head = h.block(reH2Fields(pseudo("/h2hdr/431"), limit-left)...)
			over = h.block("x-over", strings.Repeat("o", 14000))
			return nil
		})
		if err := reH2Send(h, 1, head, true, false); err != nil {
			t.Fatal(err)
		}
		if err := reH2Send(h, 1, over, false, true); err != nil {
			t.Fatal(err)
		}
		h.await(15*time.Second, func(s abH2State) bool { return s.Status[1] != "" || abStreamEnded(s, 1) })
		st := h.state()
		t.Logf("status %q, RST_STREAM %v, GOAWAY %v (%v), closed %v", st.Status[1], st.Rst, st.GoAway, st.GoAwayCode, st.Closed)
		if st.Status[1] != "431" {
			t.Errorf("status %q, want 431", st.Status[1])
		}
		if hits := target.with("/h2hdr/"); len(hits) > 0 {
			t.Fatalf("the target saw %+v", hits)
		}
		// The connection goes on serving.
		if err := h.write(func(fr *http2.Framer) error {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: h.get(authority, "/h2hdr-after"), EndStream: true, EndHeaders: true})
		}); err != nil {
			t.Fatal(err)
		}
		h.await(15*time.Second, func(s abH2State) bool { return s.Status[3] != "" || abStreamEnded(s, 3) })
		if st := h.state(); st.Status[3] != "200" || len(target.with("/h2hdr-after")) != 1 {
			t.Errorf("next request on the connection: status %q (GOAWAY %v), target saw it %d times", st.Status[3], st.GoAway, len(target.with("/h2hdr-after")))
		}
	})

	refused := []struct {
		name string
		kv   func(limit int) []string
	}{
		{"twice the limit: GOAWAY", func(limit int) []string { return reH2Fields(pseudo("/h2hdr/twice"), 2*limit) }},
		{"one field longer than the limit: GOAWAY", func(limit int) []string {
			return append(pseudo("/h2hdr/one-field"), "x-big", strings.Repeat("b", limit+16<<10))
		}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			h, limit := dial(t)
			var block []byte
			_ = h.write(func(*http2.Framer) error { block = h.block(tc.kv(limit)...); return nil })
			werr := reH2Send(h, 1, block, true, true)
			h.await(15*time.Second, func(s abH2State) bool { return s.Status[1] != "" || s.GoAway || s.Closed })
			st := h.state()
			t.Logf("wrote %d header block bytes (write error %v): status %q, RST_STREAM %v, GOAWAY %v (%v), closed %v",
				len(block), werr, st.Status[1], st.Rst, st.GoAway, st.GoAwayCode, st.Closed)
			if st.Status[1] != "" && st.Status[1] != "431" {
				t.Errorf("status %q, want 431 or GOAWAY", st.Status[1])
			}
			if st.Status[1] == "" && !st.GoAway && !st.Closed {
				t.Errorf("no answer: neither 431 nor GOAWAY")
			}
			if hits := target.with("/h2hdr/"); len(hits) > 0 {
				t.Fatalf("the target saw %+v", hits)
			}
		})
	}
	abAlive(t, g)
}

// reRawH1 is abRawH1 writing and reading at once: the gateway may answer and close before it has
// read everything (a body it refuses), and a write blocked on that must not hide its answer.
func reRawH1(t testing.TB, g *gateway, sni, raw string) (int, string, error) {
	t.Helper()
	conf := g.tlsConfig()
	conf.ServerName = sni
	conf.NextProtos = []string{"http/1.1"}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", g.addr, conf)
	if err != nil {
		t.Fatalf("dial http/1.1 for %q: %v", sni, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		_, _ = io.WriteString(conn, raw)
	}()
	defer func() { conn.Close(); <-wrote }()
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, "", fmt.Errorf("read response: %w", err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	return res.StatusCode, string(b), nil
}

// TestReliabilityChunked: a chunked HTTP/1.1 body whose framing is broken (a bare LF where RFC 9112
// §7.1 wants CRLF, a chunk-size line over net/http's 4 KiB, chunk extensions that outweigh the data)
// is refused with 400; nothing after the break reaches the target (not a request pipelined behind it,
// not a body the target could take as whole). Bodies stream, so the head itself may reach the target
// before the break is read: its read of the body then fails.
func TestReliabilityChunked(t *testing.T) {
	t.Parallel()
	const domain = "chunked.example.test"
	target, g, port := reServe(t, domain, gatewayOptions{})
	head := func(path string) string {
		return "POST " + path + " HTTP/1.1\r\nHost: " + net.JoinHostPort(domain, port) + "\r\nTransfer-Encoding: chunked\r\n\r\n"
	}
	var many strings.Builder
	for i := range 100 {
		fmt.Fprintf(&many, "1;ext%d=%s\r\nx\r\n", i, strings.Repeat("v", 200))
	}
	cases := []struct{ name, path, body string }{
		{"bare LF after the chunk size", "/ch/bare-lf-size", "5\nhello\r\n0\r\n\r\n"},
		{"bare LF after the last chunk size", "/ch/bare-lf-last", "5\r\nhello\r\n0\n\r\n"},
		{"bare LF after the chunk data", "/ch/bare-lf-data", "5\r\nhello\n0\r\n\r\n"},
		{"bare LF after an extension", "/ch/bare-lf-ext", "5;a=b\nhello\r\n0\r\n\r\n"},
		{"CR inside the chunk-size line", "/ch/cr-ext", "5;a\rb\r\nhello\r\n0\r\n\r\n"},
		{"one 8 KiB extension", "/ch/long-ext", "5;" + strings.Repeat("e", 8<<10) + "\r\nhello\r\n0\r\n\r\n"},
		{"100 one-byte chunks with 200-byte extensions", "/ch/many-ext", many.String() + "0\r\n\r\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A request pipelined behind the broken body: if the gateway read past the break as a
			// new request, the target would see it.
			smuggled := "GET " + tc.path + "/smuggled HTTP/1.1\r\nHost: " + net.JoinHostPort(domain, port) + "\r\n\r\n"
			code, body, err := reRawH1(t, g.forTest(t), domain, head(tc.path)+tc.body+smuggled)
			if err != nil {
				t.Fatalf("no response: %v", err)
			}
			// The head may have reached the target before the break was read (bodies stream); then
			// the target's read of the body must fail, not end as if the body were whole.
			waitFor(t, 10*time.Second, "the target to finish reading any body it got", func() bool {
				for _, h := range target.with(tc.path) {
					if !h.BodyDone {
						return false
					}
				}
				return true
			})
			hits := target.with(tc.path)
			t.Logf("%d %.100q; the target saw %+v", code, body, hits)
			if code != http.StatusBadRequest {
				t.Errorf("status %d, want 400", code)
			}
			for _, h := range hits {
				if strings.HasSuffix(h.URI, "/smuggled") {
					t.Errorf("the request after the broken body reached the target: %+v", h)
				} else if !strings.Contains(h.Body, "[read error") {
					t.Errorf("the target read the broken body as whole: %q", h.Body)
				}
			}
		})
	}
	// Extensions are legal and ignored: a sane one passes.
	t.Run("valid chunk extension", func(t *testing.T) {
		code, body, err := abRawH1(t, g.forTest(t), domain, head("/ch/ok")+"5;name=\"v\"\r\nhello\r\n0\r\n\r\n")
		if err != nil || code != http.StatusOK {
			t.Fatalf("%d %q %v", code, body, err)
		}
		if hits := target.with("/ch/ok"); len(hits) != 1 || hits[0].Body != "hello" {
			t.Errorf("the target saw %+v, want one request with body hello", hits)
		}
	})
	abAlive(t, g)
}

// TestReliabilitySemicolonQuery: the query reaches the target byte for byte, on HTTP/1.1 and HTTP/2.
// httputil.ReverseProxy re-encodes a query with ';' or a bad escape (parameter smuggling between a
// proxy that parses the query and a backend that parses it differently); the gateway parses no
// tenant query, so the target, and only the target, must see it as the visitor sent it.
func TestReliabilitySemicolonQuery(t *testing.T) {
	t.Parallel()
	const domain = "query.example.test"
	target, g, _ := reServe(t, domain, gatewayOptions{})
	queries := []string{"a=1;b=2", "b=2&a=1;c=3", "x=1&x=2;y", ";", "q=%zz&r=1", "a=1&b=%2", "z=9&a=1"}
	for _, h2 := range []bool{false, true} {
		c := g.httpClient(h2)
		for i, q := range queries {
			t.Run(fmt.Sprintf("h2=%v/%s", h2, q), func(t *testing.T) {
				uri := fmt.Sprintf("/q/%v/%d?%s", h2, i, q)
				res := gwDo(t, c, http.MethodGet, g.url(domain, uri), nil, nil)
				hits := target.with(fmt.Sprintf("/q/%v/%d", h2, i))
				if res.code != http.StatusOK || len(hits) != 1 {
					t.Fatalf("status %d %q; the target saw %+v", res.code, res.body, hits)
				}
				if hits[0].URI != uri {
					t.Errorf("the target saw %q, want %q", hits[0].URI, uri)
				}
			})
		}
	}
}
