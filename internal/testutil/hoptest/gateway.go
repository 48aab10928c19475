package hoptest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ListeningMsg is the log line hopgate-server writes once it serves, with fields "https" and "http".
const ListeningMsg = "hopgate-server listening"

// DefaultAdminKey is the admin key of a gateway whose options name none.
const DefaultAdminKey = "hoptest-admin-key-0123456789abcdef"

// GatewayOptions configure a hopgate-server in debug mode on loopback.
type GatewayOptions struct {
	// BinDir holds the hopgate-server binary.
	BinDir string
	// Log is the file of the server's output.
	Log string
	// DataDir is HOP_DATA_DIR; the development CA is <DataDir>/selfsigned/cert.pem.
	DataDir string
	// AdminKey is HOP_ADMIN_API_KEY; empty means DefaultAdminKey.
	AdminKey string
	// HTTPSAddr is HOP_SERVER_HTTPS_LISTEN; empty picks a free port on 127.0.0.1. A restart passes
	// the address of the gateway it replaces.
	HTTPSAddr string
	// DSN is HOP_DB_DSN; empty selects SQLite in DataDir.
	DSN string
	// HTTPProxy sets HOP_SERVER_HTTP_PROXY: tenants are served on the plain-HTTP listener too.
	HTTPProxy bool
	// ProxyDomains is HOP_SERVER_PROXY_DOMAINS: names the development certificate also covers.
	ProxyDomains []string
	// ShutdownTimeout is HOP_SERVER_SHUTDOWN_TIMEOUT; 0 keeps the server's default.
	ShutdownTimeout time.Duration
	// Env comes last, so it overrides any of the settings above.
	Env []string
	// StartTimeout bounds the wait for the listening line; 0 means 20 s.
	StartTimeout time.Duration
}

// Gateway is a running hopgate-server.
type Gateway struct {
	*Process
	// HTTPSAddr and HTTPAddr are the bound listeners, as logged; HTTPAddr is "" when plain HTTP is off.
	HTTPSAddr, HTTPAddr string
	DataDir             string
	AdminKey            string
	// Domain is HOP_SERVER_DOMAIN: the name of the admin API.
	Domain string
	// CAFile is the development CA; CAPool trusts it, and is nil when the gateway does not run in
	// debug mode (Env turned it off) and so has none.
	CAFile string
	CAPool *x509.CertPool
	// Env is every HOP_* setting the server got: another server started with it runs the same gateway.
	Env []string

	admin *http.Client
}

// StartGateway starts hopgate-server with o and waits until it logs its listeners. If the server
// exits first the error is an *ExitedError.
func StartGateway(ctx context.Context, o GatewayOptions) (*Gateway, error) {
	if o.DataDir == "" || o.Log == "" {
		return nil, errors.New("hoptest: GatewayOptions need DataDir and Log")
	}
	if o.AdminKey == "" {
		o.AdminKey = DefaultAdminKey
	}
	if o.HTTPSAddr == "" {
		o.HTTPSAddr = "127.0.0.1:0"
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 20 * time.Second
	}
	env := []string{
		"HOP_SERVER_DEBUG=true",
		"HOP_SERVER_DOMAIN=localhost",
		"HOP_ADMIN_API_KEY=" + o.AdminKey,
		"HOP_SERVER_HTTPS_LISTEN=" + o.HTTPSAddr,
		"HOP_SERVER_HTTP_LISTEN=127.0.0.1:0",
		"HOP_SERVER_METRICS_LISTEN=",
		"HOP_DATA_DIR=" + o.DataDir,
		"HOP_DB_DSN=" + o.DSN,
		"HOP_LOG_FORMAT=json",
	}
	if o.HTTPProxy {
		env = append(env, "HOP_SERVER_HTTP_PROXY=true")
	}
	if len(o.ProxyDomains) > 0 {
		env = append(env, "HOP_SERVER_PROXY_DOMAINS="+strings.Join(o.ProxyDomains, ","))
	}
	if o.ShutdownTimeout > 0 {
		env = append(env, "HOP_SERVER_SHUTDOWN_TIMEOUT="+o.ShutdownTimeout.String())
	}
	env = append(env, o.Env...)

	p, err := Start(Command{Name: "hopgate-server", Path: filepath.Join(o.BinDir, "hopgate-server"), Env: env, Log: o.Log})
	if err != nil {
		return nil, err
	}
	g := &Gateway{Process: p, DataDir: o.DataDir, AdminKey: o.AdminKey, Domain: lastValue(env, "HOP_SERVER_DOMAIN"),
		CAFile: filepath.Join(o.DataDir, "selfsigned", "cert.pem"), Env: env}
	if err := g.awaitListening(ctx, o.StartTimeout); err != nil {
		p.Kill()
		return nil, err
	}
	if err := g.loadCA(); err != nil {
		p.Kill()
		return nil, err
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	g.admin = &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		TLSClientConfig: g.TLSConfig(g.Domain),
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, g.HTTPSAddr)
		},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 16,
	}}
	return g, nil
}

// lastValue is the value of key in env as a child sees it: the last assignment wins.
func lastValue(env []string, key string) string {
	var v string
	for _, kv := range env {
		if rest, ok := strings.CutPrefix(kv, key+"="); ok {
			v = rest
		}
	}
	return v
}

func (g *Gateway) awaitListening(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if g.Exited() {
			return g.exitedError()
		}
		var ok bool
		if g.HTTPSAddr, g.HTTPAddr, ok = parseListening(g.Log.String()); ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("hopgate-server did not log %q: %w:\n%s", ListeningMsg, ctx.Err(), g.Log.Tail(errorLogBytes))
		case <-tick.C:
		}
	}
}

