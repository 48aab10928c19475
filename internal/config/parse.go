package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"net/mail"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Parsers turn the text of one setting into its typed value. They are only
// called with non-empty, trimmed text, and their errors say what was expected;
// the loader prefixes the variable and flag name.

func parseString(s string) (string, error) { return s, nil }

func parseBool(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "1", "true", "yes", "on":
		return true, nil
	case "0", "false", "no", "off":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean (1/0, true/false, yes/no, on/off)", s)
}

func parseNonNegativeInt(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a whole number ≥ 0", s)
	}
	return n, nil
}

// byteUnits are the suffixes parseByteSize takes, binary as memory limits are; "B" is bytes.
var byteUnits = []struct {
	suffix string
	shift  uint
}{{"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"TiB", 40}, {"B", 0}}

// parseByteSize reads a size in bytes: a whole number, optionally with one of byteUnits ("10MiB").
func parseByteSize(s string) (int64, error) {
	num, shift := s, uint(0)
	for _, u := range byteUnits {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, shift = strings.TrimSpace(n), u.shift
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("%q is not a size in bytes like 10485760 or 10MiB (KiB, MiB, GiB, TiB)", s)
	}
	return n << shift, nil
}

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration like 30s", s)
	}
	return d, nil
}

func parseNonNegativeDuration(s string) (time.Duration, error) {
	d, err := parseDuration(s)
	if err == nil && d < 0 {
		err = fmt.Errorf("%q is negative; want a duration ≥ 0 like 30m (0 = no limit)", s)
	}
	return d, err
}

func parsePositiveDuration(s string) (time.Duration, error) {
	d, err := parseDuration(s)
	if err == nil && d <= 0 {
		err = fmt.Errorf("%q is not a duration greater than zero like 30s", s)
	}
	return d, err
}

// parseSeconds reads a whole number of seconds greater than zero, for the
// settings whose name ends in _SECONDS.
func parseSeconds(s string) (time.Duration, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > math.MaxInt64/int64(time.Second) {
		return 0, fmt.Errorf("%q is not a whole number of seconds greater than 0 like 15", s)
	}
	return time.Duration(n) * time.Second, nil
}

// parseCSV splits a comma-separated list, dropping blanks around and between items.
func parseCSV(s string) ([]string, error) {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out, nil
}

// parseIssuer reads an OpenID provider's issuer URL: http(s), a host, no query or fragment (the
// issuer is compared with the discovery document's as a string).
func parseIssuer(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("%q is not an issuer URL (https://host/path)", s)
	}
	return s, nil
}

// parseIPs reads a comma-separated list of IPv4 or IPv6 addresses.
func parseIPs(s string) ([]net.IP, error) {
	items, _ := parseCSV(s)
	var (
		ips  []net.IP
		errs []error
	)
	for _, item := range items {
		ip := net.ParseIP(item)
		if ip == nil {
			errs = append(errs, fmt.Errorf("%q is not an IP address", item))
			continue
		}
		ips = append(ips, ip)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return ips, nil
}

// parseCIDRs reads a CSV of CIDR prefixes or single addresses (a /32 or /128).
// parseHeaderNames reads a CSV of HTTP header names (tokens: letters, digits and !#$%&'*+-.^_`|~).
func parseHeaderNames(s string) ([]string, error) {
	names, _ := parseCSV(s)
	for _, n := range names {
		if n == "" || strings.IndexFunc(n, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", r))
		}) >= 0 {
			return nil, fmt.Errorf("%q is not a header name", n)
		}
	}
	return names, nil
}

func parseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	var errs []error
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if p, err := netip.ParsePrefix(part); err == nil {
			out = append(out, p.Masked())
			continue
		}
		if a, err := netip.ParseAddr(part); err == nil {
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		errs = append(errs, fmt.Errorf("%q is not a CIDR like 10.0.0.0/8 or an IP address", part))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// parseListen reads an address to listen on: host:port, where host may be
// empty (all interfaces) and port may be 0 (any free port).
func parseListen(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil || !validPort(port, 0) || strings.ContainsAny(host, " /") {
		return "", fmt.Errorf("%q is not a listen address host:port like :443 or 127.0.0.1:9180", s)
	}
	return s, nil
}

// parseDialAddr reads an address to connect to: host:port with both parts.
func parseDialAddr(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" || !validPort(port, 1) || strings.ContainsAny(host, " /") {
		return "", fmt.Errorf("%q is not an address host:port like gateway.example.com:443", s)
	}
	return s, nil
}

