package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Service is one ingress rule of the agent: requests for Hostname whose path is under Path go to
// Target, or, for a tcp:// Target (see Raw), the raw streams (TCP, TLS passthrough) for Hostname.
// The single-service flags make one Service; a config file makes as many as it lists.
type Service struct {
	Hostname string // canonical: lowercase, no trailing dot
	// Path is a path prefix matched on segment boundaries ("/api" matches /api and /api/x, not
	// /apix); "" matches every path. A trailing slash is dropped, so /api/ and /api are one rule.
	Path   string
	Target *url.URL
	// APIKey is the key of the service's tunnel (secret): its hostname's client API key, found by
	// validation on one of the hostname's services, or the wildcard's key when it rides on one.
	APIKey string
	// Tunnel is the hostname whose tunnel carries this service: Hostname itself, or the wildcard one
	// label above it ("*.apps.example.com" for a.apps.example.com) when the file has that wildcard
	// and the service gives no key of its own (or the wildcard's). The gateway sends the names under
	// a wildcard to the wildcard's agents, so the exact name needs no registration and no call of
	// its own; the routing table picks its rules by exact name. Empty means Hostname (see TunnelHost).
	Tunnel string
	// TLSSkipVerify and CAFile apply to an https:// target.
	TLSSkipVerify bool
	CAFile        string
	// Health is parsed and validated here; the target-health work (issue 16, point 4) uses it.
	Health *Health
	// Where is "FILE:LINE" of the rule in the config file, or "flags".
	Where string
}

// TunnelHost is the hostname of the tunnel call that carries s (see Tunnel).
func (s Service) TunnelHost() string {
	if s.Tunnel != "" {
		return s.Tunnel
	}
	return s.Hostname
}

// Raw tells whether s takes raw streams: its target is tcp://host:port. A raw service has no Path,
// no TLS settings and no health path (its check is a TCP connect).
func (s Service) Raw() bool { return s.Target != nil && s.Target.Scheme == "tcp" }

// Health is how a service's target is checked: an HTTP GET of Path, or a TCP connect when Path is
// empty, every Interval.
type Health struct {
	Path     string
	Interval time.Duration
}

// defaultHealthInterval applies to a health block that gives no interval.
const defaultHealthInterval = 10 * time.Second

// LogValue shows a service without its key.
func (s Service) LogValue() slog.Value {
	return slog.GroupValue(slog.String("hostname", s.Hostname), slog.String("path", s.Path),
		slog.String("target", targetString(s.Target)), slog.String("where", s.Where))
}

// String is LogValue as text, so that %v never prints the key.
func (s Service) String() string {
	return fmt.Sprintf("%s%s -> %s (%s)", s.Hostname, s.Path, targetString(s.Target), s.Where)
}

func targetString(u *url.URL) string {
	if u == nil {
		return ""
	}
	return u.String()
}

// fileNode is one value of the file: its text after ${VAR} expansion and where it stands.
type fileNode = yaml.Node

// clientYAML is the file's schema. Every value is a yaml.Node so that each error can name its line;
// the decoder runs with KnownFields, so a key not listed here is an error with its line.
type clientYAML struct {
	ServerAddr      fileNode      `yaml:"server_addr"`
	ServerName      fileNode      `yaml:"server_name"`
	HAConnections   fileNode      `yaml:"ha_connections"`
	CAFile          fileNode      `yaml:"ca_file"`
	Debug           fileNode      `yaml:"debug"`
	AgentID         fileNode      `yaml:"agent_id"`
	PingInterval    fileNode      `yaml:"ping_interval"`
	ShutdownTimeout fileNode      `yaml:"shutdown_timeout"`
	LogLevel        fileNode      `yaml:"log_level"`
	LogFormat       fileNode      `yaml:"log_format"`
	MetricsListen   fileNode      `yaml:"metrics_listen"`
	Pprof           fileNode      `yaml:"pprof"`
	Services        []serviceYAML `yaml:"services"`
}

