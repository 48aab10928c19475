// Package agent assembles hopgate-client, in the same phases as the gateway: New builds the TLS
// set-ups, the local proxy and the metrics from the configuration (and fails on bad input; nothing is
// dialled yet), Run keeps the tunnel up until its context ends, Check tries the configuration once.
package agent

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/hopgate/hopgate/internal/agent/check"
	"github.com/hopgate/hopgate/internal/agent/local"
	"github.com/hopgate/hopgate/internal/agent/metrics"
	"github.com/hopgate/hopgate/internal/agent/supervisor"
	"github.com/hopgate/hopgate/internal/config"
	"github.com/hopgate/hopgate/internal/version"
)

// ErrRefused means the gateway will not take this agent (unknown domain, wrong key): retrying cannot
// help.
var ErrRefused = supervisor.ErrRefused

// metricsCloseTimeout bounds how long a stop waits for scrapes in flight.
const metricsCloseTimeout = 5 * time.Second

// Agent is a hopgate-client: the supervisor of its tunnel, the proxy to its local target and its
// metrics.
type Agent struct {
	cfg       *config.Client
	log       *slog.Logger
	opts      supervisor.Options
	local     *local.Proxy
	targetTLS *tls.Config
}

// New builds the agent described by cfg. Its errors are configuration errors, each naming the setting.
func New(cfg *config.Client, log *slog.Logger) (*Agent, error) {
	serverTLS, err := serverTLS(cfg)
	if err != nil {
		return nil, fmt.Errorf("HOP_CLIENT_CA_FILE (--ca-file): %w", err)
	}
	targetRoots, err := loadRoots(cfg.LocalCAFile)
	if err != nil {
		return nil, fmt.Errorf("HOP_CLIENT_LOCAL_CA_FILE (--local-ca-file): %w", err)
	}
	if cfg.SkipVerify() {
		log.Warn("--debug: the server certificate is not verified")
	}
	a := &Agent{cfg: cfg, log: log,
		targetTLS: &tls.Config{RootCAs: targetRoots, InsecureSkipVerify: cfg.LocalInsecureSkipVerify}}
	a.local = local.New(cfg.LocalTarget, local.Options{TLSConfig: a.targetTLS, Logger: log})
	agentID := cfg.AgentID
	if agentID == "" {
		agentID = defaultAgentID()
	}
	a.opts = supervisor.Options{
		ServerAddr:   cfg.ServerAddr,
		Domain:       cfg.Domain,
		APIKey:       cfg.APIKey,
		AgentID:      agentID,
		Version:      version.Version,
		Target:       cfg.LocalTarget.String(),
		TLS:          serverTLS,
		PingInterval: cfg.PingInterval,
		DrainTimeout: cfg.ShutdownTimeout,
		Serve:        a.local.ServeStream,
		Logger:       log,
	}
	return a, nil
}

// Run serves the agent's metrics (if configured) and keeps its tunnel up until ctx ends (then drains
// and returns nil) or the gateway refuses it (an error wrapping ErrRefused).
func (a *Agent) Run(ctx context.Context) error {
	opts := a.opts
	if a.cfg.MetricsListen != "" {
		m := metrics.New()
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
	}
	return supervisor.Run(ctx, opts)
}

// Check tries the server, the tunnel and the local target once, writing one line per step to w.
func (a *Agent) Check(ctx context.Context, w io.Writer) check.Result {
	return check.Run(ctx, check.Options{Agent: a.opts, Target: a.cfg.LocalTarget, TargetTLS: a.targetTLS}, w)
}

// Close releases the local proxy's idle connections.
func (a *Agent) Close() { a.local.Close() }

func serverTLS(cfg *config.Client) (*tls.Config, error) {
	host, _, err := net.SplitHostPort(cfg.ServerAddr)
	if err != nil {
		host = cfg.ServerAddr
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
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
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
