// Package cli is the operator's command line for the admin API: `hopgate-server domains add|remove|
// list|status|rotate-key|policy` and `hopgate-server sessions rotate-key`, so that registering a
// domain, rotating its key or protecting it needs no curl.
package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/joho/godotenv"
	"github.com/jpillora/backoff"

	"github.com/hopgate/hopgate/internal/gateway/admin"
	"github.com/hopgate/hopgate/internal/pause"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the API said no, or could not be reached
	exitUsage = 2 // bad command line or settings
)

// Timeout bounds one call to the admin API; --wait adds its own duration to it.
const Timeout = 30 * time.Second

// Delays between tries while --wait lasts: short, because the gateway a script has just started is
// usually up within a second or two.
const (
	minRetryDelay = 100 * time.Millisecond
	maxRetryDelay = time.Second
)

// Env is where settings come from when no flag gives them.
type Env struct {
	// Lookup reads the process environment (os.LookupEnv).
	Lookup func(string) (string, bool)
	// DotenvPath is a .env file consulted after the environment; "" or a missing file means none.
	DotenvPath string
}

// IO is where a command reads and writes.
type IO struct {
	Stdout, Stderr io.Writer
	// Stdin is what `policy set --file -` reads; nil means os.Stdin.
	Stdin io.Reader
}

// usageError is a mistake on the command line: exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

const usageText = `Usage: hopgate-server domains <command> [arguments] [flags]

Manage the gateway's domains and their access policies through its admin API.

Commands:
  add <domain> [--memo M] [--key-file FILE] [--mode MODE [--tcp-port N] [--proxy-protocol V]]
                 register a domain; prints its client API key (shown only once), or writes it to
                 FILE. With --key-file, a domain already registered while FILE already holds a key
                 is no error: nothing changes (exit 0), so a setup script can run again
  mode <domain> --mode MODE [--tcp-port N] [--proxy-protocol V]
                 switch what the domain carries: http (the reverse proxy, default), tls-passthrough
                 (TLS connections on the HTTPS port whose SNI is the domain go to the agent's
                 target untouched; the target holds the certificate) or tcp (the connections of a
                 public port, --tcp-port N or any free one of HOP_SERVER_TCP_PORTS, go to the
                 agent's tcp:// target). --proxy-protocol v1 or v2 makes the agent send the
                 target a PROXY header naming the visitor (tcp and tls-passthrough only)
  remove <domain>
                 unregister a domain; its live tunnels are closed and its access policy removed
  list           list the registered domains and their connected agents
  status <domain>
                 show one domain (exit 1 if it is not registered)
  rotate-key <domain> [--key-file FILE]
                 give a domain a new client API key (printed, or written to FILE); agents on the
                 old key are disconnected
  policy show <domain>
                 print the domain's access policy as JSON ({} when it has none). Passwords and the
                 OIDC client secret are write-only and never shown ("client_secret_set" says
                 whether one is stored)
  policy set <domain> --file FILE
                 replace the domain's access policy with the JSON document in FILE (- reads
                 stdin), e.g. {"ip_allow":["203.0.113.0/24"],"basic_auth":[{"user":"ops",
                 "password":"..."}],"rate_limit":{"rps":20,"burst":40},"oidc":{"issuer":"https://
                 id.example.com","client_id":"...","client_secret":"...","allowed_domains":
                 ["example.com"]}}. Secrets left out are kept: a user without "password" keeps
                 its stored one, an OIDC part without "client_secret" keeps the stored one if
                 issuer and client_id are the same; so what "policy show" prints can be edited
                 and set again. An OIDC issuer must serve its discovery document
  policy clear <domain>
                 remove the domain's access policy: everyone may visit again

Flags (the first four also environment variables; flag > environment > .env file):
  --admin-url URL        HOP_ADMIN_URL: the gateway's own address, e.g. https://gateway.example.com
                         (default https://$HOP_SERVER_DOMAIN, with the port of HOP_SERVER_HTTPS_LISTEN)
  --admin-api-key KEY    HOP_ADMIN_API_KEY: the admin API's Bearer key (prefer the variable: flags
                         show in the process list)
  --ca-file FILE         HOP_ADMIN_CA_FILE: PEM roots to trust for the gateway instead of the system's
  --wait DURATION        HOP_ADMIN_WAIT: keep trying for up to DURATION (e.g. 15s) while the gateway
                         cannot be reached (not listening, TLS not up, --ca-file not written yet) or
                         answers 503, as right after starting it; default 0: try once. Refusals
                         (400, 401, 403, 404, 409) are never retried
  --key-file FILE        add and rotate-key: write the client API key to FILE (created with mode
                         0600, replaced atomically) instead of printing it; stdout says where it went.
                         Not with --json
  --file FILE            policy set: the policy document (JSON, at most 64 KiB); - reads stdin
  --mode MODE            add and mode: http, tls-passthrough or tcp
  --tcp-port N           add and mode, with --mode tcp: the public port (default 0: any free one)
  --proxy-protocol V     add and mode: v1 or v2, a PROXY header to the target; none by default
  --insecure             do not verify the gateway's certificate (testing only)
  --json                 print the API's JSON answer as it is

Exit codes: 0 done, 1 the API refused or could not be reached, 2 bad usage.
`

