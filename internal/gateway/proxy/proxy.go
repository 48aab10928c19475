// Package proxy serves a tenant's request from start to end: it finds an agent of the request's domain,
// forwards the request over a stream of that agent's tunnel (httputil.ReverseProxy with a stream
// RoundTripper), retries a request that a draining agent refused, and turns every failure into one
// outcome: the status and page for the visitor, the reason for the access log and the metric.
package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/access"
	"github.com/hopgate/hopgate/internal/gateway/errorpage"
	"github.com/hopgate/hopgate/internal/gateway/hostname"
	"github.com/hopgate/hopgate/internal/gateway/metrics"
	"github.com/hopgate/hopgate/internal/tunnel"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// Agent is one live tunnel that can carry a request.
type Agent interface {
	// ID names the agent in the access log.
	ID() string
	OpenStream(ctx context.Context, head *tunnelv1.RequestHead) (*tunnel.Stream, error)
}

// byteCounter is an Agent that keeps its own traffic totals (the console's agents page).
type byteCounter interface {
	// CountRequest adds one request's body bytes: in from the visitor, out to it.
	CountRequest(in, out int64)
}

// Agents finds the agents of a domain (the tunnel service's hub).
type Agents interface {
	// Pick returns the least-loaded live agent of domain and counts the request against it until
	// Release; nil when none is connected.
	Pick(domain string) Agent
	// Repick releases failed and picks another agent of domain, for a request failed refused
	// before doing anything with it. Nil when there is none.
	Repick(domain string, failed Agent) Agent
	// Release ends the request counted by Pick or Repick.
	Release(Agent)
}

// PathAgents is an Agents that also knows each agent's target health per path (the Hub, from the
// agents' Health reports). The proxy uses PickPath instead of Pick when its Agents has it.
type PathAgents interface {
	Agents
	// PickPath is Pick for a request to path, skipping agents whose target for path is down while
	// another one is healthy. down is true when agents are connected but every one's target for
	// path is down.
	PickPath(domain, path string) (a Agent, down bool)
	// RepickPath is Repick by target health, as PickPath is Pick.
	RepickPath(domain, path string, failed Agent) (a Agent, down bool)
}

// Domains answers whether a name is registered, for a domain that has no agent: the registry is only
// asked then, since a live tunnel proves its domain registered (unregistering closes it).
type Domains interface {
	Registered(ctx context.Context, domain string) (bool, error)
}

// Access decides who may visit a domain (package access): nil lets the request through, access.ErrHandled
// means it answered itself (a sign-in redirect, the SSO callback), an *access.Denial is rendered here.
type Access interface {
	Admit(w http.ResponseWriter, r *http.Request, domain string, visitor netip.Addr) error
}

// BodyLimits is an Access that also knows each domain's own request body limit (0: none).
type BodyLimits interface {
	MaxBodyBytes(ctx context.Context, domain string) int64
}

// storeLookupTimeout bounds the registry lookup of a request whose domain has no agent: a slow store
// must not hold requests (and their goroutines) without bound.
const storeLookupTimeout = 2 * time.Second

// Options wires the proxy.
type Options struct {
	Agents  Agents
	Domains Domains
	// HeaderTimeout is how long the agent has to return response headers (not the body).
	HeaderTimeout time.Duration
	// TrustedProxies are peers whose X-Forwarded-* and X-Real-IP are kept and extended; from anyone
	// else those headers are replaced by the gateway's own.
	TrustedProxies []netip.Prefix
	// Access, if set, checks every request that has an agent against its domain's policy before
	// anything reaches the agent.
	Access Access
	// MaxBodyBytes caps every request body (HOP_SERVER_MAX_BODY_BYTES; 0: no limit). A domain's
	// policy may set a lower one, through an Access that is a BodyLimits.
	MaxBodyBytes int64
	// Overloaded, if set, is asked before each request; true sheds it with 503 and Retry-After
	// (memory near GOMEMLIMIT: see package overload).
	Overloaded func() bool
	Errors     *errorpage.Writer
	// Metrics, if set, counts every request and every failure.
	Metrics *metrics.Metrics
	Logger  *slog.Logger
}