type serviceYAML struct {
	Hostname      fileNode    `yaml:"hostname"`
	Path          fileNode    `yaml:"path"`
	Target        fileNode    `yaml:"target"`
	APIKey        fileNode    `yaml:"api_key"`
	APIKeyFile    fileNode    `yaml:"api_key_file"`
	TLSSkipVerify fileNode    `yaml:"tls_skip_verify"`
	CAFile        fileNode    `yaml:"ca_file"`
	Health        *healthYAML `yaml:"health"`
}

type healthYAML struct {
	Path     fileNode `yaml:"path"`
	Interval fileNode `yaml:"interval"`
}

// fileSetting is a top-level value of the file, applied through the flag table's parser of the
// setting with the same meaning. written is the value as the file gives it, ${VAR} unexpanded, for
// its error message (see hideExpanded).
type fileSetting struct {
	key, env, value, written, where string
	isPath                          bool
}

// clientFile is a parsed and validated config file.
type clientFile struct {
	settings []fileSetting
	services []Service
}

// shownService is how the cross-service errors name a service's hostname and path: as the file
// writes them when they hold ${VAR} references (whose values an error never shows), canonical
// otherwise.
type shownService struct{ host, path string }

// fileAccess is how the parser reaches other files (key files, CA files), so that the fuzz test
// can replace it: opening arbitrary paths could block on a FIFO.
type fileAccess struct {
	readKey  func(path string) (string, error)
	readable func(path string) (string, error)
}

var osFiles = fileAccess{readKey: readKeyFile, readable: parseReadableFile}

// maxConfigFile bounds the file read: a config is a few KiB; a wrong path must not fill memory.
const maxConfigFile = 1 << 20

// parseClientFile reads the YAML config at name (data is its content): strict, every error naming
// FILE:LINE and the key. Relative file paths in it are relative to the file's directory.
func parseClientFile(name string, data []byte, lookupEnv func(string) (string, bool), files fileAccess) (*clientFile, error) {
	if len(data) > maxConfigFile {
		return nil, fmt.Errorf("%s: larger than %d KiB: not an agent config", name, maxConfigFile>>10)
	}
	if lookupEnv == nil {
		lookupEnv = func(string) (string, bool) { return "", false }
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var doc clientYAML
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: empty: want server_addr and services", name)
		}
		return nil, yamlError(name, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		line := extra.Line
		if err != nil {
			return nil, yamlError(name, err)
		}
		return nil, fmt.Errorf("%s:%d: a second YAML document: the agent config is one document", name, line)
	}
	p := &fileParser{name: name, dir: filepath.Dir(name), env: lookupEnv, files: files}
	out := &clientFile{}
	for _, g := range []struct {
		key, env string
		node     *yaml.Node
		isFile   bool
	}{
		{"server_addr", "HOP_CLIENT_SERVER_ADDR", &doc.ServerAddr, false},
		{"server_name", "HOP_CLIENT_SERVER_NAME", &doc.ServerName, false},
		{"ha_connections", "HOP_CLIENT_HA_CONNECTIONS", &doc.HAConnections, false},
		{"ca_file", "HOP_CLIENT_CA_FILE", &doc.CAFile, true},
		{"debug", "HOP_CLIENT_DEBUG", &doc.Debug, false},
		{"agent_id", "HOP_CLIENT_AGENT_ID", &doc.AgentID, false},
		{"ping_interval", "HOP_CLIENT_PING_INTERVAL", &doc.PingInterval, false},
		{"shutdown_timeout", "HOP_CLIENT_SHUTDOWN_TIMEOUT", &doc.ShutdownTimeout, false},
		{"log_level", "HOP_CLIENT_LOG_LEVEL", &doc.LogLevel, false},
		{"log_format", "HOP_CLIENT_LOG_FORMAT", &doc.LogFormat, false},
		{"metrics_listen", "HOP_CLIENT_METRICS_LISTEN", &doc.MetricsListen, false},
		{"pprof", "HOP_CLIENT_PPROF", &doc.Pprof, false},
	} {
		v, ok := p.scalar(g.key, g.node)
		if !ok {
			continue
		}
		written := written(g.node)
		if g.isFile {
			v = p.path(v)
			if !hasRefs(g.node) {
				written = v
			}
		}
		out.settings = append(out.settings, fileSetting{key: g.key, env: g.env, value: v, written: written, isPath: g.isFile, where: p.where(g.node)})
	}
	if len(doc.Services) == 0 {
		p.errorf(nil, "services", "required: at least one service {hostname, target, api_key or api_key_file}")
	}
	var shown []shownService
	for i := range doc.Services {
		if s, ok := p.service(i, &doc.Services[i]); ok {
			out.services = append(out.services, s)
			shown = append(shown, shownAs(s, &doc.Services[i]))
		}
	}
	if len(p.errs) == 0 {
		p.errs = append(p.errs, validateServices(out.services, shown)...)
	}
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	return out, nil
}

