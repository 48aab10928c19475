// Command hopgate-client is the agent: it opens the tunnel to hopgate-server and serves its requests
// from a local target, so the private host needs no open port.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hopgate/hopgate/internal/agent"
	"github.com/hopgate/hopgate/internal/agentcheck"
	"github.com/hopgate/hopgate/internal/agentmetrics"
	"github.com/hopgate/hopgate/internal/config"
	"github.com/hopgate/hopgate/internal/proxy"
	"github.com/hopgate/hopgate/internal/version"
)

// Exit codes, as the product documents them.
const (
	exitBadConfig = 2
	exitRefused   = 3
)

func main() {
	// --version and --check are modes, not settings: they have no environment variable.
	var args []string
	check := false
	for _, a := range os.Args[1:] {
		switch a {
		case "--version", "-version":
			fmt.Println("hopgate-client", version.Version)
			return
		case "--check", "-check":
			check = true
		default:
			args = append(args, a)
		}
	}
	cfg, err := config.LoadClient(args, os.LookupEnv, ".env")
	if errors.Is(err, config.ErrHelp) {
		config.ClientUsage(os.Stdout)
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "hopgate-client: bad configuration:\n%v\n", err)
		os.Exit(exitBadConfig)
	}
	log := config.NewLogger(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	tlsConf, err := serverTLS(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hopgate-client: bad configuration:\nHOP_CLIENT_CA_FILE (--ca-file): %v\n", err)
		os.Exit(exitBadConfig)
	}
	if cfg.SkipVerify() {
		log.Warn("--debug: the server certificate is not verified")
	}
	agentID := cfg.AgentID
	if agentID == "" {
		agentID = defaultAgentID()
	}

	localTLS, err := targetTLS(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hopgate-client: bad configuration:\nHOP_CLIENT_LOCAL_CA_FILE (--local-ca-file): %v\n", err)
		os.Exit(exitBadConfig)
	}
	local := proxy.NewLocal(cfg.LocalTarget, proxy.LocalOptions{TLSConfig: localTLS, Logger: log})
	defer local.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	opts := agent.Options{
		ServerAddr:   cfg.ServerAddr,
		Domain:       cfg.Domain,
		APIKey:       cfg.APIKey,
		AgentID:      agentID,
		Version:      version.Version,
		Target:       cfg.LocalTarget.String(),
		TLS:          tlsConf,
		PingInterval: cfg.PingInterval,
		DrainTimeout: cfg.ShutdownTimeout,
		Serve:        local.ServeStream,
		Logger:       log,
	}

	if check {
		fmt.Printf("Checking hopgate-client %s for %s\n", version.Version, cfg.Domain)
		res := agentcheck.Run(ctx, agentcheck.Options{Agent: opts, Target: cfg.LocalTarget, TargetTLS: localTLS}, os.Stdout)
		switch {
		case res.Refused:
			os.Exit(exitRefused)
		case !res.Passed:
			os.Exit(1)
		}
		fmt.Println("All checks passed.")
		return
	}

	if cfg.MetricsListen != "" {
		m := agentmetrics.New()
		srv, err := m.Listen(cfg.MetricsListen, cfg.Pprof)
		if err != nil {
			log.Error("cannot serve metrics", "err", err)
			os.Exit(1)
		}
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Close(ctx); err != nil {
				log.Warn("metrics listener did not stop cleanly", "err", err)
			}
		}()
		log.Info("serving metrics", "addr", srv.Addr(), "path", "/metrics")
		opts = m.Instrument(opts)
	}

	err = agent.Run(ctx, opts)
	if errors.Is(err, agent.ErrRefused) {
		log.Error("the gateway refused this agent; check --domain and --api-key", "err", err)
		os.Exit(exitRefused)
	}
	if err != nil {
		log.Error("hopgate-client failed", "err", err)
		os.Exit(1)
	}
	log.Info("stopped")
}

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

// targetTLS is the TLS set-up towards an https:// local target.
func targetTLS(cfg *config.Client) (*tls.Config, error) {
	roots, err := loadRoots(cfg.LocalCAFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: roots, InsecureSkipVerify: cfg.LocalInsecureSkipVerify}, nil
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
