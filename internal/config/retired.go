package config

import (
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"
)

// Notice is a setting of the original HopGate that is set but no longer read, and what replaces it.
// It never holds the value: a retired variable may hold a password (HOP_LOKI_PASSWORD).
type Notice struct {
	Variable    string // the variable found set, e.g. HOP_LOKI_ENDPOINT
	Replacement string // what to use instead, or why nothing is needed
}

// binary tells which program a retired setting belonged to.
type binary uint8

const (
	server binary = 1 << iota
	client
)

// retiredSetting is a variable the original HopGate read and this one ignores. Without a row here an
// operator who moves an old .env file over would get silence and a gateway that does not do what the
// file says; with one, a warning at start names what to use instead.
type retiredSetting struct {
	name   string // the variable, or with prefix every variable that starts with it
	prefix bool
	// known are the names under a prefix that the original read: looked up like any setting, so
	// that a lookup which cannot be listed (a test's map, say) still finds them.
	known       []string
	in          binary
	replacement string
}

// retiredSettings is the one list of them, from the original's .env.example and config loader.
var retiredSettings = []retiredSetting{
	{name: "HOP_ACME_WEBROOT", in: server,
		replacement: "the gateway answers HTTP-01 itself on HOP_SERVER_HTTP_LISTEN and TLS-ALPN-01 on the HTTPS port; no webroot is needed"},
	{name: "HOP_SERVER_DTLS_LISTEN", in: server,
		replacement: "HOP_SERVER_HTTPS_LISTEN: tunnels are gRPC over TLS on the HTTPS port; there is no DTLS (UDP) listener"},
	{name: "HOP_LOKI_", prefix: true, in: server | client,
		known:       []string{"HOP_LOKI_ENABLE", "HOP_LOKI_ENDPOINT", "HOP_LOKI_TENANT_ID", "HOP_LOKI_USERNAME", "HOP_LOKI_PASSWORD", "HOP_LOKI_STATIC_LABELS"},
		replacement: "logs are JSON lines on stdout (HOP_LOG_FORMAT=json); ship them with Promtail/Grafana Alloy or the container runtime's log driver"},
	// The original's client shared HOP_LOG_LEVEL with the server; this one has its own variable.
	{name: "HOP_LOG_LEVEL", in: client,
		replacement: "HOP_CLIENT_LOG_LEVEL (--log-level): hopgate-client reads its own log level"},
}

// retiredNotices returns a notice for every retired setting of bin that is set (non-empty, as the
// loader counts it) in the environment or the .env file, sorted by name. A lookup by name cannot list
// the variables under a prefix, so their names are the original's known ones plus those gathered
// from the process environment and the file; whether one is set is still asked of lookupEnv, so a
// caller's own lookup decides.
func retiredNotices(bin binary, lookupEnv func(string) (string, bool), dotenv map[string]string) []Notice {
	set := func(name string) bool {
		if v, ok := lookupEnv(name); ok && strings.TrimSpace(v) != "" {
			return true
		}
		return strings.TrimSpace(dotenv[name]) != ""
	}
	var names []string
	for name := range dotenv {
		names = append(names, name)
	}
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		names = append(names, name)
	}

	var out []Notice
	seen := map[string]bool{}
	add := func(name, replacement string) {
		if !seen[name] && set(name) {
			seen[name] = true
			out = append(out, Notice{Variable: name, Replacement: replacement})
		}
	}
	for _, r := range retiredSettings {
		if r.in&bin == 0 {
			continue
		}
		if !r.prefix {
			add(r.name, r.replacement)
			continue
		}
		for _, name := range slices.Concat(r.known, names) {
			if strings.HasPrefix(name, r.name) {
				add(name, r.replacement)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Variable < out[j].Variable })
	return out
}

// WarnDeprecated logs each notice once, as a warning with the variable and its replacement.
func WarnDeprecated(log *slog.Logger, notices []Notice) {
	for _, n := range notices {
		log.Warn("setting of the original HopGate ignored", "variable", n.Variable, "replacement", n.Replacement)
	}
}