// fileParser gathers every error of one file, so that one run shows them all.
type fileParser struct {
	name  string
	dir   string
	env   func(string) (string, bool)
	files fileAccess
	errs  []error
}

func (p *fileParser) where(n *yaml.Node) string {
	if n == nil || n.Line == 0 {
		return p.name
	}
	return p.name + ":" + strconv.Itoa(n.Line)
}

func (p *fileParser) errorf(n *yaml.Node, key, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s: %s: %s", p.where(n), key, fmt.Sprintf(format, args...)))
}

// scalar returns the expanded text of a set scalar; ok is false when the key is absent or null
// (and after an error).
func (p *fileParser) scalar(key string, n *yaml.Node) (string, bool) {
	if unset(n) {
		return "", false
	}
	if n.Kind != yaml.ScalarNode {
		p.errorf(n, key, "want a single value, not a list or a mapping")
		return "", false
	}
	v, err := expandEnv(n.Value, p.env)
	if err != nil {
		p.errorf(n, key, "%v", err)
		return "", false
	}
	return strings.TrimSpace(v), true
}

// written is a scalar's text as the file gives it: ${VAR} references unexpanded.
func written(n *yaml.Node) string { return strings.TrimSpace(n.Value) }

// hasRefs tells whether a scalar's text holds an environment reference.
func hasRefs(n *yaml.Node) bool { return strings.Contains(n.Value, "${") }

// hideExpanded is the error to show for a value that failed a check. The check ran on the value
// (written with its ${VAR} references expanded), and its message quotes what it was given: a
// password from ${PASS} in a target URL, say. When the references changed the text, the message is
// therefore that of the same check on the written text, which fails too for most mistakes outside
// the references; if the written text passes, the message names the written text alone. A path
// (isPath: the check opened a file) is not checked again; the message's leading quote of the path
// is replaced by the written path, the rest being the OS's reason.
func hideExpanded(err error, written, value string, isPath bool, check func(string) error) error {
	if written == value {
		return err
	}
	if isPath {
		if rest, ok := strings.CutPrefix(err.Error(), strconv.Quote(value)); ok && !strings.Contains(rest, value) {
			return errors.New(strconv.Quote(written) + rest)
		}
		return fmt.Errorf("%q is not a readable file once its environment references are expanded", written)
	}
	if err := check(written); err != nil {
		return err
	}
	return fmt.Errorf("%q is refused once its environment references are expanded (their values are not shown)", written)
}

// checkOf turns a parser into the check hideExpanded runs on the written text.
func checkOf[T any](parse func(string) (T, error)) func(string) error {
	return func(s string) error {
		_, err := parse(s)
		return err
	}
}

// valueError records err about the value v of n (its expanded text), shown as hideExpanded says.
func (p *fileParser) valueError(n *yaml.Node, key, v string, err error, check func(string) error) {
	p.errorf(n, key, "%v", hideExpanded(err, written(n), v, false, check))
}

// pathError records err about the file the value of n names (full: the path opened). A written
// path with references is shown as written: whether it is relative depends on their values.
func (p *fileParser) pathError(n *yaml.Node, key, full string, err error) {
	w := written(n)
	if !hasRefs(n) {
		w = p.path(w)
	}
	p.errorf(n, key, "%v", hideExpanded(err, w, full, true, nil))
}

// shownAs is how the errors across services name s (see shownService).
func shownAs(s Service, y *serviceYAML) shownService {
	sh := shownService{host: s.Hostname, path: s.Path}
	if hasRefs(&y.Hostname) {
		sh.host = written(&y.Hostname)
	}
	if hasRefs(&y.Path) {
		sh.path = written(&y.Path)
	}
	return sh
}

