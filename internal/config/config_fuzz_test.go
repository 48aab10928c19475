package config

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

// Canaries stand in for a secret to tell text that comes from the secret from text that does not.
const (
	canaryDSNBad = "canary-not-a-dsn"
	canaryDSNURL = "postgres://"
	canaryKey    = "canary-key"
)

// FuzzLoadServer loads hopgate-server's settings with fuzzed values for a handful of variables
// (none that names a file: opening arbitrary paths could block on a FIFO). Checked: LoadServer never
// panics; every error it joins names one of the variables with its flag; the admin key and the
// database DSN never show in an error nor in String; a successful load holds canonical domains
// without repeats and a pool whose idle connections fit within the open ones.
func FuzzLoadServer(f *testing.F) {
	f.Add("gate.example.com", "", "", "", "", "", "")
	f.Add("Gate.Example.COM.", "a.example.com, A.example.com,b.example.com", "10.0.0.0/8,::1", "15", "postgres://hop:s3cret-pw@db:5432/hopgate?sslmode=disable", "admin-key-0123456789", "true")
	f.Add("", "", "", "", "", "", "yes")
	f.Add("1.2.3.4", "bad..name", "10.0.0.0/33,x", "-1", "mysql://root:hunter2@db/x", "k", "maybe")
	f.Add("gate.example.com", "", "", "99999999999999999999", "postgres://u:p%zz@db/x", "", "0")
	f.Add("gate.example.com", "", "", "0", "postgresql:///db?password=topsecret", "a b c", "on")
	f.Add("gate.example.com", "\n", "\t", " 15 ", "postgres://db/x?host=/run/pg&password=pw42", "\x00", "1")
	f.Fuzz(func(t *testing.T, domain, proxyDomains, trusted, timeout, dsn, adminKey, debug string) {
		vars := map[string]string{
			"HOP_SERVER_DOMAIN":                domain,
			"HOP_SERVER_PROXY_DOMAINS":         proxyDomains,
			"HOP_SERVER_TRUSTED_PROXIES":       trusted,
			"HOP_SERVER_PROXY_TIMEOUT_SECONDS": timeout,
			"HOP_DB_DSN":                       dsn,
			"HOP_ADMIN_API_KEY":                adminKey,
			"HOP_SERVER_DEBUG":                 debug,
			// Derived from fuzzed text so that the pool check and its message get exercised too.
			"HOP_DB_MAX_OPEN_CONNS": timeout,
			"HOP_DB_MAX_IDLE_CONNS": debug,
		}
		load := func(v map[string]string) (*Server, error) {
			return LoadServer(nil, func(k string) (string, bool) { s, ok := v[k]; return s, ok }, "")
		}
		with := func(k, val string) map[string]string {
			c := make(map[string]string, len(vars))
			for k, v := range vars {
				c[k] = v
			}
			c[k] = val
			return c
		}
		s, err := load(vars)
		if (s == nil) == (err == nil) {
			t.Fatalf("LoadServer = %v, %v: want exactly one of a config and an error", s, err)
		}
		if err != nil {
			checkNamed(t, err, serverSettings(&Server{}))
			// The secrets: what the error says about the canaries is all it may say about them.
			for _, secret := range []struct{ env, value string }{{"HOP_DB_DSN", dsn}, {"HOP_ADMIN_API_KEY", adminKey}} {
				var known strings.Builder
				for _, c := range []string{canaryDSNBad, canaryDSNURL, canaryKey} {
					if _, cerr := load(with(secret.env, c)); cerr != nil {
						known.WriteString(cerr.Error())
					}
				}
				if leaks(err.Error(), secret.value, known.String()) {
					t.Errorf("the error shows %s:\n%v", secret.env, err)
				}
			}
			return
		}

		if d, ok := canonicalDomain(s.Domain); !ok || d != s.Domain {
			t.Errorf("Domain %q is not canonical", s.Domain)
		}
		seen := map[string]bool{}
		for _, d := range s.ProxyDomains {
			if c, ok := canonicalDomain(d); !ok || c != d || seen[d] {
				t.Errorf("ProxyDomains %q: %q is not canonical or repeats", s.ProxyDomains, d)
			}
			seen[d] = true
		}
		if s.DBMaxOpenConns > 0 && s.DBMaxIdleConns > s.DBMaxOpenConns {
			t.Errorf("idle connections %d exceed open connections %d", s.DBMaxIdleConns, s.DBMaxOpenConns)
		}
		if s.ProxyTimeout <= 0 {
			t.Errorf("ProxyTimeout %v", s.ProxyTimeout)
		}
		// String and %v never show the admin key, nor the password of the DSN.
		out := s.String()
		if k := strings.TrimSpace(adminKey); k != "" {
			ref, _ := load(with("HOP_ADMIN_API_KEY", canaryKey))
			if ref != nil && leaks(out, k, ref.String()) {
				t.Errorf("String shows the admin key %q: %s", k, out)
			}
		}
		if u, perr := url.Parse(s.DBDSN); perr == nil {
			var secrets []string
			if p, ok := u.User.Password(); ok {
				secrets = append(secrets, p)
			}
			secrets = append(secrets, u.Query()["password"]...)
			for _, p := range secrets {
				// The same DSN with the password replaced: whatever of p shows there is not the password.
				ref, _ := load(with("HOP_DB_DSN", strings.ReplaceAll(s.DBDSN, p, "canarypw")))
				if p != "" && ref != nil && leaks(out, p, ref.String()) {
					t.Errorf("String shows the database password %q: %s", p, out)
				}
			}
		}
	})
}

