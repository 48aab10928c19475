package inspect

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// seen is what the agent side of a replay received.
type seen struct {
	Method, Path, Query, Host, RemoteAddr, Body string
	ContentLength                               int64
	Header                                      http.Header
}

// agent records the request it gets and answers with 202 and a fixed body. Replay runs it on its
// own goroutine, hence the lock.
type agent struct {
	mu   sync.Mutex
	last *seen
}

func (a *agent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	a.mu.Lock()
	a.last = &seen{r.Method, r.URL.Path, r.URL.RawQuery, r.Host, r.RemoteAddr, string(b), r.ContentLength, r.Header.Clone()}
	a.mu.Unlock()
	w.Header().Set("X-Agent", "yes")
	w.WriteHeader(http.StatusAccepted)
	_, _ = io.WriteString(w, "answer:"+string(b))
}

func (a *agent) got(t *testing.T) seen {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.last == nil {
		t.Fatal("the agent got no request")
	}
	return *a.last
}

// recordOriginal sends one credentialed POST through h and returns its entry.
func recordOriginal(t *testing.T, i *Inspector, h http.Handler) Entry {
	t.Helper()
	r := httptest.NewRequest("POST", "http://"+dom+"/orders?id=7&token=sekret-tok", strings.NewReader(`{"a":1}`))
	r.Header.Set("Authorization", "Bearer sekret-bearer")
	r.Header.Set("Cookie", "sid=sekret-sid")
	r.Header.Set("X-Keep", "kept")
	serve(h, r)
	es := i.Entries(dom)
	if len(es) == 0 {
		t.Fatal("original not recorded")
	}
	return es[len(es)-1]
}

// TestReplayResendsWithoutCredentials: a replay resends method, path, query, headers and body as
// recorded, minus the credentials that were never stored; through Wrap it is recorded as a replay
// of the original and Replay returns that very entry.
func TestReplayResendsWithoutCredentials(t *testing.T) {
	i := New(Options{})
	i.Enable(dom, true)
	a := &agent{}
	h := i.Wrap(a)
	orig := recordOriginal(t, i, h)

	res, err := i.Replay(context.Background(), h, "APP.example.com", orig, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := a.got(t)
	if s.Method != "POST" || s.Path != "/orders" || s.Query != "id=7" || s.Host != dom || s.RemoteAddr != "127.0.0.1:0" {
		t.Errorf("agent saw %s %s?%s host %s from %s", s.Method, s.Path, s.Query, s.Host, s.RemoteAddr)
	}
	if s.Body != `{"a":1}` || s.ContentLength != 7 {
		t.Errorf("agent saw body %q length %d", s.Body, s.ContentLength)
	}
	for _, k := range []string{"Authorization", "Cookie"} {
		if v, ok := s.Header[k]; ok {
			t.Errorf("credential header %s was replayed as %q", k, v)
		}
	}
	if s.Header.Get("X-Keep") != "kept" || s.Header.Get(ReplayHeader) != orig.ID {
		t.Errorf("agent headers %v", s.Header)
	}
	if res.ReplayOf != orig.ID || res.ID == orig.ID || res.Status != http.StatusAccepted || string(res.ResponseBody) != `answer:{"a":1}` {
		t.Errorf("result id %s replay_of %s status %d body %q", res.ID, res.ReplayOf, res.Status, res.ResponseBody)
	}
	stored, ok := i.Entry(dom, res.ID)
	if !ok || stored.ReplayOf != orig.ID || stored.Status != http.StatusAccepted {
		t.Fatalf("replay not stored as a replay of %s: %+v, %v", orig.ID, stored, ok)
	}
	if n := len(i.Entries(dom)); n != 2 {
		t.Fatalf("%d entries, want original and replay", n)
	}
}

// TestReplayWithEdit: an edit replaces method, path and query, headers (credentials typed in are
// sent, "[redacted]" copied from the entry is not) and body; the result still hides what was typed.
func TestReplayWithEdit(t *testing.T) {
	i := New(Options{})
	i.Enable(dom, true)
	a := &agent{}
	h := i.Wrap(a)
	orig := recordOriginal(t, i, h)
	body := "new body"
	edit := &Edit{
		Method: "PUT",
		Path:   "/v2/orders?x=1",
		Header: http.Header{"authorization": {"Bearer typed-in-secret"}, "Cookie": {Redacted}, "X-New": {"1"}, "Content-Length": {"999"}},
		Body:   &body,
	}
	res, err := i.Replay(context.Background(), h, dom, orig, edit)
	if err != nil {
		t.Fatal(err)
	}
	s := a.got(t)
	if s.Method != "PUT" || s.Path != "/v2/orders" || s.Query != "x=1" || s.Body != body || s.ContentLength != int64(len(body)) {
		t.Errorf("agent saw %s %s?%s body %q length %d", s.Method, s.Path, s.Query, s.Body, s.ContentLength)
	}
	if s.Header.Get("Authorization") != "Bearer typed-in-secret" || s.Header.Get("X-New") != "1" {
		t.Errorf("edited headers not sent: %v", s.Header)
	}
	if _, ok := s.Header["Cookie"]; ok || s.Header.Get("X-Keep") != "" {
		t.Errorf("headers of the entry leaked into an edit that replaced them: %v", s.Header)
	}
	if res.Method != "PUT" || res.Path != "/v2/orders" || res.RequestHeader.Get("Authorization") != Redacted {
		t.Errorf("result %s %s auth %q", res.Method, res.Path, res.RequestHeader.Get("Authorization"))
	}
	js, _ := json.Marshal(res)
	if bytes.Contains(js, []byte("typed-in-secret")) {
		t.Error("the typed-in credential is in the replay result")
	}

	// Only the path: the recorded query stays, redacted parameters dropped.
	if _, err := i.Replay(context.Background(), h, dom, orig, &Edit{Path: "/other"}); err != nil {
		t.Fatal(err)
	}
	if s := a.got(t); s.Path != "/other" || s.Query != "id=7" || s.Method != "POST" {
		t.Errorf("path-only edit: %s %s?%s", s.Method, s.Path, s.Query)
	}
}

// TestReplayBodyNotCaptured: a body that was not kept whole cannot be replayed unless the edit
// supplies one, since a cut or empty body would be a different request.
func TestReplayBodyNotCaptured(t *testing.T) {
	cases := []struct {
		name    string
		bodies  bool
		limit   int
		handler http.HandlerFunc
	}{
		{"bodies off", false, 0, func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) }},
		{"over the limit", true, 4, func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) }},
		{"not read", true, 0, func(http.ResponseWriter, *http.Request) {}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			i := New(Options{BodyLimit: c.limit})
			i.Enable(dom, c.bodies)
			h := i.Wrap(c.handler)
			serve(h, httptest.NewRequest("POST", "http://"+dom+"/", strings.NewReader("0123456789")))
			orig := onlyEntry(t, i, dom)
			if _, err := i.Replay(context.Background(), h, dom, orig, nil); !errors.Is(err, ErrBodyNotCaptured) {
				t.Fatalf("Replay: %v, want ErrBodyNotCaptured", err)
			}
			if n := len(i.Entries(dom)); n != 1 {
				t.Fatalf("a refused replay still sent a request: %d entries", n)
			}
			body := "replacement"
			if _, err := i.Replay(context.Background(), h, dom, orig, &Edit{Body: &body}); err != nil {
				t.Fatalf("with a body in the edit: %v", err)
			}
		})
	}
}

