package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// env is a fake environment for lookupEnv.
type env map[string]string

func (e env) lookup(k string) (string, bool) { v, ok := e[k]; return v, ok }

func writeDotenv(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), ".env")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func noDotenv(t *testing.T) string { return filepath.Join(t.TempDir(), ".env") }

func TestLoadServerDefaults(t *testing.T) {
	dir := t.TempDir()
	got, err := LoadServer(nil, env{"HOP_SERVER_DOMAIN": "gate.example.com"}.lookup, filepath.Join(dir, ".env"))
	if err != nil {
		t.Fatal(err)
	}
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	want := &Server{
		HTTPListen:           ":80",
		HTTPSListen:          ":443",
		Domain:               "gate.example.com",
		ServerID:             host,
		ProxyTimeout:         15 * time.Second,
		ShutdownTimeout:      30 * time.Second,
		TunnelPingInterval:   15 * time.Second,
		MaxStreamsPerTunnel:  1000,
		MaxAgentsPerDomain:   16,
		MaxConnections:       20000,
		AuthFailuresPerMin:   20,
		TCPMaxConnsPerDomain: 1000,
		TCPIdleTimeout:       time.Hour,
		ACMERenewInterval:    6 * time.Hour,
		MetricsListen:        "127.0.0.1:9180",
		DataDir:              "./data",
		DBMaxOpenConns:       10,
		DBMaxIdleConns:       5,
		DBConnMaxLifetime:    30 * time.Minute,
		ACMECADir:            LetsEncryptProduction,
		ACMECacheDir:         filepath.Join("data", "acme"),
		LogLevel:             slog.LevelInfo,
		LogFormat:            "json",
		Console:              true,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("defaults:\n got %s\nwant %s", got, want)
	}
}

