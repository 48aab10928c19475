package inspect

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Every test here either runs synchronously or cleans up its servers; a leftover goroutine means
// the inspector (or Replay) left one behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const dom = "app.example.com"

// fakeClock advances by step on every call, so that Duration is an exact, non-zero value.
type fakeClock struct {
	base time.Time
	step time.Duration
	n    atomic.Int64
}

func (c *fakeClock) Now() time.Time { return c.base.Add(time.Duration(c.n.Add(1)-1) * c.step) }

func serve(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func onlyEntry(t *testing.T, i *Inspector, domain string) Entry {
	t.Helper()
	es := i.Entries(domain)
	if len(es) != 1 {
		t.Fatalf("Entries(%q): %d entries, want 1", domain, len(es))
	}
	return es[0]
}

func okHandler(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }

// nopWriter is a ResponseWriter that does not allocate, so AllocsPerRun measures only Wrap.
type nopWriter struct{ h http.Header }

func (w *nopWriter) Header() http.Header         { return w.h }
func (w *nopWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *nopWriter) WriteHeader(int)             {}

// TestOffPathPassesThroughUntouched: for a domain that is not enabled, the inner handler gets the
// caller's own ResponseWriter and Request, so Flusher/Hijacker and identity checks keep working.
func TestOffPathPassesThroughUntouched(t *testing.T) {
	i := New(Options{})
	i.Enable("other.example.com", true)
	w, r := httptest.NewRecorder(), httptest.NewRequest("POST", "http://"+dom+"/x", strings.NewReader("body"))
	var gotW http.ResponseWriter
	var gotR *http.Request
	i.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { gotW, gotR = w, r })).ServeHTTP(w, r)
	if gotW != http.ResponseWriter(w) || gotR != r {
		t.Fatalf("inner handler got %T/%p, want the caller's %T/%p", gotW, gotR, w, r)
	}
	if len(i.Entries("other.example.com")) != 0 || i.Entries(dom) != nil {
		t.Fatal("a request of a non-enabled domain was recorded")
	}
}

// TestOffPathAllocatesNothing: the off path runs for every request of every tenant, so it must not
// allocate, whatever else is enabled (exact and wildcard tables, ports, IPv6 literals).
func TestOffPathAllocatesNothing(t *testing.T) {
	cases := []struct {
		name, host string
		enable     []string
	}{
		{"nothing enabled", dom, nil},
		{"other domain enabled", dom, []string{"other.example.com"}},
		{"wildcard of another base", "x." + dom + ":8443", []string{"other.example.com", "*.other.example.com"}},
		{"ipv6 literal", "[::1]:8080", []string{"*.other.example.com"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			i := New(Options{})
			for _, d := range c.enable {
				i.Enable(d, true)
			}
			inner := http.HandlerFunc(okHandler)
			wrapped := i.Wrap(inner)
			w := &nopWriter{h: http.Header{}}
			r := httptest.NewRequest("GET", "http://placeholder/", nil)
			r.Host = c.host
			base := testing.AllocsPerRun(200, func() { inner.ServeHTTP(w, r) })
			got := testing.AllocsPerRun(200, func() { wrapped.ServeHTTP(w, r) })
			if got != base {
				t.Fatalf("Wrap costs %v allocs per request on the off path, want 0 extra (inner alone: %v)", got-base, base)
			}
			// The same measurement on an enabled host must see Wrap's work, or the check above is vacuous.
			i.Enable(hostOf(c.host), false)
			if on := testing.AllocsPerRun(20, func() { wrapped.ServeHTTP(w, r) }); on <= base {
				t.Fatalf("recording path measured %v allocs, no more than the inner handler's %v", on, base)
			}
		})
	}
}

