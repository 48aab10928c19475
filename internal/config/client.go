package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"
)

// Client holds the settings of hopgate-client. LoadClient fills and validates
// it; afterwards it is read-only.
type Client struct {
	// ConfigFile is the agent config file (--config); empty when the flags describe one service.
	ConfigFile string
	// Services are the ingress rules, in the file's order: the file's, or the one service of
	// --domain, --api-key and --local-target.
	Services []Service

	// ServerAddr is host:port of the gateway's HTTPS listener (port 443 when the setting has none),
	// or several of them joined by commas: one per gateway, or per DNS name of a set of gateways.
	// ServerAddrs splits it.
	ServerAddr string
	// ServerName is the TLS name every gateway is verified against; empty: the host of the first
	// entry of ServerAddr.
	ServerName string
	// HAConnections caps how many gateway addresses the agent holds tunnels to at once.
	HAConnections int
	Domain        string // the domain this agent serves, lowercase without trailing dot
	APIKey        string // secret: the domain's client API key, from the setting or read from APIKeyFile
	APIKeyFile    string // where APIKey was read from; empty when given directly

	// LocalTarget is where requests go: scheme http or https and a host (a plain host:port
	// setting becomes http://host:port), unix with a socket path, or tcp with host:port for raw
	// byte streams (TCP tunnels, TLS passthrough).
	LocalTarget *url.URL

	// Debug skips verification of the server certificate, unless CAFile is
	// set: then the server is verified against CAFile (see SkipVerify).
	Debug  bool
	CAFile string // PEM roots to trust for the server instead of the system's; checked readable

	// LocalCAFile and LocalInsecureSkipVerify apply to an https:// local target.
	LocalCAFile             string
	LocalInsecureSkipVerify bool

	PingInterval    time.Duration
	ShutdownTimeout time.Duration
	AgentID         string // empty: the caller makes one (hostname + random suffix)

	// MetricsListen is the host:port of the agent's Prometheus /metrics; empty disables it.
	MetricsListen string
	// Pprof also serves Go's runtime profiles (/debug/pprof/) on the metrics listener.
	Pprof bool

	LogLevel  slog.Level
	LogFormat string // "json" or "text"

	// reload reads the same sources again (SIGHUP, a change of ConfigFile).
	reload func() (*Client, error)

	// Deprecated lists the original HopGate's settings that are set but ignored, for main to log
	// with WarnDeprecated once the logger exists.
	Deprecated []Notice
}

// ServerAddrs is the entries of ServerAddr, each host:port.
func (c *Client) ServerAddrs() []string {
	if c.ServerAddr == "" {
		return nil
	}
	return strings.Split(c.ServerAddr, ",")
}

// SkipVerify tells whether the agent must skip verification of the server
// certificate: only with --debug and no --ca-file, because a CA file given
// on purpose is worth checking even while debugging.
func (c *Client) SkipVerify() bool { return c.Debug && c.CAFile == "" }

