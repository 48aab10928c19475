package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ACME directories of Let's Encrypt.
const (
	LetsEncryptProduction = "https://acme-v02.api.letsencrypt.org/directory"
	LetsEncryptStaging    = "https://acme-staging-v02.api.letsencrypt.org/directory"
)

// Server holds the settings of hopgate-server. LoadServer fills and validates
// it; afterwards it is read-only.
type Server struct {
	HTTPListen  string // host:port of the plain-HTTP listener
	HTTPSListen string // host:port of the TLS listener
	HTTPProxy   bool   // also proxy tunneled domains over plain HTTP

	// Domain is the gateway's own name, lowercase without trailing dot;
	// "localhost" in debug when unset.
	Domain       string
	ProxyDomains []string // extra names to hold certificates for, canonical, no repeats
	Debug        bool

	// ServerID names this gateway in its logs, its metrics (label gateway_id) and, with Postgres, the
	// cluster's presence rows; the host name unless set.
	ServerID string

	ProxyTimeout    time.Duration // wait for an agent's response headers
	ShutdownTimeout time.Duration // drain time after SIGTERM
	// DrainDelay is how long a shutdown keeps accepting and serving with /readyz answering 503
	// "draining", so that a load balancer takes the gateway out before its listeners close.
	DrainDelay         time.Duration
	TunnelPingInterval time.Duration // keepalive ping; a tunnel is dead after 3 missed pongs

	// TrustedProxies are peers whose X-Forwarded-* and X-Real-IP headers are kept (a load balancer in
	// front of the gateway); everyone else's are replaced.
	TrustedProxies []netip.Prefix

	// TCPPorts is the range of public ports the admin API hands to TCP-mode domains; the zero range
	// turns TCP tunnels off.
	TCPPorts PortRange
	// TCPListenHost is the address TCP-mode ports listen on ("" = every interface).
	TCPListenHost string
	// TCPMaxConnsPerDomain caps the open connections of one TCP or TLS-passthrough domain (0 = no cap).
	TCPMaxConnsPerDomain int
	// TCPIdleTimeout closes a TCP or passthrough connection after this long without a byte either way.
	TCPIdleTimeout time.Duration
	// ProxyProtocolFrom are load balancers whose PROXY protocol header (v1 or v2) every public
	// listener requires and believes; from anyone else a PROXY header is refused. Empty: no
	// listener reads PROXY headers.
	ProxyProtocolFrom []netip.Prefix

	// Limits. 0 means no limit.
	MaxStreamsPerTunnel int // concurrent requests on one tunnel; more get 503 at once
	MaxAgentsPerDomain  int // tunnels one domain may hold
	MaxConnections      int // open connections over both public listeners; more are closed at accept
	AuthFailuresPerMin  int // failed key checks (tunnel and admin API) allowed per client address
	// MaxBodyBytes caps every tenant request body; a domain's policy may set a lower cap.
	MaxBodyBytes int64

	// OIDCCARoots is a PEM file of extra roots to trust for OpenID providers (single sign-on of
	// access policies), besides the system's; checked to hold a certificate. OIDCHTTPClient uses it.
	OIDCCARoots string

	MetricsListen string // host:port of /metrics; empty = disabled
	Pprof         bool   // serve /debug/pprof/ on the metrics listener

	AdminAPIKey string // secret; empty disables the admin API
	// Console serves the web console on /console/ of Domain (it needs the admin API).
	Console bool
	// ConsoleOIDC, when its issuer is set, lets operators sign in to the console with an OpenID
	// provider besides the admin key; the allow lists say who may.
	ConsoleOIDC ConsoleOIDC
	// InspectRedactHeaders are header names the request inspector redacts besides the built-in
	// ones (Authorization, Cookie, Set-Cookie, the API key headers).
	InspectRedactHeaders []string

	DBDSN             string // secret (password); postgres:// URL or empty for SQLite in DataDir
	DataDir           string
	DBMaxOpenConns    int // 0 = unlimited
	DBMaxIdleConns    int
	DBConnMaxLifetime time.Duration // 0 = no limit

	ACMEEmail      string
	ACMECADir      string   // directory URL; staging when ACMEUseStaging and not set
	ACMEUseStaging bool     // already applied to ACMECADir
	ACMECARoots    string   // PEM file of extra roots for the ACME server; checked readable
	ACMECacheDir   string   // DataDir/acme when unset
	ACMEExpectIPs  []net.IP // empty = no check
	// ACMEDNSResolver is a host:port DNS server for the EXPECT_IPS check and the DNS-01 propagation
	// check (tests); empty = system resolver (and, for DNS-01, the zone's authoritative servers).
	ACMEDNSResolver string
	// ACMEDNSProvider names the lego DNS provider ("cloudflare", "route53", "httpreq", "exec", …)
	// that solves DNS-01, the only challenge a CA accepts for wildcard names; it reads its own
	// variables. Empty = wildcard domains cannot get certificates, so outside debug mode they cannot
	// be registered. Only the name's shape is checked here: the provider is built (and its own
	// variables checked) by the gateway, which is the only binary that links lego's providers.
	ACMEDNSProvider string
	// ACMERenewInterval is how often certificates are checked for renewal.
	ACMERenewInterval time.Duration

	ErrorPagesDir  string // empty = embedded pages
	ErrorAssetsDir string // empty = embedded assets

	LogLevel  slog.Level
	LogFormat string // "json" or "text"; text in debug unless set

	// Deprecated lists the original HopGate's settings that are set but ignored, for main to log
	// with WarnDeprecated once the logger exists.
	Deprecated []Notice
}