// TestRecordsExchange checks every field of an entry against what the client sent and got, and
// that the recorded request headers are those of the client, not the inner handler's additions.
func TestRecordsExchange(t *testing.T) {
	clk := &fakeClock{base: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), step: 7 * time.Millisecond}
	i := New(Options{Now: clk.Now})
	i.Enable("App.Example.com.", true)
	r := httptest.NewRequest("POST", "http://APP.example.COM:8443/p/a%20th?x=1&y=2", strings.NewReader("hello"))
	r.Header.Set("X-Client", "c1")
	var innerBody []byte
	h := i.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		innerBody, _ = io.ReadAll(r.Body)
		r.Header.Set("X-Forwarded-For", "10.0.0.1") // what a proxy does; not what the client sent
		w.Header().Set("X-Resp", "r1")
		w.WriteHeader(http.StatusCreated)
		w.Header().Set("X-Late", "not on the wire")
		_, _ = io.WriteString(w, "world!")
	}))
	resp := serve(h, r)
	if resp.Code != http.StatusCreated || resp.Body.String() != "world!" || string(innerBody) != "hello" {
		t.Fatalf("exchange changed: code %d body %q inner saw %q", resp.Code, resp.Body, innerBody)
	}
	e := onlyEntry(t, i, dom)
	want := Entry{
		Domain: dom, Host: dom, Time: clk.base, Duration: 7 * time.Millisecond,
		Method: "POST", Path: "/p/a%20th", Query: "x=1&y=2", Proto: "HTTP/1.1", RemoteAddr: "192.0.2.1:1234",
		Status: http.StatusCreated, RequestSize: 5, ResponseSize: 6,
	}
	got := e
	got.ID, got.RequestHeader, got.ResponseHeader, got.RequestBody, got.ResponseBody = "", nil, nil, nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("entry\n got %+v\nwant %+v", got, want)
	}
	if len(e.ID) != 16 || string(e.RequestBody) != "hello" || string(e.ResponseBody) != "world!" {
		t.Errorf("id %q, bodies %q / %q", e.ID, e.RequestBody, e.ResponseBody)
	}
	if e.RequestHeader.Get("X-Client") != "c1" || e.RequestHeader.Get("X-Forwarded-For") != "" {
		t.Errorf("request header %v: want the client's X-Client and no X-Forwarded-For", e.RequestHeader)
	}
	if e.ResponseHeader.Get("X-Resp") != "r1" || e.ResponseHeader.Get("X-Late") != "" {
		t.Errorf("response header %v: want the headers as committed with the status", e.ResponseHeader)
	}
	if got, ok := i.Entry(dom, e.ID); !ok || got.ID != e.ID {
		t.Errorf("Entry(%q) = %v, %v", e.ID, got.ID, ok)
	}
}

// TestHostMatching: hosts are matched without port, case or trailing dot, and a wildcard covers
// exactly one label, as a TLS wildcard does; an exact domain wins over a wildcard.
func TestHostMatching(t *testing.T) {
	i := New(Options{})
	i.Enable(dom, false)
	i.Enable("*.Apps.Example.com", false)
	i.Enable("b.apps.example.com", false)
	i.Enable("::1", false)
	cases := []struct{ host, domain string }{
		{"app.example.com", dom},
		{"APP.Example.com:443", dom},
		{"app.example.com.", dom},
		{"a.apps.example.com", "*.apps.example.com"},
		{"A.APPS.example.com:80", "*.apps.example.com"},
		{"b.apps.example.com", "b.apps.example.com"},
		{"[::1]:8080", "::1"},
		{"apps.example.com", ""},
		{"x.a.apps.example.com", ""},
		{"example.com", ""},
		{"xapp.example.com", ""},
	}
	for _, c := range cases {
		before := map[string]int{}
		for _, d := range i.Enabled() {
			before[d] = len(i.Entries(d))
		}
		r := httptest.NewRequest("GET", "/", nil)
		r.Host = c.host
		serve(i.Wrap(http.HandlerFunc(okHandler)), r)
		for _, d := range i.Enabled() {
			grew := len(i.Entries(d)) - before[d]
			if want := map[bool]int{true: 1, false: 0}[d == c.domain]; grew != want {
				t.Errorf("host %q: %d new entries under %q, want %d", c.host, grew, d, want)
			}
		}
		if c.domain != "" {
			es := i.Entries(c.domain)
			if e := es[len(es)-1]; e.Domain != c.domain || e.Host != hostOf(c.host) {
				t.Errorf("host %q: entry domain %q host %q", c.host, e.Domain, e.Host)
			}
		}
	}
	if on, _ := i.State("*.APPS.example.com"); !on {
		t.Error("State of the wildcard is off")
	}
}

