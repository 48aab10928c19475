// Package metrics defines the server's Prometheus series, with labels bounded so that visitors cannot
// create new series.
package metrics

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds every series the server exports.
type Metrics struct {
	reg *prometheus.Registry
	// registerer is reg with the constant labels.
	registerer prometheus.Registerer

	Requests       *prometheus.CounterVec
	Duration       prometheus.Histogram
	TunnelsActive  prometheus.Gauge
	TunnelConnects *prometheus.CounterVec
	TunnelBytes    *prometheus.CounterVec
	ProxyErrors    *prometheus.CounterVec
	CertExpiry     *prometheus.GaugeVec
	CertOrders     *prometheus.CounterVec

	ConnectionsOpen    prometheus.Gauge
	ConnectionsDropped *prometheus.CounterVec
	Overloaded         prometheus.Gauge
	// AgentTargetsDown is the number of service path prefixes that connected agents report down:
	// no domain label (per-tenant labels are not allowed), the admin API names them.
	AgentTargetsDown prometheus.Gauge

	// AccessDenied counts requests refused by a domain's access policy, by reason (one of
	// AccessDeniedReasons). The proxy counts each denial once, where it renders the refusal; the
	// access guard that decides does not, so that a denial is never counted twice.
	AccessDenied *prometheus.CounterVec

	// requests caches Requests' counter per (status, method) and bytesIn/bytesOut TunnelBytes' two:
	// a label lookup hashes the values and takes the vector's lock, on every request.
	requests          sync.Map // requestKey → prometheus.Counter
	bytesIn, bytesOut prometheus.Counter

	// Raw connections: TCP-mode ports and TLS passthrough (package rawedge). Labels are mode (one of
	// TCPModes), result (one of TCPResults) and direction (in: visitor to target, out: back); never a
	// domain, an address or a port.
	//
	// TCPConnectionsOpen is hopgate_tcp_connections_open{mode}: raw connections open now, from
	// accept to close.
	TCPConnectionsOpen *prometheus.GaugeVec
	// TCPConnections is hopgate_tcp_connections_total{mode,result}: raw connections ended, by how
	// (ok once the agent's target answered, else why it was refused).
	TCPConnections *prometheus.CounterVec
	// TCPBytes is hopgate_tcp_bytes_total{mode,direction}: bytes carried on raw connections.
	TCPBytes *prometheus.CounterVec
	// TCPDuration is hopgate_tcp_connection_duration_seconds{mode}: how long raw connections that
	// reached their target lasted, to hours.
	TCPDuration *prometheus.HistogramVec
}

// TCPModes is the fixed set of mode values of the hopgate_tcp_* series.
var TCPModes = []string{"tcp", "tls_passthrough"}

// TCPResults is the fixed set of result values of hopgate_tcp_connections_total: ok (carried to
// the target), denied (an IP rule or rate limit of the domain's policy), over_limit (the domain's
// open-connection cap), no_agent (no agent that serves raw streams), agent_error (the stream could
// not be opened), target_unreachable (the agent could not dial its target), timeout (the agent did
// not answer in time), forged_proxy_header (a PROXY header from a peer that is not a trusted
// balancer, or none from one that is), store_unavailable (the policy could not be read).
var TCPResults = []string{"ok", "denied", "over_limit", "no_agent", "agent_error", "target_unreachable",
	"timeout", "forged_proxy_header", "store_unavailable"}

// AccessDeniedReasons is the fixed set of reason values of hopgate_access_denied_total: ip (403 by an
// IP rule), auth (401 from basic auth), rate (429), sso (single sign-on refused or required).
var AccessDeniedReasons = []string{"ip", "auth", "rate", "sso"}

// New registers the series on a fresh registry, with the Go and process collectors.
func New() *Metrics { return NewWithLabels(nil) }

// ForGateway is New with every series labelled gateway_id=id, so that one dashboard tells the
// gateways of a cluster apart.
func ForGateway(id string) *Metrics { return NewWithLabels(prometheus.Labels{"gateway_id": id}) }