// TunnelMissedPongs is how many pings in a row may go unanswered before the
// server declares a tunnel dead.
const TunnelMissedPongs = 3

// serverSettings is the table of hopgate-server, bound to the fields of s.
func serverSettings(s *Server) []setting {
	return []setting{
		{env: "HOP_SERVER_HTTP_LISTEN", flag: "http-listen", def: ":80",
			usage: "plain-HTTP listener: ACME HTTP-01 answers; everything else redirects to HTTPS (308) unless --http-proxy",
			bind:  bind(&s.HTTPListen, "host:port", parseListen)},
		{env: "HOP_SERVER_HTTPS_LISTEN", flag: "https-listen", def: ":443",
			usage: "TLS listener (h2, http/1.1): tunnel gRPC service, admin API, proxied traffic",
			bind:  bind(&s.HTTPSListen, "host:port", parseListen)},
		{env: "HOP_SERVER_HTTP_PROXY", flag: "http-proxy", def: "false",
			usage: "also proxy tunneled domains on the plain-HTTP listener (behind a TLS-terminating balancer)",
			bind:  bindBool(&s.HTTPProxy)},
		{env: "HOP_SERVER_DOMAIN", flag: "domain",
			shownDefault: `(required; "localhost" with --debug)`,
			usage:        "the gateway's own name: admin API, tunnel endpoint, health; never proxied",
			bind:         bind(&s.Domain, "name", parseDomain)},
		{env: "HOP_SERVER_PROXY_DOMAINS", flag: "proxy-domains",
			usage: "extra names (comma-separated) to hold certificates for at start",
			bind:  bind(&s.ProxyDomains, "name,...", parseDomains)},
		{env: "HOP_SERVER_DEBUG", flag: "debug", def: "false",
			usage: "development mode: self-signed certificates, embedded store, text logs, never a public CA",
			bind:  bindBool(&s.Debug)},
		{env: "HOP_SERVER_PROXY_TIMEOUT_SECONDS", flag: "proxy-timeout-seconds", def: "15",
			usage: "seconds allowed for the agent to return response headers (504 after; not a limit on body streaming)",
			bind:  bind(&s.ProxyTimeout, "seconds", parseSeconds)},
		{env: "HOP_SERVER_ID", flag: "server-id", shownDefault: "(the host name)",
			usage: "this gateway's name in logs (gateway_id), metrics (label gateway_id) and the cluster's presence rows; printable, no spaces, at most 64 bytes; unique among the gateways of one database",
			bind:  bind(&s.ServerID, "name", parseServerID)},
		{env: "HOP_SERVER_SHUTDOWN_TIMEOUT", flag: "shutdown-timeout", def: "30s",
			usage: "how long SIGTERM waits for in-flight requests",
			bind:  bind(&s.ShutdownTimeout, "duration", parsePositiveDuration)},
		{env: "HOP_SERVER_DRAIN_DELAY", flag: "drain-delay", def: "0s",
			usage: "on SIGTERM, keep accepting and serving this long with /readyz answering 503 \"draining\" before the listeners close, so that a load balancer stops sending first (part of --shutdown-timeout)",
			bind:  bind(&s.DrainDelay, "duration", parseNonNegativeDuration)},
		{env: "HOP_SERVER_TRUSTED_PROXIES", flag: "trusted-proxies",
			usage: "CSV of CIDRs whose X-Forwarded-For/-Proto/-Host and X-Real-IP are trusted; empty trusts nobody",
			bind:  bind(&s.TrustedProxies, "CIDR list", parseCIDRs)},
		{env: "HOP_SERVER_TCP_PORTS", flag: "tcp-ports",
			usage: "range of public ports for TCP-mode domains, like 20000-20999 (or one port); empty turns TCP tunnels off",
			bind:  bind(&s.TCPPorts, "low-high", parsePortRange)},
		{env: "HOP_SERVER_TCP_LISTEN_HOST", flag: "tcp-listen-host",
			usage: "address the TCP-mode ports listen on; empty listens on every interface",
			bind:  bind(&s.TCPListenHost, "address", parseListenHost)},
		{env: "HOP_SERVER_TCP_MAX_CONNS_PER_DOMAIN", flag: "tcp-max-conns-per-domain", def: "1000",
			usage: "open connections one TCP or TLS-passthrough domain may have; more are closed at once (0: no limit)",
			bind:  bind(&s.TCPMaxConnsPerDomain, "count", parseNonNegativeInt)},
		{env: "HOP_SERVER_TCP_IDLE_TIMEOUT", flag: "tcp-idle-timeout", def: "1h",
			usage: "a TCP or TLS-passthrough connection with no byte either way for this long is closed",
			bind:  bind(&s.TCPIdleTimeout, "duration", parsePositiveDuration)},
		{env: "HOP_SERVER_PROXY_PROTOCOL_FROM", flag: "proxy-protocol-from",
			usage: "CSV of CIDRs of load balancers that send a PROXY protocol header (v1 or v2) on every connection; their header is required and believed, anyone else's refused; empty reads no PROXY headers",
			bind:  bind(&s.ProxyProtocolFrom, "CIDR list", parseCIDRs)},
		{env: "HOP_SERVER_MAX_STREAMS_PER_TUNNEL", flag: "max-streams-per-tunnel", def: "1000",
			usage: "concurrent requests one tunnel carries; more are answered 503 at once (0: no limit)",
			bind:  bind(&s.MaxStreamsPerTunnel, "count", parseNonNegativeInt)},
		{env: "HOP_SERVER_MAX_AGENTS_PER_DOMAIN", flag: "max-agents-per-domain", def: "16",
			usage: "agents one domain may connect at once (0: no limit)",
			bind:  bind(&s.MaxAgentsPerDomain, "count", parseNonNegativeInt)},
		{env: "HOP_SERVER_MAX_CONNECTIONS", flag: "max-connections", def: "20000",
			usage: "open connections over the HTTPS and HTTP listeners together; more are closed as soon as accepted (0: no limit)",
			bind:  bind(&s.MaxConnections, "count", parseNonNegativeInt)},
		{env: "HOP_SERVER_AUTH_FAILURES_PER_MINUTE", flag: "auth-failures-per-minute", def: "20",
			usage: "failed key checks allowed per client address and minute, on tunnels and the admin API; then 429 (0: no limit)",
			bind:  bind(&s.AuthFailuresPerMin, "count", parseNonNegativeInt)},
		{env: "HOP_SERVER_MAX_BODY_BYTES", flag: "max-body-bytes", def: "0",
			usage: "largest request body to any domain, in bytes or with KiB/MiB/GiB (10MiB); over it is 413, at once when Content-Length says so, else where a streamed body crosses it (0: no limit; a domain's policy max_body_bytes may set a lower one)",
			bind:  bind(&s.MaxBodyBytes, "size", parseByteSize)},
		{env: "HOP_SERVER_OIDC_CA_ROOTS", flag: "oidc-ca-roots",
			usage: "PEM file of extra roots to trust for OpenID providers (single sign-on), besides the system's; must be readable",
			bind:  bind(&s.OIDCCARoots, "file", parsePEMFile)},
		{env: "HOP_SERVER_TUNNEL_PING_INTERVAL", flag: "tunnel-ping-interval", def: "15s",
			usage: fmt.Sprintf("how often the server pings agents; a tunnel is dead after %d missed pongs", TunnelMissedPongs),
			bind:  bind(&s.TunnelPingInterval, "duration", parsePositiveDuration)},
		{env: "HOP_SERVER_METRICS_LISTEN", flag: "metrics-listen", def: "127.0.0.1:9180", keepEmpty: true,
			usage: "listener of Prometheus /metrics; set it empty to disable",
			bind:  bind(&s.MetricsListen, "host:port", parseListen)},
		{env: "HOP_SERVER_PPROF", flag: "pprof", def: "false",
			usage: "also serve Go's runtime profiles (/debug/pprof/) on the metrics listener",
			bind:  bindBool(&s.Pprof)},
		{env: "HOP_ADMIN_API_KEY", flag: "admin-api-key", secret: true,
			usage: "Bearer key of the admin API; empty disables the admin API",
			bind:  bind(&s.AdminAPIKey, "key", parseString)},
		{env: "HOP_SERVER_CONSOLE", flag: "console", def: "true",
			usage: "serve the web console on https://$HOP_SERVER_DOMAIN/console/ (sign-in with the admin API key; off without one)",
			bind:  bindBool(&s.Console)},
		{env: "HOP_SERVER_CONSOLE_OIDC_ISSUER", flag: "console-oidc-issuer",
			usage: "OpenID provider operators may sign in to the console with (https:// URL); its redirect URI is https://$HOP_SERVER_DOMAIN/.hopgate/callback",
			bind:  bind(&s.ConsoleOIDC.Issuer, "url", parseIssuer)},
		{env: "HOP_SERVER_CONSOLE_OIDC_CLIENT_ID", flag: "console-oidc-client-id",
			usage: "the console's client id at that provider",
			bind:  bind(&s.ConsoleOIDC.ClientID, "id", parseString)},
		{env: "HOP_SERVER_CONSOLE_OIDC_CLIENT_SECRET", flag: "console-oidc-client-secret", secret: true,
			usage: "the console's client secret at that provider (empty for a public client)",
			bind:  bind(&s.ConsoleOIDC.ClientSecret, "secret", parseString)},
		{env: "HOP_SERVER_CONSOLE_OIDC_ALLOWED_EMAILS", flag: "console-oidc-allowed-emails",
			usage: "CSV of verified e-mail addresses that may sign in to the console",
			bind:  bind(&s.ConsoleOIDC.AllowedEmails, "list", parseCSV)},
		{env: "HOP_SERVER_CONSOLE_OIDC_ALLOWED_DOMAINS", flag: "console-oidc-allowed-domains",
			usage: "CSV of e-mail domains whose verified addresses may sign in to the console",
			bind:  bind(&s.ConsoleOIDC.AllowedDomains, "list", parseCSV)},
		{env: "HOP_SERVER_CONSOLE_OIDC_ALLOWED_GROUPS", flag: "console-oidc-allowed-groups",
			usage: "CSV of groups (the ID token's groups claim) whose members may sign in to the console",
			bind:  bind(&s.ConsoleOIDC.AllowedGroups, "list", parseCSV)},
		{env: "HOP_SERVER_INSPECT_REDACT_HEADERS", flag: "inspect-redact-headers",
			usage: "CSV of header names the request inspector redacts besides Authorization, Proxy-Authorization, Cookie, Set-Cookie and the API key headers",
			bind:  bind(&s.InspectRedactHeaders, "header list", parseHeaderNames)},
		{env: "HOP_DB_DSN", flag: "db-dsn", secret: true,
			usage: "postgres:// or postgresql:// URL selects Postgres; empty selects embedded SQLite in --data-dir",
			bind:  bind(&s.DBDSN, "url", parseDSN)},
		{env: "HOP_DATA_DIR", flag: "data-dir", def: "./data",
			usage: "directory of the embedded database, certificates and account keys",
			bind:  bind(&s.DataDir, "dir", parseDataDir)},
		{env: "HOP_DB_MAX_OPEN_CONNS", flag: "db-max-open-conns", def: "10",
			usage: "most open database connections (0 = unlimited)",
			bind:  bind(&s.DBMaxOpenConns, "n", parseNonNegativeInt)},
		{env: "HOP_DB_MAX_IDLE_CONNS", flag: "db-max-idle-conns", def: "5",
			usage: "most idle database connections kept; at most --db-max-open-conns",
			bind:  bind(&s.DBMaxIdleConns, "n", parseNonNegativeInt)},
		{env: "HOP_DB_CONN_MAX_LIFETIME", flag: "db-conn-max-lifetime", def: "30m",
			usage: "longest time a database connection is reused (0 = no limit)",
			bind:  bind(&s.DBConnMaxLifetime, "duration", parseNonNegativeDuration)},
		{env: "HOP_ACME_EMAIL", flag: "acme-email",
			usage: "ACME account contact",
			bind:  bind(&s.ACMEEmail, "address", parseEmail)},
		{env: "HOP_ACME_CA_DIR", flag: "acme-ca-dir", def: LetsEncryptProduction,
			usage: "ACME directory URL; an explicit value wins over --acme-use-staging",
			bind:  bind(&s.ACMECADir, "url", parseHTTPURL)},
		{env: "HOP_ACME_USE_STAGING", flag: "acme-use-staging", def: "false",
			usage: "use the Let's Encrypt staging directory (" + LetsEncryptStaging + ") unless --acme-ca-dir is set",
			bind:  bindBool(&s.ACMEUseStaging)},
		{env: "HOP_ACME_CA_ROOTS", flag: "acme-ca-roots",
			usage: "PEM file of extra roots to trust for the ACME server (e.g. Pebble); must be readable",
			bind:  bind(&s.ACMECARoots, "file", parseReadableFile)},
		{env: "HOP_ACME_CACHE_DIR", flag: "acme-cache-dir", shownDefault: "$HOP_DATA_DIR/acme",
			usage: "certificate storage (files)",
			bind:  bind(&s.ACMECacheDir, "dir", parseString)},
		{env: "HOP_ACME_EXPECT_IPS", flag: "acme-expect-ips",
			usage: "comma-separated IPs; a name is only issued/served if it resolves to one of these",
			bind:  bind(&s.ACMEExpectIPs, "ip,...", parseIPs)},
		{env: "HOP_ACME_DNS_RESOLVER", flag: "acme-dns-resolver",
			usage: "host:port of the DNS server used for the HOP_ACME_EXPECT_IPS check and the DNS-01 propagation check; empty uses the system resolver",
			bind:  bind(&s.ACMEDNSResolver, "host:port", parseDialAddr)},
		{env: "HOP_ACME_DNS_PROVIDER", flag: "acme-dns-provider",
			usage: "lego DNS provider for DNS-01 (e.g. cloudflare, route53, httpreq, exec; it reads its own variables); needed for wildcard domains; empty = wildcard domains cannot be registered outside debug mode",
			bind:  bind(&s.ACMEDNSProvider, "name", parseDNSProviderName)},
		{env: "HOP_ACME_RENEW_INTERVAL", flag: "acme-renew-interval", def: "6h",
			usage: "how often certificates are checked for renewal (renewed with a third of their lifetime left, or when the CA's renewal information says so)",
			bind:  bind(&s.ACMERenewInterval, "duration", parsePositiveDuration)},
		{env: "HOP_ERROR_PAGES_DIR", flag: "error-pages-dir",
			usage: "directory overriding the embedded error pages",
			bind:  bind(&s.ErrorPagesDir, "dir", parseDir)},
		{env: "HOP_ERROR_ASSETS_DIR", flag: "error-assets-dir",
			usage: "directory overriding the embedded error page assets",
			bind:  bind(&s.ErrorAssetsDir, "dir", parseDir)},
		{env: "HOP_LOG_LEVEL", flag: "log-level", def: "info",
			usage: "debug, info, warn or error",
			bind:  bind(&s.LogLevel, "level", parseLogLevel)},
		{env: "HOP_LOG_FORMAT", flag: "log-format", def: "json", shownDefault: `"json" ("text" with --debug)`,
			usage: "json or text",
			bind:  bind(&s.LogFormat, "format", parseLogFormat)},
	}
}