// TestReplayRefuses: an entry of another domain, a path that is not absolute, and a wildcard entry
// whose host is not under the wildcard are refused without reaching the handler.
func TestReplayRefuses(t *testing.T) {
	i := New(Options{})
	a := &agent{}
	e := Entry{ID: "x", Domain: dom, Method: "GET", Path: "/"}
	if _, err := i.Replay(context.Background(), a, "other.example.com", e, nil); !errors.Is(err, ErrDomainMismatch) {
		t.Errorf("other domain: %v, want ErrDomainMismatch", err)
	}
	if _, err := i.Replay(context.Background(), a, dom, e, &Edit{Path: "relative"}); err == nil {
		t.Error("relative path accepted")
	}
	for _, host := range []string{"evil.com", "a.b.apps.example.com", "apps.example.com", "A.apps.example.com", ""} {
		w := Entry{ID: "w", Domain: "*.apps.example.com", Host: host, Method: "GET", Path: "/"}
		if _, err := i.Replay(context.Background(), a, "*.apps.example.com", w, nil); err == nil {
			t.Errorf("wildcard entry with host %q accepted", host)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.last != nil {
		t.Fatalf("a refused replay reached the handler: %+v", a.last)
	}
}

// TestReplayWildcardHost: an entry recorded under a wildcard is replayed to the name it came to.
func TestReplayWildcardHost(t *testing.T) {
	i := New(Options{})
	i.Enable("*.apps.example.com", false)
	a := &agent{}
	h := i.Wrap(a)
	serve(h, httptest.NewRequest("GET", "http://A.apps.example.com:8443/w", nil))
	orig := onlyEntry(t, i, "*.apps.example.com")
	res, err := i.Replay(context.Background(), h, "*.apps.example.com", orig, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := a.got(t); s.Host != "a.apps.example.com" || s.Path != "/w" {
		t.Fatalf("agent saw host %q path %q", s.Host, s.Path)
	}
	if res.Host != "a.apps.example.com" || res.ReplayOf != orig.ID || res.Domain != "*.apps.example.com" {
		t.Fatalf("result host %q domain %q replay_of %q", res.Host, res.Domain, res.ReplayOf)
	}
}

// TestReplayResponseBodyWhenBodiesOff: the person who asked for a replay sees its answer even when
// the domain keeps no bodies; the ring still does not keep it.
func TestReplayResponseBodyWhenBodiesOff(t *testing.T) {
	i := New(Options{})
	i.Enable(dom, false)
	big := bytes.Repeat([]byte("r"), 100<<10)
	h := i.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(big) }))
	serve(h, httptest.NewRequest("GET", "http://"+dom+"/big", nil))
	orig := onlyEntry(t, i, dom)
	res, err := i.Replay(context.Background(), h, dom, orig, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(res.ResponseBody, big) || res.ResponseTruncated || res.ResponseSize != int64(len(big)) {
		t.Fatalf("replay result body %d bytes truncated=%v size %d, want %d whole", len(res.ResponseBody), res.ResponseTruncated, res.ResponseSize, len(big))
	}
	if stored, _ := i.Entry(dom, res.ID); stored.ResponseBody != nil {
		t.Fatalf("the ring kept %d bytes of body for a domain without bodies", len(stored.ResponseBody))
	}
}

// TestReplayUnrecorded: through a handler without Wrap, Replay builds a redacted entry itself and
// stores nothing.
func TestReplayUnrecorded(t *testing.T) {
	i := New(Options{})
	a := &agent{}
	e := Entry{ID: "orig", Domain: dom, Method: "POST", Path: "/u", Query: "token=" + Redacted + "&q=1", RequestBody: []byte("payload"), RequestSize: 7}
	body := "payload with typed-secret-123"
	res, err := i.Replay(context.Background(), a, dom, e, &Edit{Header: http.Header{"X-Api-Key": {"typed-secret-123"}}, Body: &body})
	if err != nil {
		t.Fatal(err)
	}
	if s := a.got(t); s.Query != "q=1" || s.Header.Get("X-Api-Key") != "typed-secret-123" || s.Body != body {
		t.Fatalf("agent saw query %q key %q body %q", s.Query, s.Header.Get("X-Api-Key"), s.Body)
	}
	if res.ReplayOf != "orig" || res.Status != http.StatusAccepted || res.ResponseHeader.Get("X-Agent") != "yes" || res.Domain != dom {
		t.Errorf("result %+v", res)
	}
	if res.RequestHeader.Get("X-Api-Key") != Redacted || string(res.RequestBody) != "payload with "+Redacted {
		t.Errorf("result not redacted: key %q body %q", res.RequestHeader.Get("X-Api-Key"), res.RequestBody)
	}
	if want := "answer:payload with " + Redacted; string(res.ResponseBody) != want {
		t.Errorf("response body %q, want %q", res.ResponseBody, want)
	}
	if i.Entries(dom) != nil {
		t.Error("an unrecorded replay was stored")
	}
}

// TestReplayBoundedByContext: a handler that never answers holds Replay only until ctx ends, and
// Replay does not wait for it; once the handler does return, nothing is left running.
func TestReplayBoundedByContext(t *testing.T) {
	defer goleak.VerifyNone(t)
	release := make(chan struct{})
	handlers := map[string]http.HandlerFunc{
		// Honours the request context, which Replay derives from ctx.
		"honours ctx": func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() },
		// Ignores it: Replay must return anyway; the goroutine ends when the test releases it.
		"ignores ctx": func(http.ResponseWriter, *http.Request) { <-release },
	}
	i := New(Options{})
	i.Enable(dom, false)
	for name, inner := range handlers {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			// On a goroutine so that a Replay waiting for the handler fails the test, not hangs it.
			errc := make(chan error, 1)
			go func() {
				_, err := i.Replay(ctx, i.Wrap(inner), dom, Entry{ID: "o", Domain: dom, Method: "GET", Path: "/hang"}, nil)
				errc <- err
			}()
			select {
			case err := <-errc:
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("Replay: %v, want DeadlineExceeded", err)
				}
			case <-time.After(2 * time.Second):
				t.Error("Replay still running 2s past a 50ms deadline")
				close(release)
				<-errc
			}
		})
	}
	select {
	case <-release:
	default:
		close(release)
	}
}

// TestReplayHandlerPanic: a panic in the replayed handler becomes an error; it runs outside
// net/http's recover, where it would otherwise take the gateway down.
func TestReplayHandlerPanic(t *testing.T) {
	defer goleak.VerifyNone(t)
	i := New(Options{})
	h := http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") })
	_, err := i.Replay(context.Background(), h, dom, Entry{ID: "o", Domain: dom, Path: "/"}, nil)
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("Replay: %v, want the panic as an error", err)
	}
}
