// Package inspect is the gateway's per-domain request inspector: a tenant turns it on for one of
// its domains to see, and replay, the traffic that reached its agent, the way ngrok's inspector does.
//
// It sits in front of the tenant handler as middleware. Inspection is off for almost every request,
// so the off path is one map lookup and no allocation; only enabled domains pay for wrapping. What is
// kept lives in memory only (a bounded ring per domain), and credentials are redacted before anything
// is stored, because the ring is shown in a dashboard and must never become a second copy of the
// tenant's secrets.
package inspect

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for zero Options fields. They bound the memory one noisy domain can hold.
const (
	DefaultCapacity  = 100
	DefaultMaxBytes  = 8 << 20
	DefaultBodyLimit = 64 << 10

	// replayBodyLimit is larger than BodyLimit because a replay's response is looked at right away
	// by the person who asked for it, and is not kept in a ring.
	replayBodyLimit = 1 << 20

	subscriberBuffer = 64
)

// Redacted replaces every secret value in a stored Entry.
const Redacted = "[redacted]"

// ReplayHeader marks a replayed request so that the agent (and its logs) can tell it from a real one.
const ReplayHeader = "X-HopGate-Replay"

var (
	// ErrBodyNotCaptured is returned by Replay when the original request had a body that was not kept
	// whole, and no replacement was given: replaying a cut or empty body would send a different request.
	ErrBodyNotCaptured = errors.New("inspect: request body was not captured in full; supply one in the edit")
	// ErrDomainMismatch is returned by Replay when the entry was recorded under another domain, so an
	// entry of one tenant cannot be fired at another tenant's host.
	ErrDomainMismatch = errors.New("inspect: entry belongs to another domain")
)

// Options configures an Inspector. Zero fields take the defaults above.
type Options struct {
	Capacity      int
	MaxBytes      int64
	BodyLimit     int
	RedactHeaders []string
	Now           func() time.Time
}

// Entry is one recorded exchange. Every secret in it has already been replaced by Redacted.
type Entry struct {
	ID       string        `json:"id"`
	Domain   string        `json:"domain"` // the enabled domain it was recorded under, possibly a wildcard
	Host     string        `json:"host"`   // the request's own host, so that a wildcard entry can be replayed to the same name
	Time     time.Time     `json:"time"`
	Duration time.Duration `json:"duration_ns"`

	Method     string `json:"method"`
	Path       string `json:"path"`
	Query      string `json:"query"`
	Proto      string `json:"proto"`
	RemoteAddr string `json:"remote_addr"`

	Status int `json:"status"`

	RequestHeader  http.Header `json:"request_header"`
	ResponseHeader http.Header `json:"response_header"`
	// Bodies are base64 in JSON: they need not be text.
	RequestBody  []byte `json:"request_body"`
	ResponseBody []byte `json:"response_body"`

	RequestSize  int64 `json:"request_size"`
	ResponseSize int64 `json:"response_size"`

	// RequestTruncated is also set when the handler stopped reading before the end of a body whose
	// length did not match what was read: the captured body is then not known to be the whole one.
	RequestTruncated  bool `json:"request_truncated"`
	ResponseTruncated bool `json:"response_truncated"`

	ReplayOf string `json:"replay_of,omitempty"`
}

// Edit changes a request before Replay sends it. Empty or nil fields keep the recorded value.
// Path may carry "?query", which then replaces the recorded query.
type Edit struct {
	Method, Path string
	Header       http.Header
	Body         *string
}

// Inspector records traffic of the domains enabled on it. The zero value is not usable; call New.
type Inspector struct {
	capacity  int
	maxBytes  int64
	bodyLimit int
	redact    map[string]bool // lower-case header names
	now       func() time.Time

	// table is replaced whole on every change so that the request path reads it without a lock.
	table atomic.Pointer[table]
	mu    sync.Mutex // serialises writers of table

	subMu sync.RWMutex
	subs  map[string]map[*subscriber]struct{}
}

type table struct {
	exact map[string]*domainState // every enabled domain, wildcards included
	wild  map[string]*domainState // wildcard base ("apps.example.com") → its state, so lookup needs no "*." concatenation
}

type domainState struct {
	name   string
	bodies atomic.Bool
	ring   *ring
}

type subscriber struct {
	ch chan Entry
}

var builtinRedact = []string{"Authorization", "Proxy-Authorization", "Cookie", "X-Api-Key", "X-HopGate-Api-Key"}