// unset tells whether a key is absent or null ("hostname:" with no value).
func unset(n *yaml.Node) bool {
	return n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.Tag == "!!null")
}

// path makes a relative path relative to the config file's directory, so that a config and its
// key files move together.
func (p *fileParser) path(v string) string {
	if v == "" || filepath.IsAbs(v) {
		return v
	}
	return filepath.Join(p.dir, v)
}

func (p *fileParser) service(i int, y *serviceYAML) (Service, bool) {
	before := len(p.errs)
	key := func(k string) string { return fmt.Sprintf("services[%d].%s", i, k) }
	first := p.firstNode(y)
	s := Service{Where: p.where(first)}
	if v, ok := p.scalar(key("hostname"), &y.Hostname); ok {
		d, err := parseTenantDomain(v)
		if err != nil {
			p.valueError(&y.Hostname, key("hostname"), v, err, checkOf(parseTenantDomain))
		}
		s.Hostname = d
	} else if unset(&y.Hostname) {
		p.errorf(first, key("hostname"), "required: the registered domain this service answers for")
	}
	if v, ok := p.scalar(key("target"), &y.Target); ok {
		u, err := parseLocalTarget(v)
		if err != nil {
			p.valueError(&y.Target, key("target"), v, err, checkOf(parseLocalTarget))
		}
		s.Target = u
	} else if unset(&y.Target) {
		p.errorf(first, key("target"), "required: host:port, http(s)://host:port[/base], unix:///path.sock or tcp://host:port")
	}
	if v, ok := p.scalar(key("path"), &y.Path); ok {
		path, err := parsePathPrefix(v)
		if err != nil {
			p.valueError(&y.Path, key("path"), v, err, checkOf(parsePathPrefix))
		}
		s.Path = path
	}
	apiKey, hasKey := p.scalar(key("api_key"), &y.APIKey)
	keyFile, hasFile := p.scalar(key("api_key_file"), &y.APIKeyFile)
	switch {
	case hasKey && hasFile:
		p.errorf(&y.APIKeyFile, key("api_key_file"), "set together with api_key: give one of them")
	case hasKey:
		if apiKey == "" {
			// Never show the value: it is a secret, even when it looks wrong.
			p.errorf(&y.APIKey, key("api_key"), "empty (an environment reference that expanded to nothing?)")
		}
		s.APIKey = apiKey
	case hasFile:
		k, err := p.files.readKey(p.path(keyFile))
		if err != nil {
			p.pathError(&y.APIKeyFile, key("api_key_file"), p.path(keyFile), err)
		}
		s.APIKey = k
	}
	if v, ok := p.scalar(key("tls_skip_verify"), &y.TLSSkipVerify); ok {
		b, err := parseBool(v)
		if err != nil {
			p.valueError(&y.TLSSkipVerify, key("tls_skip_verify"), v, err, checkOf(parseBool))
		}
		s.TLSSkipVerify = b
	}
	if v, ok := p.scalar(key("ca_file"), &y.CAFile); ok && v != "" {
		f, err := p.files.readable(p.path(v))
		if err != nil {
			p.pathError(&y.CAFile, key("ca_file"), p.path(v), err)
		}
		s.CAFile = f
	}
	if s.Target != nil && s.Target.Scheme != "https" {
		if s.TLSSkipVerify {
			p.errorf(&y.TLSSkipVerify, key("tls_skip_verify"), "applies to an https:// target only")
		}
		if s.CAFile != "" {
			p.errorf(&y.CAFile, key("ca_file"), "applies to an https:// target only")
		}
	}
	if s.Raw() && !unset(&y.Path) {
		p.errorf(&y.Path, key("path"), "a tcp:// target takes no path: its streams are bytes, not HTTP requests")
	}
	if y.Health != nil {
		h := &Health{Interval: defaultHealthInterval}
		if v, ok := p.scalar(key("health.path"), &y.Health.Path); ok {
			if !strings.HasPrefix(v, "/") || strings.ContainsAny(v, "#\x00") {
				p.errorf(&y.Health.Path, key("health.path"), "%q is not a path like /healthz", written(&y.Health.Path))
			}
			h.Path = v
			if s.Raw() {
				p.errorf(&y.Health.Path, key("health.path"), "a tcp:// target is checked by a TCP connect: give only health.interval")
			}
		}
		if v, ok := p.scalar(key("health.interval"), &y.Health.Interval); ok {
			d, err := parsePositiveDuration(v)
			if err != nil {
				p.valueError(&y.Health.Interval, key("health.interval"), v, err, checkOf(parsePositiveDuration))
			}
			h.Interval = d
		}
		s.Health = h
	}
	return s, len(p.errs) == before
}