// Handler is the tenant handler: every request whose Host is not the gateway's own.
type Handler struct {
	o Options
	// rp is the template each request's ReverseProxy is copied from; only its Transport differs.
	rp httputil.ReverseProxy
	// limits is o.Access when it knows per-domain body limits, else nil.
	limits BodyLimits
}

// New builds the tenant handler.
func New(o Options) *Handler {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.HeaderTimeout <= 0 {
		o.HeaderTimeout = 15 * time.Second
	}
	h := &Handler{o: o}
	h.limits, _ = o.Access.(BodyLimits)
	h.rp = httputil.ReverseProxy{
		Rewrite:      h.rewrite,
		BufferPool:   bufferPool{},
		ErrorHandler: h.proxyError,
		ErrorLog:     slog.NewLogLogger(o.Logger.Handler(), slog.LevelDebug),
	}
	return h
}

// ServeHTTP proxies r to an agent of its domain, or answers with the outcome of why it cannot.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x := &exchange{h: h, w: w, start: time.Now(), requestID: requestID(r), domain: hostname.FromHost(r.Host)}
	if r.Body != nil && r.Body != http.NoBody {
		x.body.ReadCloser = r.Body
		r.Body = &x.body
	}
	defer x.finish(r)
	// The identity headers are the gateway's word (set by Access); a visitor's own copies never pass,
	// nor look-alikes a target may read as them (identityName). Trailers are filtered as they are sent.
	dropIdentity(r.Header)
	if err := x.pick(r.Context(), r.URL.Path); err != nil {
		h.fail(x, r, err)
		return
	}
	// Policy is checked only once an agent is there: a flood of random or agentless names never
	// reaches the policy store, and a domain nobody serves has nothing to protect.
	if h.o.Access != nil {
		// The registered domain's policy: a wildcard's covers every name under it.
		if err := h.o.Access.Admit(x, r, x.site, h.visitor(r)); err != nil {
			h.o.Agents.Release(x.agent)
			x.agent = nil
			if !errors.Is(err, access.ErrHandled) {
				h.fail(x, r, err)
			}
			return
		}
	}
	if x.body.ReadCloser != nil {
		if limit := h.bodyLimit(r.Context(), x.site); limit > 0 {
			if r.ContentLength > limit {
				// Refused before a byte of it moves: nothing reaches the agent.
				h.o.Agents.Release(x.agent)
				x.agent = nil
				h.fail(x, r, ErrBodyTooLarge)
				return
			}
			// A chunked (or lying) body is cut where it crosses the limit; sendBody then aborts the
			// stream. The real writer lets net/http close an HTTP/1.1 connection left mid-body.
			x.body.ReadCloser = http.MaxBytesReader(w, x.body.ReadCloser, limit)
		}
	}
	x.rp = h.rp
	x.rp.Transport = x
	x.rp.ServeHTTP(x, r)
}

// bodyLimit is the lower of the gateway's and site's body limits, ignoring the unset (0) ones.
func (h *Handler) bodyLimit(ctx context.Context, site string) int64 {
	limit := h.o.MaxBodyBytes
	if h.limits != nil {
		if d := h.limits.MaxBodyBytes(ctx, site); d > 0 && (limit == 0 || d < limit) {
			limit = d
		}
	}
	return limit
}