// TestDisableForgets: turning inspection off drops the recorded entries, and enabling again starts
// empty; changing only the bodies flag keeps them.
func TestDisableForgets(t *testing.T) {
	i := New(Options{})
	i.Enable(dom, false)
	h := i.Wrap(http.HandlerFunc(okHandler))
	serve(h, httptest.NewRequest("GET", "http://"+dom+"/1", nil))
	i.Enable(dom, true) // toggles bodies only
	if on, bodies := i.State(dom); !on || !bodies || len(i.Entries(dom)) != 1 {
		t.Fatalf("after toggling bodies: on=%v bodies=%v entries=%d, want true true 1", on, bodies, len(i.Entries(dom)))
	}
	i.Enable("*.apps.example.com", false)
	i.Disable(dom)
	i.Disable("*.APPS.example.com")
	if on, _ := i.State(dom); on || i.Entries(dom) != nil || len(i.Enabled()) != 0 {
		t.Fatalf("after Disable: on=%v entries=%v enabled=%v", on, i.Entries(dom), i.Enabled())
	}
	r := httptest.NewRequest("GET", "/", nil)
	r.Host = "a.apps.example.com"
	serve(h, r) // the wildcard table must be gone too, or this would panic on a nil ring or record
	i.Enable(dom, false)
	if n := len(i.Entries(dom)); n != 0 {
		t.Fatalf("re-enabled domain starts with %d entries, want 0", n)
	}
}

// TestDisableDuringRequestDropsEntry: a request in flight while the domain is switched off (and on
// again) must not land in the new ring: the tenant asked for that traffic to be gone.
func TestDisableDuringRequestDropsEntry(t *testing.T) {
	i := New(Options{})
	i.Enable(dom, false)
	h := i.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i.Disable(dom)
		i.Enable(dom, false)
		w.WriteHeader(http.StatusOK)
	}))
	feed, unsub := i.Subscribe(dom)
	defer unsub()
	serve(h, httptest.NewRequest("GET", "http://"+dom+"/", nil))
	if n := len(i.Entries(dom)); n != 0 {
		t.Fatalf("%d entries after the domain was reset mid-request, want 0", n)
	}
	if n := len(feed); n != 0 {
		t.Fatalf("the dropped entry was still published (%d on the feed)", n)
	}
}

// TestRingDefaultCapacity: without options a domain keeps DefaultCapacity entries, the newest.
func TestRingDefaultCapacity(t *testing.T) {
	if DefaultCapacity != 100 {
		t.Fatalf("DefaultCapacity = %d; the README promises 100", DefaultCapacity)
	}
	i := New(Options{})
	i.Enable(dom, false)
	h := i.Wrap(http.HandlerFunc(okHandler))
	for k := range DefaultCapacity + 50 {
		serve(h, httptest.NewRequest("GET", fmt.Sprintf("http://%s/%d", dom, k), nil))
	}
	es := i.Entries(dom)
	if len(es) != DefaultCapacity {
		t.Fatalf("%d entries, want %d", len(es), DefaultCapacity)
	}
	if es[0].Path != "/50" || es[len(es)-1].Path != fmt.Sprintf("/%d", DefaultCapacity+49) {
		t.Fatalf("kept %s..%s, want /50../%d", es[0].Path, es[len(es)-1].Path, DefaultCapacity+49)
	}
}

func ringOf(i *Inspector, domain string) *ring { return i.table.Load().exact[domain].ring }