// LoadServer reads the settings of hopgate-server from args (without the
// program name), lookupEnv (os.LookupEnv in main) and the .env file at
// dotenvPath ("" for none; a missing file is fine). The error joins every
// problem found, each naming its variable and flag; it is ErrHelp for -h/--help.
// Retired settings of the original HopGate that are set land in Deprecated.
func LoadServer(args []string, lookupEnv func(string) (string, bool), dotenvPath string) (*Server, error) {
	s := &Server{}
	settings := serverSettings(s)
	got, errs, err := load("hopgate-server", server, settings, args, lookupEnv, dotenvPath)
	if err != nil {
		return nil, err
	}

	if s.Domain == "" {
		if s.Debug {
			s.Domain = "localhost"
		} else {
			errs = append(errs, find(settings, "HOP_SERVER_DOMAIN").errorf("required (the gateway's own name) unless HOP_SERVER_DEBUG is on"))
		}
	}
	if s.ServerID == "" {
		s.ServerID, errs = defaultServerID(os.Hostname, find(settings, "HOP_SERVER_ID"), errs)
	}
	if s.DrainDelay >= s.ShutdownTimeout && s.ShutdownTimeout > 0 {
		errs = append(errs, find(settings, "HOP_SERVER_DRAIN_DELAY").errorf(
			"%s is not less than HOP_SERVER_SHUTDOWN_TIMEOUT (--shutdown-timeout) %s, which it is part of", s.DrainDelay, s.ShutdownTimeout))
	}
	if s.DBMaxOpenConns > 0 && s.DBMaxIdleConns > s.DBMaxOpenConns {
		errs = append(errs, find(settings, "HOP_DB_MAX_IDLE_CONNS").errorf(
			"%d is more than HOP_DB_MAX_OPEN_CONNS (--db-max-open-conns) %d", s.DBMaxIdleConns, s.DBMaxOpenConns))
	}
	if s.Pprof && s.MetricsListen == "" {
		errs = append(errs, find(settings, "HOP_SERVER_PPROF").errorf("needs HOP_SERVER_METRICS_LISTEN (--metrics-listen): profiles are served on that listener only"))
	}
	errs = append(errs, s.ConsoleOIDC.check(settings, got, s.Console && s.AdminAPIKey != "")...)
	if s.Debug && !got.explicit("HOP_LOG_FORMAT") {
		s.LogFormat = "text"
	}
	if s.ACMEUseStaging && !got.explicit("HOP_ACME_CA_DIR") {
		s.ACMECADir = LetsEncryptStaging
	}
	if s.ACMECacheDir == "" {
		s.ACMECacheDir = filepath.Join(s.DataDir, "acme")
	}

	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	s.Deprecated = got.deprecated
	return s, nil
}