const sessionsUsageText = `Usage: hopgate-server sessions rotate-key [flags]

Single-sign-on sessions of the domains whose access policy has an "oidc" part.

Commands:
  rotate-key     replace the gateway-wide session key: every single-sign-on session ends at once
                 and visitors sign in again (domains with basic auth or IP rules only are not
                 affected)

Flags: --admin-url, --admin-api-key, --ca-file, --wait, --insecure and --json, with their
environment variables, as for hopgate-server domains (see hopgate-server domains --help).

Exit codes: 0 done, 1 the API refused or could not be reached, 2 bad usage.
`

// program is one command line of this package: its name after hopgate-server, help and commands.
type program struct {
	name     string
	usage    string
	commands map[string]command
	names    string // the commands, for messages
}

var domainsProgram = &program{
	name:  "domains",
	usage: usageText,
	commands: map[string]command{
		"add":          {args: 1, memo: true, keyFile: true, mode: true, run: add},
		"mode":         {args: 1, mode: true, run: setMode},
		"remove":       {args: 1, run: remove},
		"list":         {args: 0, run: list},
		"status":       {args: 1, run: status},
		"rotate-key":   {args: 1, keyFile: true, run: rotateKey},
		"policy show":  {args: 1, run: policyShow},
		"policy set":   {args: 1, file: true, run: policySet},
		"policy clear": {args: 1, run: policyClear},
	},
	names: "add, remove, list, status, rotate-key, mode or policy",
}

var sessionsProgram = &program{
	name:     "sessions",
	usage:    sessionsUsageText,
	commands: map[string]command{"rotate-key": {args: 0, run: rotateSessionKey}},
	names:    "rotate-key",
}

// Domains runs `hopgate-server domains <args>` and returns the exit code.
func Domains(ctx context.Context, args []string, env Env, out IO) int {
	return domainsProgram.main(ctx, args, env, out)
}

// Sessions runs `hopgate-server sessions <args>` and returns the exit code.
func Sessions(ctx context.Context, args []string, env Env, out IO) int {
	return sessionsProgram.main(ctx, args, env, out)
}

func (p *program) main(ctx context.Context, args []string, env Env, out IO) int {
	err := p.run(ctx, args, env, out)
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(out.Stdout, p.usage)
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(out.Stderr, "hopgate-server %s: %s\n(see hopgate-server %s --help)\n", p.name, ue.msg, p.name)
		return exitUsage
	default:
		fmt.Fprintf(out.Stderr, "hopgate-server %s: %v\n", p.name, err)
		return exitError
	}
}

// settings are the flags shared by every command.
type settings struct {
	adminURL, apiKey, caFile string
	wait                     string // parsed in newClient, which also reads HOP_ADMIN_WAIT
	insecure, json           bool
	memo                     string
	keyFile                  string
	file                     string
	mode                     modeFlags
}

// modeFlags are --mode, --tcp-port and --proxy-protocol, as the API takes them.
type modeFlags struct {
	Mode          string `json:"mode,omitempty"`
	TCPPort       int    `json:"tcp_port,omitempty"`
	ProxyProtocol string `json:"proxy_protocol,omitempty"`
}

// command is one subcommand: how many positional arguments it takes and what it does.
type command struct {
	args    int // 0 or 1 (the domain)
	memo    bool
	keyFile bool // issues a key, which --key-file can take
	file    bool // takes a document with --file
	mode    bool // takes --mode, --tcp-port and --proxy-protocol
	run     func(ctx context.Context, c *client, domain string, s *settings, out IO) error
}