// TestRingMemoryCap: with bodies on, the byte budget and not the count bounds what a domain holds.
func TestRingMemoryCap(t *testing.T) {
	const maxBytes = 300 << 10
	i := New(Options{MaxBytes: maxBytes})
	i.Enable(dom, true)
	big := bytes.Repeat([]byte("b"), 100<<10)
	h := i.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = w.Write(big)
	}))
	for k := range 10 {
		serve(h, httptest.NewRequest("POST", fmt.Sprintf("http://%s/%d", dom, k), bytes.NewReader(big)))
	}
	n, b := ringOf(i, dom).usage()
	// Each entry holds 2×64 KiB of bodies: two fit in 300 KiB, three do not.
	if n != 2 || b > maxBytes || b < 2*2*DefaultBodyLimit {
		t.Fatalf("ring holds %d entries, %d bytes; want 2 entries within %d bytes", n, b, maxBytes)
	}
	if es := i.Entries(dom); es[0].Path != "/8" || es[1].Path != "/9" {
		t.Fatalf("kept %s, %s; want the newest /8, /9", es[0].Path, es[1].Path)
	}
}

// TestRingOversizedEntryKeepsOthers: an entry bigger than the whole budget is not kept at all, and
// the entries already there are not evicted to make room it then does not use.
func TestRingOversizedEntryKeepsOthers(t *testing.T) {
	r := newRing(10, 4096)
	for _, id := range []string{"a", "b"} {
		r.push(&Entry{ID: id})
	}
	r.push(&Entry{ID: "huge", ResponseBody: make([]byte, 8192)})
	n, b := r.usage()
	if _, ok := r.get("huge"); ok {
		t.Fatal("an entry over the whole budget was kept")
	}
	if n != 2 || b != 2*(&Entry{ID: "a"}).size() {
		t.Fatalf("after an oversized entry: %d entries, %d bytes; want the 2 small ones", n, b)
	}
}

// TestBodyCapture: off keeps no bodies but counts them; on keeps the first BodyLimit bytes and
// flags the cut; either way the handler and the client see every byte.
func TestBodyCapture(t *testing.T) {
	payload := make([]byte, 100<<10)
	for k := range payload {
		payload[k] = byte(k * 7)
	}
	cases := []struct {
		name      string
		bodies    bool
		size      int
		wantKept  int
		truncated bool
	}{
		{"off", false, 10, 0, true},
		{"on small", true, 10, 10, false},
		{"on exactly the limit", true, DefaultBodyLimit, DefaultBodyLimit, false},
		{"on over the limit", true, len(payload), DefaultBodyLimit, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			i := New(Options{})
			i.Enable(dom, c.bodies)
			body := payload[:c.size]
			var seen []byte
			h := i.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen, _ = io.ReadAll(r.Body)
				_, _ = w.Write(seen[:len(seen)/2])
				_, _ = w.Write(seen[len(seen)/2:])
			}))
			resp := serve(h, httptest.NewRequest("POST", "http://"+dom+"/", bytes.NewReader(body)))
			if !bytes.Equal(seen, body) || !bytes.Equal(resp.Body.Bytes(), body) {
				t.Fatalf("handler saw %d bytes, client got %d, want %d byte-exact", len(seen), resp.Body.Len(), len(body))
			}
			e := onlyEntry(t, i, dom)
			if e.RequestSize != int64(c.size) || e.ResponseSize != int64(c.size) {
				t.Errorf("sizes %d/%d, want %d", e.RequestSize, e.ResponseSize, c.size)
			}
			if !bytes.Equal(e.RequestBody, body[:c.wantKept]) || !bytes.Equal(e.ResponseBody, body[:c.wantKept]) {
				t.Errorf("kept %d/%d bytes, want the first %d", len(e.RequestBody), len(e.ResponseBody), c.wantKept)
			}
			if c.wantKept == 0 && (e.RequestBody != nil || e.ResponseBody != nil) {
				t.Errorf("bodies off but non-nil bodies stored")
			}
			if e.RequestTruncated != c.truncated || e.ResponseTruncated != c.truncated {
				t.Errorf("truncated %v/%v, want %v", e.RequestTruncated, e.ResponseTruncated, c.truncated)
			}
		})
	}
}

