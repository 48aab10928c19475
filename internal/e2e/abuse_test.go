package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestAbuseH2RapidReset: one HTTP/2 connection opens and at once cancels 20 000 requests for a
// tenant whose target is slow (CVE-2023-44487). The cancelled requests must not each become an
// upstream request, the gateway stays up and another tenant stays fast.
func TestAbuseH2RapidReset(t *testing.T) {
	t.Parallel()
	const domain = "victim.example.test"
	const pairs = 20000
	var reached, inFlight, maxInFlight atomic.Int64
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/slow" {
			return
		}
		reached.Add(1)
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := maxInFlight.Load(); n > m && !maxInFlight.CompareAndSwap(m, n); m = maxInFlight.Load() {
		}
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})
	g := startGateway(t, gatewayOptions{Env: []string{"HOP_SERVER_METRICS_LISTEN=127.0.0.1:0"}})
	g.startAgent(domain, g.register(domain), target.URL)
	metrics := tnMetricsAddr(t, g)
	by := abNewBystander(t, g)
	pid := g.pid()
	rssBefore := abVmRSS(t, pid)
	peak := abPeakRSS(t, pid)

	h := abDialH2(t, g, domain, abH2Opts{})
	// The first block puts the fields in HPACK's dynamic table; from the second on, every block is the
	// same few index bytes, so the attacker spends its time sending rather than encoding.
	var blocks [2][]byte
	_ = h.write(func(*http2.Framer) error {
		blocks[0], blocks[1] = h.get(domain, "/slow"), h.get(domain, "/slow")
		return nil
	})
	stop := by.probe()
	start := time.Now()
	sent := 0
	var werr error
	for sent < pairs && werr == nil && time.Since(start) < 20*time.Second {
		werr = h.write(func(fr *http2.Framer) error {
			for range 100 {
				id := uint32(2*sent + 1)
				err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: blocks[min(sent, 1)], EndStream: true, EndHeaders: true})
				if err != nil {
					return err
				}
				if err := fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
					return err
				}
				sent++
			}
			return nil
		})
	}
	attack := time.Since(start)
	h.closedOrPing(5 * time.Second)
	// Let requests already on their way reach the target before counting, and a GOAWAY take effect.
	time.Sleep(time.Second)
	ds, perr := stop()
	st := h.state()
	closed := st.GoAway || st.Closed
	logged := len(abServerDurations(g, domain))
	t.Logf("sent %d HEADERS+RST_STREAM pairs in %s (write error: %v); %d requests reached the target (at most %d at once); "+
		"responses %d, RST_STREAM from the server %d, GOAWAY %v (%v), connection closed %v (%v); %d access log lines for the attacked tenant; gateway RSS %d -> peak %d MiB",
		sent, attack.Round(time.Millisecond), werr, reached.Load(), maxInFlight.Load(),
		len(st.Status), len(st.Rst), st.GoAway, st.GoAwayCode, closed, st.Err, logged, rssBefore>>20, peak()>>20)

	abCheckBystander(t, g, ds, perr)
	abAlive(t, g)
	if !closed {
		t.Errorf("%d HEADERS+RST_STREAM pairs in %s and the connection is still open: the reset-rate guard did not cut it", sent, attack)
	}
	if !strings.Contains(g.logs.String(), "rapid reset") {
		t.Errorf("the gateway did not log why it closed the connection")
	}
	if n := tnMetric(t, metrics, `hopgate_connections_dropped_total{reason="rapid_reset"}`); n != 1 {
		t.Errorf("hopgate_connections_dropped_total{reason=\"rapid_reset\"} = %v, want 1", n)
	}
	if n := reached.Load(); n > pairs/10 {
		t.Errorf("%d of %d cancelled requests reached the target; a reset request must not become an upstream request", n, sent)
	}
	if grow := peak() - rssBefore; grow > 100<<20 {
		t.Errorf("gateway RSS grew by %d MiB during the attack", grow>>20)
	}
	// The tenant under attack serves again once the attack is over.
	if code, _ := tnGet(t, g.httpClient(true), g.url(domain, "/after")); code != http.StatusOK {
		t.Errorf("attacked tenant after the attack: %d", code)
	}
}

