// Package healthcheck is `hopgate-server health`: a container health check that asks the gateway
// running beside it for /healthz, for images that have no curl.
package healthcheck

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hopgate/hopgate/internal/config"
)

// Timeout bounds the whole check: a health check that hangs tells the orchestrator nothing.
const Timeout = 4 * time.Second

// Exit codes. Docker reserves 2 for health checks, so a bad configuration is 1 like any failure.
const (
	exitHealthy   = 0
	exitUnhealthy = 1
)

const usageText = `Usage: hopgate-server health [flags]

Checks that the gateway on this host answers, for a container health check (the images have no
curl): it reads the server's own settings (flags, environment, .env file, as hopgate-server does),
connects to the HTTPS listener on the loopback address (127.0.0.1, or the address of
HOP_SERVER_HTTPS_LISTEN when that names one, e.g. [::1]) and asks GET /healthz with SNI and Host
set to HOP_SERVER_DOMAIN ("localhost" with --debug). Its flags are the server's: see
hopgate-server --help.

The certificate is not verified: the check is about the process, not the chain, so a self-signed
certificate is fine, and so is a gateway that holds no certificate for its name yet (it refuses
the handshake while ACME issues one; that still shows it runs).

It takes at most 4s. Exit codes: 0 healthy (a 2xx answer); 1 anything else, with one line on
stderr that says why (docker reserves 2 for health checks).

Example (Dockerfile):  HEALTHCHECK CMD ["/hopgate-server", "health"]
`

// Env is where the server's settings come from, as in hopgate-server itself.
type Env struct {
	Lookup     func(string) (string, bool) // os.LookupEnv
	DotenvPath string                      // "" or a missing file means none
}

// Run runs `hopgate-server health args…` and returns the exit code.
func Run(ctx context.Context, args []string, env Env, stdout, stderr io.Writer) int {
	cfg, err := config.LoadServer(args, env.Lookup, env.DotenvPath)
	if errors.Is(err, config.ErrHelp) {
		fmt.Fprint(stdout, usageText)
		return exitHealthy
	}
	if err != nil {
		fmt.Fprintf(stderr, "hopgate-server health: bad configuration: %s\n", oneLine(err))
		return exitUnhealthy
	}
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	note, err := Check(ctx, cfg.HTTPSListen, cfg.Domain)
	if err != nil {
		fmt.Fprintf(stderr, "hopgate-server health: unhealthy: %s\n", oneLine(err))
		return exitUnhealthy
	}
	fmt.Fprintf(stdout, "healthy: %s\n", note)
	return exitHealthy
}

// Check asks the gateway listening on listen (HOP_SERVER_HTTPS_LISTEN) for /healthz under its
// domain. It returns what it found when the gateway is healthy, or why it is not.
func Check(ctx context.Context, listen, domain string) (string, error) {
	addrs, err := dialAddrs(listen)
	if err != nil {
		return "", err
	}
	// dialed is the address that took the connection, for the messages. The transport dials on a
	// goroutine of its own, which may outlive Do when the check times out.
	var dialed atomic.Value
	dialed.Store(addrs[0])
	d := &net.Dialer{}
	tr := &http.Transport{
		// Never through HTTPS_PROXY: the gateway to check is this host's.
		Proxy: nil,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var first error
			for _, a := range addrs {
				c, err := d.DialContext(ctx, network, a)
				if err == nil {
					dialed.Store(a)
					return c, nil
				}
				if first == nil {
					first = err
				}
			}
			return nil, first
		},
		TLSClientConfig:   &tls.Config{ServerName: domain, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addrs[0]+"/healthz", nil)
	if err != nil {
		return "", err
	}
	req.Host = domain
	res, err := hc.Do(req)
	at := dialed.Load().(string)
	switch {
	case noCertificateYet(err):
		return fmt.Sprintf("the gateway on %s runs but holds no certificate for %s yet (ACME issuance pending)", at, domain), nil
	case errors.Is(err, context.DeadlineExceeded):
		return "", fmt.Errorf("no answer from %s within %s", strings.Join(addrs, " or "), Timeout)
	case err != nil:
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return "", fmt.Errorf("cannot connect to %s: %v", strings.Join(addrs, " or "), op.Err)
		}
		return "", fmt.Errorf("GET /healthz for %s on %s: %v", domain, strings.Join(addrs, " or "), unwrapURL(err))
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
	if res.StatusCode < 200 || res.StatusCode > 299 {
		return "", fmt.Errorf("GET /healthz for %s on %s answered %s", domain, at, res.Status)
	}
	return fmt.Sprintf("GET /healthz for %s on %s answered %s", domain, at, res.Status), nil
}

// dialAddrs turns the listen address into the addresses to try, in order. An address that names no
// host (all interfaces) is reached on loopback: 127.0.0.1, then [::1] for a listener that turns out
// to be IPv6-only. One that names a host is reached there, as it listens nowhere else.
func dialAddrs(listen string) ([]string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("HOP_SERVER_HTTPS_LISTEN (--https-listen): %q is not host:port", listen)
	}
	if port == "0" {
		return nil, fmt.Errorf("HOP_SERVER_HTTPS_LISTEN (--https-listen): %q is any free port, which cannot be checked: set the port the gateway listens on", listen)
	}
	ip, err := netip.ParseAddr(host)
	switch {
	case host == "" || err == nil && ip.IsUnspecified():
		return []string{net.JoinHostPort("127.0.0.1", port), net.JoinHostPort("::1", port)}, nil
	default:
		return []string{net.JoinHostPort(host, port)}, nil
	}
}

// noCertificateYet tells whether the gateway refused the handshake the way it does while it holds
// no certificate for its name: it runs, its certificate manager has nothing to give yet.
func noCertificateYet(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error" && op.Err != nil && op.Err.Error() == "tls: internal error"
}

// unwrapURL drops the *url.Error wrapper, whose method and URL the message names already.
func unwrapURL(err error) error {
	if u := errors.Unwrap(err); u != nil {
		return u
	}
	return err
}

// oneLine joins a multi-line error (several bad settings) for the one line a health check prints.
func oneLine(err error) string {
	return strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
}
