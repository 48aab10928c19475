// Package gateway assembles hopgate-server from its parts and runs them in three phases, like
// net/http.Server: New builds everything (and fails on bad input; nothing listens yet), Serve runs
// every part until Shutdown or until one part fails, Shutdown stops accepting, drains the tunnels and
// the requests in flight, then stops the rest.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/hopgate/hopgate/internal/config"
	"github.com/hopgate/hopgate/internal/gateway/access"
	"github.com/hopgate/hopgate/internal/gateway/access/sso"
	"github.com/hopgate/hopgate/internal/gateway/acme"
	"github.com/hopgate/hopgate/internal/gateway/admin"
	"github.com/hopgate/hopgate/internal/gateway/authlimit"
	"github.com/hopgate/hopgate/internal/gateway/cluster"
	"github.com/hopgate/hopgate/internal/gateway/console"
	"github.com/hopgate/hopgate/internal/gateway/edge"
	"github.com/hopgate/hopgate/internal/gateway/errorpage"
	"github.com/hopgate/hopgate/internal/gateway/inspect"
	"github.com/hopgate/hopgate/internal/gateway/metrics"
	"github.com/hopgate/hopgate/internal/gateway/overload"
	"github.com/hopgate/hopgate/internal/gateway/policy"
	"github.com/hopgate/hopgate/internal/gateway/proxy"
	"github.com/hopgate/hopgate/internal/gateway/rawedge"
	"github.com/hopgate/hopgate/internal/gateway/registry"
	"github.com/hopgate/hopgate/internal/gateway/site"
	"github.com/hopgate/hopgate/internal/gateway/tunnelsvc"
	"github.com/hopgate/hopgate/internal/pause"
	"github.com/hopgate/hopgate/internal/profiling"
)

// Gateway is a hopgate-server: its store, listeners, tunnel service, proxy and background work.
type Gateway struct {
	cfg     *config.Server
	log     *slog.Logger
	store   *registry.Store
	metrics *metrics.Metrics
	hub     *tunnelsvc.Hub
	tunnels *tunnelsvc.Service
	certs   *certSource
	mem     *overload.Watcher
	// inspector keeps the opted-in domains' recent requests in this gateway's memory.
	inspector *inspect.Inspector
	// overview samples the process's counters for the console's charts; nil with the console off.
	overview *console.Sampler
	// raw carries the TCP-mode ports and the TLS-passthrough names.
	raw *rawedge.Edge
	// cluster keeps this gateway in step with the others on the same PostgreSQL; nil on SQLite.
	cluster *cluster.Cluster
	// draining is set when Shutdown starts: /readyz answers 503 from then on.
	draining atomic.Bool
	// edgeOpts is everything the listeners need; Listen binds them.
	edgeOpts edge.Options
	edge     *edge.Server
	metricsS *http.Server
	metricsL net.Listener
	// httpsPort is the bound HTTPS port, for the public URL agents are told.
	httpsPort atomic.Value

	// background ends the certificate manager and the memory watcher.
	background     context.Context
	stopBackground context.CancelFunc

	stopOnce sync.Once
	stopErr  error
	// stopped is closed when Shutdown has done its work.
	stopped chan struct{}
}