func clientSettings(c *Client) []setting {
	return []setting{
		{env: "HOP_CLIENT_CONFIG", flag: "config",
			usage: "YAML file of the agent's settings and services (hostname, path, target, api_key or api_key_file); SIGHUP or a change of the file reloads its services. The single-service settings (--domain, --api-key, --api-key-file, --local-target, --local-*) are refused beside it; other settings may be given as flags or variables only if the file does not set them",
			bind:  bind(&c.ConfigFile, "file", parseString)},
		{env: "HOP_CLIENT_SERVER_ADDR", flag: "server-addr", required: true,
			usage: "the gateway's HTTPS address: host[:port], port 443 by default, e.g. gateway.example.com or [2001:db8::1]:8443; or a comma-separated list of them, gw1.example.com,gw2.example.com:8443. The agent holds a tunnel to every gateway: to each entry, and to each address (A/AAAA) a name resolves to, re-resolved every minute",
			bind:  bind(&c.ServerAddr, "host[:port][,...]", parseServerAddr)},
		{env: "HOP_CLIENT_SERVER_NAME", flag: "server-name",
			usage: "the name every gateway's certificate is verified against, when --server-addr is an IP address or another name than the gateway's (default: the host of the first entry of --server-addr)",
			bind:  bind(&c.ServerName, "name", parseDomain)},
		{env: "HOP_CLIENT_HA_CONNECTIONS", flag: "ha-connections", def: "4",
			usage: "at most this many gateway addresses to hold tunnels to at once, spread over the entries of --server-addr",
			bind:  bind(&c.HAConnections, "n", parsePositiveInt)},
		{env: "HOP_CLIENT_DOMAIN", flag: "domain", required: true,
			usage: "the registered domain this agent serves",
			bind:  bind(&c.Domain, "name", parseTenantDomain)},
		{env: "HOP_CLIENT_API_KEY", flag: "api-key", secret: true, shownDefault: "(required unless --api-key-file)",
			usage: "client API key of the domain, as shown once by the admin API; give it or --api-key-file",
			bind:  bind(&c.APIKey, "key", parseString)},
		{env: "HOP_CLIENT_API_KEY_FILE", flag: "api-key-file",
			usage: "file holding the client API key (Docker and Kubernetes secrets), trailing whitespace trimmed; instead of --api-key",
			bind:  bind(&c.APIKeyFile, "file", parseString)},
		{env: "HOP_CLIENT_LOCAL_TARGET", flag: "local-target", required: true,
			usage: "the private service: host:port (plain HTTP), an http:// or https:// URL (its path prefixes every request path), unix:///path.sock, or tcp://host:port for a TCP service (the gateway's TCP ports and TLS passthrough: bytes are relayed as they are)",
			bind:  bind(&c.LocalTarget, "target", parseLocalTarget)},
		{env: "HOP_CLIENT_DEBUG", flag: "debug", def: "false",
			usage: "skip verification of the server certificate (ignored when --ca-file is set: the CA file wins)",
			bind:  bindBool(&c.Debug)},
		{env: "HOP_CLIENT_CA_FILE", flag: "ca-file",
			usage: "PEM file of roots to trust for the server instead of the system roots; must be readable",
			bind:  bind(&c.CAFile, "file", parseReadableFile)},
		{env: "HOP_CLIENT_LOCAL_CA_FILE", flag: "local-ca-file",
			usage: "PEM file of roots to trust for an https:// local target instead of the system roots",
			bind:  bind(&c.LocalCAFile, "file", parseReadableFile)},
		{env: "HOP_CLIENT_LOCAL_INSECURE_SKIP_VERIFY", flag: "local-insecure-skip-verify", def: "false",
			usage: "do not verify the certificate of an https:// local target",
			bind:  bindBool(&c.LocalInsecureSkipVerify)},
		{env: "HOP_CLIENT_PING_INTERVAL", flag: "ping-interval", def: "15s",
			usage: "how often the agent pings the server to detect a dead tunnel",
			bind:  bind(&c.PingInterval, "duration", parsePositiveDuration)},
		{env: "HOP_CLIENT_SHUTDOWN_TIMEOUT", flag: "shutdown-timeout", def: "30s",
			usage: "how long a signal waits for in-flight requests",
			bind:  bind(&c.ShutdownTimeout, "duration", parsePositiveDuration)},
		{env: "HOP_CLIENT_AGENT_ID", flag: "agent-id", shownDefault: "hostname + random suffix",
			usage: "name of this agent in the server's status and logs",
			bind:  bind(&c.AgentID, "id", parseString)},
		{env: "HOP_CLIENT_METRICS_LISTEN", flag: "metrics-listen", keepEmpty: true,
			usage: "listener of the agent's Prometheus /metrics, e.g. 127.0.0.1:9181; empty disables it",
			bind:  bind(&c.MetricsListen, "host:port", parseListen)},
		{env: "HOP_CLIENT_PPROF", flag: "pprof", def: "false",
			usage: "also serve Go's runtime profiles (/debug/pprof/) on the metrics listener",
			bind:  bindBool(&c.Pprof)},
		{env: "HOP_CLIENT_LOG_LEVEL", flag: "log-level", def: "info",
			usage: "debug, info, warn or error",
			bind:  bind(&c.LogLevel, "level", parseLogLevel)},
		{env: "HOP_CLIENT_LOG_FORMAT", flag: "log-format", def: "text",
			usage: "json or text",
			bind:  bind(&c.LogFormat, "format", parseLogFormat)},
	}
}

