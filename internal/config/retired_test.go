package config

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"testing"
)

// Values of retired settings that must never show: the notices name variables only.
const (
	lokiPassword = "l0ki-pa55word"
	webroot      = "/srv/acme-w3broot"
)

func variables(notices []Notice) []string {
	var out []string
	for _, n := range notices {
		out = append(out, n.Variable)
	}
	return out
}

func TestDeprecatedSettings(t *testing.T) {
	tests := []struct {
		name    string
		load    func(lookup func(string) (string, bool), dotenv string) ([]Notice, error)
		env     env
		dotenv  string
		want    []string
		replace map[string]string // variable → a substring of its replacement
	}{
		{
			name: "server: environment and .env file",
			load: loadServerNotices,
			env:  env{"HOP_SERVER_DOMAIN": "gate.example.com", "HOP_ACME_WEBROOT": webroot, "HOP_LOG_LEVEL": "debug"},
			dotenv: "HOP_LOKI_ENABLE=true\nHOP_LOKI_PASSWORD=" + lokiPassword + "\nHOP_LOKI_STATIC_LABELS=app=hop-gate,env=dev\n" +
				"HOP_SERVER_DTLS_LISTEN=:8443\n",
			want: []string{"HOP_ACME_WEBROOT", "HOP_LOKI_ENABLE", "HOP_LOKI_PASSWORD", "HOP_LOKI_STATIC_LABELS", "HOP_SERVER_DTLS_LISTEN"},
			replace: map[string]string{
				"HOP_ACME_WEBROOT":       "answers HTTP-01 itself on HOP_SERVER_HTTP_LISTEN and TLS-ALPN-01 on the HTTPS port; no webroot is needed",
				"HOP_LOKI_PASSWORD":      "logs are JSON lines on stdout (HOP_LOG_FORMAT=json); ship them with Promtail/Grafana Alloy or the container runtime's log driver",
				"HOP_SERVER_DTLS_LISTEN": "HOP_SERVER_HTTPS_LISTEN",
			},
		},
		{
			name: "client: the server's settings are not the client's business",
			load: loadClientNotices,
			env:  merge(clientEnv(), env{"HOP_ACME_WEBROOT": webroot, "HOP_LOG_LEVEL": "debug", "HOP_LOKI_ENDPOINT": "http://loki:3100/loki/api/v1/push"}),
			want: []string{"HOP_LOG_LEVEL", "HOP_LOKI_ENDPOINT"},
			replace: map[string]string{
				"HOP_LOG_LEVEL":     "HOP_CLIENT_LOG_LEVEL (--log-level)",
				"HOP_LOKI_ENDPOINT": "Promtail/Grafana Alloy",
			},
		},
		{
			name:   "empty values are unset, as for every setting",
			load:   loadServerNotices,
			env:    env{"HOP_SERVER_DOMAIN": "gate.example.com", "HOP_ACME_WEBROOT": " "},
			dotenv: "HOP_LOKI_PASSWORD=\n",
		},
		{
			name:   "an environment variable repeated in the .env file is reported once",
			load:   loadServerNotices,
			env:    env{"HOP_SERVER_DOMAIN": "gate.example.com", "HOP_ACME_WEBROOT": webroot},
			dotenv: "HOP_ACME_WEBROOT=/other\n",
			want:   []string{"HOP_ACME_WEBROOT"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := noDotenv(t)
			if tc.dotenv != "" {
				path = writeDotenv(t, tc.dotenv)
			}
			notices, err := tc.load(tc.env.lookup, path)
			if err != nil {
				t.Fatal(err)
			}
			if got := variables(notices); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("notices for %v, want %v", got, tc.want)
			}
			for _, n := range notices {
				if want, ok := tc.replace[n.Variable]; ok && !strings.Contains(n.Replacement, want) {
					t.Errorf("%s: replacement %q lacks %q", n.Variable, n.Replacement, want)
				}
				if n.Replacement == "" {
					t.Errorf("%s has no replacement", n.Variable)
				}
			}
		})
	}
}