func TestLoadServerEveryVariable(t *testing.T) {
	dir := t.TempDir()
	roots := filepath.Join(dir, "pebble.pem")
	if err := os.WriteFile(roots, []byte("pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	oidcRoots := writeCertPEM(t)
	pages, assets := filepath.Join(dir, "pages"), filepath.Join(dir, "assets")
	for _, d := range []string{pages, assets} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	values := map[string]string{
		"HOP_SERVER_HTTP_LISTEN":                  "127.0.0.1:8080",
		"HOP_SERVER_HTTPS_LISTEN":                 "127.0.0.1:8443",
		"HOP_SERVER_HTTP_PROXY":                   "yes",
		"HOP_SERVER_DOMAIN":                       "Gate.Example.com.",
		"HOP_SERVER_PROXY_DOMAINS":                "a.example.com, b.example.com",
		"HOP_SERVER_DEBUG":                        "off",
		"HOP_SERVER_PROXY_TIMEOUT_SECONDS":        "20",
		"HOP_SERVER_SHUTDOWN_TIMEOUT":             "45s",
		"HOP_SERVER_ID":                           "gw-1.eu",
		"HOP_SERVER_DRAIN_DELAY":                  "5s",
		"HOP_SERVER_TUNNEL_PING_INTERVAL":         "5s",
		"HOP_SERVER_TRUSTED_PROXIES":              "10.0.0.0/8, 192.0.2.1,2001:db8::/32",
		"HOP_SERVER_MAX_STREAMS_PER_TUNNEL":       "50",
		"HOP_SERVER_MAX_AGENTS_PER_DOMAIN":        "2",
		"HOP_SERVER_MAX_CONNECTIONS":              "500",
		"HOP_SERVER_TCP_PORTS":                    "20000-20999",
		"HOP_SERVER_TCP_LISTEN_HOST":              "127.0.0.1",
		"HOP_SERVER_TCP_MAX_CONNS_PER_DOMAIN":     "50",
		"HOP_SERVER_TCP_IDLE_TIMEOUT":             "10m",
		"HOP_SERVER_PROXY_PROTOCOL_FROM":          "10.1.0.0/16",
		"HOP_SERVER_AUTH_FAILURES_PER_MINUTE":     "5",
		"HOP_SERVER_MAX_BODY_BYTES":               "10MiB",
		"HOP_SERVER_OIDC_CA_ROOTS":                oidcRoots,
		"HOP_SERVER_METRICS_LISTEN":               ":9100",
		"HOP_SERVER_PPROF":                        "true",
		"HOP_SERVER_CONSOLE":                      "true",
		"HOP_SERVER_CONSOLE_OIDC_ISSUER":          "https://id.example.com/realm",
		"HOP_SERVER_CONSOLE_OIDC_CLIENT_ID":       "hopgate-console",
		"HOP_SERVER_CONSOLE_OIDC_CLIENT_SECRET":   "console-secret",
		"HOP_SERVER_CONSOLE_OIDC_ALLOWED_EMAILS":  "ops@example.com, lead@example.com",
		"HOP_SERVER_CONSOLE_OIDC_ALLOWED_DOMAINS": "example.com",
		"HOP_SERVER_CONSOLE_OIDC_ALLOWED_GROUPS":  "gateway-admins",
		"HOP_SERVER_INSPECT_REDACT_HEADERS":       "X-Secret, x-token",
		"HOP_ADMIN_API_KEY":                       "admin-key",
		"HOP_DB_DSN":                              "postgres://hop:pw@db:5432/hopgate",
		"HOP_DATA_DIR":                            "/var/lib/hopgate",
		"HOP_DB_MAX_OPEN_CONNS":                   "20",
		"HOP_DB_MAX_IDLE_CONNS":                   "20",
		"HOP_DB_CONN_MAX_LIFETIME":                "1h",
		"HOP_ACME_EMAIL":                          "ops@example.com",
		"HOP_ACME_CA_DIR":                         "https://localhost:14000/dir",
		"HOP_ACME_USE_STAGING":                    "on",
		"HOP_ACME_CA_ROOTS":                       roots,
		"HOP_ACME_CACHE_DIR":                      "/certs",
		"HOP_ACME_DNS_RESOLVER":                   "127.0.0.1:5353",
		"HOP_ACME_DNS_PROVIDER":                   "httpreq",
		"HOP_ACME_RENEW_INTERVAL":                 "1h",
		"HOP_ACME_EXPECT_IPS":                     "203.0.113.7,2001:db8::7",
		"HOP_ERROR_PAGES_DIR":                     pages,
		"HOP_ERROR_ASSETS_DIR":                    assets,
		"HOP_LOG_LEVEL":                           "warn",
		"HOP_LOG_FORMAT":                          "text",
	}
	want := &Server{
		HTTPListen:           "127.0.0.1:8080",
		HTTPSListen:          "127.0.0.1:8443",
		HTTPProxy:            true,
		Domain:               "gate.example.com",
		ProxyDomains:         []string{"a.example.com", "b.example.com"},
		ProxyTimeout:         20 * time.Second,
		ShutdownTimeout:      45 * time.Second,
		ServerID:             "gw-1.eu",
		DrainDelay:           5 * time.Second,
		TunnelPingInterval:   5 * time.Second,
		MaxStreamsPerTunnel:  50,
		MaxAgentsPerDomain:   2,
		MaxConnections:       500,
		AuthFailuresPerMin:   5,
		MaxBodyBytes:         10 << 20,
		TCPPorts:             PortRange{20000, 20999},
		TCPListenHost:        "127.0.0.1",
		TCPMaxConnsPerDomain: 50,
		TCPIdleTimeout:       10 * time.Minute,
		ProxyProtocolFrom:    []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")},
		OIDCCARoots:          oidcRoots,
		TrustedProxies:       []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("2001:db8::/32")},
		MetricsListen:        ":9100",
		Pprof:                true,
		Console:              true,
		ConsoleOIDC: ConsoleOIDC{Issuer: "https://id.example.com/realm", ClientID: "hopgate-console", ClientSecret: "console-secret",
			AllowedEmails: []string{"ops@example.com", "lead@example.com"}, AllowedDomains: []string{"example.com"}, AllowedGroups: []string{"gateway-admins"}},
		InspectRedactHeaders: []string{"X-Secret", "x-token"},
		AdminAPIKey:          "admin-key",
		DBDSN:                "postgres://hop:pw@db:5432/hopgate",
		DataDir:              "/var/lib/hopgate",
		DBMaxOpenConns:       20,
		DBMaxIdleConns:       20,
		DBConnMaxLifetime:    time.Hour,
		ACMEEmail:            "ops@example.com",
		ACMECADir:            "https://localhost:14000/dir", // explicit wins over staging
		ACMEUseStaging:       true,
		ACMECARoots:          roots,
		ACMECacheDir:         "/certs",
		ACMEDNSResolver:      "127.0.0.1:5353",
		ACMEDNSProvider:      "httpreq",
		ACMERenewInterval:    time.Hour,
		ACMEExpectIPs:        []net.IP{net.ParseIP("203.0.113.7"), net.ParseIP("2001:db8::7")},
		ErrorPagesDir:        pages,
		ErrorAssetsDir:       assets,
		LogLevel:             slog.LevelWarn,
		LogFormat:            "text",
	}
	if n := len(serverSettings(&Server{})); n != len(values) {
		t.Fatalf("test covers %d variables, the table has %d", len(values), n)
	}

	t.Run("env", func(t *testing.T) {
		got, err := LoadServer(nil, env(values).lookup, noDotenv(t))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("\n got %#v\nwant %#v", got, want)
		}
	})
	t.Run("dotenv", func(t *testing.T) {
		var b strings.Builder
		for k, v := range values {
			fmt.Fprintf(&b, "%s=%q\n", k, v)
		}
		got, err := LoadServer(nil, env{}.lookup, writeDotenv(t, b.String()))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("\n got %#v\nwant %#v", got, want)
		}
	})
	t.Run("flags", func(t *testing.T) {
		var args []string
		for _, s := range serverSettings(&Server{}) {
			args = append(args, "--"+s.flag+"="+values[s.env])
		}
		got, err := LoadServer(args, env{}.lookup, noDotenv(t))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("\n got %#v\nwant %#v", got, want)
		}
	})
}