func isHelp(arg string) bool { return arg == "-h" || arg == "--help" || arg == "help" }

func (p *program) run(ctx context.Context, args []string, env Env, out IO) error {
	if len(args) == 0 {
		return usagef("missing command: %s", p.names)
	}
	name := args[0]
	if isHelp(name) {
		return flag.ErrHelp
	}
	if name == "policy" && p == domainsProgram {
		// A command of two words: the verb comes before the domain and the flags.
		if len(args) < 2 {
			return usagef("policy needs show, set or clear")
		}
		if isHelp(args[1]) {
			return flag.ErrHelp
		}
		name = "policy " + args[1]
		args = args[1:]
		if _, ok := p.commands[name]; !ok {
			return usagef("unknown command %q: use policy show, policy set or policy clear", name)
		}
	}
	cmd, ok := p.commands[name]
	if !ok {
		return usagef("unknown command %q: use %s", name, p.names)
	}
	s := &settings{}
	fset := flag.NewFlagSet(p.name+" "+name, flag.ContinueOnError)
	fset.SetOutput(io.Discard)
	fset.StringVar(&s.adminURL, "admin-url", "", "")
	fset.StringVar(&s.apiKey, "admin-api-key", "", "")
	fset.StringVar(&s.caFile, "ca-file", "", "")
	fset.StringVar(&s.wait, "wait", "", "")
	fset.BoolVar(&s.insecure, "insecure", false, "")
	fset.BoolVar(&s.json, "json", false, "")
	if cmd.memo {
		fset.StringVar(&s.memo, "memo", "", "")
	}
	if cmd.keyFile {
		fset.StringVar(&s.keyFile, "key-file", "", "")
	}
	if cmd.file {
		fset.StringVar(&s.file, "file", "", "")
	}
	if cmd.mode {
		fset.StringVar(&s.mode.Mode, "mode", "", "")
		fset.IntVar(&s.mode.TCPPort, "tcp-port", 0, "")
		fset.StringVar(&s.mode.ProxyProtocol, "proxy-protocol", "", "")
	}
	positional, err := parseInterspersed(fset, args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("%v", err)
	}
	if len(positional) != cmd.args {
		if cmd.args == 0 {
			return usagef("%s takes no argument, got %q", name, positional)
		}
		return usagef("%s takes one domain, got %d arguments", name, len(positional))
	}
	domain := ""
	if cmd.args == 1 {
		domain = positional[0]
	}
	if name == "mode" && s.mode.Mode == "" {
		return usagef("mode needs --mode http, tls-passthrough or tcp")
	}
	if s.keyFile != "" && s.json {
		return usagef("--key-file and --json: choose one (the JSON answer holds the key)")
	}
	var doc json.RawMessage
	if cmd.file {
		// Read before anything is sent, so that a wrong path fails as bad usage.
		var err error
		if doc, err = readDocument(s.file, out.Stdin); err != nil {
			return err
		}
	}
	c, err := newClient(s, env)
	if err != nil {
		return err
	}
	defer c.close()
	c.doc = doc
	ctx, cancel := context.WithTimeout(ctx, c.wait+Timeout)
	defer cancel()
	return cmd.run(ctx, c, domain, s, out)
}