// New returns an Inspector with nothing enabled.
func New(o Options) *Inspector {
	i := &Inspector{
		capacity:  o.Capacity,
		maxBytes:  o.MaxBytes,
		bodyLimit: o.BodyLimit,
		redact:    map[string]bool{},
		now:       o.Now,
		subs:      map[string]map[*subscriber]struct{}{},
	}
	if i.capacity <= 0 {
		i.capacity = DefaultCapacity
	}
	if i.maxBytes <= 0 {
		i.maxBytes = DefaultMaxBytes
	}
	if i.bodyLimit <= 0 {
		i.bodyLimit = DefaultBodyLimit
	}
	if i.now == nil {
		i.now = time.Now
	}
	for _, h := range builtinRedact {
		i.redact[strings.ToLower(h)] = true
	}
	for _, h := range o.RedactHeaders {
		if h = strings.TrimSpace(h); h != "" {
			i.redact[strings.ToLower(h)] = true
		}
	}
	i.table.Store(&table{})
	return i
}

func normDomain(d string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".")
}

// Enable turns recording on for domain, or only changes body capture when it is already on, so that
// toggling bodies keeps what was recorded so far.
func (i *Inspector) Enable(domain string, bodies bool) {
	domain = normDomain(domain)
	if domain == "" {
		return
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	old := i.table.Load()
	if st, ok := old.exact[domain]; ok {
		st.bodies.Store(bodies)
		return
	}
	st := &domainState{name: domain, ring: newRing(i.capacity, i.maxBytes)}
	st.bodies.Store(bodies)
	nt := &table{exact: make(map[string]*domainState, len(old.exact)+1), wild: make(map[string]*domainState, len(old.wild)+1)}
	for k, v := range old.exact {
		nt.exact[k] = v
	}
	for k, v := range old.wild {
		nt.wild[k] = v
	}
	nt.exact[domain] = st
	if base, ok := strings.CutPrefix(domain, "*."); ok {
		nt.wild[base] = st
	}
	i.table.Store(nt)
}

// Disable turns recording off and forgets the domain's entries: a tenant switching inspection off
// expects its captured traffic to be gone, not merely hidden. Subscribers stay attached, so an open
// dashboard resumes when inspection is turned on again.
func (i *Inspector) Disable(domain string) {
	domain = normDomain(domain)
	i.mu.Lock()
	defer i.mu.Unlock()
	old := i.table.Load()
	if _, ok := old.exact[domain]; !ok {
		return
	}
	nt := &table{exact: make(map[string]*domainState, len(old.exact)), wild: make(map[string]*domainState, len(old.wild))}
	for k, v := range old.exact {
		if k != domain {
			nt.exact[k] = v
		}
	}
	for k, v := range old.wild {
		if v.name != domain {
			nt.wild[k] = v
		}
	}
	i.table.Store(nt)
}

// State reports whether domain is being recorded and whether bodies are kept.
func (i *Inspector) State(domain string) (on, bodies bool) {
	st, ok := i.table.Load().exact[normDomain(domain)]
	if !ok {
		return false, false
	}
	return true, st.bodies.Load()
}

// Enabled lists the enabled domains, sorted so that listings are stable.
func (i *Inspector) Enabled() []string {
	t := i.table.Load()
	out := make([]string, 0, len(t.exact))
	for k := range t.exact {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Entries returns deep copies, oldest first, so that callers may hold or change them freely.
func (i *Inspector) Entries(domain string) []Entry {
	st, ok := i.table.Load().exact[normDomain(domain)]
	if !ok {
		return nil
	}
	return st.ring.list()
}

// Entry returns a deep copy of one entry.
func (i *Inspector) Entry(domain, id string) (Entry, bool) {
	st, ok := i.table.Load().exact[normDomain(domain)]
	if !ok {
		return Entry{}, false
	}
	return st.ring.get(id)
}

// Subscribe returns a feed of new entries of domain. The channel is buffered and sends never wait:
// a dashboard that falls behind loses entries rather than slowing the tenant's traffic. The returned
// func unsubscribes and closes the channel; it may be called more than once.
func (i *Inspector) Subscribe(domain string) (<-chan Entry, func()) {
	domain = normDomain(domain)
	s := &subscriber{ch: make(chan Entry, subscriberBuffer)}
	i.subMu.Lock()
	m := i.subs[domain]
	if m == nil {
		m = map[*subscriber]struct{}{}
		i.subs[domain] = m
	}
	m[s] = struct{}{}
	i.subMu.Unlock()
	var once sync.Once
	return s.ch, func() {
		once.Do(func() {
			i.subMu.Lock()
			defer i.subMu.Unlock()
			if m := i.subs[domain]; m != nil {
				delete(m, s)
				if len(m) == 0 {
					delete(i.subs, domain)
				}
			}
			// Closed under the write lock, so that no publisher holding the read lock can send on it.
			close(s.ch)
		})
	}
}

func (i *Inspector) publish(domain string, e *Entry) {
	i.subMu.RLock()
	defer i.subMu.RUnlock()
	for s := range i.subs[domain] {
		select {
		case s.ch <- e.clone():
		default:
		}
	}
}

// lookup finds the state a request host is recorded under. It must not allocate: it runs for every
// request of every tenant, nearly all of them with inspection off.
func (t *table) lookup(host string) *domainState {
	if st, ok := t.exact[host]; ok {
		return st
	}
	if len(t.wild) == 0 {
		return nil
	}
	// Like a TLS wildcard, "*.apps.example.com" covers exactly one label under apps.example.com.
	if dot := strings.IndexByte(host, '.'); dot > 0 {
		return t.wild[host[dot+1:]]
	}
	return nil
}

// hostOf returns the lower-case host of a Host header without port or trailing dot. It allocates
// only for upper-case or malformed input, which normal clients do not send.
func hostOf(h string) string {
	if strings.LastIndexByte(h, ':') > strings.LastIndexByte(h, ']') {
		if host, _, err := net.SplitHostPort(h); err == nil {
			h = host
		}
	} else if len(h) > 1 && h[0] == '[' && h[len(h)-1] == ']' {
		h = h[1 : len(h)-1]
	}
	h = strings.TrimSuffix(h, ".")
	return strings.ToLower(h) // returns h itself when it is already lower case
}

// Wrap returns next with recording in front of it.
func (i *Inspector) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t := i.table.Load()
		if len(t.exact) == 0 {
			next.ServeHTTP(w, r)
			return
		}
		host := hostOf(r.Host)
		st := t.lookup(host)
		if st == nil {
			next.ServeHTTP(w, r)
			return
		}
		i.serveRecorded(st, host, next, w, r)
	})
}