// New builds the gateway described by cfg: it opens (and migrates) the store, loads the error pages
// and certificates, and wires the parts. Nothing listens until Listen or Serve; Close releases what
// New opened when Serve is never called.
func New(ctx context.Context, cfg *config.Server, log *slog.Logger) (_ *Gateway, err error) {
	m := metrics.New()
	if cfg.ServerID != "" {
		// One id on every line and series tells the gateways of a cluster apart in shared logs
		// and dashboards.
		log = log.With("gateway_id", cfg.ServerID)
		m = metrics.ForGateway(cfg.ServerID)
	}
	g := &Gateway{cfg: cfg, log: log, metrics: m, stopped: make(chan struct{})}
	g.background, g.stopBackground = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			g.Close()
		}
	}()
	g.store, err = registry.Open(ctx, registry.Options{
		DSN:             cfg.DBDSN,
		DataDir:         cfg.DataDir,
		MaxOpenConns:    cfg.DBMaxOpenConns,
		MaxIdleConns:    cfg.DBMaxIdleConns,
		ConnMaxLifetime: cfg.DBConnMaxLifetime,
	})
	if err != nil {
		return nil, fmt.Errorf("open domain store: %w", err)
	}
	if cfg.DBDSN == "" {
		log.Info("domain store: embedded SQLite", "path", filepath.Join(cfg.DataDir, registry.DBFile))
	} else {
		log.Info("domain store: PostgreSQL")
	}
	pages, err := errorpage.New(cfg.ErrorPagesDir, cfg.ErrorAssetsDir)
	if err != nil {
		return nil, err
	}
	m = g.metrics
	g.hub = tunnelsvc.NewHub(func(total int) { m.TunnelsActive.Set(float64(total)) })
	hub := g.hub
	hub.OnHealth(func(down int) { m.AgentTargetsDown.Set(float64(down)) })
	authLimiter := authlimit.New(cfg.AuthFailuresPerMin)
	svcOpts := tunnelsvc.ServiceOptions{
		PingInterval:       cfg.TunnelPingInterval,
		MaxStreams:         cfg.MaxStreamsPerTunnel,
		MaxAgentsPerDomain: cfg.MaxAgentsPerDomain,
		PublicURL:          g.publicURL,
		OnConnect:          func(result string) { m.TunnelConnects.WithLabelValues(result).Inc() },
		Logger:             log,
	}
	if authLimiter != nil {
		// Only a real limiter goes in: a nil *Limiter in the interface would not be nil.
		svcOpts.AuthLimiter = authLimiter
	}
	oidcClient, err := cfg.OIDCHTTPClient()
	if err != nil {
		return nil, err
	}
	var keyGeneration atomic.Uint64 // counts session-key rotations through this gateway's admin API
	signOn := sso.New(sso.Options{
		Key:           g.store.SessionKey,
		KeyGeneration: keyGeneration.Load,
		HTTPClient:    oidcClient,
		Port:          listenPort(cfg.HTTPSListen),
		Logger:        log,
	})
	guard := access.New(access.Options{
		Store:   policies{g.store},
		SSO:     signOn,
		Metrics: m,
		Logger:  log,
	})
	loggedIn := func(domain, keyID string) {
		if g.cluster != nil { // set below, before anything listens
			g.cluster.LoggedIn(domain, keyID)
		}
	}
	g.tunnels = tunnelsvc.NewService(hub, authenticator{g.store, guard, loggedIn}, svcOpts)

	if g.certs, err = newCertSource(ctx, cfg, g.store, m, log); err != nil {
		return nil, err
	}
	registered := newUnknownCache(domains{g.store})
	g.raw = rawedge.New(rawedge.Options{
		Source:            rawRoutes{g.store},
		Agents:            rawAgents{hub},
		Access:            guard,
		Registered:        registered.Registered,
		ListenHost:        cfg.TCPListenHost,
		Ports:             cfg.TCPPorts,
		TrustedLB:         cfg.ProxyProtocolFrom,
		MaxConnsPerDomain: cfg.TCPMaxConnsPerDomain,
		IdleTimeout:       cfg.TCPIdleTimeout,
		HeaderTimeout:     cfg.ProxyTimeout,
		Metrics:           m,
		Logger:            log,
	})
	// With PostgreSQL the store may be shared: the change feed applies the other gateways' writes
	// here within a second (a gateway alone is a cluster of one), and this gateway's admin writes
	// are announced to them.
	var (
		adminReg    admin.Registry = g.store
		adminAgents admin.Agents   = hub
	)
	if g.store.Shared() {
		reload := func() {
			if err := g.raw.Reload(g.background); err != nil && g.background.Err() == nil {
				log.Warn("raw edge reload failed; the change applies at the next refresh", "err", err)
			}
		}
		g.cluster, err = cluster.New(cluster.Options{
			ID: cfg.ServerID, DSN: cfg.DBDSN, Store: g.store, Tunnels: hubTunnels{hub}, Logger: log,
			Changed: func(ev cluster.Event) {
				switch ev.Event {
				case cluster.Policy:
					guard.Invalidate(ev.Domain)
				case cluster.SessionKey:
					keyGeneration.Add(1)
				case cluster.Register, cluster.Unregister, cluster.Mode:
					registered.forget(ev.Domain)
					guard.Invalidate(ev.Domain)
					reload()
					ctx, cancel := context.WithTimeout(g.background, certFollowTimeout)
					g.certs.follow(ctx, g.store, ev.Domain, log)
					cancel()
				}
			},
			Resynced: func(ctx context.Context, domains []string) {
				for _, d := range domains {
					guard.Invalidate(d)
				}
				reload()
				ctx, cancel := context.WithTimeout(ctx, certFollowTimeout)
				g.certs.followAll(ctx, g.store, log)
				cancel()
			},
		})
		if err != nil {
			return nil, err
		}
		adminReg = publishing{Store: g.store, cluster: g.cluster, log: log}
		adminAgents = clusterAgents{hub: hub, cluster: g.cluster}
	} else {
		log.Info("embedded SQLite store: this gateway runs alone; several gateways need HOP_DB_DSN on one PostgreSQL")
	}
	if g.mem = overload.New(); g.mem != nil {
		log.Info("memory limit set: new requests are shed with 503 above the high-water mark",
			"limit_bytes", g.mem.Limit(), "high_water", overload.HighWater, "low_water", overload.LowWater)
		g.mem.OnChange = func(over bool, used, limit int64) {
			if over {
				m.Overloaded.Set(1)
				log.Warn("memory near the limit: shedding new requests", "used_bytes", used, "limit_bytes", limit)
			} else {
				m.Overloaded.Set(0)
				log.Info("memory back under the low-water mark: serving again", "used_bytes", used, "limit_bytes", limit)
			}
		}
	}
	g.inspector = inspect.New(inspect.Options{RedactHeaders: append([]string{"X-HopGate-Api-Key"}, cfg.InspectRedactHeaders...)})
	tenants := g.inspector.Wrap(proxy.New(proxy.Options{
		Agents:         hubAgents{hub},
		Domains:        registered,
		HeaderTimeout:  cfg.ProxyTimeout,
		TrustedProxies: cfg.TrustedProxies,
		Overloaded:     g.mem.Overloaded,
		Access:         guard,
		MaxBodyBytes:   cfg.MaxBodyBytes,
		Errors:         pages,
		Metrics:        m,
		Logger:         log,
	}))
	var adminAPI, consoleUI http.Handler
	if cfg.AdminAPIKey == "" {
		log.Warn("admin API disabled: HOP_ADMIN_API_KEY is empty")
	} else {
		opts := []admin.Option{admin.Reserved(cfg.Domain), admin.WithOIDCClient(oidcClient), admin.OnPolicyChange(guard.Invalidate),
			admin.OnSessionKeyRotated(func() { keyGeneration.Add(1) }), admin.WithAgentHealth(agentHealth(hub)), admin.WithPorts(g.raw),
			admin.WithAudit(g.store), admin.WithAgentDirectory(agentDirectory{hub}), admin.WithCertificateList(g.certs.list)}
		if g.certs.acme != nil {
			opts = append(opts, admin.WithCertificates(adminCerts{g.certs.acme}))
		}
		if g.certs.noWildcards != "" {
			opts = append(opts, admin.RefuseWildcards(g.certs.noWildcards))
		}
		opts = append(opts, admin.WithInspector(g.inspector, tenants))
		api := admin.New(adminReg, adminAgents, cfg.AdminAPIKey, log, opts...)
		adminAPI = authLimiter.Middleware(api)
		if cfg.Console {
			var consoleSSO access.SSO
			if o := cfg.ConsoleOIDC; o.Issuer != "" {
				// The gateway's own name as a domain with an OIDC policy: the same code flow, checks
				// and cookies as a tenant's single sign-on.
				if consoleSSO, err = signOn(cfg.Domain, policy.OIDC{Issuer: o.Issuer, ClientID: o.ClientID, ClientSecret: o.ClientSecret,
					AllowedEmails: o.AllowedEmails, AllowedDomains: o.AllowedDomains, AllowedGroups: o.AllowedGroups}); err != nil {
					return nil, fmt.Errorf("console single sign-on: %w", err)
				}
			}
			g.overview = console.NewSampler(m.Totals)
			consoleUI = console.New(console.Options{
				Admin: api, AdminKey: cfg.AdminAPIKey, Sessions: g.store, Audit: g.store, Limiter: authLimiter,
				Overview: g.overview, Inspector: g.inspector, Tenants: tenants, SSO: consoleSSO, Logger: log,
			})
			log.Info("web console on", "url", "https://"+cfg.Domain+"/console/")
		}
	}

	g.edgeOpts = edge.Options{
		HTTPSAddr:         cfg.HTTPSListen,
		HTTPAddr:          cfg.HTTPListen,
		TLSConfig:         g.certs.tls,
		GatewayDomain:     cfg.Domain,
		Tunnels:           g.tunnels,
		Gateway:           site.New(site.Options{Ready: g.store.Ping, Draining: g.draining.Load, Admin: adminAPI, Console: consoleUI, Errors: pages, Logger: log}),
		Tenants:           tenants,
		Passthrough:       g.raw,
		PlainTenants:      cfg.HTTPProxy,
		ProxyProtocolFrom: cfg.ProxyProtocolFrom,
		MaxConns:          cfg.MaxConnections,
		Events:            connEvents{m},
		Errors:            pages,
		Logger:            log,
	}
	if g.certs.acme != nil {
		// Both ACME challenges are answered on our own listeners: HTTP-01 before anything else on the
		// plain port, TLS-ALPN-01 in the handshake on the HTTPS port.
		g.edgeOpts.WrapHTTP = g.certs.acme.HTTPHandler
		g.edgeOpts.ExtraALPN = []string{acme.ALPNProto}
	}
	return g, nil
}