// TestServerFlagNames checks the naming rule: drop HOP_ and SERVER_, kebab-case.
func TestServerFlagNames(t *testing.T) {
	for _, s := range serverSettings(&Server{}) {
		name := strings.TrimPrefix(s.env, "HOP_")
		name = strings.TrimPrefix(name, "SERVER_")
		if s.env == "HOP_SERVER_ID" {
			name = "SERVER_ID" // --id alone would not say whose id it is
		}
		if want := strings.ToLower(strings.ReplaceAll(name, "_", "-")); s.flag != want {
			t.Errorf("%s: flag --%s, want --%s", s.env, s.flag, want)
		}
	}
}

func TestPrecedence(t *testing.T) {
	const v = "HOP_SERVER_SHUTDOWN_TIMEOUT"
	tests := []struct {
		name   string
		args   []string
		env    env
		dotenv string
		want   time.Duration
	}{
		{name: "default", want: 30 * time.Second},
		{name: "dotenv over default", dotenv: v + "=1s\n", want: time.Second},
		{name: "env over dotenv", env: env{v: "2s"}, dotenv: v + "=1s\n", want: 2 * time.Second},
		{name: "flag over env", args: []string{"--shutdown-timeout=3s"}, env: env{v: "2s"}, dotenv: v + "=1s\n", want: 3 * time.Second},
		{name: "single dash flag", args: []string{"-shutdown-timeout", "4s"}, env: env{v: "2s"}, want: 4 * time.Second},
		{name: "empty env falls through to dotenv", env: env{v: ""}, dotenv: v + "=1s\n", want: time.Second},
		{name: "blank flag falls through to env", args: []string{"--shutdown-timeout= "}, env: env{v: "2s"}, want: 2 * time.Second},
		{name: "last flag wins", args: []string{"--shutdown-timeout=3s", "--shutdown-timeout=5s"}, want: 5 * time.Second},
		{name: "value trimmed", env: env{v: " 6s\n"}, want: 6 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := env{"HOP_SERVER_DOMAIN": "gate.example.com"}
			for k, val := range tc.env {
				e[k] = val
			}
			path := noDotenv(t)
			if tc.dotenv != "" {
				path = writeDotenv(t, tc.dotenv)
			}
			got, err := LoadServer(tc.args, e.lookup, path)
			if err != nil {
				t.Fatal(err)
			}
			if got.ShutdownTimeout != tc.want {
				t.Fatalf("ShutdownTimeout = %v, want %v", got.ShutdownTimeout, tc.want)
			}
		})
	}
}

func TestMetricsListenEmptyDisables(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		env    env
		dotenv string
		want   string
	}{
		{name: "default", want: "127.0.0.1:9180"},
		{name: "empty env", env: env{"HOP_SERVER_METRICS_LISTEN": ""}, want: ""},
		{name: "empty dotenv", dotenv: "HOP_SERVER_METRICS_LISTEN=\n", want: ""},
		{name: "empty flag over env", args: []string{"--metrics-listen="}, env: env{"HOP_SERVER_METRICS_LISTEN": ":9100"}, want: ""},
		{name: "env over empty dotenv", env: env{"HOP_SERVER_METRICS_LISTEN": ":9100"}, dotenv: "HOP_SERVER_METRICS_LISTEN=\n", want: ":9100"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := env{"HOP_SERVER_DOMAIN": "gate.example.com"}
			for k, v := range tc.env {
				e[k] = v
			}
			path := noDotenv(t)
			if tc.dotenv != "" {
				path = writeDotenv(t, tc.dotenv)
			}
			got, err := LoadServer(tc.args, e.lookup, path)
			if err != nil {
				t.Fatal(err)
			}
			if got.MetricsListen != tc.want {
				t.Fatalf("MetricsListen = %q, want %q", got.MetricsListen, tc.want)
			}
		})
	}
}

