// Package check verifies an agent's configuration before it runs: the gateway is reachable and
// trusted, it accepts the domain and key, and the local target answers (or, a tcp:// one, accepts
// a connection); and says what is wrong in plain words.
package check

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hopgate/hopgate/internal/agent/supervisor"
	"github.com/hopgate/hopgate/internal/tunnel"
)

// DefaultTimeout bounds each step.
const DefaultTimeout = 10 * time.Second

// Options is what the agent would run with.
type Options struct {
	// Agent is the agent's configuration: ServerAddr, TLS, Domain and APIKey are checked.
	Agent supervisor.Options
	// Target is the local target and TargetTLS the trust towards an https:// one.
	Target    *url.URL
	TargetTLS *tls.Config
	// Timeout bounds each step; 0 means DefaultTimeout.
	Timeout time.Duration
}

// Result sums up a check.
type Result struct {
	// Passed is true when every step passed.
	Passed bool
	// Refused is true when the gateway refused the domain or key.
	Refused bool
}

// Run checks, in order, the server, the tunnel and the local target, writing one line per step to w:
// "✓ …" when it passed, "✗ …" with the reason when it failed, "– …" when it could not be tried.
func Run(ctx context.Context, o Options, w io.Writer) Result {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	res := Result{Passed: true}
	fail := func(format string, args ...any) {
		res.Passed = false
		fmt.Fprintf(w, "✗ "+format+"\n", args...)
	}

	step := func(f func(ctx context.Context) (string, error)) (string, error) {
		ctx, cancel := context.WithTimeout(ctx, o.Timeout)
		defer cancel()
		return f(ctx)
	}

	// (a) The server: name, TCP, TLS and trust.
	addr := o.Agent.ServerAddr
	serverOK := false
	if detail, err := step(func(ctx context.Context) (string, error) { return checkServer(ctx, addr, o.Agent.TLS) }); err != nil {
		fail("server %s: %v", addr, err)
	} else {
		serverOK = true
		fmt.Fprintf(w, "✓ server %s: %s\n", addr, detail)
	}

	// (b) The gateway takes this domain and key.
	if !serverOK {
		fmt.Fprintf(w, "– tunnel for %s: not tried, the server is not reachable\n", o.Agent.Domain)
	} else {
		publicURL, err := step(func(ctx context.Context) (string, error) { return supervisor.Check(ctx, o.Agent) })
		switch {
		case errors.Is(err, supervisor.ErrRefused):
			res.Refused = true
			fail("tunnel for %s: the gateway refused: %s (check --domain and --api-key or --api-key-file; a rotated key must be updated here)",
				o.Agent.Domain, refusal(err))
		case err != nil:
			fail("tunnel for %s: %s", o.Agent.Domain, explainTunnel(err, o.Timeout))
		default:
			fmt.Fprintf(w, "✓ tunnel for %s: the gateway accepts the domain and key; public URL %s\n", o.Agent.Domain, publicURL)
		}
	}

	// (c) The local target answers; it does not depend on the gateway, so it is always tried.
	shown := o.Target.Redacted()
	if detail, err := step(func(ctx context.Context) (string, error) { return checkTarget(ctx, o.Target, o.TargetTLS) }); err != nil {
		fail("local target %s: %s", shown, explainTarget(err, o.Timeout))
	} else {
		fmt.Fprintf(w, "✓ local target %s: %s\n", shown, detail)
	}
	return res
}

// checkServer resolves the server's name and completes a TLS handshake with the agent's trust.
func checkServer(ctx context.Context, addr string, conf *tls.Config) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("not a host:port address: %w", err)
	}
	ips, err := net.DefaultResolver.LookupHost(ctx, host)
	if err != nil {
		return "", fmt.Errorf("cannot resolve %s: %s", host, explainNet(err, 0))
	}
	if conf == nil {
		conf = &tls.Config{ServerName: host}
	}
	conf = conf.Clone()
	conf.NextProtos = []string{tunnel.ALPN, "h2"} // what the agent offers
	d := &tls.Dialer{NetDialer: &net.Dialer{}, Config: conf}
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, port))
	if err != nil {
		return "", errors.New(explainTLS(err, host))
	}
	defer conn.Close()
	cs := conn.(*tls.Conn).ConnectionState()
	detail := fmt.Sprintf("resolves to %s, %s", strings.Join(ips, ", "), tls.VersionName(cs.Version))
	switch {
	case conf.InsecureSkipVerify:
		detail += ", certificate NOT verified (--debug without --ca-file)"
	case len(cs.PeerCertificates) > 0:
		detail += fmt.Sprintf(", certificate trusted (valid until %s)", cs.PeerCertificates[0].NotAfter.UTC().Format(time.DateOnly))
	}
	switch cs.NegotiatedProtocol {
	case tunnel.ALPN:
		detail += ", tunnel ALPN " + tunnel.ALPN
	case "h2":
		// A gateway answers the tunnel's ALPN; "h2" alone is an older gateway, a TLS-inspecting
		// middlebox that strips ALPN, or not a gateway at all (the tunnel step tells them apart).
		detail += ", HTTP/2 (the tunnel's compatibility path: " + tunnel.ALPN + " not negotiated)"
	default:
		return "", fmt.Errorf("%s, but the server does not speak HTTP/2, which the tunnel needs (is --server-addr the gateway's HTTPS port?)", detail)
	}
	return detail, nil
}