// firstNode is the first key of a service that is set, standing for the service in errors.
func (p *fileParser) firstNode(y *serviceYAML) *yaml.Node {
	var first *yaml.Node
	for _, n := range []*yaml.Node{&y.Hostname, &y.Path, &y.Target, &y.APIKey, &y.APIKeyFile, &y.TLSSkipVerify, &y.CAFile} {
		if n.Line > 0 && (first == nil || n.Line < first.Line) {
			first = n
		}
	}
	return first
}

// parsePathPrefix reads a service's path rule: "/" or empty matches everything; a trailing slash
// is dropped, since matching is on whole segments anyway.
func parsePathPrefix(s string) (string, error) {
	if s == "" || s == "/" {
		return "", nil
	}
	if !strings.HasPrefix(s, "/") || strings.ContainsAny(s, "?#\x00 \t\r\n") || strings.Contains(s, "//") {
		return "", fmt.Errorf("%q is not a path prefix like /api/ (starts with /, no query, no empty segment)", s)
	}
	return strings.TrimSuffix(s, "/"), nil
}

// validateServices checks the rules across services: one key per hostname, no duplicate rule, and
// a tunnel for every hostname (see Service.Tunnel). A hostname's HTTP rules and its tcp:// rule are
// apart: a stream is either an HTTP request or raw. shown[i] is how errors name services[i].
func validateServices(services []Service, shown []shownService) []error {
	var errs []error
	type keyAt struct{ key, where string }
	type ruleKey struct {
		host, path string
		raw        bool
	}
	keys := map[string]keyAt{}
	rules := map[ruleKey]string{}
	var hosts []string
	for i, s := range services {
		sh := shown[i]
		rule := ruleKey{s.Hostname, s.Path, s.Raw()}
		switch at, dup := rules[rule]; {
		case dup && rule.raw:
			errs = append(errs, fmt.Errorf("%s: target: hostname %s already has a tcp:// target at %s: one per hostname", s.Where, sh.host, at))
		case dup:
			errs = append(errs, fmt.Errorf("%s: path: hostname %s with path %q is already a rule at %s", s.Where, sh.host, displayPath(sh.path), at))
		default:
			rules[rule] = s.Where
		}
		if _, seen := keys[s.Hostname]; !seen {
			hosts = append(hosts, s.Hostname)
			keys[s.Hostname] = keyAt{}
		}
		if s.APIKey == "" {
			continue
		}
		switch k := keys[s.Hostname]; {
		case k.key == "":
			keys[s.Hostname] = keyAt{s.APIKey, s.Where}
		case k.key != s.APIKey:
			errs = append(errs, fmt.Errorf("%s: api_key: hostname %s already has a different key at %s: one key per hostname", s.Where, sh.host, k.where))
		}
	}
	// A hostname rides on the wildcard one label above it when it has no key of its own, or the
	// wildcard's: then the gateway knows it only through the wildcard. With another key it is
	// registered on its own and keeps its own tunnel.
	tunnel := make(map[string]string, len(hosts))
	for _, h := range hosts {
		k := keys[h].key
		if w, ok := wildcardOver(h); ok {
			if wk := keys[w].key; wk != "" && (k == "" || k == wk) {
				tunnel[h] = w
				continue
			}
		}
		if k == "" {
			i := firstIndex(services, h)
			hint := "give api_key or api_key_file on one of its services"
			if w, ok := wildcardOver(h); ok {
				hint += ", or add a service for " + w + " with its key to serve it through that wildcard's tunnel"
			}
			errs = append(errs, fmt.Errorf("%s: api_key: hostname %s has no key: %s", services[i].Where, shown[i].host, hint))
			continue
		}
		tunnel[h] = h
	}
	if len(errs) > 0 {
		return errs
	}
	// Every service carries its tunnel's key, wherever it was given.
	for i := range services {
		t := tunnel[services[i].Hostname]
		services[i].Tunnel, services[i].APIKey = t, keys[t].key
	}
	return nil
}