// ConsoleOIDC is single sign-on for the console's operators.
type ConsoleOIDC struct {
	Issuer, ClientID, ClientSecret               string
	AllowedEmails, AllowedDomains, AllowedGroups []string
}

// check refuses a half-configured sign-in, and one that would let every account of the provider
// administer the gateway.
func (o ConsoleOIDC) check(settings []setting, got loaded, consoleOn bool) []error {
	var errs []error
	issuer := find(settings, "HOP_SERVER_CONSOLE_OIDC_ISSUER")
	switch {
	case o.Issuer == "":
		for _, env := range []string{"HOP_SERVER_CONSOLE_OIDC_CLIENT_ID", "HOP_SERVER_CONSOLE_OIDC_CLIENT_SECRET",
			"HOP_SERVER_CONSOLE_OIDC_ALLOWED_EMAILS", "HOP_SERVER_CONSOLE_OIDC_ALLOWED_DOMAINS", "HOP_SERVER_CONSOLE_OIDC_ALLOWED_GROUPS"} {
			if got.explicit(env) {
				errs = append(errs, find(settings, env).errorf("set without HOP_SERVER_CONSOLE_OIDC_ISSUER (--console-oidc-issuer)"))
			}
		}
	case !consoleOn:
		errs = append(errs, issuer.errorf("set, but the console is off (HOP_SERVER_CONSOLE=false or no HOP_ADMIN_API_KEY)"))
	case o.ClientID == "":
		errs = append(errs, find(settings, "HOP_SERVER_CONSOLE_OIDC_CLIENT_ID").errorf("required with HOP_SERVER_CONSOLE_OIDC_ISSUER"))
	case len(o.AllowedEmails)+len(o.AllowedDomains)+len(o.AllowedGroups) == 0:
		errs = append(errs, issuer.errorf("set without HOP_SERVER_CONSOLE_OIDC_ALLOWED_EMAILS, _DOMAINS or _GROUPS: "+
			"every account of the provider could administer the gateway"))
	}
	return errs
}