// TestUnreadBodyIsNotComplete: a handler that reads only part of a body leaves a capture that is
// not known to be the whole request, so Replay must not resend it as if it were.
func TestUnreadBodyIsNotComplete(t *testing.T) {
	i := New(Options{})
	i.Enable(dom, true)
	h := i.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadFull(r.Body, make([]byte, 3))
	}))
	serve(h, httptest.NewRequest("POST", "http://"+dom+"/", strings.NewReader("0123456789")))
	e := onlyEntry(t, i, dom)
	if !e.RequestTruncated || string(e.RequestBody) != "012" || e.RequestSize != 3 {
		t.Fatalf("truncated=%v body=%q size=%d, want true \"012\" 3", e.RequestTruncated, e.RequestBody, e.RequestSize)
	}
}

// TestBodiesStream: neither direction is buffered. The client sends the second half of its body
// only after the handler has read the first; the handler writes its second part only after the
// client has read the first. Any buffering in Wrap deadlocks this, caught by the timeouts.
func TestBodiesStream(t *testing.T) {
	i := New(Options{})
	i.Enable(dom, true)
	gotFirstReq, gotFirstResp := make(chan struct{}), make(chan struct{})
	wait := func(c chan struct{}) bool {
		select {
		case <-c:
			return true
		case <-time.After(5 * time.Second):
			return false
		}
	}
	srv := httptest.NewServer(i.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 5)
		if _, err := io.ReadFull(r.Body, buf); err != nil || string(buf) != "part1" {
			t.Errorf("first read %q, %v", buf, err)
			return
		}
		close(gotFirstReq)
		rest, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, "chunk1:"+string(rest))
		w.(http.Flusher).Flush()
		if !wait(gotFirstResp) {
			t.Error("the client never got the flushed first chunk")
		}
		_, _ = io.WriteString(w, "chunk2")
	})))
	defer srv.Close()
	pr, pw := io.Pipe()
	go func() {
		_, _ = io.WriteString(pw, "part1")
		if !wait(gotFirstReq) {
			t.Error("the handler never got the first part of the body")
		}
		_, _ = io.WriteString(pw, "part2")
		_ = pw.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/", pr)
	req.Host = dom
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, len("chunk1:part2"))
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "chunk1:part2" {
		t.Fatalf("first chunk %q, %v", first, err)
	}
	close(gotFirstResp)
	rest, _ := io.ReadAll(resp.Body)
	if string(rest) != "chunk2" {
		t.Fatalf("second chunk %q", rest)
	}
	srv.Close() // waits for the handler, so the entry is stored
	e := onlyEntry(t, i, dom)
	if string(e.RequestBody) != "part1part2" || string(e.ResponseBody) != "chunk1:part2chunk2" || e.RequestTruncated {
		t.Fatalf("entry bodies %q / %q truncated=%v", e.RequestBody, e.ResponseBody, e.RequestTruncated)
	}
}

// TestStatusEdgeCases: interim 1xx responses are not the status; a handler that writes nothing is
// shown as 499; a panicking handler (http.ErrAbortHandler) still leaves an entry and re-panics.
func TestStatusEdgeCases(t *testing.T) {
	cases := []struct {
		name    string
		handler http.HandlerFunc
		want    int
	}{
		{"early hints then 200", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusEarlyHints)
			w.WriteHeader(http.StatusOK)
		}, 200},
		{"flush only", func(w http.ResponseWriter, _ *http.Request) { w.(http.Flusher).Flush() }, 200},
		{"nothing written", func(http.ResponseWriter, *http.Request) {}, 499},
		{"abort", func(w http.ResponseWriter, _ *http.Request) { panic(http.ErrAbortHandler) }, 499},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			i := New(Options{})
			i.Enable(dom, false)
			var rec any
			func() {
				defer func() { rec = recover() }()
				serve(i.Wrap(c.handler), httptest.NewRequest("GET", "http://"+dom+"/", nil))
			}()
			if (rec != nil) != (c.name == "abort") {
				t.Fatalf("recovered %v", rec)
			}
			if e := onlyEntry(t, i, dom); e.Status != c.want {
				t.Fatalf("status %d, want %d", e.Status, c.want)
			}
		})
	}
}

