// Package cli is the operator's command line for the admin API: `hopgate-server domains add|remove|
// list|status|rotate-key`, so that registering a domain or rotating its key needs no curl.
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
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/joho/godotenv"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the API said no, or could not be reached
	exitUsage = 2 // bad command line or settings
)

// Timeout bounds one call to the admin API.
const Timeout = 30 * time.Second

// Env is where settings come from when no flag gives them.
type Env struct {
	// Lookup reads the process environment (os.LookupEnv).
	Lookup func(string) (string, bool)
	// DotenvPath is a .env file consulted after the environment; "" or a missing file means none.
	DotenvPath string
}

// IO is where a command writes.
type IO struct {
	Stdout, Stderr io.Writer
}

// usageError is a mistake on the command line: exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

const usageText = `Usage: hopgate-server domains <command> [arguments] [flags]

Manage the gateway's domains through its admin API.

Commands:
  add <domain> [--memo M]   register a domain; prints its client API key (shown only once)
  remove <domain>           unregister a domain; its live tunnels are closed
  list                      list the registered domains and their connected agents
  status <domain>           show one domain (exit 1 if it is not registered)
  rotate-key <domain>       give a domain a new client API key; agents on the old key are disconnected

Flags (each also an environment variable; flag > environment > .env file):
  --admin-url URL        HOP_ADMIN_URL: the gateway's own address, e.g. https://gateway.example.com
                         (default https://$HOP_SERVER_DOMAIN, with the port of HOP_SERVER_HTTPS_LISTEN)
  --admin-api-key KEY    HOP_ADMIN_API_KEY: the admin API's Bearer key (prefer the variable: flags
                         show in the process list)
  --ca-file FILE         HOP_ADMIN_CA_FILE: PEM roots to trust for the gateway instead of the system's
  --insecure             do not verify the gateway's certificate (testing only)
  --json                 print the API's JSON answer as it is

Exit codes: 0 done, 1 the API refused or could not be reached, 2 bad usage.
`

// Domains runs `hopgate-server domains <args>` and returns the exit code.
func Domains(ctx context.Context, args []string, env Env, out IO) int {
	err := run(ctx, args, env, out)
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(out.Stdout, usageText)
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(out.Stderr, "hopgate-server domains: %s\n(see hopgate-server domains --help)\n", ue.msg)
		return exitUsage
	default:
		fmt.Fprintf(out.Stderr, "hopgate-server domains: %v\n", err)
		return exitError
	}
}

// settings are the flags shared by every command.
type settings struct {
	adminURL, apiKey, caFile string
	insecure, json           bool
	memo                     string
}

// command is one subcommand: how many positional arguments it takes and what it does.
type command struct {
	args int // 0 or 1 (the domain)
	memo bool
	run  func(ctx context.Context, c *client, domain string, s *settings, out IO) error
}

var commands = map[string]command{
	"add":        {args: 1, memo: true, run: add},
	"remove":     {args: 1, run: remove},
	"list":       {args: 0, run: list},
	"status":     {args: 1, run: status},
	"rotate-key": {args: 1, run: rotateKey},
}

func run(ctx context.Context, args []string, env Env, out IO) error {
	if len(args) == 0 {
		return usagef("missing command: add, remove, list, status or rotate-key")
	}
	name := args[0]
	if name == "-h" || name == "--help" || name == "help" {
		return flag.ErrHelp
	}
	cmd, ok := commands[name]
	if !ok {
		return usagef("unknown command %q: use add, remove, list, status or rotate-key", name)
	}
	s := &settings{}
	fset := flag.NewFlagSet("domains "+name, flag.ContinueOnError)
	fset.SetOutput(io.Discard)
	fset.StringVar(&s.adminURL, "admin-url", "", "")
	fset.StringVar(&s.apiKey, "admin-api-key", "", "")
	fset.StringVar(&s.caFile, "ca-file", "", "")
	fset.BoolVar(&s.insecure, "insecure", false, "")
	fset.BoolVar(&s.json, "json", false, "")
	if cmd.memo {
		fset.StringVar(&s.memo, "memo", "", "")
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
	c, err := newClient(s, env)
	if err != nil {
		return err
	}
	defer c.http.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, Timeout)
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
	base   *url.URL
	apiKey string
	http   *http.Client
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
	conf := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: s.insecure}
	if s.caFile != "" {
		pem, err := os.ReadFile(s.caFile)
		if err != nil {
			return nil, usagef("HOP_ADMIN_CA_FILE (--ca-file): %v", err)
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(pem) {
			return nil, usagef("HOP_ADMIN_CA_FILE (--ca-file): %s holds no PEM certificate", s.caFile)
		}
	}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSClientConfig:     conf,
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	return &client{
		base:   base,
		apiKey: s.apiKey,
		// The API never redirects; following one could send the key elsewhere.
		http: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
	}, nil
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
	Success      *bool        `json:"success"`
	Error        string       `json:"error"`
	Exists       bool         `json:"exists"`
	ClientAPIKey string       `json:"client_api_key"`
	Domains      []domainInfo `json:"domains"`
	domainInfo
}