// TestAbuseH2CancelsInTens: a client that cancels streams the way browsers and gRPC clients do (a few
// hundred in a burst) keeps its connection: the rapid-reset guard must not cut honest clients.
func TestAbuseH2CancelsInTens(t *testing.T) {
	t.Parallel()
	const domain = "cancel.example.test"
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	g := startGateway(t, gatewayOptions{})
	g.startAgent(domain, g.register(domain), target.URL)
	h := abDialH2(t, g, domain, abH2Opts{})
	block := h.get(domain, "/c")
	const cancels = 300
	if err := h.write(func(fr *http2.Framer) error {
		for i := range cancels {
			id := uint32(2*i + 1)
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: true, EndHeaders: true}); err != nil {
				return err
			}
			if err := fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	h.closedOrPing(5 * time.Second)
	if st := h.state(); st.GoAway || st.Closed || st.PingAcks == 0 {
		t.Fatalf("after %d cancelled streams: GOAWAY %v %v, closed %v %v, PING acks %d", cancels, st.GoAway, st.GoAwayCode, st.Closed, st.Err, st.PingAcks)
	}
	// And the connection still serves.
	id := uint32(2*cancels + 1)
	if err := h.write(func(fr *http2.Framer) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.get(domain, "/after"), EndStream: true, EndHeaders: true})
	}); err != nil {
		t.Fatal(err)
	}
	if !h.await(10*time.Second, func(s abH2State) bool { return s.Status[id] != "" }) || h.state().Status[id] != "200" {
		t.Fatalf("request after the cancels: status %q", h.state().Status[id])
	}
}

// TestAbuseH2ContinuationFlood: HEADERS without END_HEADERS followed by CONTINUATION frames carrying
// far more than the header limit (CVE-2023-45288), on several connections at once: each connection
// is closed and the gateway's memory barely moves.
func TestAbuseH2ContinuationFlood(t *testing.T) {
	t.Parallel()
	const conns = 6
	const perConn = 4 << 20 // header block bytes each connection tries to send
	g := startGateway(t, gatewayOptions{})
	by := abNewBystander(t, g)
	pid := g.pid()
	rssBefore := abVmRSS(t, pid)
	peak := abPeakRSS(t, pid)

	// One header block of many 4 KiB fields; each connection cuts it into 16 KiB frames.
	var hs []*abH2
	for range conns {
		hs = append(hs, abDialH2(t, g, "localhost", abH2Opts{}))
	}
	stop := by.probe()
	written := make([]int, conns)
	var wg sync.WaitGroup
	for i, h := range hs {
		wg.Go(func() {
			var block []byte
			_ = h.write(func(*http2.Framer) error {
				kv := []string{":method", "GET", ":scheme", "https", ":authority", "localhost", ":path", "/healthz"}
				val := strings.Repeat("0123456789abcdef", 256)
				for j := 0; len(kv)/2*len(val) < perConn; j++ {
					kv = append(kv, fmt.Sprintf("x-flood-%d", j), val)
				}
				block = h.block(kv...)
				return nil
			})
			const frame = 16 << 10
			err := h.write(func(fr *http2.Framer) error {
				return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:frame], EndStream: true})
			})
			written[i] = frame
			for off := frame; err == nil && off < len(block); off += frame {
				chunk := block[off:min(off+frame, len(block))]
				// END_HEADERS is never set: the block never ends.
				err = h.write(func(fr *http2.Framer) error { return fr.WriteContinuation(1, false, chunk) })
				if err == nil {
					written[i] += len(chunk)
				}
			}
		})
	}
	wg.Wait()
	for i, h := range hs {
		if !h.await(10*time.Second, func(s abH2State) bool { return s.Closed }) {
			t.Errorf("connection %d: still open after %d bytes of one header block", i, written[i])
			continue
		}
		st := h.state()
		t.Logf("connection %d: closed after %d header block bytes were written; GOAWAY %v (%v), %v", i, written[i], st.GoAway, st.GoAwayCode, st.Err)
		if st.Status[1] != "" {
			t.Errorf("connection %d: the flooded request was served: %s", i, st.Status[1])
		}
	}
	ds, perr := stop()
	grow := peak() - rssBefore
	t.Logf("gateway RSS %d MiB before, grew by %d MiB at the peak", rssBefore>>20, grow>>20)
	if grow > 50<<20 {
		t.Errorf("gateway RSS grew by %d MiB during the flood, want <= 50 MiB", grow>>20)
	}
	abCheckBystander(t, g, ds, perr)
	abAlive(t, g)
}