// defaultServerPort is the port of a server address that names none: the gateway's HTTPS port, as
// for any HTTPS client.
const defaultServerPort = "443"

// parseOneServerAddr reads one gateway address: host, [IPv6] or a bare IPv6 literal get port 443;
// host:port is checked. It returns host:port, which the agent resolves and dials.
func parseOneServerAddr(s string) (string, error) {
	bad := fmt.Errorf("%q is not an address host[:port] like gateway.example.com or gateway.example.com:8443 (port 1-65535)", s)
	if ip, err := netip.ParseAddr(s); err == nil && ip.Is6() {
		// "::1" cannot be split: every colon would be a port separator. An IPv6 address with a port
		// needs brackets, [::1]:8443, as in a URL.
		return net.JoinHostPort(s, defaultServerPort), nil
	}
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		s += ":" + defaultServerPort
	} else if !strings.Contains(s, ":") {
		s = net.JoinHostPort(s, defaultServerPort)
	}
	if _, err := parseDialAddr(s); err != nil {
		return "", bad
	}
	return s, nil
}

// parseServerAddr reads the gateways' addresses: one address (see parseOneServerAddr) or a
// comma-separated list of them. It returns the canonical list, host:port entries joined by commas.
// A bare IPv6 literal ("::1") is one address, not a list: it holds no comma.
func parseServerAddr(s string) (string, error) {
	parts := strings.Split(s, ",")
	if len(parts) == 1 {
		return parseOneServerAddr(s)
	}
	out := make([]string, 0, len(parts))
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			return "", fmt.Errorf("entry %d of %q is empty; want a comma-separated list host[:port],host[:port]", i+1, s)
		}
		addr, err := parseOneServerAddr(p)
		if err != nil {
			return "", fmt.Errorf("entry %d: %w", i+1, err)
		}
		for _, prev := range out {
			if strings.EqualFold(prev, addr) {
				return "", fmt.Errorf("entry %d: %s is listed twice", i+1, addr)
			}
		}
		out = append(out, addr)
	}
	return strings.Join(out, ","), nil
}

// parsePositiveInt reads a whole number ≥ 1.
func parsePositiveInt(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%q is not a whole number ≥ 1", s)
	}
	return n, nil
}

func validPort(port string, lowest int) bool {
	n, err := strconv.Atoi(port)
	return err == nil && n >= lowest && n <= 65535 && port == strconv.Itoa(n)
}

// PortRange is an inclusive range of TCP ports; the zero range is empty.
type PortRange struct{ Low, High int }

// Empty tells whether r holds no port.
func (r PortRange) Empty() bool { return r.Low == 0 }

// Contains tells whether port is in r.
func (r PortRange) Contains(port int) bool { return !r.Empty() && port >= r.Low && port <= r.High }

func (r PortRange) String() string {
	switch {
	case r.Empty():
		return ""
	case r.Low == r.High:
		return strconv.Itoa(r.Low)
	}
	return fmt.Sprintf("%d-%d", r.Low, r.High)
}

// parsePortRange reads "low-high" or one port.
func parsePortRange(s string) (PortRange, error) {
	bad := fmt.Errorf("%q is not a port range like 20000-20999 (ports 1 to 65535, low first) or one port", s)
	lo, hi, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		hi = lo
	}
	lo, hi = strings.TrimSpace(lo), strings.TrimSpace(hi)
	if !validPort(lo, 1) || !validPort(hi, 1) {
		return PortRange{}, bad
	}
	r := PortRange{}
	r.Low, _ = strconv.Atoi(lo)
	r.High, _ = strconv.Atoi(hi)
	if r.Low > r.High {
		return PortRange{}, bad
	}
	return r, nil
}

// parseListenHost reads an IP address to listen on.
func parseListenHost(s string) (string, error) {
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil || a.Zone() != "" {
		return "", fmt.Errorf("%q is not an IP address to listen on, like 0.0.0.0, :: or 127.0.0.1", s)
	}
	return a.String(), nil
}