// parseListening finds the listening line in a server log and returns its addresses; http is ""
// when the plain-HTTP listener is off (the server logs "<nil>").
func parseListening(text string) (https, http string, ok bool) {
	e := logEntry(text, ListeningMsg)
	https, _ = e["https"].(string)
	http, _ = e["http"].(string)
	if http == "<nil>" {
		http = ""
	}
	return https, http, https != ""
}

func (g *Gateway) loadCA() error {
	b, err := os.ReadFile(g.CAFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // not in debug mode: the caller brings its own trust
	}
	if err != nil {
		return fmt.Errorf("read the development CA: %w", err)
	}
	g.CAPool = x509.NewCertPool()
	if !g.CAPool.AppendCertsFromPEM(b) {
		return fmt.Errorf("no certificate in %s", g.CAFile)
	}
	return nil
}

// TLSConfig trusts the development CA and expects serverName.
func (g *Gateway) TLSConfig(serverName string) *tls.Config {
	return &tls.Config{RootCAs: g.CAPool, ServerName: serverName}
}

// Stop stops the server (SIGTERM, then SIGKILL after grace) and drops the admin client's connections.
func (g *Gateway) Stop(grace time.Duration) {
	g.CloseIdleConnections()
	g.Process.Stop(grace)
}

// CloseIdleConnections closes the admin client's idle connections.
func (g *Gateway) CloseIdleConnections() { g.admin.CloseIdleConnections() }

// StatusError is an admin API answer other than the one expected.
type StatusError struct {
	Method, Path string
	Code         int
	Body         []byte
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("admin %s %s: status %d: %s", e.Method, e.Path, e.Code, bytes.TrimSpace(e.Body))
}

// Admin calls the admin API (path from /api/v1/admin/…) with the admin key, sending body as JSON
// unless it is nil, and returns the status and the body of the answer.
func (g *Gateway) Admin(ctx context.Context, method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	_, port, _ := net.SplitHostPort(g.HTTPSAddr)
	req, err := http.NewRequestWithContext(ctx, method, "https://"+net.JoinHostPort(g.Domain, port)+path, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+g.AdminKey)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := g.admin.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("admin %s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 4<<20))
	if err != nil {
		return res.StatusCode, b, fmt.Errorf("admin %s %s: read the answer: %w", method, path, err)
	}
	return res.StatusCode, b, nil
}

// Register registers domain and returns its client API key.
func (g *Gateway) Register(ctx context.Context, domain string) (string, error) {
	const path = "/api/v1/admin/domains/register"
	code, b, err := g.Admin(ctx, http.MethodPost, path, map[string]string{"domain": domain, "memo": "hoptest"})
	if err != nil {
		return "", err
	}
	var out struct {
		Key string `json:"client_api_key"`
	}
	if code != http.StatusCreated || json.Unmarshal(b, &out) != nil || out.Key == "" {
		return "", &StatusError{Method: http.MethodPost, Path: path, Code: code, Body: b}
	}
	return out.Key, nil
}

// Agents is the live agent count the admin API reports for domain; a refusal (unknown domain, …) is
// a *StatusError.
func (g *Gateway) Agents(ctx context.Context, domain string) (int, error) {
	path := "/api/v1/admin/domains/status?domain=" + url.QueryEscape(domain)
	code, b, err := g.Admin(ctx, http.MethodGet, path, nil)
	if err != nil {
		return 0, err
	}
	var out struct {
		Agents int `json:"agents"`
	}
	if code != http.StatusOK || json.Unmarshal(b, &out) != nil {
		return 0, &StatusError{Method: http.MethodGet, Path: path, Code: code, Body: b}
	}
	return out.Agents, nil
}

// WaitAgents polls the admin API until domain has at least n agents. check, if not nil, runs on every
// round and its error ends the wait (an agent that exited, say).
func (g *Gateway) WaitAgents(ctx context.Context, domain string, n int, timeout time.Duration, check func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		got, err := g.Agents(ctx, domain)
		if err == nil && got >= n {
			return nil
		}
		if check != nil {
			if err := check(); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s has %d agents after %s, want %d (last error: %v)", domain, got, timeout, n, err)
		case <-tick.C:
		}
	}
}

// AgentOptions configure a hopgate-client.
type AgentOptions struct {
	// BinDir holds the hopgate-client binary.
	BinDir string
	// Log is the file of the agent's output.
	Log                 string
	Domain, Key, Target string
	// AgentID is --agent-id; empty keeps the client's default.
	AgentID string
	// Args come after the others.
	Args []string
}

// StartAgent starts hopgate-client towards g for o.Domain, trusting g's development CA. It does not
// wait for the tunnel: see WaitAgents.
func (g *Gateway) StartAgent(o AgentOptions) (*Process, error) {
	args := []string{
		"--server-addr", g.HTTPSAddr,
		"--domain", o.Domain,
		"--local-target", o.Target,
		"--ca-file", g.CAFile,
		"--log-format", "json",
	}
	if o.AgentID != "" {
		args = append(args, "--agent-id", o.AgentID)
	}
	return Start(Command{Name: "hopgate-client", Path: filepath.Join(o.BinDir, "hopgate-client"),
		Args: append(args, o.Args...), Env: []string{"HOP_CLIENT_API_KEY=" + o.Key}, Log: o.Log})
}