// TestAbuseH2TooManyStreams: a client that opens more streams than the gateway's
// SETTINGS_MAX_CONCURRENT_STREAMS has every stream over the limit refused, and nothing else suffers.
// The client advertises a zero flow-control window, so that every response stays unfinished and
// every stream stays open.
func TestAbuseH2TooManyStreams(t *testing.T) {
	t.Parallel()
	const extra = 20
	g := startGateway(t, gatewayOptions{})
	by := abNewBystander(t, g)
	h := abDialH2(t, g, "localhost", abH2Opts{Settings: []http2.Setting{{ID: http2.SettingInitialWindowSize, Val: 0}}})
	if !h.await(5*time.Second, func(s abH2State) bool { return s.Settings[http2.SettingMaxConcurrentStreams] > 0 }) {
		t.Fatalf("no SETTINGS_MAX_CONCURRENT_STREAMS from the gateway: %+v", h.state().Settings)
	}
	limit := int(h.state().Settings[http2.SettingMaxConcurrentStreams])
	if limit > 10000 {
		t.Fatalf("SETTINGS_MAX_CONCURRENT_STREAMS %d: no useful limit", limit)
	}
	open := func(from, n int) {
		t.Helper()
		err := h.write(func(fr *http2.Framer) error {
			for i := from; i < from+n; i++ {
				err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: h.get("localhost", "/healthz"), EndStream: true, EndHeaders: true})
				if err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("open streams %d..%d: %v", from, from+n-1, err)
		}
	}
	stop := by.probe()
	open(0, limit)
	if !h.await(15*time.Second, func(s abH2State) bool { return len(s.Status) == limit || s.Closed }) {
		t.Fatalf("%d of %d streams answered", len(h.state().Status), limit)
	}
	open(limit, extra)
	refused := func(s abH2State) bool {
		for i := limit; i < limit+extra; i++ {
			if !abStreamEnded(s, uint32(2*i+1)) {
				return false
			}
		}
		return true
	}
	ok := h.await(10*time.Second, refused)
	ds, perr := stop()
	st := h.state()
	codes := map[http2.ErrCode]int{}
	for i := limit; i < limit+extra; i++ {
		if c, ok := st.Rst[uint32(2*i+1)]; ok {
			codes[c]++
		}
		if s := st.Status[uint32(2*i+1)]; s != "" {
			t.Errorf("stream %d over the limit of %d was served: %s", i+1, limit, s)
		}
	}
	t.Logf("limit %d: first %d answered; %d over the limit: RST_STREAM %v, GOAWAY %v (%v), closed %v", limit, limit, extra, codes, st.GoAway, st.GoAwayCode, st.Closed)
	if !ok {
		t.Errorf("streams over SETTINGS_MAX_CONCURRENT_STREAMS were neither reset nor refused by GOAWAY")
	}
	for c := range codes {
		if c != http2.ErrCodeRefusedStream && c != http2.ErrCodeProtocol {
			t.Errorf("stream over the limit reset with %v, want REFUSED_STREAM or PROTOCOL_ERROR", c)
		}
	}
	abCheckBystander(t, g, ds, perr)
	abAlive(t, g)
}

// TestAbuseH2PingFlood: 100 000 PING frames from a client that does not read the ACKs (and has a
// tiny receive buffer, so the gateway cannot get rid of them): the gateway closes the connection or
// at least keeps its memory bounded, and serves everyone else.
func TestAbuseH2PingFlood(t *testing.T) {
	t.Parallel()
	const pings = 100000
	g := startGateway(t, gatewayOptions{})
	by := abNewBystander(t, g)
	pid := g.pid()
	rssBefore := abVmRSS(t, pid)
	peak := abPeakRSS(t, pid)
	h := abDialH2(t, g, "localhost", abH2Opts{NoRead: true, RcvBuf: 4096})
	stop := by.probe()
	start := time.Now()
	// A gateway that stops reading us is fine too: the flood then ends at the write deadline.
	_ = h.conn.SetWriteDeadline(start.Add(15 * time.Second))
	sent := 0
	var werr error
	for sent < pings && werr == nil {
		werr = h.write(func(fr *http2.Framer) error {
			for range 1000 {
				var data [8]byte
				data[0], data[1], data[2] = byte(sent>>16), byte(sent>>8), byte(sent)
				if err := fr.WritePing(false, data); err != nil {
					return err
				}
				sent++
			}
			return nil
		})
	}
	flood := time.Since(start)
	_ = h.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	h.startReader()
	h.await(10*time.Second, func(s abH2State) bool { return s.Closed || s.PingAcks >= sent })
	st := h.state()
	closed := st.Closed
	ds, perr := stop()
	grow := peak() - rssBefore
	t.Logf("wrote %d PINGs in %s (write error: %v); read back %d ACKs; GOAWAY %v (%v); closed %v (%v); RSS %d MiB before, +%d MiB at the peak",
		sent, flood.Round(time.Millisecond), werr, st.PingAcks, st.GoAway, st.GoAwayCode, closed, st.Err, rssBefore>>20, grow>>20)
	if !closed && st.PingAcks < sent {
		t.Errorf("connection open but only %d of %d PINGs answered", st.PingAcks, sent)
	}
	if grow > 50<<20 {
		t.Errorf("gateway RSS grew by %d MiB during the ping flood, want <= 50 MiB", grow>>20)
	}
	abCheckBystander(t, g, ds, perr)
	abAlive(t, g)
}