func loadServerNotices(lookup func(string) (string, bool), dotenv string) ([]Notice, error) {
	s, err := LoadServer(nil, lookup, dotenv)
	if err != nil {
		return nil, err
	}
	return s.Deprecated, nil
}

func loadClientNotices(lookup func(string) (string, bool), dotenv string) ([]Notice, error) {
	c, err := LoadClient(nil, lookup, dotenv)
	if err != nil {
		return nil, err
	}
	return c.Deprecated, nil
}

func merge(a, b env) env {
	for k, v := range b {
		a[k] = v
	}
	return a
}

// TestDeprecatedFromProcessEnvironment covers the prefix rule the way main loads: os.LookupEnv, where
// the names of HOP_LOKI_* variables come from the process environment.
func TestDeprecatedFromProcessEnvironment(t *testing.T) {
	t.Setenv("HOP_SERVER_DOMAIN", "gate.example.com")
	t.Setenv("HOP_LOKI_TENANT_ID", "tenant-1")
	t.Setenv("HOP_LOKI_SOMETHING_NEW", "x")
	s, err := LoadServer(nil, os.LookupEnv, noDotenv(t))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := variables(s.Deprecated), []string{"HOP_LOKI_SOMETHING_NEW", "HOP_LOKI_TENANT_ID"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("notices for %v, want %v", got, want)
	}
	// A caller's own lookup decides what is set, even for names found in the process environment.
	s, err = LoadServer(nil, env{"HOP_SERVER_DOMAIN": "gate.example.com"}.lookup, noDotenv(t))
	if err != nil {
		t.Fatal(err)
	}
	if s.Deprecated != nil {
		t.Fatalf("notices %v from variables the lookup does not have", variables(s.Deprecated))
	}
}

// TestWarnDeprecated checks what main logs: one warning per retired variable, naming it and its
// replacement, never its value.
func TestWarnDeprecated(t *testing.T) {
	s, err := LoadServer(nil, env{"HOP_SERVER_DOMAIN": "gate.example.com", "HOP_ACME_WEBROOT": webroot}.lookup,
		writeDotenv(t, "HOP_LOKI_PASSWORD="+lokiPassword+"\nHOP_LOKI_USERNAME=loki-us3r\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"json", "text"} {
		var b bytes.Buffer
		WarnDeprecated(NewLogger(&b, slog.LevelInfo, format), s.Deprecated)
		out := b.String()
		for _, secret := range []string{lokiPassword, webroot, "loki-us3r"} {
			if strings.Contains(out, secret) {
				t.Errorf("%s log shows the value %q:\n%s", format, secret, out)
			}
		}
		if format == "text" {
			if !strings.Contains(out, "level=WARN") || !strings.Contains(out, "variable=HOP_LOKI_PASSWORD") {
				t.Errorf("text log: %s", out)
			}
			continue
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 3 {
			t.Fatalf("%d lines, want one per variable (3):\n%s", len(lines), out)
		}
		for i, want := range []string{"HOP_ACME_WEBROOT", "HOP_LOKI_PASSWORD", "HOP_LOKI_USERNAME"} {
			var e struct{ Level, Variable, Replacement string }
			if err := json.Unmarshal([]byte(lines[i]), &e); err != nil {
				t.Fatal(err)
			}
			if e.Level != "WARN" || e.Variable != want || e.Replacement == "" {
				t.Errorf("line %d = %+v, want a warning about %s with its replacement", i, e, want)
			}
		}
	}
	// A quiet logger (HOP_LOG_LEVEL=error) drops them like any warning.
	var b bytes.Buffer
	WarnDeprecated(NewLogger(&b, slog.LevelError, "json"), s.Deprecated)
	if b.Len() != 0 {
		t.Errorf("logged below the level: %s", b.String())
	}
}