// Listen binds the public listeners and the metrics listener. Serve calls it if it was not called.
func (g *Gateway) Listen() error {
	if g.edge != nil {
		return nil
	}
	srv, err := edge.Listen(g.edgeOpts)
	if err != nil {
		return err
	}
	if addr := g.cfg.MetricsListen; addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			_ = srv.Shutdown(context.Background())
			return fmt.Errorf("listen metrics on %s: %w", addr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", g.metrics.Handler())
		if g.cfg.Pprof {
			profiling.Mount(mux)
		}
		g.metricsL, g.metricsS = ln, &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		g.log.Info("metrics listening", "addr", ln.Addr().String())
	}
	g.edge = srv
	// The stored TCP-mode ports are bound now; one that cannot be is logged and tried again at each
	// refresh, without holding up the rest of the gateway.
	g.raw.Start(g.background)
	if a, ok := srv.HTTPSAddr().(*net.TCPAddr); ok {
		g.httpsPort.Store(strconv.Itoa(a.Port))
	}
	return nil
}

// HTTPSAddr is the bound TLS address once Listen has run (useful with port 0), else nil.
func (g *Gateway) HTTPSAddr() net.Addr {
	if g.edge == nil {
		return nil
	}
	return g.edge.HTTPSAddr()
}

// HTTPAddr is the bound plain-HTTP address, or nil.
func (g *Gateway) HTTPAddr() net.Addr {
	if g.edge == nil {
		return nil
	}
	return g.edge.HTTPAddr()
}