// defaultServerID is the host name as a gateway id, or an error naming the setting to set instead.
func defaultServerID(hostname func() (string, error), st setting, errs []error) (string, []error) {
	h, err := hostname()
	if err != nil {
		return "", append(errs, st.errorf("not set and the host name is unknown (%v); set it", err))
	}
	id, err := parseServerID(strings.TrimSpace(h))
	if err != nil {
		return "", append(errs, st.errorf("not set, and the host name is not a valid id: %v; set it", err))
	}
	return id, errs
}

// ServerUsage writes the help of hopgate-server: every flag, its variable,
// default and meaning.
func ServerUsage(w io.Writer) {
	usage(w, "hopgate-server",
		"Public end of HopGate: serves HTTPS for the gateway's domain and proxies every registered\n"+
			"domain to the agent connected for it.\n\n"+
			"  hopgate-server domains ...  manage domains and their access policies through the admin API\n"+
			"                              (hopgate-server domains --help)\n"+
			"  hopgate-server sessions rotate-key\n"+
			"                              end every single-sign-on session: a new session key (hopgate-server\n"+
			"                              sessions --help)\n"+
			"  hopgate-server audit verify check the audit log's hash chain: exit 1 naming an edited or\n"+
			"                              deleted row (hopgate-server audit --help)\n"+
			"  hopgate-server health       check that the gateway on this host answers, for container health\n"+
			"                              checks: exit 0 healthy, 1 not (hopgate-server health --help)\n"+
			"  --version                   print the version and exit.\n\n"+
			"Exit codes: 0 stopped by a signal (SIGTERM, SIGINT) after draining, or after --help/--version;\n"+
			"1 failed while starting or serving (a listener, the store, certificates); 2 bad configuration.",
		serverSettings(&Server{}))
}

