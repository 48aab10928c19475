package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newH1 is the client the proxy builds for srv's address.
func newH1(srv *httptest.Server) *h1Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &h1Client{dial: d.DialContext, addr: srv.Listener.Addr().String(), maxIdle: 4, idleTimeout: time.Minute, now: time.Now}
}

// countConns counts the connections srv accepted.
func countConns(srv *httptest.Server) *atomic.Int64 {
	var n atomic.Int64
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			n.Add(1)
		}
	}
	return &n
}

func get(t *testing.T, h *h1Client, url string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, url, http.NoBody)
	res, err := h.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res, string(b)
}

// TestH1ReusesConnections: sequential requests, whole bodies read, go over one connection, with
// Content-Length and chunked answers alike.
func TestH1ReusesConnections(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/chunked" {
			_, _ = io.WriteString(w, "part one, ")
			w.(http.Flusher).Flush()
		}
		_, _ = io.WriteString(w, "hello "+r.URL.RequestURI())
	}))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()
	h := newH1(srv)
	defer h.Close()
	for i := range 20 {
		path := "/small?i=1"
		if i%2 == 1 {
			path = "/chunked"
		}
		res, body := get(t, h, srv.URL+path)
		if res.StatusCode != http.StatusOK || !strings.HasSuffix(body, "hello "+path) {
			t.Fatalf("%s: %d %q", path, res.StatusCode, body)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("20 requests used %d connections, want 1", n)
	}
}

// TestH1RetriesAfterIdleClose: the target closed the kept-alive connection while it was idle; the
// next GET goes over a new one instead of failing.
func TestH1RetriesAfterIdleClose(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()
	h := newH1(srv)
	defer h.Close()
	get(t, h, srv.URL+"/")
	srv.CloseClientConnections()
	time.Sleep(50 * time.Millisecond) // the FIN reaches the idle connection
	for range 3 {
		if res, body := get(t, h, srv.URL+"/"); res.StatusCode != http.StatusOK || body != "ok" {
			t.Fatalf("after the target closed the idle connection: %d %q", res.StatusCode, body)
		}
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}

// TestH1ConnectionReuseRules: "Connection: close" answers are not reused; answers without a body
// (HEAD, 204, 304) are, as soon as their head is read.
func TestH1ConnectionReuseRules(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/close":
			w.Header().Set("Connection", "close")
		case "/204":
			w.WriteHeader(http.StatusNoContent)
			return
		case "/304":
			w.WriteHeader(http.StatusNotModified)
			return
		}
		_, _ = io.WriteString(w, "body")
	}))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()
	h := newH1(srv)
	defer h.Close()
	for _, p := range []string{"/204", "/304", "/204"} {
		if res, _ := get(t, h, srv.URL+p); res.StatusCode != map[string]int{"/204": 204, "/304": 304}[p] {
			t.Fatalf("%s: %d", p, res.StatusCode)
		}
	}
	req, _ := http.NewRequest(http.MethodHead, srv.URL+"/", http.NoBody)
	res, err := h.RoundTrip(req)
	if err != nil || res.StatusCode != http.StatusOK || res.ContentLength != 4 {
		t.Fatalf("HEAD: %v %v", res, err)
	}
	res.Body.Close()
	if n := conns.Load(); n != 1 {
		t.Fatalf("answers without a body used %d connections, want 1", n)
	}
	// The first goes over the kept connection and ends it, the second needs its own, and so does
	// the request after it.
	get(t, h, srv.URL+"/close")
	get(t, h, srv.URL+"/close")
	get(t, h, srv.URL+"/")
	if n := conns.Load(); n != 3 {
		t.Fatalf("two Connection: close answers and a request after them used %d connections, want 3", n)
	}
}

// TestH1Informational: a 103 Early Hints reaches the request's trace before the final answer.
func TestH1Informational(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		_, _ = io.WriteString(w, "final")
	}))
	defer srv.Close()
	h := newH1(srv)
	defer h.Close()
	var hints []string
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{Got1xxResponse: func(code int, hdr textproto.MIMEHeader) error {
		hints = append(hints, fmt.Sprint(code, " ", hdr.Get("Link")))
		return nil
	}})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/", http.NoBody)
	res, err := h.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || string(b) != "final" || len(hints) != 1 || hints[0] != "103 </style.css>; rel=preload" {
		t.Fatalf("answer %d %q, hints %q", res.StatusCode, b, hints)
	}
}

// TestH1Cancel: a cancelled request stops waiting for the head and for the body at once, and its
// connection is not reused; closing a body before its end does not wait for the rest.
func TestH1Cancel(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/stall":
			select {
			case <-release:
			case <-r.Context().Done():
			}
		case "/endless":
			for {
				if _, err := w.Write(make([]byte, 4096)); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-release:
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
		default:
			_, _ = io.WriteString(w, "ok")
		}
	}))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()
	defer close(release)
	h := newH1(srv)
	defer h.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/stall", http.NoBody)
	t0 := time.Now()
	if _, err := h.RoundTrip(req); !errors.Is(err, context.DeadlineExceeded) || time.Since(t0) > 2*time.Second {
		t.Fatalf("stalled head: %v after %s", err, time.Since(t0))
	}

	ctx2, cancel2 := context.WithCancel(context.Background())
	req, _ = http.NewRequestWithContext(ctx2, http.MethodGet, srv.URL+"/endless", http.NoBody)
	res, err := h.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(res.Body, make([]byte, 10000)); err != nil {
		t.Fatal(err)
	}
	cancel2()
	t0 = time.Now()
	if _, err := io.Copy(io.Discard, res.Body); err == nil || time.Since(t0) > 2*time.Second {
		t.Fatalf("endless body after cancel: %v after %s", err, time.Since(t0))
	}
	res.Body.Close()

	req, _ = http.NewRequest(http.MethodGet, srv.URL+"/endless", http.NoBody)
	if res, err = h.RoundTrip(req); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(res.Body, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	res.Body.Close()
	if time.Since(t0) > time.Second {
		t.Fatalf("closing an endless body took %s", time.Since(t0))
	}
	before := conns.Load()
	if res, body := get(t, h, srv.URL+"/"); res.StatusCode != http.StatusOK || body != "ok" {
		t.Fatalf("after the cancelled ones: %d %q", res.StatusCode, body)
	}
	if conns.Load() != before+1 {
		t.Fatal("a connection of a cancelled or unfinished answer was reused")
	}
}

// TestH1IdleBounds: at most maxIdle connections are kept, and one idle past idleTimeout is closed
// rather than used.
func TestH1IdleBounds(t *testing.T) {
	var inflight sync.WaitGroup
	gate := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/wait" {
			inflight.Done()
			<-gate
		}
		_, _ = io.WriteString(w, "ok")
	}))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()
	h := newH1(srv)
	defer h.Close()
	now := time.Now()
	var mu sync.Mutex
	h.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }

	inflight.Add(6)
	var done sync.WaitGroup
	for range 6 {
		done.Go(func() { get(t, h, srv.URL+"/wait") })
	}
	inflight.Wait()
	close(gate)
	done.Wait()
	h.mu.Lock()
	idle := len(h.idle)
	h.mu.Unlock()
	if idle != 4 || conns.Load() != 6 {
		t.Fatalf("%d idle of %d connections, want 4 of 6", idle, conns.Load())
	}
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	get(t, h, srv.URL+"/")
	h.mu.Lock()
	idle = len(h.idle)
	h.mu.Unlock()
	if conns.Load() != 7 || idle != 1 {
		t.Fatalf("after the idle timeout: %d connections, %d idle; want a new one and the stale ones closed", conns.Load(), idle)
	}
}
