// Package agentmetrics exposes an agent's tunnel state and traffic as Prometheus series on its own
// registry and listener.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hopgate/hopgate/internal/agent/supervisor"
	"github.com/hopgate/hopgate/internal/profiling"
	"github.com/hopgate/hopgate/internal/tunnel"
)

// Metrics holds the agent's series. The zero value is not usable; call New.
type Metrics struct {
	reg           *prometheus.Registry
	up            prometheus.Gauge
	reconnects    prometheus.Counter
	streamsActive prometheus.Gauge
	streamsTotal  prometheus.Counter
	toTarget      prometheus.Counter
	fromTarget    prometheus.Counter
	targetsUp     prometheus.Gauge
	targetsDown   prometheus.Gauge
	// gatewayUp counts, per gateway address, the tunnels up to it: one label per address the agent
	// holds tunnels to, at most --ha-connections of them.
	gatewayUp *prometheus.GaugeVec
}

// New registers the agent's series, and the Go and process collectors, on a fresh registry.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hopgate_client_bytes_total",
		Help: "Body bytes proxied, by direction seen from the local target (to_target: request bodies, from_target: response bodies).",
	}, []string{"direction"})
	m := &Metrics{
		reg: reg,
		up: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopgate_client_tunnel_up",
			Help: "Tunnel calls the gateways have accepted and that are up: one per hostname and gateway (1 for a single-domain agent with one gateway), 0 when none is.",
		}),
		gatewayUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hopgate_client_gateway_tunnels_up",
			Help: "Tunnel calls up to each gateway address (ip:port, or the configured host:port when it is not resolved here): one per hostname when the gateway serves them all.",
		}, []string{"gateway"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hopgate_client_reconnects_total",
			Help: "Reconnect attempts scheduled after a tunnel ended or an attempt failed.",
		}),
		streamsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopgate_client_streams_active",
			Help: "Requests being served now.",
		}),
		streamsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hopgate_client_streams_total",
			Help: "Requests served since start.",
		}),
		// Counts, not one series per target: targets are the operator's URLs, and a count is what an
		// alert needs ("some target of this agent is down"); the agent's log names the target.
		targetsUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopgate_client_target_up",
			Help: "Distinct local targets (one per target and health check) whose last checks pass.",
		}),
		targetsDown: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopgate_client_target_down",
			Help: "Distinct local targets that failed their health check twice in a row and have not passed since.",
		}),
		// Both directions exist from the start so that rate() has a zero to begin from.
		toTarget:   bytes.WithLabelValues("to_target"),
		fromTarget: bytes.WithLabelValues("from_target"),
	}
	reg.MustRegister(m.up, m.gatewayUp, m.reconnects, m.targetsUp, m.targetsDown, m.streamsActive, m.streamsTotal, bytes,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// Instrument returns o with hooks that feed the series: tunnel up and down, reconnect attempts, body
// bytes, and a Serve that counts streams. Hooks already set in o still run.
func (m *Metrics) Instrument(o supervisor.Options) supervisor.Options {
	onUp, onDown, onRetry, onBytes, serve := o.OnUp, o.OnDown, o.OnReconnectAttempt, o.OnBodyBytes, o.Serve
	o.OnUp = func(url string) {
		m.up.Inc()
		if onUp != nil {
			onUp(url)
		}
	}
	o.OnDown = func(err error) {
		m.up.Dec()
		if onDown != nil {
			onDown(err)
		}
	}
	o.OnReconnectAttempt = func(d time.Duration) {
		m.reconnects.Inc()
		if onRetry != nil {
			onRetry(d)
		}
	}
	o.OnBodyBytes = func(dir supervisor.Direction, n int) {
		if dir == supervisor.ToTarget {
			m.toTarget.Add(float64(n))
		} else {
			m.fromTarget.Add(float64(n))
		}
		if onBytes != nil {
			onBytes(dir, n)
		}
	}
	if serve != nil {
		o.Serve = func(st *tunnel.Stream) {
			m.streamsTotal.Inc()
			m.streamsActive.Inc()
			defer m.streamsActive.Dec()
			serve(st)
		}
	}
	return o
}

// InstrumentGateway returns o with OnUp and OnDown also counting the tunnels up to gateway (the
// series exists, at 0, from this call on). Apply it to options Instrument has fed already.
func (m *Metrics) InstrumentGateway(o supervisor.Options, gateway string) supervisor.Options {
	g := m.gatewayUp.WithLabelValues(gateway)
	onUp, onDown := o.OnUp, o.OnDown
	o.OnUp = func(url string) {
		g.Inc()
		if onUp != nil {
			onUp(url)
		}
	}
	o.OnDown = func(err error) {
		g.Dec()
		if onDown != nil {
			onDown(err)
		}
	}
	return o
}

// ForgetGateway drops the series of a gateway the agent no longer holds tunnels to.
func (m *Metrics) ForgetGateway(gateway string) { m.gatewayUp.DeleteLabelValues(gateway) }

// SetTargets records how many targets are checked and how many of them are down.
func (m *Metrics) SetTargets(targets, down int) {
	m.targetsUp.Set(float64(targets - down))
	m.targetsDown.Set(float64(down))
}

// Handler serves the series in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Server serves /metrics on its own listener.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan error
}

// Listen binds addr and starts serving /metrics on it, and /debug/pprof/ when withPprof is set.
func (m *Metrics) Listen(addr string, withPprof bool) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	if withPprof {
		profiling.Mount(mux)
	}
	s := &Server{
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute},
		ln:   ln,
		done: make(chan error, 1),
	}
	go func() { s.done <- s.srv.Serve(ln) }()
	return s, nil
}

// Addr is the address the listener is bound to (with the real port when addr asked for port 0).
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the listener and waits for scrapes in flight, within ctx.
func (s *Server) Close(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if serveErr := <-s.done; !errors.Is(serveErr, http.ErrServerClosed) {
		err = errors.Join(err, serveErr)
	}
	return err
}