// TestHijackRecords101: a WebSocket-style upgrade that hijacks the connection works through Wrap
// (Hijacker reaches the real connection) and the entry says 101.
func TestHijackRecords101(t *testing.T) {
	i := New(Options{})
	i.Enable(dom, false)
	entries, unsub := i.Subscribe(dom)
	defer unsub()
	srv := httptest.NewServer(i.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer c.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		line, _ := brw.ReadString('\n')
		_, _ = brw.WriteString("echo " + line)
		_ = brw.Flush()
	})))
	defer srv.Close()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: "+dom+"\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade response %v, %v", resp, err)
	}
	_, _ = io.WriteString(c, "ping\n")
	if line, err := br.ReadString('\n'); err != nil || line != "echo ping\n" {
		t.Fatalf("over the hijacked connection: %q, %v", line, err)
	}
	select {
	case e := <-entries:
		if e.Status != http.StatusSwitchingProtocols || e.Path != "/ws" {
			t.Fatalf("entry status %d path %q, want 101 /ws", e.Status, e.Path)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no entry for the hijacked request")
	}
}

// TestSubscribe: a subscriber gets each new entry (redacted, same ID as stored); one that never
// reads costs the request path nothing; unsubscribing closes the feed, is idempotent and leaves no
// state behind.
func TestSubscribe(t *testing.T) {
	defer goleak.VerifyNone(t)
	i := New(Options{})
	i.Enable(dom, false)
	h := i.Wrap(http.HandlerFunc(okHandler))
	live, unsubLive := i.Subscribe("APP.example.com")
	stuck, unsubStuck := i.Subscribe(dom)

	r := httptest.NewRequest("GET", "http://"+dom+"/first", nil)
	r.Header.Set("Authorization", "Bearer live-secret")
	serve(h, r)
	select {
	case e := <-live:
		if e.Path != "/first" || e.ID != i.Entries(dom)[0].ID || e.RequestHeader.Get("Authorization") != Redacted {
			t.Fatalf("published entry %+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("subscriber got nothing")
	}
	unsubLive()
	unsubLive() // second call must not panic on a closed channel
	if _, ok := <-live; ok {
		t.Fatal("feed still open after unsubscribe")
	}

	// On a goroutine so that a blocking publish fails the test instead of hanging it.
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for k := range 500 {
			serve(h, httptest.NewRequest("GET", fmt.Sprintf("http://%s/%d", dom, k), nil))
		}
	}()
	select {
	case <-finished:
	case <-time.After(5 * time.Second):
		t.Fatal("500 requests with a stuck subscriber did not finish within 5s")
	}
	if n := len(stuck); n != subscriberBuffer {
		t.Fatalf("stuck subscriber holds %d entries, want its buffer of %d", n, subscriberBuffer)
	}
	unsubStuck()
	i.subMu.RLock()
	left := len(i.subs)
	i.subMu.RUnlock()
	if left != 0 {
		t.Fatalf("%d domains still have subscribers", left)
	}
}

// TestSubscribeRace: unsubscribing while requests publish must not send on a closed channel.
func TestSubscribeRace(t *testing.T) {
	defer goleak.VerifyNone(t)
	i := New(Options{})
	i.Enable(dom, false)
	h := i.Wrap(http.HandlerFunc(okHandler))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 200 {
			serve(h, httptest.NewRequest("GET", "http://"+dom+"/", nil))
		}
	}()
	for range 50 {
		_, unsub := i.Subscribe(dom)
		unsub()
	}
	<-done
	if n := len(i.Entries(dom)); n != DefaultCapacity {
		t.Fatalf("%d entries, want %d", n, DefaultCapacity)
	}
}
