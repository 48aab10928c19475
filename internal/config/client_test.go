package config

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// clientEnv is the smallest valid client environment.
func clientEnv() env {
	return env{
		"HOP_CLIENT_SERVER_ADDR":  "gate.example.com:443",
		"HOP_CLIENT_DOMAIN":       "app.example.com",
		"HOP_CLIENT_API_KEY":      "client-key",
		"HOP_CLIENT_LOCAL_TARGET": "127.0.0.1:8080",
	}
}

func TestLoadClientDefaults(t *testing.T) {
	got, err := LoadClient(nil, clientEnv().lookup, noDotenv(t))
	if err != nil {
		t.Fatal(err)
	}
	want := &Client{
		ServerAddr:      "gate.example.com:443",
		Domain:          "app.example.com",
		APIKey:          "client-key",
		LocalTarget:     &url.URL{Scheme: "http", Host: "127.0.0.1:8080"},
		PingInterval:    15 * time.Second,
		ShutdownTimeout: 30 * time.Second,
		LogLevel:        slog.LevelInfo,
		LogFormat:       "text",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("\n got %#v\nwant %#v", got, want)
	}
	if got.SkipVerify() {
		t.Error("SkipVerify without --debug")
	}
}

func TestLoadClientEveryFlag(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, []byte("pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{
		"--server-addr", "127.0.0.1:8443",
		"--domain", "App.Example.com.",
		"--api-key", "flag-key",
		"--local-target", "https://app.internal:8443",
		"--debug",
		"--ca-file", ca,
		"--local-ca-file", ca,
		"--local-insecure-skip-verify",
		"--ping-interval", "5s",
		"--shutdown-timeout", "10s",
		"--agent-id", "host-1-ab12",
		"--metrics-listen", "127.0.0.1:9181",
		"--pprof",
		"--log-level", "debug",
		"--log-format", "json",
	}
	if n := len(clientSettings(&Client{})); n != (len(args)+3)/2 { // --debug, --local-insecure-skip-verify and --pprof have no value
		t.Fatalf("test covers %d flags, the table has %d", (len(args)+3)/2, n)
	}
	got, err := LoadClient(args, clientEnv().lookup, noDotenv(t))
	if err != nil {
		t.Fatal(err)
	}
	want := &Client{
		ServerAddr:              "127.0.0.1:8443",
		Domain:                  "app.example.com",
		APIKey:                  "flag-key",
		LocalTarget:             &url.URL{Scheme: "https", Host: "app.internal:8443"},
		Debug:                   true,
		CAFile:                  ca,
		LocalCAFile:             ca,
		LocalInsecureSkipVerify: true,
		PingInterval:            5 * time.Second,
		ShutdownTimeout:         10 * time.Second,
		AgentID:                 "host-1-ab12",
		MetricsListen:           "127.0.0.1:9181",
		Pprof:                   true,
		LogLevel:                slog.LevelDebug,
		LogFormat:               "json",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("\n got %#v\nwant %#v", got, want)
	}
	if got.SkipVerify() {
		t.Error("SkipVerify with --ca-file: the CA file must win over --debug")
	}
}

func TestClientSkipVerify(t *testing.T) {
	for _, tc := range []struct {
		c    Client
		want bool
	}{
		{Client{}, false},
		{Client{Debug: true}, true},
		{Client{CAFile: "ca.pem"}, false},
		{Client{Debug: true, CAFile: "ca.pem"}, false},
	} {
		if got := tc.c.SkipVerify(); got != tc.want {
			t.Errorf("Debug=%v CAFile=%q: SkipVerify = %v, want %v", tc.c.Debug, tc.c.CAFile, got, tc.want)
		}
	}
}