// checkTarget sends GET to the target: any answer, whatever its status, means it is reachable. A
// tcp:// target speaks no HTTP: a TCP connect is all that can be checked.
func checkTarget(ctx context.Context, target *url.URL, conf *tls.Config) (string, error) {
	dialer := &net.Dialer{}
	if target.Scheme == "tcp" {
		conn, err := dialer.DialContext(ctx, "tcp", target.Host)
		if err != nil {
			return "", err
		}
		_ = conn.Close()
		return "accepts a TCP connection", nil
	}
	tr := &http.Transport{DialContext: dialer.DialContext, TLSClientConfig: conf, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	u := *target
	if u.Scheme == "unix" {
		socket := u.Path
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", socket)
		}
		u = url.URL{Scheme: "http", Host: "localhost"}
	}
	if u.Path == "" {
		u.Path = "/"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", err
	}
	res, err := tr.RoundTrip(req)
	if err != nil {
		return "", err
	}
	res.Body.Close()
	return fmt.Sprintf("answers GET %s with %s", u.Path, res.Status), nil
}

// refusal is the gateway's reason for refusing, without the sentinel's text.
func refusal(err error) string {
	msg := err.Error()
	if _, after, ok := strings.Cut(msg, supervisor.ErrRefused.Error()+": "); ok {
		return after
	}
	return msg
}

func explainTLS(err error, host string) string {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		record   tls.RecordHeaderError
	)
	switch {
	case errors.As(err, &unknown):
		return "certificate not trusted (signed by an unknown authority): use --ca-file with the gateway's CA certificate, or --debug to skip verification while testing"
	case errors.As(err, &hostname):
		return fmt.Sprintf("certificate not valid for %s (%v): check the name in --server-addr", host, hostname.Error())
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return "certificate expired or not yet valid: check the gateway's certificate and this machine's clock"
	case errors.As(err, &invalid):
		return "certificate not accepted: " + invalid.Error()
	case errors.As(err, &record):
		return "the server does not speak TLS on this port (plain HTTP?): --server-addr must be the gateway's HTTPS port"
	}
	return explainNet(err, 0)
}

func explainTunnel(err error, timeout time.Duration) string {
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.Unimplemented, codes.NotFound:
			return "the server does not offer the HopGate tunnel service: is --server-addr the gateway? (" + st.Message() + ")"
		case codes.Unavailable:
			return "could not open the tunnel: " + st.Message()
		case codes.DeadlineExceeded:
			return fmt.Sprintf("the gateway did not answer within %s", timeout)
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Sprintf("the gateway did not answer within %s", timeout)
	}
	return "could not open the tunnel: " + err.Error()
}

func explainTarget(err error, timeout time.Duration) string {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
	)
	switch {
	case errors.As(err, &unknown):
		return "certificate not trusted: use --local-ca-file, or --local-insecure-skip-verify"
	case errors.As(err, &hostname):
		return "certificate not valid for this name: " + hostname.Error() + " (use --local-ca-file or --local-insecure-skip-verify)"
	}
	return explainNet(err, timeout) + " (is the service running, and is --local-target right?)"
}

// explainNet words the common network failures.
func explainNet(err error, timeout time.Duration) string {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused: nothing listens there"
	case errors.Is(err, os.ErrNotExist):
		return "no such socket file"
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return fmt.Sprintf("no such host %q", dnsErr.Name)
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		if timeout > 0 {
			return fmt.Sprintf("no answer within %s", timeout)
		}
		return "no answer in time"
	}
	return err.Error()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