// pick finds the agent for the request, or says why there is none. The exact name comes first and
// costs one Hub lookup; only when it has no agent does the registry say whether the exact name is
// registered (then it wins, with 503: its agents are gone, and the wildcard's agents and policy are
// not its own) and, if not, the wildcard domain one label up is tried ("x.apps.example.com" →
// "*.apps.example.com"), as a TLS wildcard matches.
func (x *exchange) pick(ctx context.Context, path string) error {
	h := x.h
	if x.domain == "" {
		return ErrUnknownDomain
	}
	if h.o.Overloaded != nil && h.o.Overloaded() {
		return ErrOverloaded
	}
	x.site, x.path = x.domain, path
	var down bool
	if x.agent, down = x.pickFor(x.domain, path); x.agent != nil {
		return nil
	}
	if down {
		return ErrTargetDown
	}
	err := x.registered(ctx, x.domain)
	wild := hostname.WildcardOf(x.domain)
	if !errors.Is(err, ErrUnknownDomain) || wild == "" {
		return err
	}
	x.site = wild
	if x.agent, down = x.pickFor(wild, path); x.agent != nil {
		return nil
	}
	if down {
		return ErrTargetDown
	}
	if err := x.registered(ctx, wild); !errors.Is(err, ErrUnknownDomain) {
		return err
	}
	// The 404 is about the name the visitor asked for, not the wildcard that was tried.
	x.site = x.domain
	return ErrUnknownDomain
}

// pickFor picks an agent of domain for path, by target health when the Agents knows it.
func (x *exchange) pickFor(domain, path string) (Agent, bool) {
	if pa, ok := x.h.o.Agents.(PathAgents); ok {
		return pa.PickPath(domain, path)
	}
	return x.h.o.Agents.Pick(domain), false
}

// repick moves a refused request to another agent of its site, by target health when the Agents
// knows it.
func (x *exchange) repick() (Agent, bool) {
	if pa, ok := x.h.o.Agents.(PathAgents); ok {
		return pa.RepickPath(x.site, x.path, x.agent)
	}
	return x.h.o.Agents.Repick(x.site, x.agent), false
}

// registered asks the registry about a domain without an agent: ErrNoAgent when it is registered,
// ErrUnknownDomain when not, ErrStoreUnavailable when the store cannot say.
func (x *exchange) registered(ctx context.Context, domain string) error {
	h := x.h
	lookupCtx, cancel := context.WithTimeout(ctx, storeLookupTimeout)
	known, err := h.o.Domains.Registered(lookupCtx, domain)
	cancel()
	switch {
	case err != nil:
		h.o.Logger.Warn("domain lookup failed", "err", err)
		return errors.Join(ErrStoreUnavailable, err)
	case !known:
		return ErrUnknownDomain
	default:
		return ErrNoAgent
	}
}

// proxyError is ReverseProxy's ErrorHandler: w is the request's exchange.
func (h *Handler) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	x, ok := w.(*exchange)
	if !ok {
		// Only exchanges are handed to ReverseProxy; anything else is a bug worth a plain answer.
		http.Error(w, http.StatusText(http.StatusBadGateway), http.StatusBadGateway)
		return
	}
	h.fail(x, r, err)
}

// fail is the one place a failed request becomes its outcome: the page, the access log's reason and
// the metric.
func (h *Handler) fail(x *exchange, r *http.Request, err error) {
	if r.Context().Err() != nil {
		// The visitor is gone; nobody reads an error page.
		return
	}
	var denied *access.Denial
	if errors.As(err, &denied) {
		h.deny(x, r, denied)
		return
	}
	if errors.Is(err, access.ErrStoreUnavailable) {
		err = errors.Join(ErrStoreUnavailable, err)
	}
	o := outcomeOf(err)
	x.reason = o.reason
	if m := h.o.Metrics; m != nil {
		m.ProxyErrors.WithLabelValues(o.reason).Inc()
	}
	if o.retryAfter != "" {
		x.Header().Set("Retry-After", o.retryAfter)
	}
	h.o.Logger.Debug("proxy error", "domain", x.domain, "status", o.status, "reason", o.reason, "err", err)
	h.o.Errors.WriteReason(x, r, o.status, o.reason, o.message)
}