// parseInterspersed lets flags come before or after the domain, as operators type them.
func parseInterspersed(fset *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fset.Parse(args); err != nil {
			return nil, err
		}
		args = fset.Args()
		if len(args) == 0 {
			return positional, nil
		}
		if args[0] == "--" {
			return append(positional, args[1:]...), nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

// client calls the admin API.
type client struct {
	base     *url.URL
	apiKey   string
	caFile   string
	insecure bool
	wait     time.Duration // how long to keep trying while the gateway is not up yet
	// http is made on the first try, not before: the gateway writes its development CA file
	// (--ca-file) when it starts, which may be after this command started waiting.
	http *http.Client
	// doc is the document of --file, read before the client was made.
	doc json.RawMessage
}

func (c *client) close() {
	if c.http != nil {
		c.http.CloseIdleConnections()
	}
}

func newClient(s *settings, env Env) (*client, error) {
	lookup, err := lookupWithDotenv(env)
	if err != nil {
		return nil, err
	}
	pick := func(flagValue, name string) string {
		if v := strings.TrimSpace(flagValue); v != "" {
			return v
		}
		v, _ := lookup(name)
		return strings.TrimSpace(v)
	}
	s.adminURL = pick(s.adminURL, "HOP_ADMIN_URL")
	s.apiKey = pick(s.apiKey, "HOP_ADMIN_API_KEY")
	s.caFile = pick(s.caFile, "HOP_ADMIN_CA_FILE")
	s.wait = pick(s.wait, "HOP_ADMIN_WAIT")
	var wait time.Duration
	if s.wait != "" {
		if wait, err = time.ParseDuration(s.wait); err != nil || wait < 0 {
			return nil, usagef("HOP_ADMIN_WAIT (--wait): %q is not a duration like 15s (0: do not wait)", s.wait)
		}
	}

	if s.adminURL == "" {
		domain := pick("", "HOP_SERVER_DOMAIN")
		if domain == "" {
			return nil, usagef("no admin URL: set --admin-url or HOP_ADMIN_URL (or HOP_SERVER_DOMAIN)")
		}
		s.adminURL = "https://" + domain
		if _, port, err := net.SplitHostPort(pick("", "HOP_SERVER_HTTPS_LISTEN")); err == nil && port != "" && port != "443" {
			s.adminURL = "https://" + net.JoinHostPort(domain, port)
		}
	}
	base, err := url.Parse(s.adminURL)
	if err != nil || base.Host == "" || base.User != nil {
		return nil, usagef("HOP_ADMIN_URL (--admin-url): %q is not a URL like https://gateway.example.com", s.adminURL)
	}
	if base.Scheme != "https" {
		return nil, usagef("HOP_ADMIN_URL (--admin-url): %q must start with https:// (the admin key must not travel in clear)", s.adminURL)
	}
	base.Path = strings.TrimSuffix(base.Path, "/")
	if s.apiKey == "" {
		return nil, usagef("no admin API key: set HOP_ADMIN_API_KEY (or --admin-api-key)")
	}
	c := &client{base: base, apiKey: s.apiKey, caFile: s.caFile, insecure: s.insecure, wait: wait}
	if wait == 0 {
		// Without waiting, a bad CA file is reported before anything else, as a usage error.
		if _, _, err := c.httpClient(); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// httpClient returns the client for the API, made on first use. An error is a usage error about
// the CA file; notYet tells whether it may be the gateway not having written the file yet (missing,
// or no certificate in it so far) rather than a wrong path.
func (c *client) httpClient() (hc *http.Client, notYet bool, err error) {
	if c.http != nil {
		return c.http, false, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.insecure}
	if c.caFile != "" {
		pem, err := os.ReadFile(c.caFile)
		if err != nil {
			return nil, errors.Is(err, fs.ErrNotExist), usagef("HOP_ADMIN_CA_FILE (--ca-file): %v", err)
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(pem) {
			return nil, true, usagef("HOP_ADMIN_CA_FILE (--ca-file): %s holds no PEM certificate", c.caFile)
		}
	}
	tr := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		// A try that hangs on an address that drops packets must not use up the whole --wait.
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		TLSClientConfig:     conf,
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	// The API never redirects; following one could send the key elsewhere.
	c.http = &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return c.http, false, nil
}

// lookupWithDotenv reads the environment, then the .env file.
func lookupWithDotenv(env Env) (func(string) (string, bool), error) {
	lookup := env.Lookup
	if lookup == nil {
		lookup = func(string) (string, bool) { return "", false }
	}
	if env.DotenvPath == "" {
		return lookup, nil
	}
	dotenv, err := godotenv.Read(env.DotenvPath)
	if errors.Is(err, fs.ErrNotExist) {
		return lookup, nil
	}
	if err != nil {
		return nil, usagef("read %s: %v", env.DotenvPath, err)
	}
	return func(k string) (string, bool) {
		if v, ok := lookup(k); ok && strings.TrimSpace(v) != "" {
			return v, true
		}
		v, ok := dotenv[k]
		return v, ok
	}, nil
}

// answer is every field the admin API's answers carry.
type answer struct {
	Success      *bool           `json:"success"`
	Error        string          `json:"error"`
	Exists       bool            `json:"exists"`
	ClientAPIKey string          `json:"client_api_key"`
	Domains      []domainInfo    `json:"domains"`
	Policy       json.RawMessage `json:"policy"`
	Rotated      bool            `json:"rotated"`
	domainInfo
}

type domainInfo struct {
	Domain    string `json:"domain"`
	Memo      string `json:"memo"`
	CreatedAt string `json:"created_at"`
	UpdatedAt string `json:"updated_at"`
	Agents    int    `json:"agents"`
	modeFlags
}

// describeMode says what a domain carries, in a few words.
func describeMode(d domainInfo) string {
	out := d.Mode
	if out == "" {
		out = "http"
	}
	if d.TCPPort > 0 {
		out += fmt.Sprintf(" on port %d", d.TCPPort)
	}
	if d.ProxyProtocol != "" {
		out += ", PROXY protocol " + d.ProxyProtocol
	}
	return out
}

// setMode is `domains mode`.
func setMode(ctx context.Context, c *client, domain string, s *settings, out IO) error {
	a, raw, err := c.call(ctx, http.MethodPost, "/api/v1/admin/domains/mode", nil,
		struct {
			Domain string `json:"domain"`
			modeFlags
		}{domain, s.mode})
	if s.json && raw != nil {
		printJSON(out.Stdout, raw)
	}
	if err != nil || s.json {
		return err
	}
	fmt.Fprintf(out.Stdout, "%s now carries %s.\n", a.Domain, describeMode(a.domainInfo))
	if a.TCPPort > 0 {
		fmt.Fprintf(out.Stdout, "Visitors connect to %s:%d; run the agent with --local-target tcp://<host:port>.\n", c.base.Hostname(), a.TCPPort)
	}
	return nil
}

// call sends a request and decodes the answer. raw is the body as received, for --json. An error
// carries the API's own message. While --wait lasts, call tries again when the gateway is not up
// yet: it cannot be reached, its CA file is not there yet, or it answers 503.
func (c *client) call(ctx context.Context, method, path string, query url.Values, body any) (a answer, raw []byte, err error) {
	giveUp := time.Now().Add(c.wait)
	delay := &backoff.Backoff{Min: minRetryDelay, Max: maxRetryDelay, Factor: 2}
	for {
		var again bool
		a, raw, again, err = c.try(ctx, method, path, query, body)
		left := time.Until(giveUp)
		if !again || left <= 0 || ctx.Err() != nil {
			if again && left <= 0 && c.wait > 0 {
				err = stillFailing(err, c.wait)
			}
			return a, raw, err
		}
		if pause.For(ctx, min(delay.Duration(), left)) != nil {
			return a, raw, err
		}
	}
}

// stillFailing says that err held for the whole wait, keeping its kind (a usage error stays one).
func stillFailing(err error, wait time.Duration) error {
	var ue *usageError
	if errors.As(err, &ue) {
		return usagef("%s (still so after waiting %s)", ue.msg, wait)
	}
	return fmt.Errorf("%w (still so after waiting %s)", err, wait)
}

// try sends the request once. again tells whether trying later may go better: the gateway was not
// up (yet), and the request cannot have taken effect.
func (c *client) try(ctx context.Context, method, path string, query url.Values, body any) (a answer, raw []byte, again bool, err error) {
	hc, notYet, err := c.httpClient()
	if err != nil {
		return a, nil, notYet, err
	}
	u := *c.base
	u.Path += path
	u.RawQuery = query.Encode()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return a, nil, false, err
		}
		rd = bytes.NewReader(b)
	}
	// Once the request is written, a POST may have taken effect (a domain registered, a key
	// rotated) even if no answer comes: sending it again would not be the same request.
	var wrote atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { wrote.Store(true) }})
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return a, nil, false, err
	}
	req.Header.Set("Authorization", "Bearer "+c.apiKey)
	// Says in the audit log that the change came from this command line.
	req.Header.Set(admin.ClientHeader, "cli")
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := hc.Do(req)
	if err != nil {
		// GET and PUT (a policy set twice is the same policy) may be sent again in any case.
		again = notUpYet(err) && (method == http.MethodGet || method == http.MethodPut || !wrote.Load())
		return a, nil, again, fmt.Errorf("cannot reach the admin API at %s: %s", c.base.Redacted(), c.explain(err))
	}
	defer res.Body.Close()
	// 503 is the gateway up without its store, or a balancer in front without the gateway yet.
	again = res.StatusCode == http.StatusServiceUnavailable
	raw, err = io.ReadAll(io.LimitReader(res.Body, 16<<20))
	if err != nil {
		return a, nil, again, fmt.Errorf("read the answer of %s: %w", u.Redacted(), err)
	}
	if json.Unmarshal(raw, &a) != nil || a.Success == nil {
		return a, raw, again, fmt.Errorf("%s answered %s, not the admin API's JSON: is --admin-url the gateway's own name (HOP_SERVER_DOMAIN)?", c.base.Redacted(), res.Status)
	}
	if !*a.Success || res.StatusCode >= 300 {
		return a, raw, again, apiError(res, a.Error)
	}
	return a, raw, false, nil
}

