// Package server assembles hopgate-server from its parts and runs it until its context ends.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/hopgate/hopgate/internal/acme"
	"github.com/hopgate/hopgate/internal/admin"
	"github.com/hopgate/hopgate/internal/authlimit"
	"github.com/hopgate/hopgate/internal/config"
	"github.com/hopgate/hopgate/internal/edge"
	"github.com/hopgate/hopgate/internal/errorpage"
	"github.com/hopgate/hopgate/internal/metrics"
	"github.com/hopgate/hopgate/internal/overload"
	"github.com/hopgate/hopgate/internal/profiling"
	"github.com/hopgate/hopgate/internal/proxy"
	"github.com/hopgate/hopgate/internal/registry"
	"github.com/hopgate/hopgate/internal/tunnel"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// tunnelWindow is the HTTP/2 flow-control window of a tunnel on grpc's own transport.
const tunnelWindow = 16 << 20

// Run starts the gateway described by cfg and serves until ctx ends, then shuts down gracefully:
// stop accepting, send GoAway to agents, let requests in flight finish within cfg.ShutdownTimeout.
// ready, if not nil, is called with the bound HTTPS address once the gateway serves.
func Run(ctx context.Context, cfg *config.Server, log *slog.Logger, ready func(httpsAddr net.Addr)) error {
	store, err := registry.Open(ctx, registry.Options{
		DSN:             cfg.DBDSN,
		DataDir:         cfg.DataDir,
		MaxOpenConns:    cfg.DBMaxOpenConns,
		MaxIdleConns:    cfg.DBMaxIdleConns,
		ConnMaxLifetime: cfg.DBConnMaxLifetime,
	})
	if err != nil {
		return fmt.Errorf("open domain store: %w", err)
	}
	defer store.Close()
	if cfg.DBDSN == "" {
		log.Info("domain store: embedded SQLite", "path", filepath.Join(cfg.DataDir, registry.DBFile))
	} else {
		log.Info("domain store: PostgreSQL")
	}

	pages, err := errorpage.New(cfg.ErrorPagesDir, cfg.ErrorAssetsDir)
	if err != nil {
		return err
	}
	m := metrics.New()
	hub := tunnel.NewHub(func(total int) { m.TunnelsActive.Set(float64(total)) })

	var httpsPort atomic.Value
	authLimiter := authlimit.New(cfg.AuthFailuresPerMin)
	svcOpts := tunnel.ServiceOptions{
		PingInterval:       cfg.TunnelPingInterval,
		MaxStreams:         cfg.MaxStreamsPerTunnel,
		MaxAgentsPerDomain: cfg.MaxAgentsPerDomain,
		PublicURL:          publicURL(&httpsPort),
		OnConnect:          func(result string) { m.TunnelConnects.WithLabelValues(result).Inc() },
		Logger:             log,
	}
	if authLimiter != nil {
		// Only a real limiter goes in: a nil *Limiter in the interface would not be nil.
		svcOpts.AuthLimiter = authLimiter
	}
	svc := tunnel.NewService(hub, authenticator{store}, svcOpts)
	grpcServer := grpc.NewServer(append(tunnel.ServerOptions(),
		// Agents that negotiate edge.TunnelALPN are served by grpc's own transport, which enforces
		// keepalive: a frozen agent's connection is closed, which also frees a Send blocked on it.
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    cfg.TunnelPingInterval,
			Timeout: 2 * cfg.TunnelPingInterval,
		}),
		// One HTTP/2 stream carries a whole tunnel; the tunnel's own per-request credit bounds memory,
		// so these windows only keep the pipe full.
		grpc.InitialWindowSize(tunnelWindow),
		grpc.InitialConnWindowSize(tunnelWindow),
		// Idle tunnels are the common case, and each held a 32 KiB read buffer for good (the write
		// buffer is already shared between flushes by default). Every tunnel connection is a tls.Conn,
		// which holds the decrypted record itself, so reading frames straight from it costs no syscall.
		grpc.ReadBufferSize(0),
	)...)
	tunnelv1.RegisterTunnelServiceServer(grpcServer, svc)

	certs, err := newCertSource(ctx, cfg, store, m, log)
	if err != nil {
		return err
	}
	certCtx, stopCerts := context.WithCancel(context.WithoutCancel(ctx))
	waitCerts := certs.run(certCtx, log)
	defer func() {
		stopCerts()
		waitCerts()
	}()

	var adminAPI http.Handler
	if cfg.AdminAPIKey == "" {
		log.Warn("admin API disabled: HOP_ADMIN_API_KEY is empty")
	} else {
		opts := []admin.Option{admin.Reserved(cfg.Domain)}
		if certs.acme != nil {
			opts = append(opts, admin.WithCertificates(adminCerts{certs.acme}))
		}
		adminAPI = authLimiter.Middleware(admin.New(store, hub, cfg.AdminAPIKey, log, opts...))
	}

	gw := proxy.NewGateway(proxy.GatewayOptions{
		HeaderTimeout:  cfg.ProxyTimeout,
		TrustedProxies: cfg.TrustedProxies,
		WriteError: func(w http.ResponseWriter, r *http.Request, code int, err error) {
			m.ProxyErrors.WithLabelValues(proxyReason(code)).Inc()
			pages.Write(w, r, code, http.StatusText(code))
		},
		Logger: log,
	})
	mem := overload.New()
	if mem != nil {
		log.Info("memory limit set: new requests are shed with 503 above the high-water mark",
			"limit_bytes", mem.Limit(), "high_water", overload.HighWater, "low_water", overload.LowWater)
		mem.OnChange = func(over bool, used, limit int64) {
			if over {
				m.Overloaded.Set(1)
				log.Warn("memory near the limit: shedding new requests", "used_bytes", used, "limit_bytes", limit)
			} else {
				m.Overloaded.Set(0)
				log.Info("memory back under the low-water mark: serving again", "used_bytes", used, "limit_bytes", limit)
			}
		}
		go mem.Run(ctx)
	}
	routerOpts := edge.RouterOptions{
		Overloaded:    mem.Overloaded,
		GatewayDomain: cfg.Domain,
		Tunnel:        grpcServer,
		Admin:         adminAPI,
		Ready:         store.Ping,
		Agents:        hub,
		Domains:       domains{store},
		Proxy:         gw,
		Errors:        pages,
		Metrics:       m,
		Logger:        log,
	}
	var plain http.Handler
	if cfg.HTTPProxy {
		plainOpts := routerOpts
		plainOpts.ProxyOnly = true
		plain = edge.NewRouter(plainOpts)
	}

	listenOpts := edge.ListenOptions{
		HTTPSAddr: cfg.HTTPSListen,
		HTTPAddr:  cfg.HTTPListen,
		TLSConfig: certs.tls,
		HTTPS:     edge.NewRouter(routerOpts),
		HTTP:      plain,
		MaxConns:  cfg.MaxConnections,
		Events:    connEvents{m},
		Errors:    pages,
		Logger:    log,
	}
	tunnelConns := edge.NewConnListener()
	listenOpts.TunnelConns = tunnelConns
	if certs.acme != nil {
		// Both ACME challenges are answered on our own listeners: HTTP-01 before anything else on the
		// plain port, TLS-ALPN-01 in the handshake on the HTTPS port.
		listenOpts.WrapHTTP = certs.acme.HTTPHandler
		listenOpts.ExtraALPN = []string{acme.ALPNProto}
	}
	srv, err := edge.Listen(listenOpts)
	if err != nil {
		return err
	}
	if a, ok := srv.HTTPSAddr().(*net.TCPAddr); ok {
		httpsPort.Store(strconv.Itoa(a.Port))
	}
	grpcDone := make(chan struct{})
	go func() {
		defer close(grpcDone)
		_ = grpcServer.Serve(tunnelConns) // returns when Stop closes the listener
	}()
	metricsSrv, err := serveMetrics(cfg.MetricsListen, cfg.Pprof, m, log)
	if err != nil {
		_ = srv.Shutdown(context.Background())
		return err
	}
	log.Info("hopgate-server listening", "https", srv.HTTPSAddr().String(), "http", fmt.Sprint(srv.HTTPAddr()), "domain", cfg.Domain, "debug", cfg.Debug)
	if ready != nil {
		ready(srv.HTTPSAddr())
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "grace", cfg.ShutdownTimeout)
	case runErr = <-srv.Errors():
		log.Error("listener failed", "err", runErr)
	}

	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	drained := make(chan struct{})
	go func() {
		svc.Drain(shutdownCtx)
		// Tunnels drained: close grpc's own connections too, which the HTTPS server's Shutdown
		// counts as active until then.
		grpcServer.Stop()
		close(drained)
	}()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Warn("shutdown", "err", err)
	}
	<-drained
	<-grpcDone
	if metricsSrv != nil {
		_ = metricsSrv.Close()
	}
	log.Info("stopped")
	return runErr
}