func TestLoadServerDerivedDefaults(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		env   env
		check func(t *testing.T, s *Server)
	}{
		{
			name: "debug: localhost and text logs",
			env:  env{"HOP_SERVER_DEBUG": "1"},
			check: func(t *testing.T, s *Server) {
				if s.Domain != "localhost" || s.LogFormat != "text" || !s.Debug {
					t.Errorf("Domain=%q LogFormat=%q Debug=%v, want localhost text true", s.Domain, s.LogFormat, s.Debug)
				}
			},
		},
		{
			name: "debug flag without value",
			args: []string{"--debug"},
			check: func(t *testing.T, s *Server) {
				if !s.Debug || s.Domain != "localhost" {
					t.Errorf("Debug=%v Domain=%q, want true localhost", s.Debug, s.Domain)
				}
			},
		},
		{
			name: "debug keeps an explicit domain and log format",
			env:  env{"HOP_SERVER_DEBUG": "true", "HOP_SERVER_DOMAIN": "dev.example.com", "HOP_LOG_FORMAT": "json"},
			check: func(t *testing.T, s *Server) {
				if s.Domain != "dev.example.com" || s.LogFormat != "json" {
					t.Errorf("Domain=%q LogFormat=%q, want dev.example.com json", s.Domain, s.LogFormat)
				}
			},
		},
		{
			name: "staging switches the CA directory",
			env:  env{"HOP_SERVER_DOMAIN": "gate.example.com", "HOP_ACME_USE_STAGING": "yes"},
			check: func(t *testing.T, s *Server) {
				if s.ACMECADir != LetsEncryptStaging {
					t.Errorf("ACMECADir = %q, want staging", s.ACMECADir)
				}
			},
		},
		{
			name: "explicit CA directory wins over staging, even the production one",
			args: []string{"--acme-use-staging", "--acme-ca-dir=" + LetsEncryptProduction},
			env:  env{"HOP_SERVER_DOMAIN": "gate.example.com"},
			check: func(t *testing.T, s *Server) {
				if s.ACMECADir != LetsEncryptProduction {
					t.Errorf("ACMECADir = %q, want production", s.ACMECADir)
				}
			},
		},
		{
			name: "ACME cache under the data dir",
			env:  env{"HOP_SERVER_DOMAIN": "gate.example.com", "HOP_DATA_DIR": "/srv/hop"},
			check: func(t *testing.T, s *Server) {
				if s.ACMECacheDir != "/srv/hop/acme" {
					t.Errorf("ACMECacheDir = %q, want /srv/hop/acme", s.ACMECacheDir)
				}
			},
		},
		{
			name: "unlimited open connections allow any idle count",
			env:  env{"HOP_SERVER_DOMAIN": "gate.example.com", "HOP_DB_MAX_OPEN_CONNS": "0", "HOP_DB_MAX_IDLE_CONNS": "50"},
			check: func(t *testing.T, s *Server) {
				if s.DBMaxOpenConns != 0 || s.DBMaxIdleConns != 50 {
					t.Errorf("pool = %d/%d, want 0/50", s.DBMaxOpenConns, s.DBMaxIdleConns)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, err := LoadServer(tc.args, tc.env.lookup, noDotenv(t))
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, s)
		})
	}
}