// deny renders a request the domain's policy refused. Denials are the policy working, not the proxy
// failing: they count in hopgate_access_denied_total, not in hopgate_proxy_errors_total.
func (h *Handler) deny(x *exchange, r *http.Request, d *access.Denial) {
	x.reason = "denied_" + d.Reason
	if m := h.o.Metrics; m != nil {
		m.AccessDenied.WithLabelValues(d.Reason).Inc()
	}
	for k, v := range d.Header {
		x.Header()[k] = v
	}
	h.o.Errors.Write(x, r, d.Status, d.Message)
}

// finish releases the agent and writes the request's metrics and access-log line.
func (x *exchange) finish(r *http.Request) {
	h := x.h
	if x.agent != nil {
		h.o.Agents.Release(x.agent)
	}
	elapsed := time.Since(x.start)
	code := x.code
	if code == 0 {
		// Nothing was written: the visitor went away, or the response was aborted.
		code = 499
	}
	in := x.body.n.Load()
	if m := h.o.Metrics; m != nil {
		m.ObserveRequest(code, r.Method, elapsed, in, x.bytes)
	}
	if c, ok := x.agent.(byteCounter); ok {
		c.CountRequest(in, x.bytes)
	}
	// Never the query (it may carry tokens), a key, Authorization or Cookie. A visitor that went away
	// before any answer (499) is logged at debug only: an HTTP/2 rapid reset would otherwise turn 26
	// bytes of attack into a 300-byte log line, and a slow log sink into latency for every tenant. It
	// is still counted in the metrics.
	level := slog.LevelInfo
	if code == 499 {
		level = slog.LevelDebug
	}
	if !h.o.Logger.Enabled(r.Context(), level) {
		return
	}
	agentID := ""
	if x.agent != nil {
		agentID = x.agent.ID()
	}
	attrs := []slog.Attr{
		slog.String("request_id", x.requestID),
		slog.String("domain", x.domain),
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", code),
		slog.Int64("bytes_in", in),
		slog.Int64("bytes_out", x.bytes),
		slog.Duration("duration", elapsed),
		slog.String("agent", agentID),
		slog.String("client", r.RemoteAddr),
		slog.String("proto", r.Proto),
	}
	if x.reason != "" {
		attrs = append(attrs, slog.String("error", x.reason))
	}
	// Straight to the handler with no caller PC: Logger.LogAttrs walks the stack for one on every
	// request (1 % of the gateway's CPU on small GETs), and an access line has no use for its source.
	rec := slog.NewRecord(time.Now(), level, "request", 0)
	rec.AddAttrs(attrs...)
	_ = h.o.Logger.Handler().Handle(r.Context(), rec)
}

// rewrite sets the forwarding headers. Rewrite mode has already removed the inbound X-Forwarded-*
// from the outbound request; a trusted peer's are put back so SetXForwarded appends to them.
func (h *Handler) rewrite(pr *httputil.ProxyRequest) {
	in, out := pr.In, pr.Out
	out.URL.Scheme = "http"
	out.URL.Host = in.Host
	// ReverseProxy re-encodes a query it cannot parse (';' separators, bad escapes) before Rewrite.
	// The gateway parses no tenant query, so the target must see it as the visitor sent it: a proxy
	// and a backend that read one query two ways is how parameters are smuggled.
	out.URL.RawQuery = in.URL.RawQuery
	// Clone copied the trailer map before the body was read; the server fills the original at the
	// end of the body, and that is the one the tunnel must send.
	out.Trailer = in.Trailer
	if h.trusted(in.RemoteAddr) {
		for _, name := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
			if v := in.Header.Values(name); len(v) > 0 {
				out.Header[name] = v
			}
		}
		host, proto := out.Header.Get("X-Forwarded-Host"), out.Header.Get("X-Forwarded-Proto")
		pr.SetXForwarded()
		// The balancer in front saw the visitor's Host and scheme; keep what it said.
		if host != "" {
			out.Header.Set("X-Forwarded-Host", host)
		}
		if proto != "" {
			out.Header.Set("X-Forwarded-Proto", proto)
		}
		if out.Header.Get("X-Real-Ip") == "" {
			out.Header.Set("X-Real-Ip", clientIP(in.RemoteAddr))
		}
		return
	}
	pr.SetXForwarded()
	out.Header.Set("X-Real-Ip", clientIP(in.RemoteAddr))
}