// LogValue shows the settings with secrets redacted: the admin key as
// "[redacted]", the password of the DSN as "xxxxx".
func (s Server) LogValue() slog.Value {
	return slog.GroupValue(s.attrs()...)
}

// String is LogValue as text, so that %v and %s never print a secret.
func (s Server) String() string { return formatAttrs("config.Server", s.attrs()) }

// GoString is String, so that %#v never prints a secret either.
func (s Server) GoString() string { return s.String() }

func (s Server) attrs() []slog.Attr {
	return logAttrs(serverSettings(&s), map[string]func() slog.Value{
		"HOP_DB_DSN": func() slog.Value { return slog.StringValue(redactDSN(s.DBDSN)) },
	})
}

// parseDNSProviderName checks the shape of a lego DNS provider name (lowercase letters, digits,
// hyphens and dots, as in "cloudflare" or "route53"); whether lego knows it is checked when the
// gateway builds it.
func parseDNSProviderName(s string) (string, error) {
	s = strings.TrimSpace(s)
	ok := s != ""
	for i := 0; i < len(s) && ok; i++ {
		c := s[i]
		ok = c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.'
	}
	if !ok {
		return "", fmt.Errorf("%q is not a lego DNS provider name like cloudflare, route53, httpreq or exec", s)
	}
	return s, nil
}