// wildcardOver is the wildcard hostname one label above h ("*.apps.example.com" for
// a.apps.example.com), the only one the gateway would send h's requests to. A wildcard has none,
// and neither has a name whose parent is one label (a wildcard needs two).
func wildcardOver(h string) (string, bool) {
	if strings.HasPrefix(h, "*.") {
		return "", false
	}
	_, parent, ok := strings.Cut(h, ".")
	if !ok || !strings.Contains(parent, ".") {
		return "", false
	}
	return "*." + parent, true
}

func firstIndex(services []Service, host string) int {
	for i, s := range services {
		if s.Hostname == host {
			return i
		}
	}
	return 0
}

func displayPath(p string) string {
	if p == "" {
		return "/"
	}
	return p
}

// envRef is a ${VAR} reference. $VAR without braces is left alone, so that a literal $ (in a
// path, say) needs no escaping.
var envRef = regexp.MustCompile(`\$\{([^}]*)\}?`)

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// expandEnv replaces each ${VAR} in s by the variable's value; an unset variable is an error
// naming it (never a silent empty key).
func expandEnv(s string, lookupEnv func(string) (string, bool)) (string, error) {
	if !strings.Contains(s, "${") {
		return s, nil
	}
	var err error
	out := envRef.ReplaceAllStringFunc(s, func(ref string) string {
		if err != nil {
			return ""
		}
		if !strings.HasSuffix(ref, "}") {
			err = fmt.Errorf("unterminated environment reference %q: want ${NAME}", ref)
			return ""
		}
		name := ref[2 : len(ref)-1]
		if !envName.MatchString(name) {
			err = fmt.Errorf("${%s} is not an environment reference: want ${NAME} (letters, digits, _)", name)
			return ""
		}
		v, ok := lookupEnv(name)
		if !ok {
			err = fmt.Errorf("environment variable %s is not set", name)
			return ""
		}
		return v
	})
	return out, err
}

// yamlLine finds the line yaml.v3 puts in its messages ("line 7: ...", "yaml: line 7: ...").
var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

var unknownField = regexp.MustCompile(`^field (\S+) not found in type \S+$`)

// yamlError rewrites the decoder's errors as FILE:LINE: message, one per problem.
func yamlError(name string, err error) error {
	var msgs []string
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	} else {
		msgs = []string{err.Error()}
	}
	var errs []error
	for _, m := range msgs {
		sub := yamlLine.FindStringSubmatch(m)
		if sub == nil {
			errs = append(errs, fmt.Errorf("%s: %s", name, strings.TrimPrefix(m, "yaml: ")))
			continue
		}
		msg := sub[2]
		if f := unknownField.FindStringSubmatch(msg); f != nil {
			msg = fmt.Sprintf("%s: unknown key (see deploy/hopgate-client.example.yaml for the schema)", f[1])
		}
		errs = append(errs, fmt.Errorf("%s:%s: %s", name, sub[1], msg))
	}
	return errors.Join(errs...)
}

// TunnelHosts returns the distinct hostnames of the services' tunnels (see Service.Tunnel), sorted:
// the tunnel calls an agent opens.
func TunnelHosts(services []Service) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range services {
		if h := s.TunnelHost(); !seen[h] {
			seen[h] = true
			out = append(out, h)
		}
	}
	sort.Strings(out)
	return out
}

// Hostnames returns the distinct hostnames of services, sorted.
func Hostnames(services []Service) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range services {
		if !seen[s.Hostname] {
			seen[s.Hostname] = true
			out = append(out, s.Hostname)
		}
	}
	sort.Strings(out)
	return out
}
