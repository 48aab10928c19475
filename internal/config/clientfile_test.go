package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeFiles stands in for the key and CA files a config names.
var fakeFiles = fileAccess{
	readKey: func(path string) (string, error) {
		if strings.HasSuffix(path, "missing.key") {
			return "", errors.New("not a readable file")
		}
		return "key-from-" + filepath.Base(path), nil
	},
	readable: func(path string) (string, error) { return path, nil },
}

// TestParseClientFile: the validation table. Each bad case names FILE:LINE and the key.
func TestParseClientFile(t *testing.T) {
	vars := env{"APP_KEY": "app-key", "EMPTY": "", "K": canaryKey, "PASS": "hunter2-pass", "Q": "?x", "IV": "soon"}
	for _, tc := range []struct {
		name, yaml string
		want       string // substring of the error; "" = valid
		// tunnels is the tunnel each hostname rides on, for a valid case that says.
		tunnels map[string]string
	}{
		{name: "minimal", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: 127.0.0.1:80\n"},
		{name: "key on another service of the hostname", yaml: "services:\n  - hostname: a.example.com\n    target: 127.0.0.1:80\n  - hostname: a.example.com\n    path: /api/\n    api_key_file: a.key\n    target: 127.0.0.1:81\n"},
		{name: "unknown top key", yaml: "server_addr: gw\nservics: []\n", want: "f.yaml:2: servics: unknown key"},
		{name: "unknown service key", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: 127.0.0.1:80\n    tls_skip_verfy: true\n", want: "f.yaml:5: tls_skip_verfy: unknown key"},
		{name: "unknown health key", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: 127.0.0.1:80\n    health: {pth: /h}\n", want: "f.yaml:5: pth: unknown key"},
		{name: "syntax", yaml: "services:\n  - hostname: [a\n", want: "f.yaml:"},
		{name: "empty", yaml: "", want: "f.yaml: empty"},
		{name: "no services", yaml: "server_addr: gw\n", want: "services: required"},
		{name: "no hostname", yaml: "services:\n  - target: 127.0.0.1:80\n    api_key: k\n", want: "f.yaml:2: services[0].hostname: required"},
		{name: "no target", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n", want: "f.yaml:2: services[0].target: required"},
		{name: "bad hostname", yaml: "services:\n  - hostname: a..b\n    api_key: k\n    target: 127.0.0.1:80\n", want: "f.yaml:2: services[0].hostname:"},
		{name: "bad target", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: ftp://x\n", want: "f.yaml:4: services[0].target:"},
		{name: "bad path", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    path: api\n    target: 127.0.0.1:80\n", want: "f.yaml:4: services[0].path:"},
		{name: "no key", yaml: "services:\n  - hostname: a.example.com\n    target: 127.0.0.1:80\n", want: "f.yaml:2: api_key: hostname a.example.com has no key"},
		{name: "two keys", yaml: "services:\n  - hostname: a.example.com\n    api_key: k1\n    target: 127.0.0.1:80\n  - hostname: a.example.com\n    path: /x\n    api_key: k2\n    target: 127.0.0.1:80\n", want: "f.yaml:5: api_key: hostname a.example.com already has a different key at f.yaml:2"},
		{name: "key and file", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    api_key_file: a.key\n    target: 127.0.0.1:80\n", want: "f.yaml:4: services[0].api_key_file: set together with api_key"},
		{name: "duplicate rule", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    path: /api\n    target: 127.0.0.1:80\n  - hostname: A.example.com\n    path: /api/\n    target: 127.0.0.1:81\n", want: "f.yaml:6: path: hostname a.example.com with path \"/api\" is already a rule at f.yaml:2"},
		{name: "env", yaml: "services:\n  - hostname: a.example.com\n    api_key: ${APP_KEY}\n    target: 127.0.0.1:80\n"},
		{name: "unset env", yaml: "services:\n  - hostname: a.example.com\n    api_key: ${NOPE}\n    target: 127.0.0.1:80\n", want: "f.yaml:3: services[0].api_key: environment variable NOPE is not set"},
		{name: "empty env", yaml: "services:\n  - hostname: a.example.com\n    api_key: ${EMPTY}\n    target: 127.0.0.1:80\n", want: "f.yaml:3: services[0].api_key: empty"},
		{name: "bad env ref", yaml: "services:\n  - hostname: a.example.com\n    api_key: ${A-B}\n    target: 127.0.0.1:80\n", want: "not an environment reference"},
		{name: "missing key file", yaml: "services:\n  - hostname: a.example.com\n    api_key_file: missing.key\n    target: 127.0.0.1:80\n", want: "f.yaml:3: services[0].api_key_file:"},
		{name: "skip verify on http", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: 127.0.0.1:80\n    tls_skip_verify: true\n", want: "f.yaml:5: services[0].tls_skip_verify: applies to an https:// target only"},
		{name: "bad bool", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: https://127.0.0.1:80\n    tls_skip_verify: maybe\n", want: "f.yaml:5: services[0].tls_skip_verify:"},
		{name: "health", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: https://127.0.0.1:80\n    health: {path: /h, interval: 5s}\n"},
		{name: "bad health interval", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: 127.0.0.1:80\n    health: {interval: -5s}\n", want: "f.yaml:5: services[0].health.interval:"},
		{name: "list for a value", yaml: "server_addr: [a, b]\nservices:\n  - hostname: a.example.com\n    api_key: k\n    target: 127.0.0.1:80\n", want: "f.yaml:1: server_addr: want a single value"},
		{name: "tcp target", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: tcp://127.0.0.1:5432\n"},
		{name: "tcp target with a connect check", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: tcp://127.0.0.1:5432\n    health: {interval: 3s}\n"},
		{name: "tcp and http services of one hostname", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: 127.0.0.1:80\n  - hostname: a.example.com\n    target: tcp://127.0.0.1:5432\n"},
		{name: "tcp target under a wildcard", yaml: "services:\n  - hostname: \"*.apps.example.com\"\n    api_key: k\n    target: tcp://127.0.0.1:8443\n"},
		{name: "tcp target without port", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: tcp://127.0.0.1\n", want: "f.yaml:4: services[0].target: \"tcp://127.0.0.1\" is not a TCP target"},
		{name: "tcp target with path in the URL", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: tcp://127.0.0.1:1/x\n", want: "f.yaml:4: services[0].target:"},
		{name: "tcp target with path", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    path: /api\n    target: tcp://127.0.0.1:5432\n", want: "f.yaml:4: services[0].path: a tcp:// target takes no path"},
		{name: "tcp target with path /", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    path: /\n    target: tcp://127.0.0.1:5432\n", want: "f.yaml:4: services[0].path: a tcp:// target takes no path"},
		{name: "tcp target with tls_skip_verify", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: tcp://127.0.0.1:5432\n    tls_skip_verify: true\n", want: "f.yaml:5: services[0].tls_skip_verify: applies to an https:// target only"},
		{name: "tcp target with ca_file", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: tcp://127.0.0.1:5432\n    ca_file: ca.pem\n", want: "f.yaml:5: services[0].ca_file: applies to an https:// target only"},
		{name: "tcp target with health path", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: tcp://127.0.0.1:5432\n    health:\n      path: /healthz\n", want: "f.yaml:6: services[0].health.path: a tcp:// target is checked by a TCP connect"},
		{name: "two tcp targets of one hostname", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: tcp://127.0.0.1:5432\n  - hostname: a.example.com\n    target: tcp://127.0.0.1:5433\n", want: "f.yaml:5: target: hostname a.example.com already has a tcp:// target at f.yaml:2"},
		{name: "two documents", yaml: "services: []\n---\nx: 1\n", want: "second YAML document"},

		// An error quotes a value as the file writes it: never what a ${VAR} in it expanded to.
		{name: "env in a bad hostname (fuzz 245fbaca9f78fa13)", yaml: "services:\n  - hostname: ${K}!", want: `f.yaml:2: services[0].hostname: "${K}!" is not a domain name`},
		{name: "credential in a bad target", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: http://u:${PASS}@host:bad\n", want: `f.yaml:4: services[0].target: "http://u:${PASS}@host:bad" is not a local target`},
		{name: "credential in a target with a user", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: http://u:${PASS}@host:80\n", want: `f.yaml:4: services[0].target: "http://u:${PASS}@host:80" is not a local target`},
		{name: "env makes a good path bad", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    path: /api${Q}\n    target: 127.0.0.1:80\n", want: `f.yaml:4: services[0].path: "/api${Q}" is refused once its environment references are expanded`},
		{name: "env in a bad interval", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: 127.0.0.1:80\n    health: {interval: \"${IV}\"}\n", want: `f.yaml:5: services[0].health.interval: "${IV}" is not`},
		{name: "env in a bad bool", yaml: "services:\n  - hostname: a.example.com\n    api_key: k\n    target: https://127.0.0.1:80\n    tls_skip_verify: ${IV}\n", want: `f.yaml:5: services[0].tls_skip_verify: "${IV}" is not a boolean`},
		{name: "env in a missing key file", yaml: "services:\n  - hostname: a.example.com\n    api_key_file: ${IV}/missing.key\n    target: 127.0.0.1:80\n", want: `f.yaml:3: services[0].api_key_file: "${IV}/missing.key" is not a readable file`},
		{name: "env in a duplicate rule", yaml: "services:\n  - hostname: ${K}.example.com\n    api_key: k\n    target: 127.0.0.1:80\n  - hostname: ${K}.example.com\n    target: 127.0.0.1:81\n", want: `f.yaml:5: path: hostname ${K}.example.com with path "/" is already a rule at f.yaml:2`},
		{name: "env in a keyless hostname", yaml: "services:\n  - hostname: ${K}.example.com\n    target: 127.0.0.1:80\n", want: `f.yaml:2: api_key: hostname ${K}.example.com has no key`},

		// Names one label under a wildcard of the file ride on its tunnel unless they have a key
		// of their own (see Service.Tunnel).
		{name: "exact names under a wildcard", yaml: "services:\n  - hostname: \"*.apps.example.com\"\n    api_key: kw\n    target: 127.0.0.1:80\n  - hostname: a.apps.example.com\n    target: 127.0.0.1:81\n  - hostname: b.apps.example.com\n    path: /c/\n    api_key: kw\n    target: 127.0.0.1:82\n  - hostname: own.apps.example.com\n    api_key: ko\n    target: 127.0.0.1:83\n  - hostname: app.example.com\n    api_key: ka\n    target: 127.0.0.1:84\n",
			tunnels: map[string]string{"*.apps.example.com": "*.apps.example.com", "a.apps.example.com": "*.apps.example.com", "b.apps.example.com": "*.apps.example.com", "own.apps.example.com": "own.apps.example.com", "app.example.com": "app.example.com"}},
		{name: "exact name before its wildcard", yaml: "services:\n  - hostname: a.apps.example.com\n    target: 127.0.0.1:81\n  - hostname: \"*.apps.example.com\"\n    api_key: kw\n    target: 127.0.0.1:80\n",
			tunnels: map[string]string{"a.apps.example.com": "*.apps.example.com"}},
		{name: "keyless, no wildcard in the file", yaml: "services:\n  - hostname: a.apps.example.com\n    target: 127.0.0.1:80\n", want: "f.yaml:2: api_key: hostname a.apps.example.com has no key: give api_key or api_key_file on one of its services, or add a service for *.apps.example.com"},
		{name: "keyless, two labels under the wildcard", yaml: "services:\n  - hostname: \"*.apps.example.com\"\n    api_key: kw\n    target: 127.0.0.1:80\n  - hostname: x.a.apps.example.com\n    target: 127.0.0.1:81\n", want: "f.yaml:5: api_key: hostname x.a.apps.example.com has no key"},
		{name: "keyless wildcard", yaml: "services:\n  - hostname: \"*.apps.example.com\"\n    target: 127.0.0.1:80\n  - hostname: a.apps.example.com\n    target: 127.0.0.1:81\n", want: "f.yaml:2: api_key: hostname *.apps.example.com has no key: give api_key or api_key_file on one of its services\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parseClientFile("f.yaml", []byte(tc.yaml), vars.lookup, fakeFiles)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("accepted, want an error with %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q, want it to contain %q", err, tc.want)
			case err != nil:
				if strings.Contains(err.Error(), "app-key") || strings.Contains(err.Error(), "k1") {
					t.Errorf("error shows a key: %v", err)
				}
				for name, v := range vars {
					if len(v) > 3 && strings.Contains(err.Error(), v) && !strings.Contains(tc.yaml, v) {
						t.Errorf("error shows the value of ${%s}: %v", name, err)
					}
				}
				return
			}
			checkValid(t, f)
			for _, s := range f.services {
				if want, ok := tc.tunnels[s.Hostname]; ok && s.TunnelHost() != want {
					t.Errorf("%s rides on %q, want %q", s.Hostname, s.TunnelHost(), want)
				}
			}
		})
	}
}

// checkValid asserts what an accepted config promises: every service has a hostname, a target
// and its hostname's one key, and no (hostname, path) repeats.
func checkValid(t *testing.T, f *clientFile) {
	t.Helper()
	if len(f.services) == 0 {
		t.Fatal("accepted a config without services")
	}
	keys := map[string]string{}
	rules := map[string]bool{}
	hosts := map[string]bool{}
	for _, s := range f.services {
		hosts[s.Hostname] = true
	}
	for _, s := range f.services {
		if s.Hostname == "" || s.Target == nil || s.APIKey == "" {
			t.Fatalf("accepted an incomplete service: %v", s)
		}
		// A service rides on its own tunnel, or on the wildcard one label above it that the file
		// has; either way it carries that tunnel's key.
		if tun := s.TunnelHost(); tun != s.Hostname {
			if w, ok := wildcardOver(s.Hostname); !ok || tun != w || !hosts[tun] {
				t.Fatalf("%s rides on %q, not the wildcard over it", s.Hostname, tun)
			}
			for _, o := range f.services {
				if o.Hostname == tun && o.APIKey != s.APIKey {
					t.Fatalf("%s rides on %s with another key", s.Hostname, tun)
				}
			}
		}
		if k, ok := keys[s.Hostname]; ok && k != s.APIKey {
			t.Fatalf("hostname %s has two keys", s.Hostname)
		}
		keys[s.Hostname] = s.APIKey
		rule := fmt.Sprint(s.Hostname, " ", s.Path, " ", s.Raw())
		if rules[rule] {
			t.Fatalf("duplicate rule %s %s", s.Hostname, s.Path)
		}
		rules[rule] = true
		if s.Raw() && (s.Path != "" || s.TLSSkipVerify || s.CAFile != "" || (s.Health != nil && s.Health.Path != "")) {
			t.Fatalf("tcp:// service with HTTP settings: %+v", s)
		}
		if s.Path != "" && (!strings.HasPrefix(s.Path, "/") || strings.HasSuffix(s.Path, "/")) {
			t.Fatalf("path %q not normalised", s.Path)
		}
	}
}

// TestLoadClientFile: --config fills the settings and services; settings the file does not give
// come from flags and variables; one given in both places, or a single-service flag, is an error.
func TestLoadClientFile(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "b.key")
	if err := os.WriteFile(keyFile, []byte("b-key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "hopgate.yaml")
	if err := os.WriteFile(file, []byte(`server_addr: gw.example.com
ping_interval: 5s
services:
  - hostname: a.example.com
    api_key: ${A_KEY}
    target: 127.0.0.1:3000
  - hostname: a.example.com
    path: /api/
    target: http://127.0.0.1:4000/base
  - hostname: b.example.com
    api_key_file: b.key
    target: unix:///run/b.sock
`), 0o600); err != nil {
		t.Fatal(err)
	}
	vars := env{"A_KEY": "a-key", "HOP_CLIENT_LOG_LEVEL": "debug"}
	c, err := LoadClient([]string{"--config", file}, vars.lookup, noDotenv(t))
	if err != nil {
		t.Fatal(err)
	}
	if c.ServerAddr != "gw.example.com:443" || c.PingInterval != 5*time.Second || c.LogLevel.String() != "DEBUG" {
		t.Errorf("settings: %v", c)
	}
	if len(c.Services) != 3 || c.Services[1].Path != "/api" || c.Services[1].APIKey != "a-key" || c.Services[2].APIKey != "b-key" ||
		c.Services[2].Target.Scheme != "unix" || c.Services[0].Where != file+":4" {
		t.Errorf("services: %v", c.Services)
	}
	if strings.Contains(c.String(), "a-key") || strings.Contains(c.Services[0].String(), "a-key") {
		t.Error("String shows a key")
	}
	again, err := c.Reload()
	if err != nil || !c.SameSettings(again) || len(again.Services) != 3 {
		t.Errorf("Reload = %v, %v", again, err)
	}

	for _, tc := range []struct {
		name string
		args []string
		vars env
		want string
	}{
		{"flag also in file", []string{"--config", file, "--ping-interval", "1s"}, env{"A_KEY": "a"}, file + ":2: ping_interval: also set by HOP_CLIENT_PING_INTERVAL (--ping-interval)"},
		{"env also in file", []string{"--config", file}, env{"A_KEY": "a", "HOP_CLIENT_SERVER_ADDR": "x.example.com"}, "server_addr: also set by HOP_CLIENT_SERVER_ADDR"},
		{"single-service flag", []string{"--config", file, "--local-target", "127.0.0.1:1"}, env{"A_KEY": "a"}, "HOP_CLIENT_LOCAL_TARGET (--local-target): not allowed with HOP_CLIENT_CONFIG"},
		{"single-service env", []string{"--config", file}, env{"A_KEY": "a", "HOP_CLIENT_API_KEY": "x"}, "HOP_CLIENT_API_KEY (--api-key): not allowed"},
		{"missing file", []string{"--config", filepath.Join(dir, "nope.yaml")}, env{}, "HOP_CLIENT_CONFIG (--config):"},
		{"env from variable", nil, env{"A_KEY": "a", "HOP_CLIENT_CONFIG": file, "HOP_CLIENT_METRICS_LISTEN": "127.0.0.1:0"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadClient(tc.args, tc.vars.lookup, noDotenv(t))
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestExampleConfig: the sample config in deploy/ parses, with its ${VAR} set.
func TestExampleConfig(t *testing.T) {
	path := filepath.Join("..", "..", "deploy", "hopgate-client.example.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := parseClientFile(path, data, env{"APP_KEY": "app-key"}.lookup, fakeFiles)
	if err != nil {
		t.Fatal(err)
	}
	checkValid(t, f)
	if len(f.services) < 3 {
		t.Errorf("the example shows %d services, want the issue's three", len(f.services))
	}
	for _, s := range f.services {
		if s.Hostname == "docs.apps.example.com" && s.TunnelHost() != "*.apps.example.com" {
			t.Errorf("the example's docs.apps rides on %q, want the wildcard's tunnel", s.TunnelHost())
		}
	}
}

// FuzzParseClientFile: the parser never panics, and whatever it accepts is valid; its errors
// never show a key that came from the environment (a YAML syntax error may quote the file's own
// text, which is why keys belong in ${VAR} or api_key_file).
func FuzzParseClientFile(f *testing.F) {
	f.Add([]byte("services:\n  - hostname: a.example.com\n    api_key: literal-key\n    target: 127.0.0.1:80\n"))
	f.Add([]byte("server_addr: gw\nservices:\n  - hostname: a.example.com\n    api_key: ${K}\n    path: /api/\n    target: https://h:1/b\n    tls_skip_verify: yes\n    health: {path: /h, interval: 1s}\n  - hostname: a.example.com\n    target: unix:///s\n"))
	f.Add([]byte("services: [{hostname: b.example.com, api_key_file: k, target: 'h:1'}, {hostname: b.example.com, path: /, target: 'h:2'}]"))
	f.Add([]byte("services:\n  - &a {hostname: a.example.com, api_key: ${K}, target: 'h:1'}\n  - *a\n"))
	f.Add([]byte("x: !!binary AAAA\n"))
	// Errors quote values as written, never what ${K} expanded to (the first was a fuzz find).
	f.Add([]byte("services:\n  - hostname: ${K}!"))
	f.Add([]byte("services:\n  - hostname: a.example.com\n    api_key: k\n    target: http://u:${K}@host:bad\n"))
	f.Add([]byte("server_addr: ${K}\nservices:\n  - {hostname: \"*.a.example.com\", api_key: k, target: 'h:1'}\n  - {hostname: ${K}.a.example.com, path: /${K}, target: 'h:2'}\n"))
	f.Add([]byte("services:\n  - hostname: a.example.com\n    api_key: ${K}\n    target: tcp://h:1\n    health: {interval: 1s}\n  - hostname: a.example.com\n    target: 'h:2'\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parseClientFile("f.yaml", data, env{"K": canaryKey}.lookup, fakeFiles)
		if err != nil {
			if !strings.Contains(string(data), canaryKey) && strings.Contains(err.Error(), canaryKey) {
				t.Fatalf("error shows the key: %v", err)
			}
			return
		}
		checkValid(t, c)
	})
}

// TestLoadClientFileGateways: server_addr takes a list in the file too, and ha_connections sets
// the cap, with a bad value named by file, line and key.
func TestLoadClientFileGateways(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "hopgate.yaml")
	write := func(head string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(head+"services:\n  - {hostname: a.example.com, api_key: k, target: 127.0.0.1:3000}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("server_addr: gw1.example.com, gw2.example.com:8443\nha_connections: 3\n")
	c, err := LoadClient([]string{"--config", file}, env{}.lookup, noDotenv(t))
	if err != nil {
		t.Fatal(err)
	}
	if c.ServerAddr != "gw1.example.com:443,gw2.example.com:8443" || c.HAConnections != 3 {
		t.Errorf("ServerAddr = %q, HAConnections = %d", c.ServerAddr, c.HAConnections)
	}
	write("server_addr: gw1.example.com\nha_connections: 0\n")
	if _, err := LoadClient([]string{"--config", file}, env{}.lookup, noDotenv(t)); err == nil ||
		!strings.Contains(err.Error(), file+":2: ha_connections: ") {
		t.Errorf("ha_connections: 0: err = %v", err)
	}
}

// TestLoadClientFileHidesExpanded: a top-level value of the file is checked by the flag's parser
// after ${VAR} expansion, but its error quotes the value as the file writes it.
func TestLoadClientFileHidesExpanded(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "hopgate.yaml")
	if err := os.WriteFile(file, []byte("server_addr: gw.example.com\nping_interval: ${PI}\nca_file: ${CA}/ca.pem\nagent_id: a\nservices:\n  - {hostname: a.example.com, api_key: k, target: 127.0.0.1:3000}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	vars := env{"PI": "hunter2-pass", "CA": "/hunter2-dir"}
	_, err := LoadClient([]string{"--config", file}, vars.lookup, noDotenv(t))
	if err == nil {
		t.Fatal("accepted a bad ping_interval and a missing ca_file")
	}
	for _, want := range []string{file + `:2: ping_interval: "${PI}" is not`, file + `:3: ca_file: "${CA}/ca.pem" is not a readable file`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q, want it to contain %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error shows an expanded value: %v", err)
	}
}