// parseHTTPURL reads an absolute http:// or https:// URL with a host.
func parseHTTPURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return "", fmt.Errorf("%q is not an http:// or https:// URL like https://acme-v02.api.letsencrypt.org/directory", s)
	}
	return s, nil
}

// parseLocalTarget reads where the agent sends requests: host:port (plain
// HTTP), an http:// or https:// URL (its path is a base path), unix:///path.sock, or tcp://host:port
// for raw byte streams (TCP tunnels and TLS passthrough).
func parseLocalTarget(s string) (*url.URL, error) {
	bad := fmt.Errorf("%q is not a local target host:port like 127.0.0.1:8080, a URL like http://localhost:8080 or a TCP target like tcp://127.0.0.1:5432", s)
	if !strings.Contains(s, "://") {
		if _, err := parseDialAddr(s); err != nil {
			return nil, bad
		}
		return &url.URL{Scheme: "http", Host: s}, nil
	}
	u, err := url.Parse(s)
	if err == nil && strings.EqualFold(u.Scheme, "unix") {
		// unix:///run/app.sock: the socket path is the URL's path; there is no base path.
		if u.Host != "" || u.Path == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("%q is not a unix socket target like unix:///run/app.sock", s)
		}
		u.Scheme = "unix"
		return u, nil
	}
	if err == nil && strings.EqualFold(u.Scheme, "tcp") {
		return parseTCPTarget(s, u)
	}
	if err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, bad
	}
	u.Scheme = strings.ToLower(u.Scheme)
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, bad
	}
	if p := u.Port(); p != "" && !validPort(p, 1) {
		return nil, bad
	}
	return u, nil
}

// parseTCPTarget checks a tcp:// target: a host and a port, nothing else. A byte stream has no path
// to prefix and no default port to fall back on.
func parseTCPTarget(s string, u *url.URL) (*url.URL, error) {
	if u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Path != "" {
		return nil, fmt.Errorf("%q is not a TCP target like tcp://127.0.0.1:5432 (host and port only: no path, query or user)", s)
	}
	if _, err := parseDialAddr(u.Host); err != nil {
		return nil, fmt.Errorf("%q is not a TCP target like tcp://127.0.0.1:5432 (a host and a port 1-65535 are required)", s)
	}
	return &url.URL{Scheme: "tcp", Host: u.Host}, nil
}

func parseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%q is not a log level (debug, info, warn, error)", s)
}

func parseLogFormat(s string) (string, error) {
	switch f := strings.ToLower(s); f {
	case "json", "text":
		return f, nil
	}
	return "", fmt.Errorf("%q is not a log format (json, text)", s)
}

// parseDomain reads a DNS name and returns it canonical: lowercase, without
// the trailing dot. internal/hostname has the full rules for names from the
// network; configuration only needs to catch typos.
func parseDomain(s string) (string, error) {
	d, ok := canonicalDomain(s)
	if !ok {
		return "", fmt.Errorf("%q is not a domain name (labels of a-z, 0-9 and -, at most 253 characters)", s)
	}
	return d, nil
}

// parseTenantDomain is parseDomain for a name an agent serves, which may also be a wildcard
// registration: "*." and then a name of at least two labels (the gateway's rule for registering one).
func parseTenantDomain(s string) (string, error) {
	rest, wild := strings.CutPrefix(s, "*.")
	d, ok := canonicalDomain(rest)
	if !ok || wild && !strings.Contains(d, ".") {
		return "", fmt.Errorf("%q is not a domain name (labels of a-z, 0-9 and -, at most 253 characters; a wildcard is *. and a name of two labels or more)", s)
	}
	if wild {
		return "*." + d, nil
	}
	return d, nil
}

// parseDomains reads a comma-separated list of domain names, canonical and
// without repeats.
func parseDomains(s string) ([]string, error) {
	items, _ := parseCSV(s)
	var (
		out  []string
		errs []error
		seen = make(map[string]bool, len(items))
	)
	for _, item := range items {
		d, err := parseDomain(item)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func canonicalDomain(s string) (string, bool) {
	d := strings.TrimSuffix(strings.ToLower(s), ".")
	if d == "" || len(d) > 253 {
		return "", false
	}
	labels := strings.Split(d, ".")
	for _, label := range labels {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", false
		}
		for _, c := range []byte(label) {
			if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
				return "", false
			}
		}
	}
	// An all-digit last label is an IP address, not a name.
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return "", false
	}
	return d, true
}