type domainInfo struct {
	Domain    string `json:"domain"`
	Memo      string `json:"memo"`
	CreatedAt string `json:"created_at"`
	UpdatedAt string `json:"updated_at"`
	Agents    int    `json:"agents"`
}

// call sends one request and decodes the answer. raw is the body as received, for --json. An error
// carries the API's own message.
func (c *client) call(ctx context.Context, method, path string, query url.Values, body any) (a answer, raw []byte, err error) {
	u := *c.base
	u.Path += path
	u.RawQuery = query.Encode()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return a, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return a, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.apiKey)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.http.Do(req)
	if err != nil {
		return a, nil, fmt.Errorf("cannot reach the admin API at %s: %s", c.base.Redacted(), explain(err))
	}
	defer res.Body.Close()
	raw, err = io.ReadAll(io.LimitReader(res.Body, 16<<20))
	if err != nil {
		return a, nil, fmt.Errorf("read the answer of %s: %w", u.Redacted(), err)
	}
	if json.Unmarshal(raw, &a) != nil || a.Success == nil {
		return a, raw, fmt.Errorf("%s answered %s, not the admin API's JSON: is --admin-url the gateway's own name (HOP_SERVER_DOMAIN)?", c.base.Redacted(), res.Status)
	}
	if !*a.Success || res.StatusCode >= 300 {
		return a, raw, apiError(res, a.Error)
	}
	return a, raw, nil
}

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
	return fmt.Errorf("the admin API answered %s: %s%s", res.Status, msg, hint)
}

func explain(err error) string {
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
		return fmt.Sprintf("no answer within %s", Timeout)
	}
	return err.Error()
}

// printJSON writes the API's answer as it came.
func printJSON(w io.Writer, raw []byte) {
	fmt.Fprintln(w, strings.TrimRight(string(raw), "\n"))
}

func add(ctx context.Context, c *client, domain string, s *settings, out IO) error {
	a, raw, err := c.call(ctx, http.MethodPost, "/api/v1/admin/domains/register", nil,
		map[string]string{"domain": domain, "memo": s.memo})
	if s.json && raw != nil {
		printJSON(out.Stdout, raw)
	}
	if err != nil || s.json {
		return err
	}
	fmt.Fprintf(out.Stdout, "Registered %s", a.Domain)
	if a.Memo != "" {
		fmt.Fprintf(out.Stdout, " (memo %q)", a.Memo)
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
	fmt.Fprintln(tw, "DOMAIN\tAGENTS\tCREATED\tUPDATED\tMEMO")
	for _, d := range a.Domains {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", d.Domain, d.Agents, d.CreatedAt, d.UpdatedAt, oneLine(d.Memo))
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
	fmt.Fprintf(tw, "Agents:\t%d\n", a.Agents)
	fmt.Fprintf(tw, "Memo:\t%s\n", oneLine(a.Memo))
	fmt.Fprintf(tw, "Created:\t%s\n", a.CreatedAt)
	fmt.Fprintf(tw, "Updated:\t%s\n", a.UpdatedAt)
	return tw.Flush()
}

func rotateKey(ctx context.Context, c *client, domain string, s *settings, out IO) error {
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