// MetricsAddr is the bound metrics address, or nil.
func (g *Gateway) MetricsAddr() net.Addr {
	if g.metricsL == nil {
		return nil
	}
	return g.metricsL.Addr()
}

// Serve runs every part until Shutdown, and returns once all of them have ended. If a part fails
// first, Serve shuts the others down (within the configured shutdown timeout) and returns the
// failure.
func (g *Gateway) Serve() error {
	if err := g.Listen(); err != nil {
		return err
	}
	select {
	case <-g.stopped:
		return g.stopErr // shut down before it served
	default:
	}
	g.log.Info("hopgate-server listening", "https", g.edge.HTTPSAddr().String(), "http", fmt.Sprint(g.edge.HTTPAddr()),
		"domain", g.cfg.Domain, "debug", g.cfg.Debug)
	var parts errgroup.Group
	failed := make(chan error, 1)
	run := func(name string, serve func() error) {
		parts.Go(func() error {
			err := serve()
			if err != nil {
				err = fmt.Errorf("%s: %w", name, err)
				select {
				case failed <- err:
				default:
				}
			}
			return err
		})
	}
	run("listeners", g.edge.Serve)
	run("tunnel service", g.tunnels.Serve)
	if g.metricsS != nil {
		run("metrics listener", func() error {
			if err := g.metricsS.Serve(g.metricsL); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	run("certificates", func() error { return g.certs.run(g.background) })
	if g.mem != nil {
		run("memory watcher", func() error { g.mem.Run(g.background); return nil })
	}
	if g.cluster != nil {
		run("cluster feed", func() error { return g.cluster.Run(g.background) })
	}
	if g.overview != nil {
		run("console overview", func() error { g.overview.Run(g.background); return nil })
	}
	select {
	case err := <-failed:
		g.log.Error("a part of the gateway failed; shutting down", "err", err)
		ctx, cancel := context.WithTimeout(context.Background(), g.cfg.ShutdownTimeout)
		_ = g.Shutdown(ctx)
		cancel()
	case <-g.stopped:
	}
	err := parts.Wait()
	<-g.stopped
	g.log.Info("stopped")
	return err
}

// Run serves until ctx ends, then shuts down within the configured shutdown timeout.
func (g *Gateway) Run(ctx context.Context) error {
	served := make(chan error, 1)
	go func() { served <- g.Serve() }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	g.log.Info("shutting down", "grace", g.cfg.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), g.cfg.ShutdownTimeout)
	defer cancel()
	if err := g.Shutdown(sctx); err != nil {
		g.log.Warn("shutdown", "err", err)
	}
	return <-served
}

// Shutdown stops the gateway in order: stop accepting connections; send GoAway to every agent and
// let the requests on their tunnels finish; let the other requests in flight finish; then stop the
// metrics listener, the certificate manager and the memory watcher. At ctx's deadline what is left is
// closed. Calls after the first wait for it and return its result.
func (g *Gateway) Shutdown(ctx context.Context) error {
	g.stopOnce.Do(func() {
		defer close(g.stopped)
		var errs []error
		// A balancer polling /readyz takes this gateway out during HOP_SERVER_DRAIN_DELAY, while
		// it still accepts and serves; only then do the listeners close.
		g.draining.Store(true)
		_ = pause.For(ctx, g.cfg.DrainDelay)
		if g.edge != nil {
			g.edge.StopAccepting()
		}
		// The TCP ports stop accepting at once; their connections, streams of the tunnels, end
		// with them or at ctx's deadline.
		rawDone := make(chan error, 1)
		go func() { rawDone <- g.raw.Shutdown(ctx) }()
		if err := g.tunnels.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("drain tunnels: %w", err))
		}
		if g.edge != nil {
			if err := g.edge.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("drain requests: %w", err))
			}
		}
		if err := <-rawDone; err != nil {
			errs = append(errs, fmt.Errorf("drain TCP connections: %w", err))
		}
		if g.metricsS != nil {
			_ = g.metricsS.Close()
		}
		g.stopBackground()
		g.stopErr = errors.Join(errs...)
	})
	return g.stopErr
}

// Close releases the store. Call it after Serve has returned (or when Serve never ran).
func (g *Gateway) Close() {
	g.stopBackground()
	if g.store != nil {
		_ = g.store.Close()
	}
}

// publicURL tells agents where their domain is served. The port is the one bound, which differs from
// the configured one when that is 0; tunnels only start after the listener is bound.
func (g *Gateway) publicURL(domain string) string {
	p, _ := g.httpsPort.Load().(string)
	if p == "" || p == "443" {
		return "https://" + domain
	}
	return "https://" + net.JoinHostPort(domain, p)
}