func TestLoadServerErrors(t *testing.T) {
	notPEM := filepath.Join(t.TempDir(), "roots.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		env  env
		want []string // each a substring of the error
	}{
		{name: "domain required", env: env{}, want: []string{"HOP_SERVER_DOMAIN (--domain): required"}},
		{name: "bad duration", env: env{"HOP_SERVER_SHUTDOWN_TIMEOUT": "abc"},
			want: []string{`HOP_SERVER_SHUTDOWN_TIMEOUT (--shutdown-timeout): "abc" is not a duration like 30s`}},
		{name: "bad bool", env: env{"HOP_SERVER_HTTP_PROXY": "maybe"},
			want: []string{`HOP_SERVER_HTTP_PROXY (--http-proxy): "maybe" is not a boolean`}},
		{name: "bad bool flag", args: []string{"--debug=sure"},
			want: []string{`HOP_SERVER_DEBUG (--debug): "sure" is not a boolean`}},
		{name: "bad domain", env: env{"HOP_SERVER_DOMAIN": "gate_example.com"},
			want: []string{`HOP_SERVER_DOMAIN (--domain): "gate_example.com" is not a domain name`}},
		{name: "bad proxy domain", env: env{"HOP_SERVER_PROXY_DOMAINS": "ok.example.com,no way"},
			want: []string{`HOP_SERVER_PROXY_DOMAINS (--proxy-domains): "no way" is not a domain name`}},
		{name: "seconds with unit", env: env{"HOP_SERVER_PROXY_TIMEOUT_SECONDS": "15s"},
			want: []string{`HOP_SERVER_PROXY_TIMEOUT_SECONDS (--proxy-timeout-seconds): "15s" is not a whole number of seconds`}},
		{name: "zero seconds", env: env{"HOP_SERVER_PROXY_TIMEOUT_SECONDS": "0"},
			want: []string{"HOP_SERVER_PROXY_TIMEOUT_SECONDS (--proxy-timeout-seconds)"}},
		{name: "zero ping interval", env: env{"HOP_SERVER_TUNNEL_PING_INTERVAL": "0s"},
			want: []string{"HOP_SERVER_TUNNEL_PING_INTERVAL (--tunnel-ping-interval): \"0s\" is not a duration greater than zero"}},
		{name: "listen without port", env: env{"HOP_SERVER_HTTPS_LISTEN": "443"},
			want: []string{`HOP_SERVER_HTTPS_LISTEN (--https-listen): "443" is not a listen address`}},
		{name: "metrics listen bad", env: env{"HOP_SERVER_METRICS_LISTEN": "localhost"},
			want: []string{"HOP_SERVER_METRICS_LISTEN (--metrics-listen)"}},
		{name: "bad dns provider", env: env{"HOP_SERVER_DOMAIN": "gate.example.com", "HOP_ACME_DNS_PROVIDER": "Cloud Flare"},
			want: []string{`HOP_ACME_DNS_PROVIDER (--acme-dns-provider): "Cloud Flare" is not a lego DNS provider name`}},
		{name: "console sso issuer not a URL", env: env{"HOP_SERVER_DOMAIN": "gate.example.com", "HOP_ADMIN_API_KEY": "k", "HOP_SERVER_CONSOLE_OIDC_ISSUER": "id.example.com"},
			want: []string{`HOP_SERVER_CONSOLE_OIDC_ISSUER (--console-oidc-issuer): "id.example.com" is not an issuer URL`}},
		{name: "console sso without client id", env: env{"HOP_SERVER_DOMAIN": "gate.example.com", "HOP_ADMIN_API_KEY": "k",
			"HOP_SERVER_CONSOLE_OIDC_ISSUER": "https://id.example.com", "HOP_SERVER_CONSOLE_OIDC_ALLOWED_EMAILS": "a@example.com"},
			want: []string{"HOP_SERVER_CONSOLE_OIDC_CLIENT_ID (--console-oidc-client-id): required with HOP_SERVER_CONSOLE_OIDC_ISSUER"}},
		{name: "console sso open to every account", env: env{"HOP_SERVER_DOMAIN": "gate.example.com", "HOP_ADMIN_API_KEY": "k",
			"HOP_SERVER_CONSOLE_OIDC_ISSUER": "https://id.example.com", "HOP_SERVER_CONSOLE_OIDC_CLIENT_ID": "c"},
			want: []string{"HOP_SERVER_CONSOLE_OIDC_ISSUER (--console-oidc-issuer): set without HOP_SERVER_CONSOLE_OIDC_ALLOWED_EMAILS"}},
		{name: "console sso with the console off", env: env{"HOP_SERVER_DOMAIN": "gate.example.com", "HOP_ADMIN_API_KEY": "k", "HOP_SERVER_CONSOLE": "false",
			"HOP_SERVER_CONSOLE_OIDC_ISSUER": "https://id.example.com", "HOP_SERVER_CONSOLE_OIDC_CLIENT_ID": "c", "HOP_SERVER_CONSOLE_OIDC_ALLOWED_GROUPS": "ops"},
			want: []string{"HOP_SERVER_CONSOLE_OIDC_ISSUER (--console-oidc-issuer): set, but the console is off"}},
		{name: "console sso parts without issuer", env: env{"HOP_SERVER_DOMAIN": "gate.example.com", "HOP_SERVER_CONSOLE_OIDC_CLIENT_ID": "c"},
			want: []string{"HOP_SERVER_CONSOLE_OIDC_CLIENT_ID (--console-oidc-client-id): set without HOP_SERVER_CONSOLE_OIDC_ISSUER"}},
		{name: "pprof without metrics", env: env{"HOP_SERVER_PPROF": "1", "HOP_SERVER_METRICS_LISTEN": ""},
			want: []string{"HOP_SERVER_PPROF (--pprof): needs HOP_SERVER_METRICS_LISTEN"}},
		{name: "dsn scheme", env: env{"HOP_DB_DSN": "mysql://u:s3cr3t@db/x"},
			want: []string{"HOP_DB_DSN (--db-dsn): not a postgres:// or postgresql:// URL"}},
		{name: "tcp ports reversed", env: env{"HOP_SERVER_TCP_PORTS": "20999-20000"},
			want: []string{`HOP_SERVER_TCP_PORTS (--tcp-ports): "20999-20000" is not a port range`}},
		{name: "tcp ports out of range", env: env{"HOP_SERVER_TCP_PORTS": "65000-70000"},
			want: []string{`HOP_SERVER_TCP_PORTS (--tcp-ports): "65000-70000" is not a port range`}},
		{name: "tcp listen host a name", env: env{"HOP_SERVER_TCP_LISTEN_HOST": "localhost"},
			want: []string{`HOP_SERVER_TCP_LISTEN_HOST (--tcp-listen-host): "localhost" is not an IP address`}},
		{name: "tcp idle timeout zero", env: env{"HOP_SERVER_TCP_IDLE_TIMEOUT": "0s"},
			want: []string{"HOP_SERVER_TCP_IDLE_TIMEOUT (--tcp-idle-timeout)"}},
		{name: "proxy protocol from not a CIDR", env: env{"HOP_SERVER_PROXY_PROTOCOL_FROM": "lb.example.com"},
			want: []string{"HOP_SERVER_PROXY_PROTOCOL_FROM (--proxy-protocol-from)"}},
		{name: "negative pool", env: env{"HOP_DB_MAX_OPEN_CONNS": "-1"},
			want: []string{`HOP_DB_MAX_OPEN_CONNS (--db-max-open-conns): "-1" is not a whole number ≥ 0`}},
		{name: "idle over open", env: env{"HOP_DB_MAX_OPEN_CONNS": "4", "HOP_DB_MAX_IDLE_CONNS": "5"},
			want: []string{"HOP_DB_MAX_IDLE_CONNS (--db-max-idle-conns): 5 is more than HOP_DB_MAX_OPEN_CONNS (--db-max-open-conns) 4"}},
		{name: "negative lifetime", env: env{"HOP_DB_CONN_MAX_LIFETIME": "-1m"},
			want: []string{"HOP_DB_CONN_MAX_LIFETIME (--db-conn-max-lifetime)"}},
		{name: "bad email", env: env{"HOP_ACME_EMAIL": "ops"},
			want: []string{`HOP_ACME_EMAIL (--acme-email): "ops" is not an email address`}},
		{name: "bad CA dir", env: env{"HOP_ACME_CA_DIR": "letsencrypt"},
			want: []string{`HOP_ACME_CA_DIR (--acme-ca-dir): "letsencrypt" is not an http:// or https:// URL`}},
		{name: "missing OIDC roots", env: env{"HOP_SERVER_OIDC_CA_ROOTS": "/nonexistent/roots.pem"},
			want: []string{`HOP_SERVER_OIDC_CA_ROOTS (--oidc-ca-roots): "/nonexistent/roots.pem" is not a readable file`}},
		{name: "OIDC roots not PEM", env: env{"HOP_SERVER_OIDC_CA_ROOTS": notPEM},
			want: []string{`HOP_SERVER_OIDC_CA_ROOTS (--oidc-ca-roots): "` + notPEM + `" holds no PEM certificate`}},
		{name: "OIDC roots a directory", env: env{"HOP_SERVER_OIDC_CA_ROOTS": os.TempDir()},
			want: []string{`HOP_SERVER_OIDC_CA_ROOTS (--oidc-ca-roots): "` + os.TempDir() + `" is a directory`}},
		{name: "missing CA roots", env: env{"HOP_ACME_CA_ROOTS": "/nonexistent/roots.pem"},
			want: []string{`HOP_ACME_CA_ROOTS (--acme-ca-roots): "/nonexistent/roots.pem" is not a readable file`}},
		{name: "bad expect IP", env: env{"HOP_ACME_EXPECT_IPS": "203.0.113.1,gate.example.com"},
			want: []string{`HOP_ACME_EXPECT_IPS (--acme-expect-ips): "gate.example.com" is not an IP address`}},
		{name: "missing pages dir", env: env{"HOP_ERROR_PAGES_DIR": "/nonexistent/pages"},
			want: []string{"HOP_ERROR_PAGES_DIR (--error-pages-dir)"}},
		{name: "missing assets dir", env: env{"HOP_ERROR_ASSETS_DIR": "/nonexistent/assets"},
			want: []string{"HOP_ERROR_ASSETS_DIR (--error-assets-dir)"}},
		{name: "bad log level", env: env{"HOP_LOG_LEVEL": "verbose"},
			want: []string{`HOP_LOG_LEVEL (--log-level): "verbose" is not a log level`}},
		{name: "bad log format", env: env{"HOP_LOG_FORMAT": "xml"},
			want: []string{`HOP_LOG_FORMAT (--log-format): "xml" is not a log format`}},
		{
			name: "every error at once",
			env: env{
				"HOP_SERVER_SHUTDOWN_TIMEOUT": "abc",
				"HOP_SERVER_HTTP_PROXY":       "2",
				"HOP_LOG_LEVEL":               "loud",
			},
			want: []string{
				"HOP_SERVER_SHUTDOWN_TIMEOUT (--shutdown-timeout)",
				"HOP_SERVER_HTTP_PROXY (--http-proxy)",
				"HOP_LOG_LEVEL (--log-level)",
				"HOP_SERVER_DOMAIN (--domain): required",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, err := LoadServer(tc.args, tc.env.lookup, noDotenv(t))
			if err == nil {
				t.Fatalf("LoadServer = %v, want an error", s)
			}
			if s != nil {
				t.Errorf("LoadServer returned a config with the error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("error %q shows a secret", err)
			}
		})
	}
}

func TestLoadServerErrorsAreJoined(t *testing.T) {
	_, err := LoadServer(nil, env{"HOP_SERVER_SHUTDOWN_TIMEOUT": "abc", "HOP_LOG_FORMAT": "xml"}.lookup, noDotenv(t))
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("error %T is not a joined error", err)
	}
	if n := len(joined.Unwrap()); n != 3 { // two bad values and the missing domain
		t.Fatalf("got %d errors, want 3: %v", n, err)
	}
}