func serveMetrics(addr string, withPprof bool, m *metrics.Metrics, log *slog.Logger) (*http.Server, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen metrics on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	if withPprof {
		profiling.Mount(mux)
	}
	s := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.Serve(ln) }()
	log.Info("metrics listening", "addr", ln.Addr().String())
	return s, nil
}

// publicURL tells agents where their domain is served. The port is the one bound, which differs from
// the configured one when that is 0; tunnels only start after the listener is bound.
func publicURL(port *atomic.Value) func(string) string {
	return func(domain string) string {
		p, _ := port.Load().(string)
		if p == "" || p == "443" {
			return "https://" + domain
		}
		return "https://" + net.JoinHostPort(domain, p)
	}
}

func proxyReason(code int) string {
	switch code {
	case http.StatusServiceUnavailable:
		return "no_agent"
	case http.StatusGatewayTimeout:
		return "timeout"
	default:
		return "upstream"
	}
}

// authenticator adapts the registry to the tunnel service.
type authenticator struct{ store *registry.Store }

func (a authenticator) Authenticate(ctx context.Context, domain, key string) (string, error) {
	d, err := a.store.Authenticate(ctx, domain, key)
	switch {
	case errors.Is(err, registry.ErrNotFound), errors.Is(err, registry.ErrInvalidInput):
		return "", fmt.Errorf("%w: %w", tunnel.ErrUnknownDomain, err)
	case errors.Is(err, registry.ErrKeyMismatch):
		return "", fmt.Errorf("%w: %w", tunnel.ErrBadKey, err)
	case err != nil:
		return "", err
	}
	return d.Name, nil
}

// connEvents feeds the listeners' connection events to the metrics.
type connEvents struct{ m *metrics.Metrics }

func (e connEvents) Opened()               { e.m.ConnectionsOpen.Inc() }
func (e connEvents) Closed()               { e.m.ConnectionsOpen.Dec() }
func (e connEvents) Dropped(reason string) { e.m.ConnectionsDropped.WithLabelValues(reason).Inc() }

// domains adapts the registry to the router.
type domains struct{ store *registry.Store }

func (d domains) Registered(ctx context.Context, name string) (bool, error) {
	_, err := d.store.Get(ctx, name)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, registry.ErrNotFound), errors.Is(err, registry.ErrInvalidInput):
		return false, nil
	default:
		return false, fmt.Errorf("%w: %w", edge.ErrStoreUnavailable, err)
	}
}