// notUpYet tells whether a failed request is worth trying again while waiting: anything but a
// certificate that does not verify (a wrong --ca-file or name stays wrong) and the end of the time.
func notUpYet(err error) bool {
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
	)
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &verify), errors.As(err, &unknown), errors.As(err, &hostname), errors.As(err, &invalid):
		return false
	}
	return true
}

// statusError is a refusal of the API, with its status for the callers that branch on it.
type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string { return e.msg }

// apiError words a refusal, with a hint for the answers that usually mean a setting is wrong.
func apiError(res *http.Response, msg string) error {
	hint := ""
	switch {
	case res.StatusCode == http.StatusUnauthorized:
		hint = " (check HOP_ADMIN_API_KEY / --admin-api-key)"
	case res.StatusCode == http.StatusNotFound && msg == "not found":
		// The whole API answers 404 when it is disabled or the Host is not the gateway's own name.
		hint = " (is the admin API enabled with HOP_ADMIN_API_KEY on the server, and --admin-url the gateway's own name?)"
	}
	return &statusError{code: res.StatusCode, msg: fmt.Sprintf("the admin API answered %s: %s%s", res.Status, msg, hint)}
}

func (c *client) explain(err error) string {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
	)
	switch {
	case errors.As(err, &unknown):
		return "certificate not trusted: use --ca-file (HOP_ADMIN_CA_FILE) with the gateway's CA certificate, or --insecure while testing"
	case errors.As(err, &hostname):
		return "certificate not valid for this name: " + hostname.Error()
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("no answer within %s", c.wait+Timeout)
	}
	return err.Error()
}