func TestLoadCommandLine(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantHelp bool
		want     string
	}{
		{name: "-h", args: []string{"-h"}, wantHelp: true},
		{name: "--help", args: []string{"--help"}, wantHelp: true},
		{name: "-help after flags", args: []string{"--debug", "-help"}, wantHelp: true},
		{name: "unknown flag", args: []string{"--no-such-flag=1"}, want: "flag provided but not defined: -no-such-flag"},
		{name: "client flag on the server", args: []string{"--api-key=x"}, want: "not defined: -api-key"},
		{name: "missing value", args: []string{"--domain"}, want: "flag needs an argument: -domain"},
		{name: "stray argument", args: []string{"--debug", "serve"}, want: `unexpected argument "serve"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := LoadServer(tc.args, env{}.lookup, noDotenv(t))
			if tc.wantHelp {
				if !errors.Is(err, ErrHelp) || !errors.Is(err, flag.ErrHelp) {
					t.Fatalf("err = %v, want ErrHelp", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || errors.Is(err, ErrHelp) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestDotenv(t *testing.T) {
	const key = "HOP_SERVER_DOMAIN"
	if _, ok := os.LookupEnv(key); ok {
		t.Skipf("%s is set in the test environment", key)
	}
	t.Run("read without touching the process environment", func(t *testing.T) {
		path := writeDotenv(t, "# comment\nexport HOP_SERVER_DOMAIN=dotenv.example.com\nHOP_LOG_LEVEL='debug'\n")
		s, err := LoadServer(nil, env{}.lookup, path)
		if err != nil {
			t.Fatal(err)
		}
		if s.Domain != "dotenv.example.com" || s.LogLevel != slog.LevelDebug {
			t.Fatalf("Domain=%q LogLevel=%v", s.Domain, s.LogLevel)
		}
		if _, ok := os.LookupEnv(key); ok {
			t.Fatalf("loading the .env file set %s in the process environment", key)
		}
	})
	t.Run("no path means no file", func(t *testing.T) {
		if _, err := LoadServer(nil, env{key: "gate.example.com"}.lookup, ""); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("unreadable file", func(t *testing.T) {
		_, err := LoadServer(nil, env{key: "gate.example.com"}.lookup, t.TempDir()) // a directory
		if err == nil || !strings.Contains(err.Error(), "read ") {
			t.Fatalf("err = %v, want a read error naming the file", err)
		}
	})
	t.Run("malformed file", func(t *testing.T) {
		_, err := LoadServer(nil, env{key: "gate.example.com"}.lookup, writeDotenv(t, "HOP_LOG_LEVEL='debug\n"))
		if err == nil {
			t.Fatal("want an error for an unterminated quote")
		}
	})
	t.Run("bad value from the file names the variable", func(t *testing.T) {
		_, err := LoadServer(nil, env{key: "gate.example.com"}.lookup, writeDotenv(t, "HOP_SERVER_SHUTDOWN_TIMEOUT=soon\n"))
		if err == nil || !strings.Contains(err.Error(), `HOP_SERVER_SHUTDOWN_TIMEOUT (--shutdown-timeout): "soon"`) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestServerUsage(t *testing.T) {
	var b bytes.Buffer
	ServerUsage(&b)
	out := b.String()
	for _, s := range serverSettings(&Server{}) {
		for _, want := range []string{"--" + s.flag, "env " + s.env + ",", s.usage} {
			if !strings.Contains(out, want) {
				t.Errorf("usage lacks %q", want)
			}
		}
	}
	for _, want := range []string{
		`env HOP_SERVER_HTTP_LISTEN, default ":80"`,
		`env HOP_SERVER_SHUTDOWN_TIMEOUT, default "30s"`,
		"env HOP_ADMIN_API_KEY, default (empty)\n      Bearer key of the admin API; empty disables the admin API\n      secret: never printed or logged\n",
		"env HOP_DB_DSN, default (empty)\n      postgres:// or postgresql:// URL selects Postgres; empty selects embedded SQLite in --data-dir\n      secret: never printed or logged\n",
		"env HOP_ACME_CACHE_DIR, default $HOP_DATA_DIR/acme",
		"flag > environment > .env file",
		"hopgate-server domains ...",
		"hopgate-server sessions rotate-key",
		"hopgate-server health ",
		"--version                   print the version and exit",
		"Exit codes: 0 stopped by a signal",
		"1 failed while starting or serving",
		"2 bad configuration",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("usage lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "secret: never printed or logged"); n != 3 {
		t.Errorf("usage marks %d settings as secret, want 3 (HOP_ADMIN_API_KEY, HOP_DB_DSN, HOP_SERVER_CONSOLE_OIDC_CLIENT_SECRET):\n%s", n, out)
	}
	if strings.Contains(out, "(secret)") || strings.Contains(out, ", secret)") {
		t.Errorf("usage shows a default that reads like a built-in secret:\n%s", out)
	}
}

func TestServerSecretsRedacted(t *testing.T) {
	const key, password = "adm1n-k3y-value", "pg-pa55word"
	s, err := LoadServer(nil, env{
		"HOP_SERVER_DOMAIN": "gate.example.com",
		"HOP_ADMIN_API_KEY": key,
		"HOP_DB_DSN":        "postgres://hop:" + password + "@db:5432/hopgate?sslmode=disable",
	}.lookup, noDotenv(t))
	if err != nil {
		t.Fatal(err)
	}

	var jsonLog, textLog bytes.Buffer
	NewLogger(&jsonLog, slog.LevelInfo, "json").Info("start", "config", s)
	NewLogger(&textLog, slog.LevelInfo, "text").Info("start", "config", *s)
	outputs := map[string]string{
		"%v pointer":  fmt.Sprintf("%v", s),
		"%v value":    fmt.Sprintf("%v", *s),
		"%+v pointer": fmt.Sprintf("%+v", s),
		"%+v value":   fmt.Sprintf("%+v", *s),
		"%#v":         fmt.Sprintf("%#v", s),
		"String":      s.String(),
		"LogValue":    s.LogValue().String(),
		"json log":    jsonLog.String(),
		"text log":    textLog.String(),
	}
	for name, out := range outputs {
		if strings.Contains(out, key) || strings.Contains(out, password) {
			t.Errorf("%s shows a secret: %s", name, out)
		}
	}
	for _, name := range []string{"String", "json log", "text log"} {
		out := outputs[name]
		for _, want := range []string{"gate.example.com", "hop:xxxxx@db:5432", redacted} {
			if !strings.Contains(out, want) {
				t.Errorf("%s lacks %q: %s", name, want, out)
			}
		}
	}
	if !strings.Contains(jsonLog.String(), `"admin_api_key":"[redacted]"`) {
		t.Errorf("json log: %s", jsonLog.String())
	}
}

func TestNewLogger(t *testing.T) {
	var j, x bytes.Buffer
	NewLogger(&j, slog.LevelWarn, "json").Info("hidden")
	NewLogger(&j, slog.LevelWarn, "json").Warn("shown", "domain", "a.example.com")
	NewLogger(&x, slog.LevelDebug, "text").Debug("shown", "domain", "a.example.com")
	if got := j.String(); strings.Contains(got, "hidden") || !strings.HasPrefix(got, "{") || !strings.Contains(got, `"domain":"a.example.com"`) {
		t.Errorf("json logger wrote %q", got)
	}
	if got := x.String(); !strings.Contains(got, "level=DEBUG") || !strings.Contains(got, "domain=a.example.com") {
		t.Errorf("text logger wrote %q", got)
	}
}

func TestServerID(t *testing.T) {
	tests := []struct {
		name    string
		env     env
		args    []string
		want    string
		wantErr string
	}{
		{name: "env", env: env{"HOP_SERVER_ID": "gw1"}, want: "gw1"},
		{name: "flag over env", env: env{"HOP_SERVER_ID": "gw1"}, args: []string{"--server-id", "gw2"}, want: "gw2"},
		{name: "64 bytes", env: env{"HOP_SERVER_ID": strings.Repeat("a", 64)}, want: strings.Repeat("a", 64)},
		{name: "65 bytes", env: env{"HOP_SERVER_ID": strings.Repeat("a", 65)}, wantErr: "at most 64"},
		{name: "space", env: env{"HOP_SERVER_ID": "gw 1"}, wantErr: "printable"},
		{name: "control", env: env{"HOP_SERVER_ID": "gw\x001"}, wantErr: "printable"},
		{name: "invalid UTF-8", env: env{"HOP_SERVER_ID": "gw\xff"}, wantErr: "printable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.env["HOP_SERVER_DOMAIN"] = "gate.example.com"
			got, err := LoadServer(tc.args, tc.env.lookup, noDotenv(t))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "HOP_SERVER_ID") {
					t.Fatalf("err = %v, want one naming HOP_SERVER_ID and %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.ServerID != tc.want {
				t.Fatalf("ServerID = %q, want %q", got.ServerID, tc.want)
			}
		})
	}
}

func TestDefaultServerID(t *testing.T) {
	st := find(serverSettings(&Server{}), "HOP_SERVER_ID")
	if id, errs := defaultServerID(func() (string, error) { return "host-1", nil }, st, nil); id != "host-1" || errs != nil {
		t.Fatalf("defaultServerID = %q, %v", id, errs)
	}
	for name, hostname := range map[string]func() (string, error){
		"unknown":  func() (string, error) { return "", errors.New("no uts") },
		"too long": func() (string, error) { return strings.Repeat("h", 80), nil },
	} {
		if _, errs := defaultServerID(hostname, st, nil); len(errs) != 1 || !strings.Contains(errs[0].Error(), "HOP_SERVER_ID") {
			t.Errorf("%s host name: errors %v, want one naming HOP_SERVER_ID", name, errs)
		}
	}
}

func TestDrainDelayWithinShutdownTimeout(t *testing.T) {
	_, err := LoadServer(nil, env{"HOP_SERVER_DOMAIN": "gate.example.com", "HOP_SERVER_DRAIN_DELAY": "30s"}.lookup, noDotenv(t))
	if err == nil || !strings.Contains(err.Error(), "HOP_SERVER_DRAIN_DELAY") {
		t.Fatalf("err = %v, want one naming HOP_SERVER_DRAIN_DELAY", err)
	}
}