// FuzzLoadClient is FuzzLoadServer for hopgate-client: errors name their variable and never show the
// API key; a successful load has a local target with an http, https or unix scheme.
func FuzzLoadClient(f *testing.F) {
	f.Add("gate.example.com:443", "app.example.com", "key-0123456789", "127.0.0.1:8080", "")
	f.Add("gate.example.com", "APP.example.com.", "", "http://localhost:8080/base", "15s")
	f.Add(":443", "-x-", " ", "unix:///run/app.sock", "0s")
	f.Add("[::1]:443", "a.b", "k", "HTTPS://[::1]:8443", "-5m")
	f.Add("gate:0", "a.b", "secret key with spaces", "ftp://x", "1h")
	f.Add("gate:443", "a.b", "k", "http://u:pw@x/?q#f", "1")
	f.Fuzz(func(t *testing.T, server, domain, apiKey, target, ping string) {
		vars := map[string]string{
			"HOP_CLIENT_SERVER_ADDR":   server,
			"HOP_CLIENT_DOMAIN":        domain,
			"HOP_CLIENT_API_KEY":       apiKey,
			"HOP_CLIENT_LOCAL_TARGET":  target,
			"HOP_CLIENT_PING_INTERVAL": ping,
		}
		load := func(v map[string]string) (*Client, error) {
			return LoadClient(nil, func(k string) (string, bool) { s, ok := v[k]; return s, ok }, "")
		}
		c, err := load(vars)
		if (c == nil) == (err == nil) {
			t.Fatalf("LoadClient = %v, %v: want exactly one of a config and an error", c, err)
		}
		withKey := make(map[string]string, len(vars))
		for k, v := range vars {
			withKey[k] = v
		}
		withKey["HOP_CLIENT_API_KEY"] = canaryKey
		if err != nil {
			checkNamed(t, err, clientSettings(&Client{}))
			var known string
			if _, kerr := load(withKey); kerr != nil {
				known = kerr.Error()
			}
			if leaks(err.Error(), strings.TrimSpace(apiKey), known) {
				t.Errorf("the error shows the API key:\n%v", err)
			}
			return
		}
		if s := c.LocalTarget.Scheme; s != "http" && s != "https" && s != "unix" {
			t.Errorf("LocalTarget %v has the scheme %q", c.LocalTarget, s)
		}
		if c.PingInterval <= 0 {
			t.Errorf("PingInterval %v", c.PingInterval)
		}
		if d, ok := canonicalDomain(c.Domain); !ok || d != c.Domain {
			t.Errorf("Domain %q is not canonical", c.Domain)
		}
		if ref, _ := load(withKey); ref != nil && leaks(c.String(), c.APIKey, ref.String()) {
			t.Errorf("String shows the API key %q: %s", c.APIKey, c.String())
		}
	})
}

// checkNamed checks that err joins errors that each start with one of the variables and its flag.
func checkNamed(t *testing.T, err error, settings []setting) {
	t.Helper()
	var parts []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		parts = j.Unwrap()
	} else {
		parts = []error{err}
	}
	if len(parts) == 0 {
		t.Errorf("error %q joins nothing", err)
	}
	for _, p := range parts {
		named := false
		for _, s := range settings {
			named = named || strings.HasPrefix(p.Error(), s.env+" (--"+s.flag+"): ")
		}
		if !named {
			t.Errorf("error %q does not start with the variable and flag it is about", p)
		}
		if errors.Is(p, ErrHelp) {
			t.Errorf("error %q is ErrHelp without -h", p)
		}
	}
}

// leaks reports whether text shows secret where the same text made with a canary instead (known)
// does not: then the secret itself, not the message around it, is what shows. Secrets shorter than 4
// characters are too likely to occur by chance to tell.
func leaks(text, secret, known string) bool {
	secret = strings.TrimSpace(secret)
	return len(secret) >= 4 && strings.Contains(text, secret) && !strings.Contains(known, secret)
}