// printJSON writes the API's answer as it came.
func printJSON(w io.Writer, raw []byte) {
	fmt.Fprintln(w, strings.TrimRight(string(raw), "\n"))
}

func add(ctx context.Context, c *client, domain string, s *settings, out IO) error {
	var kf *keyFile
	if s.keyFile != "" {
		var err error
		if kf, err = prepareKeyFile(s.keyFile); err != nil {
			return err
		}
		defer kf.discard()
	}
	a, raw, err := c.call(ctx, http.MethodPost, "/api/v1/admin/domains/register", nil,
		struct {
			Domain string `json:"domain"`
			Memo   string `json:"memo"`
			modeFlags
		}{domain, s.memo, s.mode})
	if s.json && raw != nil {
		printJSON(out.Stdout, raw)
	}
	var se *statusError
	if kf != nil && errors.As(err, &se) && se.code == http.StatusConflict {
		// Registered by an earlier run whose key is in the file: running a setup again is no error.
		if holdsKey(kf.path) {
			fmt.Fprintf(out.Stdout, "%s is already registered and %s already holds a key: nothing changed.\n", domain, kf.path)
			return nil
		}
		return fmt.Errorf("%w; %s holds no key (the one issued when the domain was added went elsewhere): to give the domain a new key, run: hopgate-server domains rotate-key %s --key-file %s",
			err, kf.path, domain, kf.path)
	}
	if err != nil || s.json {
		return err
	}
	fmt.Fprintf(out.Stdout, "Registered %s", a.Domain)
	if a.Memo != "" {
		fmt.Fprintf(out.Stdout, " (memo %q)", a.Memo)
	}
	if a.Mode != "" && a.Mode != "http" {
		fmt.Fprintf(out.Stdout, ", %s", describeMode(a.domainInfo))
	}
	if kf != nil {
		if err := writeKey(kf, a.ClientAPIKey, a.Domain); err != nil {
			return err
		}
		fmt.Fprintf(out.Stdout, ".\n\nIts client API key is in %s (mode 0600); the gateway keeps only a hash of it.\n", kf.path)
		fmt.Fprintf(out.Stdout, "Start an agent with:\n  hopgate-client --server-addr %s --domain %s --api-key-file %s --local-target <host:port>\n",
			serverAddr(c.base), a.Domain, kf.path)
		return nil
	}
	fmt.Fprintf(out.Stdout, ".\n\nClient API key: %s\n\n", a.ClientAPIKey)
	fmt.Fprintln(out.Stdout, "Store this key now: it is shown only once (the gateway keeps only a hash of it).")
	fmt.Fprintf(out.Stdout, "Start an agent with:\n  HOP_CLIENT_API_KEY=<the key> hopgate-client --server-addr %s --domain %s --local-target <host:port>\n",
		serverAddr(c.base), a.Domain)
	return nil
}