// serviceSettings are the flags of the single-service form; a config file lists services instead.
var serviceSettings = []string{"HOP_CLIENT_DOMAIN", "HOP_CLIENT_API_KEY", "HOP_CLIENT_API_KEY_FILE",
	"HOP_CLIENT_LOCAL_TARGET", "HOP_CLIENT_LOCAL_CA_FILE", "HOP_CLIENT_LOCAL_INSECURE_SKIP_VERIFY"}

// LoadClient reads the settings of hopgate-client, like LoadServer. With --config (or
// HOP_CLIENT_CONFIG) the services come from that file, and its other keys fill the settings of the
// same names; a setting given both in the file and as a flag or variable is an error, and so is a
// single-service setting beside the file.
func LoadClient(args []string, lookupEnv func(string) (string, bool), dotenvPath string) (*Client, error) {
	c := &Client{}
	settings := clientSettings(c)
	// Whether these are required depends on --config, known only once every source is read.
	required := map[string]bool{}
	for i := range settings {
		if settings[i].required {
			required[settings[i].env] = true
			settings[i].required = false
		}
	}
	got, errs, err := load("hopgate-client", client, settings, args, lookupEnv, dotenvPath)
	if err != nil {
		return nil, err
	}
	if c.ConfigFile != "" {
		errs = append(errs, c.applyFile(settings, got, lookupEnv)...)
		if c.ServerAddr == "" {
			errs = append(errs, fmt.Errorf("%s: server_addr: required (or HOP_CLIENT_SERVER_ADDR, --server-addr): the gateway's host[:port], or a comma-separated list of them", c.ConfigFile))
		}
	} else {
		for _, s := range settings {
			if required[s.env] && !got.explicit(s.env) {
				errs = append(errs, s.errorf("required: %s", s.usage))
			}
		}
		errs = append(errs, c.singleService(settings)...)
	}
	if c.Pprof && c.MetricsListen == "" {
		errs = append(errs, find(settings, "HOP_CLIENT_PPROF").errorf("needs HOP_CLIENT_METRICS_LISTEN (--metrics-listen): profiles are served on that listener only"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	c.Deprecated = got.deprecated
	args = append([]string(nil), args...)
	c.reload = func() (*Client, error) { return LoadClient(args, lookupEnv, dotenvPath) }
	return c, nil
}

// Reload reads the same flags, environment and config file again. Only the services may change
// while the agent runs; the caller compares the rest (see SameSettings).
func (c *Client) Reload() (*Client, error) {
	if c.reload == nil {
		return nil, errors.New("configuration was not loaded by LoadClient")
	}
	return c.reload()
}

// SameSettings reports whether o has the same settings as c apart from the services, which are the
// only part a reload applies.
func (c *Client) SameSettings(o *Client) bool {
	a, b := *c, *o
	a.Services, b.Services, a.reload, b.reload, a.Deprecated, b.Deprecated = nil, nil, nil, nil, nil, nil
	return a.String() == b.String()
}

// singleService makes the one service of --domain, --api-key and --local-target.
func (c *Client) singleService(settings []setting) []error {
	var errs []error
	keySetting := find(settings, "HOP_CLIENT_API_KEY")
	switch fileSetting := find(settings, "HOP_CLIENT_API_KEY_FILE"); {
	case c.APIKey != "" && c.APIKeyFile != "":
		errs = append(errs, keySetting.errorf("set together with HOP_CLIENT_API_KEY_FILE (--api-key-file): give one of them, not both"))
	case c.APIKey == "" && c.APIKeyFile == "":
		errs = append(errs, keySetting.errorf("required: give the domain's client API key, or the file holding it in HOP_CLIENT_API_KEY_FILE (--api-key-file)"))
	case c.APIKeyFile != "":
		key, err := readKeyFile(c.APIKeyFile)
		if err != nil {
			errs = append(errs, fileSetting.wrap(err))
		}
		c.APIKey = key
	}
	if c.LocalTarget != nil && c.LocalTarget.Scheme == "tcp" {
		// The agent relays a tcp:// target's bytes as they are: it makes no TLS connection to it.
		if c.LocalCAFile != "" {
			errs = append(errs, find(settings, "HOP_CLIENT_LOCAL_CA_FILE").errorf("applies to an https:// target only, not to the tcp:// target of HOP_CLIENT_LOCAL_TARGET"))
		}
		if c.LocalInsecureSkipVerify {
			errs = append(errs, find(settings, "HOP_CLIENT_LOCAL_INSECURE_SKIP_VERIFY").errorf("applies to an https:// target only, not to the tcp:// target of HOP_CLIENT_LOCAL_TARGET"))
		}
	}
	if len(errs) == 0 && c.Domain != "" && c.LocalTarget != nil {
		c.Services = []Service{{Hostname: c.Domain, Target: c.LocalTarget, APIKey: c.APIKey,
			TLSSkipVerify: c.LocalInsecureSkipVerify, CAFile: c.LocalCAFile, Where: "flags"}}
	}
	return errs
}

// applyFile reads the config file into c.
func (c *Client) applyFile(settings []setting, got loaded, lookupEnv func(string) (string, bool)) []error {
	var errs []error
	for _, env := range serviceSettings {
		if got.explicit(env) {
			s := find(settings, env)
			errs = append(errs, s.errorf("not allowed with HOP_CLIENT_CONFIG (--config): the services of %s replace the single-service settings", c.ConfigFile))
		}
	}
	f, err := readConfigFile(c.ConfigFile)
	if err != nil {
		return append(errs, find(settings, "HOP_CLIENT_CONFIG").wrap(err))
	}
	file, err := parseClientFile(c.ConfigFile, f, lookupEnv, osFiles)
	if err != nil {
		return append(errs, err)
	}
	for _, fs := range file.settings {
		s := find(settings, fs.env)
		if got.explicit(fs.env) {
			errs = append(errs, fmt.Errorf("%s: %s: also set by %s (--%s): give it in one place", fs.where, fs.key, s.env, s.flag))
			continue
		}
		if fs.value == "" {
			// As from the other sources: empty leaves the field at its zero value (metrics off).
			continue
		}
		if err := s.bind.set(fs.value); err != nil {
			// The check of the written text runs on a table of its own: it must not set c.
			again := find(clientSettings(&Client{}), fs.env).bind.set
			errs = append(errs, fmt.Errorf("%s: %s: %w", fs.where, fs.key, hideExpanded(err, fs.written, fs.value, fs.isPath, again)))
		}
	}
	c.Services = file.services
	return errs
}

// readConfigFile reads the agent's config file, bounded in size.
func readConfigFile(path string) ([]byte, error) {
	if _, err := parseReadableFile(path); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%q is not a readable file: %w", path, pathReason(err))
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, pathReason(err))
	}
	return b, nil
}

// ClientUsage writes the help of hopgate-client: every flag, its variable,
// default and meaning.
func ClientUsage(w io.Writer) {
	usage(w, "hopgate-client",
		"Private end of HopGate: keeps a tunnel to the gateway open and passes the requests for\n--domain to --local-target, or those of each service of --config to its target. A tcp://\n"+
			"target takes the gateway's raw streams instead (a TCP port, or TLS passed through by name).\n"+
			"Exit codes: 0 stopped by a signal (SIGTERM, SIGINT), or after --help/--version; 1 failed for\n"+
			"another reason; 2 bad configuration; 3 the server refused the domain or key (with --config:\n"+
			"the keys of every hostname). SIGHUP re-reads the configuration (the services of --config).\n\n"+
			"  --check   verify the configuration and exit: the server resolves and its certificate is\n"+
			"            trusted, the gateway accepts --domain and --api-key, the local target answers\n"+
			"            (an HTTP GET, or a TCP connect to a tcp:// target).\n"+
			"            Exit 0 when all pass, 3 when the gateway refuses the domain or key, 1 otherwise.\n"+
			"  --version print the version and exit.",
		clientSettings(&Client{}))
}

// LogValue shows the settings with the API key redacted.
func (c Client) LogValue() slog.Value { return slog.GroupValue(c.attrs()...) }

// String is LogValue as text, so that %v and %s never print the API key.
func (c Client) String() string { return formatAttrs("config.Client", c.attrs()) }

// GoString is String, so that %#v never prints the API key either.
func (c Client) GoString() string { return c.String() }

func (c Client) attrs() []slog.Attr { return logAttrs(clientSettings(&c), nil) }