// parseDSN accepts a Postgres URL. Its errors never repeat the value, which
// may hold a password.
func parseDSN(s string) (string, error) {
	lower := strings.ToLower(s)
	if !strings.HasPrefix(lower, "postgres://") && !strings.HasPrefix(lower, "postgresql://") {
		return "", errors.New("not a postgres:// or postgresql:// URL (leave empty for the embedded SQLite store)")
	}
	if u, err := url.Parse(s); err != nil || u.Host == "" && u.Query().Get("host") == "" {
		return "", errors.New("not a valid postgres:// URL like postgres://user:password@db:5432/hopgate?sslmode=require (value not shown: it may hold a password)")
	}
	return s, nil
}

// redactDSN hides the password of a Postgres URL, in the user part and in a
// password= query parameter.
func redactDSN(dsn string) string {
	if dsn == "" {
		return ""
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return redacted
	}
	if q := u.Query(); q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

func parseEmail(s string) (string, error) {
	a, err := mail.ParseAddress(s)
	if err != nil || a.Address != s || a.Name != "" {
		return "", fmt.Errorf("%q is not an email address like admin@example.com", s)
	}
	return s, nil
}

// parseReadableFile checks that the file can be opened for reading now, so a
// wrong path fails at start rather than at the first handshake.
func parseReadableFile(s string) (string, error) {
	f, err := os.Open(s)
	if err != nil {
		return "", fmt.Errorf("%q is not a readable file: %w", s, pathReason(err))
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("%q is not a readable file: %w", s, pathReason(err))
	}
	if info.IsDir() {
		return "", fmt.Errorf("%q is a directory, not a readable file", s)
	}
	return s, nil
}

// maxKeyFile bounds what readKeyFile reads: a key is under a hundred bytes, and a wrong path (a
// device, a log file) must fail rather than fill memory.
const maxKeyFile = 64 << 10

// readKeyFile reads a secret from a file as Docker and Kubernetes mount them: the key with maybe a
// trailing newline. Errors name the file but never show its content.
func readKeyFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%q is not a readable file: %w", path, pathReason(err))
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return "", fmt.Errorf("%q is not a readable file: %w", path, pathReason(err))
	}
	if len(b) > maxKeyFile {
		return "", fmt.Errorf("%q is larger than %d KiB: not a key file", path, maxKeyFile>>10)
	}
	key := strings.TrimRightFunc(string(b), unicode.IsSpace)
	switch {
	case key == "":
		return "", fmt.Errorf("%q is empty: want the client API key", path)
	case strings.ContainsAny(key, "\r\n"):
		return "", fmt.Errorf("%q holds more than one line: want only the client API key", path)
	}
	return key, nil
}

// parseDataDir reads the data directory; it may not exist yet. '?' and '#' are refused because the
// embedded database is opened through a file: URI, where they would cut the path short.
func parseDataDir(s string) (string, error) {
	if strings.ContainsAny(s, "?#") {
		return "", fmt.Errorf("%q is not a usable data directory: it may not contain '?' or '#'", s)
	}
	return s, nil
}

// parseDir checks that an override directory exists.
func parseDir(s string) (string, error) {
	info, err := os.Stat(s)
	if err != nil {
		return "", fmt.Errorf("%q is not a directory: %w", s, pathReason(err))
	}
	if !info.IsDir() {
		return "", fmt.Errorf("%q is not a directory", s)
	}
	return s, nil
}

// pathReason drops the path from an *fs.PathError, which the message
// already quotes.
func pathReason(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// MaxServerID is the longest HOP_SERVER_ID accepted, in bytes (the presence table's column).
const MaxServerID = 64

// parseServerID checks a gateway id: printable, without spaces, at most MaxServerID bytes. It names
// the gateway in every log line, a metric label and the cluster's presence rows.
func parseServerID(s string) (string, error) {
	switch {
	case s == "":
		return "", errors.New("empty; want a name like gw1 (the default is the host name)")
	case len(s) > MaxServerID:
		return "", fmt.Errorf("%q is %d bytes long; want at most %d", s, len(s), MaxServerID)
	case !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }):
		return "", fmt.Errorf("%q holds spaces or characters that are not printable; want a name like gw1", s)
	}
	return s, nil
}
