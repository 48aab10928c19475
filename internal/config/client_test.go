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
		HAConnections:   4,
		Domain:          "app.example.com",
		APIKey:          "client-key",
		LocalTarget:     &url.URL{Scheme: "http", Host: "127.0.0.1:8080"},
		PingInterval:    15 * time.Second,
		ShutdownTimeout: 30 * time.Second,
		LogLevel:        slog.LevelInfo,
		LogFormat:       "text",
	}
	want.Services = []Service{{Hostname: want.Domain, Target: want.LocalTarget, APIKey: want.APIKey, Where: "flags"}}
	got.reload = nil
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
		"--server-name", "Gate.Example.com",
		"--ha-connections", "3",
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
	// --debug, --local-insecure-skip-verify and --pprof have no value; --api-key-file excludes
	// --api-key and has a test of its own (TestLoadClientAPIKeyFile), and so has --config, which
	// excludes the service flags (TestLoadClientFile).
	if n := len(clientSettings(&Client{})); n != (len(args)+3)/2+2 {
		t.Fatalf("test covers %d flags, the table has %d", (len(args)+3)/2+2, n)
	}
	got, err := LoadClient(args, clientEnv().lookup, noDotenv(t))
	if err != nil {
		t.Fatal(err)
	}
	want := &Client{
		ServerAddr:              "127.0.0.1:8443",
		ServerName:              "gate.example.com",
		HAConnections:           3,
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
	want.Services = []Service{{Hostname: want.Domain, Target: want.LocalTarget, APIKey: want.APIKey,
		TLSSkipVerify: true, CAFile: ca, Where: "flags"}}
	got.reload = nil
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
		{name: "tcp flag", args: []string{"--local-target", "TCP://db.internal:5432"}, want: "tcp://db.internal:5432"},
		{name: "tcp env", env: env{v: "tcp://[::1]:22"}, want: "tcp://[::1]:22"},
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
				"HOP_CLIENT_API_KEY (--api-key): required: give the domain's client API key, or the file holding it in HOP_CLIENT_API_KEY_FILE (--api-key-file)",
				"HOP_CLIENT_LOCAL_TARGET (--local-target): required",
			},
		},
		{name: "blank api key", set: env{"HOP_CLIENT_API_KEY": "  "}, want: []string{"HOP_CLIENT_API_KEY (--api-key): required", "HOP_CLIENT_API_KEY_FILE (--api-key-file)"}},
		{name: "api key and key file", set: env{"HOP_CLIENT_API_KEY_FILE": "/run/secrets/hopgate"},
			want: []string{"HOP_CLIENT_API_KEY (--api-key): set together with HOP_CLIENT_API_KEY_FILE (--api-key-file): give one of them, not both"}},
		{name: "missing key file", unset: []string{"HOP_CLIENT_API_KEY"}, set: env{"HOP_CLIENT_API_KEY_FILE": "/nonexistent/key"},
			want: []string{`HOP_CLIENT_API_KEY_FILE (--api-key-file): "/nonexistent/key" is not a readable file`}},
		{name: "server with empty host", set: env{"HOP_CLIENT_SERVER_ADDR": ":443"},
			want: []string{`HOP_CLIENT_SERVER_ADDR (--server-addr): ":443" is not an address host[:port]`}},
		{name: "server port out of range", set: env{"HOP_CLIENT_SERVER_ADDR": "gate.example.com:99999"},
			want: []string{`HOP_CLIENT_SERVER_ADDR (--server-addr): "gate.example.com:99999" is not an address host[:port]`}},
		{name: "server port zero", args: []string{"--server-addr", "gate.example.com:0"},
			want: []string{`HOP_CLIENT_SERVER_ADDR (--server-addr): "gate.example.com:0" is not an address host[:port]`}},
		{name: "server port not a number", set: env{"HOP_CLIENT_SERVER_ADDR": "gate.example.com:abc"},
			want: []string{`HOP_CLIENT_SERVER_ADDR (--server-addr): "gate.example.com:abc"`}},
		{name: "bad domain", set: env{"HOP_CLIENT_DOMAIN": "app example"},
			want: []string{`HOP_CLIENT_DOMAIN (--domain): "app example" is not a domain name`}},
		{name: "bad local target", set: env{"HOP_CLIENT_LOCAL_TARGET": "ftp://nas:21"},
			want: []string{`HOP_CLIENT_LOCAL_TARGET (--local-target): "ftp://nas:21" is not a local target`}},
		{name: "tcp target without port", set: env{"HOP_CLIENT_LOCAL_TARGET": "tcp://db.internal"},
			want: []string{`HOP_CLIENT_LOCAL_TARGET (--local-target): "tcp://db.internal" is not a TCP target`}},
		{name: "tcp target with path", args: []string{"--local-target", "tcp://db.internal:5432/x"},
			want: []string{`HOP_CLIENT_LOCAL_TARGET (--local-target): "tcp://db.internal:5432/x" is not a TCP target`}},
		{name: "tcp target with local CA file", set: env{"HOP_CLIENT_LOCAL_TARGET": "tcp://db.internal:5432", "HOP_CLIENT_LOCAL_CA_FILE": os.Args[0]},
			want: []string{"HOP_CLIENT_LOCAL_CA_FILE (--local-ca-file): applies to an https:// target only"}},
		{name: "tcp target with skip verify", args: []string{"--local-target", "tcp://db.internal:5432", "--local-insecure-skip-verify"},
			want: []string{"HOP_CLIENT_LOCAL_INSECURE_SKIP_VERIFY (--local-insecure-skip-verify): applies to an https:// target only"}},
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
		"env HOP_CLIENT_API_KEY, default (required unless --api-key-file)\n" +
			"      client API key of the domain, as shown once by the admin API; give it or --api-key-file\n" +
			"      secret: never printed or logged\n",
		"  --api-key-file file\n      env HOP_CLIENT_API_KEY_FILE, default (empty)\n",
		"  --server-addr host[:port][,...]\n      env HOP_CLIENT_SERVER_ADDR, default (required)\n",
		"port 443 by default",
		`env HOP_CLIENT_PING_INTERVAL, default "15s"`,
		"the CA file wins",
		"--version print the version and exit",
		"--check ",
		"Exit codes: 0 stopped by a signal",
		"1 failed for\nanother reason; 2 bad configuration; 3 the server refused the domain or key",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("usage lacks %q:\n%s", want, out)
		}
	}
	// Only secrets carry the note, and no default suggests a built-in secret.
	if n := strings.Count(out, "secret: never printed or logged"); n != 1 {
		t.Errorf("usage marks %d settings as secret, want 1 (HOP_CLIENT_API_KEY):\n%s", n, out)
	}
	if strings.Contains(out, "(secret)") || strings.Contains(out, ", secret)") {
		t.Errorf("usage shows a default that reads like a built-in secret:\n%s", out)
	}
}

