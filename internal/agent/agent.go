// Package agent assembles hopgate-client, in the same phases as the gateway: New builds the TLS
// set-ups, the local proxies, the routing table and the metrics from the configuration (and fails
// on bad input; nothing is dialled yet), Run keeps one tunnel call per hostname up to every gateway
// (the exact names under a wildcard of the configuration without a key of their own ride on the
// wildcard's) until its context ends, Check tries the configuration once.
package agent

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/hopgate/hopgate/internal/agent/check"
	"github.com/hopgate/hopgate/internal/agent/health"
	"github.com/hopgate/hopgate/internal/agent/ingress"
	"github.com/hopgate/hopgate/internal/agent/local"
	"github.com/hopgate/hopgate/internal/agent/metrics"
	"github.com/hopgate/hopgate/internal/agent/rawlocal"
	"github.com/hopgate/hopgate/internal/agent/supervisor"
	"github.com/hopgate/hopgate/internal/config"
	"github.com/hopgate/hopgate/internal/tunnel"
	"github.com/hopgate/hopgate/internal/version"
)

// ErrRefused means the gateway will not take this agent (unknown domain, wrong key): retrying cannot
// help. With several hostnames, Run returns it only when the gateway refused every one of them.
var ErrRefused = supervisor.ErrRefused

// metricsCloseTimeout bounds how long a stop waits for scrapes in flight.
const metricsCloseTimeout = 5 * time.Second

// Agent is a hopgate-client: one supervised tunnel call per hostname over one connection to each
// gateway, the routing table that sends each stream to its service's local proxy, and its metrics.
type Agent struct {
	cfg *config.Client
	log *slog.Logger
	// base is the supervisor's options without the per-hostname parts (domain, key, logger).
	base supervisor.Options
	// routes is swapped whole by a reload; a stream keeps the rule it was routed by.
	routes atomic.Pointer[ingress.Table]
	// proxies holds one local proxy per distinct target and trust; only Run's goroutine (and New)
	// changes it.
	proxies map[proxyKey]*targetProxy
	// health checks the services' targets; each hostname's tunnel reports its paths' state.
	health *health.Monitor
	reload <-chan os.Signal
	// resolve looks up the gateways' names every resolveEvery; tests replace both.
	resolve      resolveFunc
	resolveEvery time.Duration
}

// proxyKey tells targets apart: two services with the same target and trust share a proxy (and
// its pool of warm connections).
type proxyKey struct {
	target string
	skip   bool
	caFile string
}

type targetProxy struct {
	*local.Proxy
	tls *tls.Config
}

// New builds the agent described by cfg. Its errors are configuration errors, each naming the setting.
func New(cfg *config.Client, log *slog.Logger) (*Agent, error) {
	serverTLS, err := serverTLS(cfg)
	if err != nil {
		if cfg.ConfigFile != "" {
			return nil, fmt.Errorf("%s: ca_file (or HOP_CLIENT_CA_FILE, --ca-file): %w", cfg.ConfigFile, withoutPath(err))
		}
		return nil, fmt.Errorf("HOP_CLIENT_CA_FILE (--ca-file): %w", err)
	}
	if cfg.SkipVerify() {
		log.Warn("--debug: the server certificate is not verified")
	}
	if len(cfg.Services) == 0 {
		return nil, errors.New("no service: give --domain, --api-key and --local-target, or --config with services")
	}
	a := &Agent{cfg: cfg, log: log, proxies: map[proxyKey]*targetProxy{},
		resolve: net.DefaultResolver.LookupHost, resolveEvery: defaultResolveEvery}
	table, err := a.buildRoutes(cfg.Services)
	if err != nil {
		return nil, err
	}
	a.routes.Store(table)
	a.health = health.New(cfg.Services, health.Options{TLS: a.targetTLS, Logger: log})
	agentID := cfg.AgentID
	if agentID == "" {
		agentID = defaultAgentID()
	}
	a.base = supervisor.Options{
		AgentID:      agentID,
		Version:      version.Version,
		TLS:          serverTLS,
		PingInterval: cfg.PingInterval,
		DrainTimeout: cfg.ShutdownTimeout,
		Serve:        a.serve,
		Logger:       log,
	}
	return a, nil
}

// ReloadOn makes Run re-read the configuration each time ch delivers (SIGHUP). Call before Run.
func (a *Agent) ReloadOn(ch <-chan os.Signal) { a.reload = ch }

// serve routes one stream by the current table.
func (a *Agent) serve(st *tunnel.Stream) { a.routes.Load().Serve(st) }

// buildRoutes makes the routing table of services, reusing the proxies of targets it already has
// and adding the new ones to a.proxies. A tcp:// service gets a relay of its own: it keeps no
// connections between streams, so there is nothing to share.
func (a *Agent) buildRoutes(services []config.Service) (*ingress.Table, error) {
	rules := make([]ingress.Rule, 0, len(services))
	for _, s := range services {
		if s.Raw() {
			relay := rawlocal.New(s.Target, rawlocal.Options{Logger: a.log})
			rules = append(rules, ingress.Rule{Hostname: s.Hostname, Raw: true, Serve: relay.ServeStream})
			continue
		}
		p, err := a.proxyFor(s)
		if err != nil {
			return nil, err
		}
		rules = append(rules, ingress.Rule{Hostname: s.Hostname, Path: s.Path, Serve: p.ServeStream})
	}
	return ingress.New(rules), nil
}

