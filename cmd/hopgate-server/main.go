// Command hopgate-server is the public end of HopGate: HTTPS, the tunnel service, the admin API and
// the reverse proxy to agents, on one port.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/hopgate/hopgate/internal/config"
	"github.com/hopgate/hopgate/internal/gateway"
	"github.com/hopgate/hopgate/internal/gateway/cli"
	"github.com/hopgate/hopgate/internal/gateway/healthcheck"
	"github.com/hopgate/hopgate/internal/logbuf"
	"github.com/hopgate/hopgate/internal/version"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "domains", "sessions", "audit":
			// The admin command line, a client of a running gateway's admin API: it needs none of the
			// server's settings.
			run := map[string]func(context.Context, []string, cli.Env, cli.IO) int{
				"domains": cli.Domains, "sessions": cli.Sessions, "audit": cli.Audit,
			}[os.Args[1]]
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			code := run(ctx, os.Args[2:], cli.Env{Lookup: os.LookupEnv, DotenvPath: ".env"}, cli.IO{Stdout: os.Stdout, Stderr: os.Stderr, Stdin: os.Stdin})
			stop()
			os.Exit(code)
		case "health":
			// The container health check: the server's own settings say where to knock.
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			code := healthcheck.Run(ctx, os.Args[2:], healthcheck.Env{Lookup: os.LookupEnv, DotenvPath: ".env"}, os.Stdout, os.Stderr)
			stop()
			os.Exit(code)
		}
	}
	for _, a := range os.Args[1:] {
		if a == "--version" || a == "-version" {
			fmt.Println("hopgate-server", version.Version)
			return
		}
	}
	cfg, err := config.LoadServer(os.Args[1:], os.LookupEnv, ".env")
	if errors.Is(err, config.ErrHelp) {
		config.ServerUsage(os.Stdout)
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "hopgate-server: bad configuration:\n%v\n", err)
		os.Exit(2)
	}
	// One access-log line per request: lines that come fast are written together (package logbuf).
	logOut := logbuf.New(os.Stderr)
	log := config.NewLogger(logOut, cfg.LogLevel, cfg.LogFormat)
	log.Info("starting hopgate-server", "version", version.Version, "config", cfg)
	config.WarnDeprecated(log, cfg.Deprecated)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err = run(ctx, cfg, log)
	stop()
	if err != nil {
		log.Error("hopgate-server failed", "err", err)
	}
	_ = logOut.Flush()
	if err != nil {
		os.Exit(1)
	}
}

// run builds the gateway and serves until ctx ends.
func run(ctx context.Context, cfg *config.Server, log *slog.Logger) error {
	g, err := gateway.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer g.Close()
	return g.Run(ctx)
}
