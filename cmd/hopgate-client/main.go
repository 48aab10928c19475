// Command hopgate-client is the agent: it opens the tunnel to hopgate-server and serves its requests
// (and, for a tcp:// target, its TCP and TLS-passthrough streams) from a local target, so the
// private host needs no open port.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/hopgate/hopgate/internal/agent"
	"github.com/hopgate/hopgate/internal/config"
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
	config.WarnDeprecated(log, cfg.Deprecated)
	a, err := agent.New(cfg, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hopgate-client: bad configuration:\n%v\n", err)
		os.Exit(exitBadConfig)
	}
	defer a.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if check {
		fmt.Printf("Checking hopgate-client %s for %s\n", version.Version, strings.Join(config.Hostnames(cfg.Services), ", "))
		res := a.Check(ctx, os.Stdout)
		switch {
		case res.Refused:
			os.Exit(exitRefused)
		case !res.Passed:
			os.Exit(1)
		}
		fmt.Println("All checks passed.")
		return
	}
	// SIGHUP re-reads the config file (a single-service agent re-reads its flags' sources too,
	// which only matters for --api-key-file).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	a.ReloadOn(hup)
	err = a.Run(ctx)
	if errors.Is(err, agent.ErrRefused) {
		log.Error("the gateway refused this agent; check the domain and its API key (--domain with --api-key or --api-key-file, or the services of --config)", "err", err)
		os.Exit(exitRefused)
	}
	if err != nil {
		log.Error("hopgate-client failed", "err", err)
		os.Exit(1)
	}
	log.Info("stopped")
}