// TestAbuseSmuggling: malformed and ambiguous requests on HTTP/1.1 and HTTP/2 are refused before
// any tenant sees them; an absolute-form target goes to the tenant it names or nowhere.
func TestAbuseSmuggling(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gatewayOptions{})
	recs := map[string]*abRecorder{}
	for _, name := range []string{"one", "two", "three"} {
		rec, url := abNewRecorder(t, name)
		recs[name] = rec
		domain := name + ".example.test"
		g.startAgent(domain, g.register(domain), url)
	}
	stop := abNewBystander(t, g).probe()
	defer func() {
		ds, err := stop()
		abCheckBystander(t, g, ds, err)
	}()
	// reachedBy lists the tenants whose target saw a request with marker in its URI.
	reachedBy := func(marker string) []string {
		var out []string
		for _, name := range []string{"one", "two", "three"} {
			for _, h := range recs[name].with(marker) {
				out = append(out, fmt.Sprintf("%s (Host %q, %s)", name, h.Host, h.URI))
			}
		}
		return out
	}
	const host = "Host: one.example.test\r\n"

	refused := []struct{ name, raw string }{
		{"Content-Length with Transfer-Encoding", "POST /sm/cl-te HTTP/1.1\r\n" + host + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{"Transfer-Encoding with Content-Length", "POST /sm/te-cl HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"},
		{"duplicate Content-Length", "POST /sm/dup-cl HTTP/1.1\r\n" + host + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"},
		{"obs-fold on the first header line", "GET /sm/fold-first HTTP/1.1\r\n X-Fold: a\r\n" + host + "\r\n"},
		{"obs-fold inside Content-Length", "POST /sm/fold-cl HTTP/1.1\r\n" + host + "Content-Length: 1\r\n 0\r\n\r\n0123456789"},
		{"CR in a header value", "GET /sm/cr HTTP/1.1\r\n" + host + "X-Bad: a\rb\r\n\r\n"},
		{"NUL in a header value", "GET /sm/nul HTTP/1.1\r\n" + host + "X-Bad: a\x00b\r\n\r\n"},
		{"LF in a header value", "GET /sm/lf HTTP/1.1\r\n" + host + "X-Bad: a\nb\r\n\r\n"},
		{"LF smuggling a second Host", "GET /sm/lf-host HTTP/1.1\r\n" + host + "X-Bad: a\nHost: two.example.test\r\n\r\n"},
		{"two Host headers", "GET /sm/two-hosts HTTP/1.1\r\n" + host + "Host: two.example.test\r\n\r\n"},
		{"two equal Host headers", "GET /sm/same-hosts HTTP/1.1\r\n" + host + host + "\r\n"},
		{"unknown Transfer-Encoding", "POST /sm/te-unknown HTTP/1.1\r\n" + host + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"},
	}
	for _, tc := range refused {
		t.Run("h1/"+tc.name, func(t *testing.T) {
			marker := strings.Fields(tc.raw)[1]
			code, body, err := abRawH1(t, g, "one.example.test", tc.raw)
			if err != nil {
				t.Errorf("no response: %v", err)
			} else if code != http.StatusBadRequest && code != http.StatusNotImplemented {
				t.Errorf("%d %q, want 400", code, body)
			}
			if got := reachedBy(marker); len(got) > 0 {
				t.Errorf("a malformed request reached %v", got)
			}
		})
	}

	// RFC 9112 lets a server replace obs-fold by spaces instead of refusing it; either way the
	// target must never receive the fold itself.
	t.Run("h1/obs-fold continuing a header", func(t *testing.T) {
		code, body, err := abRawH1(t, g, "one.example.test", "GET /sm/fold HTTP/1.1\r\n"+host+"X-Fold: a\r\n b\r\n\r\n")
		if err != nil {
			t.Fatalf("no response: %v", err)
		}
		hits := recs["one"].with("/sm/fold")
		switch {
		case code == http.StatusBadRequest && len(hits) == 0:
			t.Log("obs-fold refused with 400")
		case code == http.StatusOK && len(hits) == 1 && hits[0].Header.Get("X-Fold") == "a b":
			t.Log(`obs-fold unfolded to "a b" (allowed by RFC 9112 section 5.2); the gateway does not refuse it`)
		default:
			t.Errorf("%d %q; target saw %+v, want 400 or the field unfolded to %q", code, body, hits, "a b")
		}
		if len(reachedBy("/sm/fold")) > len(hits) {
			t.Errorf("obs-fold request reached another tenant: %v", reachedBy("/sm/fold"))
		}
	})

	// An absolute-form target names the host itself. With SNI for one.example.test it must be
	// refused (421) or go to two.example.test, which it names; without SNI it may go to two. Never
	// to one (the Host header) or three.
	for _, sni := range []string{"one.example.test", ""} {
		t.Run(fmt.Sprintf("h1/absolute-form target, SNI %q", sni), func(t *testing.T) {
			marker := "/sm/abs-" + strings.Split(sni+"none", ".")[0]
			code, body, err := abRawH1(t, g, sni, "GET https://two.example.test"+marker+" HTTP/1.1\r\n"+host+"\r\n")
			if err != nil {
				t.Fatalf("no response: %v", err)
			}
			two := recs["two"].with(marker)
			t.Logf("%d %q; reached %v", code, body, reachedBy(marker))
			switch {
			case code == http.StatusOK && body == "target two" && len(two) == 1:
			case code == http.StatusMisdirectedRequest || code == http.StatusBadRequest:
			default:
				t.Errorf("%d %q, want 421/400 or two's answer", code, body)
			}
			if got := reachedBy(marker); len(got) != len(two) {
				t.Errorf("the absolute-form request reached %v", got)
			}
		})
	}

	h2cases := []struct {
		name string
		kv   []string
	}{
		{":path without a leading slash", []string{":method", "GET", ":scheme", "https", ":authority", "one.example.test", ":path", "x/sm/h2-noslash"}},
		{"empty :path", []string{":method", "GET", ":scheme", "https", ":authority", "one.example.test", ":path", ""}},
		{"CR LF in a header value", []string{":method", "GET", ":scheme", "https", ":authority", "one.example.test", ":path", "/sm/h2-crlf", "x-bad", "a\r\nhost: two.example.test"}},
		{"NUL in a header value", []string{":method", "GET", ":scheme", "https", ":authority", "one.example.test", ":path", "/sm/h2-nul", "x-bad", "a\x00b"}},
		{"connection-specific header", []string{":method", "GET", ":scheme", "https", ":authority", "one.example.test", ":path", "/sm/h2-conn", "transfer-encoding", "chunked"}},
		{"upper-case header name", []string{":method", "GET", ":scheme", "https", ":authority", "one.example.test", ":path", "/sm/h2-upper", "X-Bad", "a"}},
		{"pseudo-header after a regular one", []string{":method", "GET", ":scheme", "https", "x-a", "b", ":authority", "one.example.test", ":path", "/sm/h2-order"}},
	}
	for _, tc := range h2cases {
		t.Run("h2/"+tc.name, func(t *testing.T) {
			st := abH2Request(t, g, "one.example.test", tc.kv...)
			code, rst := st.Status[1], st.Rst[1]
			if code != "" && code != "400" {
				t.Errorf("answered %s, want 400, RST_STREAM or GOAWAY", code)
			}
			if code == "" && !abStreamEnded(st, 1) {
				t.Errorf("no answer at all")
			}
			t.Logf("status %q, RST_STREAM %v, GOAWAY %v (%v)", code, rst, st.GoAway, st.GoAwayCode)
		})
	}
	for _, marker := range []string{"/sm/h2-"} {
		if got := reachedBy(marker); len(got) > 0 {
			t.Errorf("a malformed HTTP/2 request reached %v", got)
		}
	}
	abAlive(t, g)
}

// TestAbuseTenantIsolation: no header a visitor sends makes a request for one tenant reach another
// tenant's agent, and the gateway's own name (admin, health) cannot be reached through a tenant's
// name, nor a tenant through the gateway's name.
func TestAbuseTenantIsolation(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gatewayOptions{})
	a, aURL := abNewRecorder(t, "a")
	b, bURL := abNewRecorder(t, "b")
	g.startAgent("a.example.test", g.register("a.example.test"), aURL)
	g.startAgent("b.example.test", g.register("b.example.test"), bURL)
	stop := abNewBystander(t, g).probe()
	defer func() {
		ds, err := stop()
		abCheckBystander(t, g, ds, err)
	}()
	_, port, _ := net.SplitHostPort(g.addr)
	clients := map[string]*http.Client{"h1": g.httpClient(false), "h2": g.httpClient(true)}
	do := func(t *testing.T, c *http.Client, url, host string, hdr http.Header) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Host = host
		for k, v := range hdr {
			req.Header[k] = v
		}
		res, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET %s (Host %q): %v", url, host, err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(body)
	}

	tricks := []struct {
		name string
		host string // Host / :authority; empty: the URL's
		hdr  http.Header
	}{
		{"X-Forwarded-Host", "", http.Header{"X-Forwarded-Host": {"b.example.test"}}},
		{"X-Forwarded-Host of the gateway", "", http.Header{"X-Forwarded-Host": {"localhost"}}},
		{"X-Original-URL", "", http.Header{"X-Original-Url": {"https://b.example.test/iso"}}},
		{"X-Rewrite-URL", "", http.Header{"X-Rewrite-Url": {"https://b.example.test/iso"}}},
		{"X-Host", "", http.Header{"X-Host": {"b.example.test"}}},
		{"X-Forwarded-Server", "", http.Header{"X-Forwarded-Server": {"b.example.test"}}},
		{"X-HTTP-Host-Override", "", http.Header{"X-Http-Host-Override": {"b.example.test"}}},
		{"Forwarded host", "", http.Header{"Forwarded": {"host=b.example.test;proto=https"}}},
		{"upper-case Host", "A.EXAMPLE.TEST", nil},
		{"Host with a trailing dot", "a.example.test.", nil},
		{"Host with the port", "a.example.test:" + port, nil},
		{"Host with another port", "a.example.test:8443", nil},
	}
	for _, tc := range tricks {
		for _, proto := range []string{"h1", "h2"} {
			t.Run(proto+"/"+tc.name, func(t *testing.T) {
				marker := fmt.Sprintf("/iso/%s/%s", proto, strings.ReplaceAll(tc.name, " ", "-"))
				code, body := do(t, clients[proto], g.url("a.example.test", marker), tc.host, tc.hdr)
				if code != http.StatusOK || body != "target a" {
					t.Errorf("%d %q, want a's answer", code, body)
				}
				if hits := b.with(marker); len(hits) > 0 {
					t.Fatalf("a request for a.example.test reached b's target: %+v", hits)
				}
				hits := a.with(marker)
				if len(hits) != 1 {
					t.Fatalf("a's target saw the request %d times", len(hits))
				}
				// The visitor's forwarding headers are not trusted: the target sees the gateway's own.
				for _, h := range []string{"X-Forwarded-Host", "Forwarded"} {
					for _, v := range hits[0].Header.Values(h) {
						if strings.Contains(strings.ToLower(v), "b.example.test") || strings.Contains(v, "localhost") {
							t.Errorf("a's target got the visitor's %s: %q", h, v)
						}
					}
				}
			})
		}
	}

	// The gateway's own name with a tenant's name in the path, a forwarding header or an
	// absolute-form target never reaches a tenant.
	gatewayTricks := []struct {
		name string
		path string
		hdr  http.Header
	}{
		{"tenant as path prefix", "/a.example.test/iso/gw-prefix", nil},
		{"tenant as double-slash path", "//a.example.test/iso/gw-dslash", nil},
		{"X-Forwarded-Host of a tenant", "/iso/gw-xfh", http.Header{"X-Forwarded-Host": {"a.example.test"}}},
		{"Forwarded host of a tenant", "/iso/gw-fwd", http.Header{"Forwarded": {"host=a.example.test"}}},
	}
	for _, tc := range gatewayTricks {
		for _, proto := range []string{"h1", "h2"} {
			t.Run(proto+"/gateway/"+tc.name, func(t *testing.T) {
				code, body := do(t, clients[proto], g.url("localhost", tc.path), "", tc.hdr)
				if code != http.StatusNotFound {
					t.Errorf("GET %s on the gateway's name: %d %q, want 404", tc.path, code, body)
				}
			})
		}
	}
	t.Run("h1/gateway/absolute-form target of a tenant", func(t *testing.T) {
		code, body, err := abRawH1(t, g, "localhost", "GET https://a.example.test/iso/gw-abs HTTP/1.1\r\nHost: localhost\r\n\r\n")
		if err != nil {
			t.Fatal(err)
		}
		if code != http.StatusMisdirectedRequest && code != http.StatusBadRequest {
			t.Errorf("%d %q, want 421 (connection opened for the gateway's name)", code, body)
		}
	})

	// Admin is reachable only as the gateway's name, and then only with the key.
	isAdmin := func(code int, body string) bool {
		return code == http.StatusOK && (strings.Contains(body, "b.example.test") || strings.Contains(body, `"success"`))
	}
	adminRaw := []struct{ name, sni, raw string }{
		{"absolute-form admin URL on a tenant's connection", "a.example.test",
			"GET https://localhost/api/v1/admin/domains HTTP/1.1\r\nHost: a.example.test\r\n\r\n"},
		{"absolute-form admin URL without SNI", "",
			"GET https://localhost/api/v1/admin/domains HTTP/1.1\r\nHost: a.example.test\r\n\r\n"},
		{"Host of the gateway on a tenant's connection", "a.example.test",
			"GET /api/v1/admin/domains HTTP/1.1\r\nHost: localhost\r\n\r\n"},
		{"tenant URL with the gateway as X-Forwarded-Host", "a.example.test",
			"GET https://a.example.test/api/v1/admin/domains HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-Host: localhost\r\n\r\n"},
	}
	for _, tc := range adminRaw {
		t.Run("h1/admin/"+tc.name, func(t *testing.T) {
			code, body, err := abRawH1(t, g, tc.sni, tc.raw)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d %.80q", code, body)
			if isAdmin(code, body) {
				t.Fatalf("admin API answered without a key: %d %q", code, body)
			}
			if code == http.StatusOK && body != "target a" {
				t.Errorf("200 %q from neither a's target nor an error", body)
			}
		})
	}
	t.Run("h2/admin/:authority of the gateway on a tenant's connection", func(t *testing.T) {
		st := abH2Request(t, g, "a.example.test", ":method", "GET", ":scheme", "https", ":authority", "localhost", ":path", "/api/v1/admin/domains")
		if s := st.Status[1]; s != "421" {
			t.Errorf("status %q (RST %v), want 421", s, st.Rst)
		}
	})
	t.Run("h2/admin/host header of the gateway beside a tenant's :authority", func(t *testing.T) {
		st := abH2Request(t, g, "a.example.test", ":method", "GET", ":scheme", "https", ":authority", "a.example.test", ":path", "/iso/h2-host-hdr", "host", "localhost")
		s := st.Status[1]
		if s != "200" && s != "400" && s != "421" && !abStreamEnded(st, 1) {
			t.Errorf("status %q, want a's answer or a refusal", s)
		}
		hits := a.with("/iso/h2-host-hdr")
		if s == "200" && len(hits) != 1 {
			t.Fatalf("200 but a's target saw the request %d times", len(hits))
		}
		for _, h := range hits {
			if h.Host != "a.example.test" {
				t.Errorf("a's target saw Host %q, want the :authority a.example.test", h.Host)
			}
		}
		t.Logf("status %q, RST %v, a's target saw %+v", s, st.Rst, hits)
	})
	if hits := b.with("/"); len(hits) > 0 {
		t.Errorf("b's target was reached: %+v", hits)
	}
	for _, hit := range a.with("gw-") {
		t.Errorf("a request on the gateway's name reached a's target: %+v", hit)
	}
	abAlive(t, g)
}