// NewWithLabels is New with constant labels on every series (none when labels is empty).
func NewWithLabels(labels prometheus.Labels) *Metrics {
	reg := prometheus.NewRegistry()
	var registerer prometheus.Registerer = reg
	if len(labels) > 0 {
		registerer = prometheus.WrapRegistererWith(labels, reg)
	}
	m := &Metrics{
		reg: reg, registerer: registerer,
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopgate_http_requests_total", Help: "Proxied HTTP requests by status code and method.",
		}, []string{"code", "method"}),
		Duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "hopgate_http_request_duration_seconds", Help: "Time to serve proxied requests, to the end of the body.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}),
		TunnelsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopgate_tunnels_active", Help: "Agent tunnels connected now.",
		}),
		TunnelConnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopgate_tunnel_connects_total", Help: "Tunnel attempts by result.",
		}, []string{"result"}),
		TunnelBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopgate_tunnel_bytes_total", Help: "Body bytes carried through tunnels, by direction.",
		}, []string{"direction"}),
		ProxyErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopgate_proxy_errors_total", Help: "Requests the gateway answered with its own error, by reason.",
		}, []string{"reason"}),
		CertExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hopgate_certificate_expiry_timestamp_seconds", Help: "Expiry of served certificates (Unix time).",
		}, []string{"name"}),
		CertOrders: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopgate_certificate_orders_total", Help: "ACME orders by result (ok, error).",
		}, []string{"result"}),
		ConnectionsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopgate_connections_open", Help: "Connections open now on the HTTPS and HTTP listeners (agents' included).",
		}),
		ConnectionsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopgate_connections_dropped_total", Help: "Connections the gateway closed on its own, by reason (over_limit, rapid_reset).",
		}, []string{"reason"}),
		Overloaded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopgate_overloaded", Help: "1 while memory is near GOMEMLIMIT and new requests are shed with 503.",
		}),
		AgentTargetsDown: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopgate_agent_targets_down", Help: "Service path prefixes whose local target connected agents report down (all domains).",
		}),
		AccessDenied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopgate_access_denied_total", Help: "Requests refused by a domain's access policy, by reason (ip, auth, rate, sso).",
		}, []string{"reason"}),
		TCPConnectionsOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hopgate_tcp_connections_open", Help: "Raw connections (TCP ports, TLS passthrough) open now, by mode.",
		}, []string{"mode"}),
		TCPConnections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopgate_tcp_connections_total", Help: "Raw connections (TCP ports, TLS passthrough) ended, by mode and result.",
		}, []string{"mode", "result"}),
		TCPBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopgate_tcp_bytes_total", Help: "Bytes carried on raw connections, by mode and direction (in: visitor to target).",
		}, []string{"mode", "direction"}),
		TCPDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "hopgate_tcp_connection_duration_seconds", Help: "Lifetime of raw connections that reached their target, by mode.",
			// 10 ms to about 11.6 hours.
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 12),
		}, []string{"mode"}),
	}
	// Every reason's series exists from the first scrape, so that rate() and alerts see a 0 rather
	// than nothing before the first denial.
	for _, r := range AccessDeniedReasons {
		m.AccessDenied.WithLabelValues(r)
	}
	for _, mode := range TCPModes {
		m.TCPConnectionsOpen.WithLabelValues(mode)
		m.TCPDuration.WithLabelValues(mode)
		for _, r := range TCPResults {
			m.TCPConnections.WithLabelValues(mode, r)
		}
		for _, d := range []string{"in", "out"} {
			m.TCPBytes.WithLabelValues(mode, d)
		}
	}
	m.bytesIn, m.bytesOut = m.TunnelBytes.WithLabelValues("in"), m.TunnelBytes.WithLabelValues("out")
	registerer.MustRegister(m.Requests, m.Duration, m.TunnelsActive, m.TunnelConnects, m.TunnelBytes, m.ProxyErrors, m.CertExpiry, m.CertOrders,
		m.ConnectionsOpen, m.ConnectionsDropped, m.Overloaded, m.AccessDenied, m.AgentTargetsDown,
		m.TCPConnectionsOpen, m.TCPConnections, m.TCPBytes, m.TCPDuration,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.registerer})
}

var standardMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true, http.MethodPut: true,
	http.MethodPatch: true, http.MethodDelete: true, http.MethodConnect: true, http.MethodOptions: true,
	http.MethodTrace: true,
}

// Method bounds the method label: anything non-standard is OTHER.
func Method(m string) string {
	if standardMethods[m] {
		return m
	}
	return "OTHER"
}

type requestKey struct {
	code   int
	method string
}

// ObserveRequest counts one proxied request and its body bytes (in from the visitor, out to it).
// The set of counters stays bounded: Method has ten values and a status code three digits.
func (m *Metrics) ObserveRequest(code int, method string, elapsed time.Duration, in, out int64) {
	k := requestKey{code, Method(method)}
	c, ok := m.requests.Load(k)
	if !ok {
		c, _ = m.requests.LoadOrStore(k, m.Requests.WithLabelValues(strconv.Itoa(code), k.method))
	}
	c.(prometheus.Counter).Inc()
	m.Duration.Observe(elapsed.Seconds())
	m.bytesIn.Add(float64(in))
	m.bytesOut.Add(float64(out))
}
