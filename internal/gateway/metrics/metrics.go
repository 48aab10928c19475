// Package metrics defines the server's Prometheus series, with labels bounded so that visitors cannot
// create new series.
package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds every series the server exports.
type Metrics struct {
	reg *prometheus.Registry

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
}

// AccessDeniedReasons is the fixed set of reason values of hopgate_access_denied_total: ip (403 by an
// IP rule), auth (401 from basic auth), rate (429), sso (single sign-on refused or required).
var AccessDeniedReasons = []string{"ip", "auth", "rate", "sso"}

// New registers the series on a fresh registry, with the Go and process collectors.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		reg: reg,
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
	}
	// Every reason's series exists from the first scrape, so that rate() and alerts see a 0 rather
	// than nothing before the first denial.
	for _, r := range AccessDeniedReasons {
		m.AccessDenied.WithLabelValues(r)
	}
	reg.MustRegister(m.Requests, m.Duration, m.TunnelsActive, m.TunnelConnects, m.TunnelBytes, m.ProxyErrors, m.CertExpiry, m.CertOrders,
		m.ConnectionsOpen, m.ConnectionsDropped, m.Overloaded, m.AccessDenied, m.AgentTargetsDown,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
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

// ObserveRequest counts one proxied request.
func (m *Metrics) ObserveRequest(code int, method string, elapsed time.Duration) {
	m.Requests.WithLabelValues(strconv.Itoa(code), Method(method)).Inc()
	m.Duration.Observe(elapsed.Seconds())
}