func (i *Inspector) serveRecorded(st *domainState, host string, next http.Handler, w http.ResponseWriter, r *http.Request) {
	start := i.now()
	limit := 0
	if st.bodies.Load() {
		limit = i.bodyLimit
	}
	// The header map is copied before next runs: the proxy adds forwarding headers to it, and the
	// inspector shows what the client sent.
	reqHeader := r.Header.Clone()
	rw := &responseRecorder{ResponseWriter: w, limit: limit}
	r2 := r.WithContext(r.Context()) // shallow copy, so the caller's request keeps its own Body
	var rb *bodyRecorder
	if r.Body != nil && r.Body != http.NoBody {
		// NoBody stays as it is: proxies and transports treat it as "no body" by identity.
		rb = &bodyRecorder{rc: r.Body, limit: limit}
		r2.Body = rb
	}
	tag, _ := r.Context().Value(replayKey{}).(*replayTag)
	// Recording runs deferred so that a panicking handler (http.ErrAbortHandler) still leaves a trace.
	defer func() {
		e := Entry{
			Domain:     st.name,
			Host:       host,
			Time:       start,
			Duration:   i.now().Sub(start),
			Method:     r.Method,
			Path:       r.URL.EscapedPath(),
			Query:      r.URL.RawQuery,
			Proto:      r.Proto,
			RemoteAddr: r.RemoteAddr,
		}
		if rb != nil {
			e.RequestBody, e.RequestSize, e.RequestTruncated = rb.finish(r.ContentLength)
		}
		var respHeader http.Header
		e.Status, respHeader, e.ResponseBody, e.ResponseSize, e.ResponseTruncated = rw.finish()
		if limit == 0 {
			e.RequestBody, e.ResponseBody = nil, nil
		}
		sec := i.sanitize(&e, reqHeader, respHeader)
		e.ID = newID()
		if tag != nil {
			e.ReplayOf = tag.of
			tag.entry = e.clone()
			tag.secrets = sec
		}
		i.store(st, &e)
	}()
	next.ServeHTTP(rw, r2)
}