func TestLoadClientServerAddrDefaultPort(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"gateway.example.com", "gateway.example.com:443"},
		{"gateway.example.com:8443", "gateway.example.com:8443"},
		{"[::1]", "[::1]:443"},
		{"::1", "[::1]:443"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			t.Parallel()
			e := clientEnv()
			e["HOP_CLIENT_SERVER_ADDR"] = tc.in
			c, err := LoadClient(nil, e.lookup, noDotenv(t))
			if err != nil {
				t.Fatal(err)
			}
			if c.ServerAddr != tc.want {
				t.Fatalf("ServerAddr = %q, want %q", c.ServerAddr, tc.want)
			}
		})
	}
}

func TestLoadClientAPIKeyFile(t *testing.T) {
	const key = "hopgate_f1le-k3y-value"
	dir := t.TempDir()
	file := filepath.Join(dir, "hopgate_client_api_key")
	if err := os.WriteFile(file, []byte(key+"\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	noKey := clientEnv()
	delete(noKey, "HOP_CLIENT_API_KEY")

	t.Run("env", func(t *testing.T) {
		e := clientEnv()
		delete(e, "HOP_CLIENT_API_KEY")
		e["HOP_CLIENT_API_KEY_FILE"] = file
		c, err := LoadClient(nil, e.lookup, noDotenv(t))
		if err != nil {
			t.Fatal(err)
		}
		if c.APIKey != key || c.APIKeyFile != file {
			t.Fatalf("APIKey=%q APIKeyFile=%q, want the file's key without its newline", c.APIKey, c.APIKeyFile)
		}
		var jsonLog bytes.Buffer
		NewLogger(&jsonLog, slog.LevelInfo, "json").Info("start", "config", c)
		for name, out := range map[string]string{"%v": fmt.Sprintf("%v", c), "%#v": fmt.Sprintf("%#v", c), "json log": jsonLog.String()} {
			if strings.Contains(out, key) {
				t.Errorf("%s shows the key: %s", name, out)
			}
		}
		if !strings.Contains(jsonLog.String(), `"api_key":"[redacted]"`) || !strings.Contains(jsonLog.String(), `"api_key_file":"`+file+`"`) {
			t.Errorf("json log: %s", jsonLog.String())
		}
	})
	t.Run("flag over the environment's key file, and from .env", func(t *testing.T) {
		e := clientEnv()
		delete(e, "HOP_CLIENT_API_KEY")
		e["HOP_CLIENT_API_KEY_FILE"] = empty
		c, err := LoadClient([]string{"--api-key-file", file}, e.lookup, writeDotenv(t, "HOP_CLIENT_API_KEY_FILE="+empty+"\n"))
		if err != nil {
			t.Fatal(err)
		}
		if c.APIKey != key {
			t.Fatalf("APIKey = %q", c.APIKey)
		}
		c, err = LoadClient(nil, noKey.lookup, writeDotenv(t, "HOP_CLIENT_API_KEY_FILE="+file+"\n"))
		if err != nil || c.APIKey != key {
			t.Fatalf("from .env: %v, %v", c, err)
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		env  env
		want string
	}{
		{name: "empty file", args: []string{"--api-key-file", empty}, env: noKey,
			want: `HOP_CLIENT_API_KEY_FILE (--api-key-file): "` + empty + `" is empty`},
		{name: "missing file", args: []string{"--api-key-file", filepath.Join(dir, "missing")}, env: noKey,
			want: "HOP_CLIENT_API_KEY_FILE (--api-key-file): "},
		{name: "both", args: []string{"--api-key-file", file}, env: clientEnv(),
			want: "HOP_CLIENT_API_KEY (--api-key): set together with HOP_CLIENT_API_KEY_FILE (--api-key-file)"},
		{name: "neither", env: noKey,
			want: "HOP_CLIENT_API_KEY (--api-key): required: give the domain's client API key, or the file holding it in HOP_CLIENT_API_KEY_FILE (--api-key-file)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadClient(tc.args, tc.env.lookup, noDotenv(t))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), key) || strings.Contains(err.Error(), "client-key") {
				t.Errorf("error shows a key: %v", err)
			}
		})
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

// TestParseServerAddrList: a comma-separated --server-addr is a list of gateways, each entry read
// as one address (port 443 by default, IPv6 in brackets or bare); a bad entry is named by position.
func TestParseServerAddrList(t *testing.T) {
	runParse(t, parseServerAddr, []parseCase[string]{
		{in: "gw1.example.com,gw2.example.com:8443", want: "gw1.example.com:443,gw2.example.com:8443"},
		{in: "gw1.example.com, gw2.example.com ,gw3.example.com", want: "gw1.example.com:443,gw2.example.com:443,gw3.example.com:443"},
		{in: "[::1]:8443,127.0.0.1", want: "[::1]:8443,127.0.0.1:443"},
		{in: "::1,[2001:db8::1]", want: "[::1]:443,[2001:db8::1]:443"},
		{in: "2001:db8::1", want: "[2001:db8::1]:443"},
		{in: "gw1.example.com,", wantErr: `entry 2 of "gw1.example.com," is empty`},
		{in: ",gw1.example.com", wantErr: "entry 1 of"},
		{in: "gw1.example.com,gw2.example.com:99999", wantErr: `entry 2: "gw2.example.com:99999" is not an address host[:port]`},
		{in: "gw1.example.com,https://gw2.example.com", wantErr: "entry 2: "},
		{in: "gw1.example.com,GW1.example.com:443", wantErr: "entry 2: GW1.example.com:443 is listed twice"},
	})
}

func TestParsePositiveInt(t *testing.T) {
	const bad = "is not a whole number ≥ 1"
	runParse(t, parsePositiveInt, []parseCase[int]{
		{in: "1", want: 1},
		{in: "4", want: 4},
		{in: "0", wantErr: bad},
		{in: "-2", wantErr: bad},
		{in: "two", wantErr: bad},
	})
}

// TestLoadClientGateways: the list and the cap load from the environment, ServerAddrs splits the
// list, and a bad value names its variable.
func TestLoadClientGateways(t *testing.T) {
	e := clientEnv()
	e["HOP_CLIENT_SERVER_ADDR"] = "gw1.example.com,gw2.example.com:8443"
	e["HOP_CLIENT_HA_CONNECTIONS"] = "2"
	c, err := LoadClient(nil, e.lookup, noDotenv(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.ServerAddrs(); !reflect.DeepEqual(got, []string{"gw1.example.com:443", "gw2.example.com:8443"}) || c.HAConnections != 2 {
		t.Errorf("ServerAddrs = %q, HAConnections = %d", got, c.HAConnections)
	}
	for _, tc := range []struct{ key, value, want string }{
		{"HOP_CLIENT_SERVER_ADDR", "gw1.example.com,,gw2.example.com", "HOP_CLIENT_SERVER_ADDR (--server-addr): entry 2 of"},
		{"HOP_CLIENT_SERVER_ADDR", "gw1.example.com,gw2.example.com:0", "HOP_CLIENT_SERVER_ADDR (--server-addr): entry 2: "},
		{"HOP_CLIENT_HA_CONNECTIONS", "0", "HOP_CLIENT_HA_CONNECTIONS (--ha-connections): \"0\" is not a whole number ≥ 1"},
	} {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			e := clientEnv()
			e[tc.key] = tc.value
			_, err := LoadClient(nil, e.lookup, noDotenv(t))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