func TestClientPrecedence(t *testing.T) {
	const v = "HOP_CLIENT_LOCAL_TARGET"
	tests := []struct {
		name   string
		args   []string
		env    env
		dotenv string
		want   string
	}{
		{name: "dotenv", dotenv: v + "=localhost:1\n", want: "http://localhost:1"},
		{name: "env over dotenv", env: env{v: "localhost:2"}, dotenv: v + "=localhost:1\n", want: "http://localhost:2"},
		{name: "flag over env", args: []string{"--local-target=http://localhost:3"}, env: env{v: "localhost:2"}, dotenv: v + "=localhost:1\n", want: "http://localhost:3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := clientEnv()
			delete(e, v)
			for k, val := range tc.env {
				e[k] = val
			}
			path := noDotenv(t)
			if tc.dotenv != "" {
				path = writeDotenv(t, tc.dotenv)
			}
			c, err := LoadClient(tc.args, e.lookup, path)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.LocalTarget.String(); got != tc.want {
				t.Fatalf("LocalTarget = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestLoadClientErrors(t *testing.T) {
	tests := []struct {
		name  string
		unset []string
		set   env
		args  []string
		want  []string
	}{
		{
			name:  "every required setting missing",
			unset: []string{"HOP_CLIENT_SERVER_ADDR", "HOP_CLIENT_DOMAIN", "HOP_CLIENT_API_KEY", "HOP_CLIENT_LOCAL_TARGET"},
			want: []string{
				"HOP_CLIENT_SERVER_ADDR (--server-addr): required",
				"HOP_CLIENT_DOMAIN (--domain): required",
				"HOP_CLIENT_API_KEY (--api-key): required",
				"HOP_CLIENT_LOCAL_TARGET (--local-target): required",
			},
		},
		{name: "blank api key", set: env{"HOP_CLIENT_API_KEY": "  "}, want: []string{"HOP_CLIENT_API_KEY (--api-key): required"}},
		{name: "server without port", set: env{"HOP_CLIENT_SERVER_ADDR": "gate.example.com"},
			want: []string{`HOP_CLIENT_SERVER_ADDR (--server-addr): "gate.example.com" is not an address host:port`}},
		{name: "bad domain", set: env{"HOP_CLIENT_DOMAIN": "app example"},
			want: []string{`HOP_CLIENT_DOMAIN (--domain): "app example" is not a domain name`}},
		{name: "bad local target", set: env{"HOP_CLIENT_LOCAL_TARGET": "ftp://nas:21"},
			want: []string{`HOP_CLIENT_LOCAL_TARGET (--local-target): "ftp://nas:21" is not a local target`}},
		{name: "bad debug", args: []string{"--debug=please"}, want: []string{`HOP_CLIENT_DEBUG (--debug): "please" is not a boolean`}},
		{name: "missing CA file", set: env{"HOP_CLIENT_CA_FILE": "/nonexistent/ca.pem"},
			want: []string{`HOP_CLIENT_CA_FILE (--ca-file): "/nonexistent/ca.pem" is not a readable file`}},
		{name: "bad ping interval", set: env{"HOP_CLIENT_PING_INTERVAL": "-1s"},
			want: []string{"HOP_CLIENT_PING_INTERVAL (--ping-interval)"}},
		{name: "bad shutdown timeout", set: env{"HOP_CLIENT_SHUTDOWN_TIMEOUT": "forever"},
			want: []string{`HOP_CLIENT_SHUTDOWN_TIMEOUT (--shutdown-timeout): "forever" is not a duration like 30s`}},
		{name: "bad log level", set: env{"HOP_CLIENT_LOG_LEVEL": "all"},
			want: []string{`HOP_CLIENT_LOG_LEVEL (--log-level): "all" is not a log level`}},
		{name: "bad log format", set: env{"HOP_CLIENT_LOG_FORMAT": "yaml"},
			want: []string{`HOP_CLIENT_LOG_FORMAT (--log-format): "yaml" is not a log format`}},
		{name: "bad metrics listen", set: env{"HOP_CLIENT_METRICS_LISTEN": "9181"},
			want: []string{`HOP_CLIENT_METRICS_LISTEN (--metrics-listen): "9181" is not a listen address host:port`}},
		{name: "pprof without metrics", set: env{"HOP_CLIENT_PPROF": "true"},
			want: []string{"HOP_CLIENT_PPROF (--pprof): needs HOP_CLIENT_METRICS_LISTEN"}},
		{name: "server flag on the client", args: []string{"--admin-api-key=x"}, want: []string{"flag provided but not defined: -admin-api-key"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := clientEnv()
			for _, k := range tc.unset {
				delete(e, k)
			}
			for k, v := range tc.set {
				e[k] = v
			}
			c, err := LoadClient(tc.args, e.lookup, noDotenv(t))
			if err == nil {
				t.Fatalf("LoadClient = %v, want an error", c)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "client-key") {
				t.Errorf("error %q shows the API key", err)
			}
		})
	}
}

func TestLoadClientHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}} {
		if _, err := LoadClient(args, env{}.lookup, ""); !errors.Is(err, ErrHelp) {
			t.Errorf("%v: err = %v, want ErrHelp", args, err)
		}
	}
}

func TestClientUsage(t *testing.T) {
	var b bytes.Buffer
	ClientUsage(&b)
	out := b.String()
	for _, s := range clientSettings(&Client{}) {
		for _, want := range []string{"--" + s.flag, "env " + s.env + ",", s.usage} {
			if !strings.Contains(out, want) {
				t.Errorf("usage lacks %q", want)
			}
		}
	}
	for _, want := range []string{
		"env HOP_CLIENT_API_KEY, default (required, secret)",
		"env HOP_CLIENT_SERVER_ADDR, default (required)",
		`env HOP_CLIENT_PING_INTERVAL, default "15s"`,
		"the CA file wins",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("usage lacks %q:\n%s", want, out)
		}
	}
}

func TestClientSecretsRedacted(t *testing.T) {
	const key = "cl13nt-k3y-value"
	e := clientEnv()
	e["HOP_CLIENT_API_KEY"] = key
	c, err := LoadClient(nil, e.lookup, noDotenv(t))
	if err != nil {
		t.Fatal(err)
	}
	var jsonLog bytes.Buffer
	NewLogger(&jsonLog, slog.LevelInfo, "json").Info("start", "config", c)
	for name, out := range map[string]string{
		"%v pointer": fmt.Sprintf("%v", c),
		"%v value":   fmt.Sprintf("%v", *c),
		"%+v":        fmt.Sprintf("%+v", *c),
		"%#v":        fmt.Sprintf("%#v", c),
		"LogValue":   c.LogValue().String(),
		"json log":   jsonLog.String(),
	} {
		if strings.Contains(out, key) {
			t.Errorf("%s shows the API key: %s", name, out)
		}
	}
	if out := jsonLog.String(); !strings.Contains(out, `"api_key":"[redacted]"`) || !strings.Contains(out, `"local_target":"http://127.0.0.1:8080"`) {
		t.Errorf("json log: %s", out)
	}
}