// store keeps e unless its domain was disabled (or re-enabled afresh) while the request ran; the
// tenant asked for that traffic to be gone.
func (i *Inspector) store(st *domainState, e *Entry) {
	if i.table.Load().exact[st.name] != st {
		return
	}
	st.ring.push(e)
	i.publish(st.name, e)
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b[:])
}

// bodyRecorder counts and keeps the start of a request body as the handler reads it, so that the
// body keeps streaming to the agent.
type bodyRecorder struct {
	rc    io.ReadCloser
	mu    sync.Mutex
	limit int
	buf   []byte
	n     int64
	over  bool
	eof   bool
	done  bool
}

func (b *bodyRecorder) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.mu.Lock()
	// After finish, a straggling reader goroutine of the handler must not touch what was recorded.
	if !b.done {
		b.n += int64(n)
		if room := b.limit - len(b.buf); room > 0 {
			b.buf = append(b.buf, p[:min(n, room)]...)
		}
		if n > 0 && int64(len(b.buf)) < b.n {
			b.over = true
		}
		if err != nil {
			b.eof = true
		}
	}
	b.mu.Unlock()
	return n, err
}

func (b *bodyRecorder) Close() error { return b.rc.Close() }

func (b *bodyRecorder) finish(contentLength int64) (body []byte, n int64, truncated bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done = true
	complete := b.eof || (contentLength >= 0 && b.n == contentLength)
	return b.buf, b.n, b.over || !complete
}

// responseRecorder observes what the handler writes. It forwards every call at once, so streaming
// responses (SSE, long polls) are not held back, and it unwraps for http.ResponseController so
// hijacking and deadlines reach the real connection.
type responseRecorder struct {
	http.ResponseWriter
	mu       sync.Mutex
	limit    int
	status   int
	header   http.Header
	buf      []byte
	n        int64
	over     bool
	hijacked bool
	done     bool
}

// commit records the final status the first time the response is committed. It is called with mu held.
func (w *responseRecorder) commit(code int) {
	if w.status == 0 && !w.done {
		w.status = code
		w.header = w.ResponseWriter.Header().Clone()
	}
}

func (w *responseRecorder) WriteHeader(code int) {
	// 1xx other than 101 are interim responses; the final status is still to come.
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		w.ResponseWriter.WriteHeader(code)
		return
	}
	w.mu.Lock()
	w.commit(code)
	w.mu.Unlock()
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseRecorder) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.commit(http.StatusOK)
	w.mu.Unlock()
	n, err := w.ResponseWriter.Write(p)
	w.mu.Lock()
	if !w.done {
		w.n += int64(n)
		if room := w.limit - len(w.buf); room > 0 {
			w.buf = append(w.buf, p[:min(n, room)]...)
		}
		if int64(len(w.buf)) < w.n {
			w.over = true
		}
	}
	w.mu.Unlock()
	return n, err
}

// Flush is here because handlers test for http.Flusher directly instead of using ResponseController.
func (w *responseRecorder) Flush() { _ = w.FlushError() }

// FlushError lets http.ResponseController report a failed flush instead of losing it.
func (w *responseRecorder) FlushError() error {
	w.mu.Lock()
	w.commit(http.StatusOK)
	w.mu.Unlock()
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack is intercepted only to learn that the connection left HTTP: bytes written on the hijacked
// connection are not counted.
func (w *responseRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		w.mu.Lock()
		w.hijacked = true
		w.mu.Unlock()
	}
	return c, brw, err
}

func (w *responseRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *responseRecorder) finish() (status int, header http.Header, body []byte, n int64, truncated bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.done = true
	status, header = w.status, w.header
	switch {
	case status != 0:
	case w.hijacked:
		status = http.StatusSwitchingProtocols
	default:
		// Nothing written: the client went away or the handler gave up. 499 is nginx's "client closed
		// request", which is what the dashboard should suggest.
		status = 499
		header = w.ResponseWriter.Header().Clone()
	}
	return status, header, w.buf, w.n, w.over
}

// replayKey marks a request built by Replay, so that Wrap can hand its entry back. A context value
// and not the X-HopGate-Replay header is trusted, because any client can send that header.
type replayKey struct{}

type replayTag struct {
	of      string
	entry   Entry
	secrets []string
}