func (a *Agent) proxyFor(s config.Service) (*targetProxy, error) {
	k := proxyKey{target: s.Target.String(), skip: s.TLSSkipVerify, caFile: s.CAFile}
	if p, ok := a.proxies[k]; ok {
		return p, nil
	}
	roots, err := loadRoots(s.CAFile)
	if err != nil {
		if s.Where == "flags" {
			return nil, fmt.Errorf("HOP_CLIENT_LOCAL_CA_FILE (--local-ca-file): %w", err)
		}
		return nil, fmt.Errorf("%s: ca_file: %w", s.Where, withoutPath(err))
	}
	conf := &tls.Config{RootCAs: roots, InsecureSkipVerify: s.TLSSkipVerify}
	p := &targetProxy{Proxy: local.New(s.Target, local.Options{TLSConfig: conf, Logger: a.log}), tls: conf}
	a.proxies[k] = p
	return p, nil
}

// targetTLS is the TLS client set-up of s's local proxy, for its health checks.
func (a *Agent) targetTLS(s config.Service) *tls.Config {
	if p, ok := a.proxies[proxyKey{target: s.Target.String(), skip: s.TLSSkipVerify, caFile: s.CAFile}]; ok {
		return p.tls
	}
	return &tls.Config{InsecureSkipVerify: s.TLSSkipVerify}
}

// dropUnused closes the idle connections of proxies no service uses any more and forgets them.
// Streams in flight on them keep their connections until they end.
func (a *Agent) dropUnused(services []config.Service) {
	used := map[proxyKey]bool{}
	for _, s := range services {
		if !s.Raw() {
			used[proxyKey{target: s.Target.String(), skip: s.TLSSkipVerify, caFile: s.CAFile}] = true
		}
	}
	for k, p := range a.proxies {
		if !used[k] {
			p.Close()
			delete(a.proxies, k)
		}
	}
}

// Run serves the agent's metrics (if configured) and keeps a tunnel call up for each hostname to
// each gateway until ctx ends (then drains and returns nil) or the gateways refuse every hostname
// (an error wrapping ErrRefused).
func (a *Agent) Run(ctx context.Context) error {
	opts := a.base
	var m *metrics.Metrics
	if a.cfg.MetricsListen != "" {
		m = metrics.New()
		srv, err := m.Listen(a.cfg.MetricsListen, a.cfg.Pprof)
		if err != nil {
			return fmt.Errorf("serve metrics: %w", err)
		}
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), metricsCloseTimeout)
			defer cancel()
			if err := srv.Close(ctx); err != nil {
				a.log.Warn("metrics listener did not stop cleanly", "err", err)
			}
		}()
		a.log.Info("serving metrics", "addr", srv.Addr(), "path", "/metrics")
		opts = m.Instrument(opts)
		a.health.OnChange(m.SetTargets)
	}
	// The checkers run beside the tunnels and stop with them: Run returns only after both ended.
	hctx, stopHealth := context.WithCancel(ctx)
	healthDone := make(chan struct{})
	go func() {
		defer close(healthDone)
		_ = a.health.Run(hctx)
	}()
	defer func() {
		stopHealth()
		<-healthDone
	}()
	return a.runTunnels(ctx, opts, m)
}

// Check tries the server, the tunnel and the local target of each service once, with each entry
// of --server-addr, writing one line per step to w.
func (a *Agent) Check(ctx context.Context, w io.Writer) check.Result {
	res := check.Result{Passed: true}
	for _, addr := range a.cfg.ServerAddrs() {
		for _, s := range a.cfg.Services {
			o := a.base
			o.ServerAddr = addr
			// An exact name riding on a wildcard's tunnel is known to the gateway as the wildcard.
			o.Domain, o.APIKey, o.Target = s.TunnelHost(), s.APIKey, s.Target.String()
			var targetTLS *tls.Config
			if !s.Raw() {
				p, _ := a.proxyFor(s) // New built it already: cannot fail
				targetTLS = p.tls
			}
			r := check.Run(ctx, check.Options{Agent: o, Target: s.Target, TargetTLS: targetTLS}, w)
			res.Passed = res.Passed && r.Passed
			res.Refused = res.Refused || r.Refused
		}
	}
	return res
}

// Close releases the local proxies' idle connections.
func (a *Agent) Close() {
	for _, p := range a.proxies {
		p.Close()
	}
}

// serverTLS is the trust towards the gateways: all of them are verified under one name, the
// --server-name or the host of the first --server-addr entry, whatever address each is dialled on.
func serverTLS(cfg *config.Client) (*tls.Config, error) {
	var first string
	if addrs := cfg.ServerAddrs(); len(addrs) > 0 {
		first = addrs[0]
	}
	host, _, err := net.SplitHostPort(first)
	if err != nil {
		host = first
	}
	if cfg.ServerName != "" {
		host = cfg.ServerName
	}
	roots, err := loadRoots(cfg.CAFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12, RootCAs: roots, InsecureSkipVerify: cfg.SkipVerify()}, nil
}

// loadRoots reads a PEM bundle; an empty path means the system roots (nil).
func loadRoots(path string) (*x509.CertPool, error) {
	if path == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s %w", path, errNoPEM)
	}
	return pool, nil
}

var errNoPEM = errors.New("holds no PEM certificate")

// withoutPath is loadRoots's error without the path, for a file named by a config file's line: the
// path may come from a ${VAR}, and the config's errors never show what a reference expanded to.
func withoutPath(err error) error {
	var pe *fs.PathError
	switch {
	case errors.As(err, &pe):
		return fmt.Errorf("cannot read the file: %w", pe.Err)
	case errors.Is(err, errNoPEM):
		return fmt.Errorf("the file %w", errNoPEM)
	}
	return err
}

func defaultAgentID() string {
	host, err := os.Hostname()
	if err != nil {
		host = "agent"
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}
