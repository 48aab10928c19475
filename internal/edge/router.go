// Package edge is the gateway's front door: the one HTTPS listener (and the plain-HTTP one), and the
// router that sends each request to the tunnel service, the gateway's own endpoints or a tenant's agent.
package edge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hopgate/hopgate/internal/errorpage"
	"github.com/hopgate/hopgate/internal/hostname"
	"github.com/hopgate/hopgate/internal/metrics"
	"github.com/hopgate/hopgate/internal/proxy"
	"github.com/hopgate/hopgate/internal/tunnel"
)

// storeLookupTimeout bounds the registry lookup of a request whose domain has no agent.
const storeLookupTimeout = 2 * time.Second

// TunnelPathPrefix is reserved for the tunnel service on every host.
const TunnelPathPrefix = "/hopgate.tunnel.v1.TunnelService/"

// Domains answers whether a name is registered. ErrStoreUnavailable (wrapped) means it cannot tell now.
type Domains interface {
	Registered(ctx context.Context, domain string) (bool, error)
}

// ErrStoreUnavailable is what a Domains implementation wraps when the store cannot answer.
var ErrStoreUnavailable = errors.New("domain store unavailable")

// Agents picks a live agent for a domain.
type Agents interface {
	Pick(domain string) *tunnel.Agent
}

// RouterOptions wires the router.
type RouterOptions struct {
	// GatewayDomain is the gateway's own name: admin, health and assets live there and nothing is proxied.
	GatewayDomain string
	Tunnel        http.Handler
	// Admin serves /api/v1/admin/; nil answers 404 there (admin API disabled).
	Admin   http.Handler
	Ready   func(ctx context.Context) error
	Agents  Agents
	Domains Domains
	Proxy   *proxy.Gateway
	Errors  *errorpage.Writer
	Metrics *metrics.Metrics
	Logger  *slog.Logger
	// Overloaded, if set, is asked before each tenant request; true sheds it with 503 and Retry-After
	// (memory near GOMEMLIMIT: see package overload).
	Overloaded func() bool
	// ProxyOnly serves tenants only (the plain-HTTP listener in proxy mode): no tunnel, no admin.
	ProxyOnly bool
}

// Router dispatches requests on the one port.
type Router struct {
	o RouterOptions
}

// NewRouter builds the router.
func NewRouter(o RouterOptions) *Router {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.GatewayDomain = strings.ToLower(strings.TrimSuffix(o.GatewayDomain, "."))
	return &Router{o: o}
}

func (rt *Router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, TunnelPathPrefix) {
		if !rt.o.ProxyOnly && isGRPC(r) {
			rt.serveTunnel(w, r)
			return
		}
		rt.o.Errors.Write(w, r, http.StatusNotFound, "reserved for the tunnel service")
		return
	}
	host := hostOnly(r.Host)
	if misdirected(r, host) {
		// The connection was opened for another name (HTTP/2 coalescing, or a forged Host): the
		// client must open a connection for this one.
		rt.o.Errors.Write(w, r, http.StatusMisdirectedRequest, "")
		return
	}
	if host == rt.o.GatewayDomain {
		if rt.o.ProxyOnly {
			rt.o.Errors.Write(w, r, http.StatusNotFound, "")
			return
		}
		rt.serveGateway(w, r)
		return
	}
	rt.serveTenant(w, r)
}

// serveTunnel hands the call to gRPC, with a way to fail its blocked writes. grpc-go runs the method
// handler in its own goroutine, which can outlive this one; the writer is only touched while this
// handler runs.
func (rt *Router) serveTunnel(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	var mu sync.Mutex
	done := false
	setDeadline := func(t time.Time) error {
		mu.Lock()
		defer mu.Unlock()
		if done {
			return nil
		}
		return rc.SetWriteDeadline(t)
	}
	rt.o.Tunnel.ServeHTTP(w, r.WithContext(tunnel.WithWriteDeadline(r.Context(), setDeadline)))
	mu.Lock()
	done = true
	mu.Unlock()
}