func remove(ctx context.Context, c *client, domain string, s *settings, out IO) error {
	a, raw, err := c.call(ctx, http.MethodPost, "/api/v1/admin/domains/unregister", nil, map[string]string{"domain": domain})
	if s.json && raw != nil {
		printJSON(out.Stdout, raw)
	}
	if err != nil || s.json {
		return err
	}
	fmt.Fprintf(out.Stdout, "Unregistered %s; its live tunnels were closed.\n", a.Domain)
	return nil
}

func list(ctx context.Context, c *client, _ string, s *settings, out IO) error {
	a, raw, err := c.call(ctx, http.MethodGet, "/api/v1/admin/domains", nil, nil)
	if s.json && raw != nil {
		printJSON(out.Stdout, raw)
	}
	if err != nil || s.json {
		return err
	}
	if len(a.Domains) == 0 {
		fmt.Fprintln(out.Stdout, "No domains registered.")
		return nil
	}
	tw := tabwriter.NewWriter(out.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DOMAIN\tMODE\tAGENTS\tCREATED\tUPDATED\tMEMO")
	for _, d := range a.Domains {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", d.Domain, describeMode(d), d.Agents, d.CreatedAt, d.UpdatedAt, oneLine(d.Memo))
	}
	return tw.Flush()
}

func status(ctx context.Context, c *client, domain string, s *settings, out IO) error {
	a, raw, err := c.call(ctx, http.MethodGet, "/api/v1/admin/domains/status", url.Values{"domain": {domain}}, nil)
	if s.json && raw != nil {
		printJSON(out.Stdout, raw)
	}
	if err != nil {
		return err
	}
	if !a.Exists {
		return fmt.Errorf("%s is not registered", a.Domain)
	}
	if s.json {
		return nil
	}
	tw := tabwriter.NewWriter(out.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "Domain:\t%s\n", a.Domain)
	fmt.Fprintf(tw, "Mode:\t%s\n", describeMode(a.domainInfo))
	fmt.Fprintf(tw, "Agents:\t%d\n", a.Agents)
	fmt.Fprintf(tw, "Memo:\t%s\n", oneLine(a.Memo))
	fmt.Fprintf(tw, "Created:\t%s\n", a.CreatedAt)
	fmt.Fprintf(tw, "Updated:\t%s\n", a.UpdatedAt)
	return tw.Flush()
}

func rotateKey(ctx context.Context, c *client, domain string, s *settings, out IO) error {
	var kf *keyFile
	if s.keyFile != "" {
		var err error
		if kf, err = prepareKeyFile(s.keyFile); err != nil {
			return err
		}
		defer kf.discard()
	}
	a, raw, err := c.call(ctx, http.MethodPost, "/api/v1/admin/domains/rotate-key", nil, map[string]string{"domain": domain})
	if s.json && raw != nil {
		printJSON(out.Stdout, raw)
	}
	if err != nil || s.json {
		return err
	}
	name := a.Domain
	if name == "" {
		name = domain
	}
	if kf != nil {
		if err := writeKey(kf, a.ClientAPIKey, name); err != nil {
			return err
		}
		fmt.Fprintf(out.Stdout, "New client API key for %s written to %s (mode 0600).\n", name, kf.path)
		fmt.Fprintf(out.Stdout, "Agents on the old key were disconnected: restart them with the new key (--api-key-file %s).\n", kf.path)
		return nil
	}
	fmt.Fprintf(out.Stdout, "New client API key for %s: %s\n\n", name, a.ClientAPIKey)
	fmt.Fprintln(out.Stdout, "Store this key now: it is shown only once (the gateway keeps only a hash of it).")
	fmt.Fprintln(out.Stdout, "Agents on the old key were disconnected: give them the new key (HOP_CLIENT_API_KEY) and restart them.")
	return nil
}

// serverAddr is the host:port an agent would dial for the gateway at base.
func serverAddr(base *url.URL) string {
	if base.Port() != "" {
		return base.Host
	}
	return net.JoinHostPort(base.Hostname(), "443")
}

// oneLine keeps a memo from breaking the table.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