func (h *Handler) trusted(remoteAddr string) bool {
	if len(h.o.TrustedProxies) == 0 {
		return false
	}
	addr, err := netip.ParseAddr(clientIP(remoteAddr))
	if err != nil {
		return false
	}
	return h.trustedAddr(addr.Unmap())
}

func (h *Handler) trustedAddr(addr netip.Addr) bool {
	for _, p := range h.o.TrustedProxies {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// visitor is the visitor's real address: the peer's, or, when the peer is a trusted proxy, the
// nearest address in X-Forwarded-For that is not itself a trusted proxy (the rightmost untrusted one:
// everything left of it was written by the visitor and proves nothing). Invalid when the peer's
// address cannot be read, which no policy list contains.
func (h *Handler) visitor(r *http.Request) netip.Addr {
	peer, err := netip.ParseAddr(clientIP(r.RemoteAddr))
	if err != nil {
		return netip.Addr{}
	}
	peer = peer.Unmap()
	if !h.trustedAddr(peer) {
		return peer
	}
	hops := r.Header.Values("X-Forwarded-For")
	nearest := peer
	for i := len(hops) - 1; i >= 0; i-- {
		parts := strings.Split(hops[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			a, err := netip.ParseAddr(strings.TrimSpace(parts[j]))
			if err != nil {
				// A hop a trusted proxy would not write: stop at the last address vouched for.
				return nearest
			}
			a = a.Unmap()
			if !h.trustedAddr(a) {
				return a
			}
			nearest = a
		}
	}
	if len(hops) == 0 {
		if a, err := netip.ParseAddr(strings.TrimSpace(r.Header.Get("X-Real-Ip"))); err == nil {
			return a.Unmap()
		}
	}
	return nearest
}

func clientIP(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return remoteAddr
	}
	return host
}

// bufferPool lends ReverseProxy 32 KiB copy buffers. A response holds its buffer for as long as it
// streams (an event stream for hours), so it stays small; a whole tunnel chunk (128 KiB) measured no
// faster on 1 GiB downloads (five alternating runs: 353 vs 324 CPU ticks per GB, the smaller ahead).
type bufferPool struct{}

const copyBufferSize = 32 << 10

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

func (bufferPool) Get() []byte  { return *(copyBuffers.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { copyBuffers.Put(&b) }

// identityName reports whether a header name is X-HopGate-User or X-HopGate-Email in any case and
// with '_' for '-': CGI, WSGI, Rack and PHP fold both to HTTP_X_HOPGATE_USER, and nginx can be told
// to pass underscores, so `X_HopGate_User` would reach such a target as the gateway's own word.
func identityName(name string) bool {
	return lookalike(name, access.HeaderUser) || lookalike(name, access.HeaderEmail)
}

// lookalike compares ASCII names case-insensitively, '_' counting as '-'.
func lookalike(name, canonical string) bool {
	if len(name) != len(canonical) {
		return false
	}
	for i := 0; i < len(name); i++ {
		c, w := name[i], canonical[i]
		if c == '_' {
			c = '-'
		}
		if lowerASCII(c) != lowerASCII(w) {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// dropIdentity removes every identity look-alike from h.
func dropIdentity(h http.Header) {
	for name := range h {
		if identityName(name) {
			delete(h, name)
		}
	}
}

// withoutIdentity is a visitor's trailers without identity look-alikes: t itself when it has none
// (almost always), else a copy. A copy, because the HTTP server owns t and fills it at the body's
// end.
func withoutIdentity(t http.Header) http.Header {
	for name := range t {
		if identityName(name) {
			c := t.Clone()
			dropIdentity(c)
			return c
		}
	}
	return t
}