func (rt *Router) serveGateway(w http.ResponseWriter, r *http.Request) {
	switch p := r.URL.Path; {
	case p == "/healthz":
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	case p == "/readyz":
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := rt.o.Ready(ctx); err != nil {
			rt.o.Logger.Warn("not ready", "err", err)
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "error": "store unreachable"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	case strings.HasPrefix(p, "/api/v1/admin/") || p == "/api/v1/admin":
		if rt.o.Admin == nil {
			writeJSON(w, http.StatusNotFound, map[string]any{"success": false, "error": "admin API is disabled"})
			return
		}
		rt.o.Admin.ServeHTTP(w, r)
	case strings.HasPrefix(p, errorpage.AssetsPrefix):
		rt.o.Errors.Assets().ServeHTTP(w, r)
	default:
		rt.o.Errors.Write(w, r, http.StatusNotFound, "")
	}
}

func (rt *Router) serveTenant(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	reqID := requestID(r)
	sw := &statusWriter{ResponseWriter: w}
	var body *countingBody
	if r.Body != nil && r.Body != http.NoBody {
		body = &countingBody{ReadCloser: r.Body}
		r.Body = body
	}
	domain := hostname.FromHost(r.Host)
	agentID := ""
	defer func() {
		elapsed := time.Since(start)
		code := sw.code
		if code == 0 {
			// The handler wrote nothing: the visitor went away, or the response was aborted.
			code = 499
		}
		var in int64
		if body != nil {
			in = body.n.Load()
		}
		if m := rt.o.Metrics; m != nil {
			m.ObserveRequest(code, r.Method, elapsed)
			m.TunnelBytes.WithLabelValues("in").Add(float64(in))
			m.TunnelBytes.WithLabelValues("out").Add(float64(sw.bytes))
		}
		// The access log line: never the query (it may carry tokens), a key, Authorization or Cookie.
		// A visitor that went away before any answer (499) is logged at debug only: an HTTP/2 rapid
		// reset would otherwise turn 26 bytes of attack into a 300-byte log line, and a slow log sink
		// into latency for every tenant. It is still counted in the metrics.
		level := slog.LevelInfo
		if code == 499 {
			level = slog.LevelDebug
		}
		rt.o.Logger.LogAttrs(r.Context(), level, "request",
			slog.String("request_id", reqID),
			slog.String("domain", domain),
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.Int("status", code),
			slog.Int64("bytes_in", in),
			slog.Int64("bytes_out", sw.bytes),
			slog.Duration("duration", elapsed),
			slog.String("agent", agentID),
			slog.String("client", r.RemoteAddr),
			slog.String("proto", r.Proto),
		)
	}()
	if domain == "" {
		rt.fail(sw, r, http.StatusNotFound, "unknown_domain", "")
		return
	}
	if rt.o.Overloaded != nil && rt.o.Overloaded() {
		sw.Header().Set("Retry-After", "5")
		rt.fail(sw, r, http.StatusServiceUnavailable, "overload", "the gateway is overloaded; try again shortly")
		return
	}
	if agent := rt.o.Agents.Pick(domain); agent != nil {
		agentID = agent.AgentID
		rt.o.Proxy.Forward(sw, r, agent, func() *tunnel.Agent { return rt.o.Agents.Pick(domain) })
		return
	}
	// A slow store must not hold requests (and their goroutines) without bound.
	lookupCtx, cancel := context.WithTimeout(r.Context(), storeLookupTimeout)
	known, err := rt.o.Domains.Registered(lookupCtx, domain)
	cancel()
	switch {
	case err != nil:
		rt.o.Logger.Warn("domain lookup failed", "err", err)
		rt.fail(sw, r, http.StatusServiceUnavailable, "store_unavailable", "")
	case !known:
		rt.fail(sw, r, http.StatusNotFound, "unknown_domain", "")
	default:
		rt.fail(sw, r, http.StatusServiceUnavailable, "no_agent", "no agent connected for this domain")
	}
}

// requestID returns the visitor's X-Request-Id if it looks like one, else a new one, and makes sure
// the request carries it to the target.
func requestID(r *http.Request) string {
	id := r.Header.Get("X-Request-Id")
	if !validRequestID(id) {
		var b [12]byte
		_, _ = rand.Read(b[:])
		id = hex.EncodeToString(b[:])
		r.Header.Set("X-Request-Id", id)
	}
	return id
}

// validRequestID accepts up to 128 visible ASCII characters: enough for UUIDs and trace ids, and
// nothing that could break a log line.
func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}

// countingBody counts the request body bytes the proxy reads.
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func (rt *Router) fail(w http.ResponseWriter, r *http.Request, code int, reason, msg string) {
	if rt.o.Metrics != nil {
		rt.o.Metrics.ProxyErrors.WithLabelValues(reason).Inc()
	}
	rt.o.Errors.Write(w, r, code, msg)
}

// misdirected reports whether a TLS request names a host other than the one its connection was
// opened for (SNI). Clients that send no SNI (IP addresses) are not checked.
func misdirected(r *http.Request, host string) bool {
	if r.TLS == nil || r.TLS.ServerName == "" {
		return false
	}
	return !strings.EqualFold(strings.TrimSuffix(r.TLS.ServerName, "."), host)
}

// isGRPC reports whether r is a gRPC call: HTTP/2 with a gRPC content type.
func isGRPC(r *http.Request) bool {
	return r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// hostOnly lowercases a Host header and strips its port and trailing dot.
func hostOnly(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	return strings.ToLower(strings.TrimSuffix(h, "."))
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// statusWriter remembers the status code for metrics and passes everything else through.
type statusWriter struct {
	http.ResponseWriter
	code  int
	bytes int64
}

func (s *statusWriter) WriteHeader(code int) {
	if s.code == 0 && code >= 200 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(p []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(p)
	s.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush, Hijack and deadlines of the real writer.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// Flush is needed directly: httputil.ReverseProxy flushes streamed responses through it.
func (s *statusWriter) Flush() {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	http.NewResponseController(s.ResponseWriter).Flush()
}
