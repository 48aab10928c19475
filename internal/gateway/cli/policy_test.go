package cli_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hopgate/hopgate/internal/gateway/cli"
	"github.com/hopgate/hopgate/internal/gateway/policy"
)

const opsPassword = "ops-password-3e9d"

// runWith runs one of the package's programs with stdin.
func runWith(t *testing.T, program func(context.Context, []string, cli.Env, cli.IO) int, env map[string]string, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	code = program(context.Background(), args, cli.Env{Lookup: lookup}, cli.IO{Stdout: &out, Stderr: &errOut, Stdin: strings.NewReader(stdin)})
	return code, out.String(), errOut.String()
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDomainsPolicy(t *testing.T) {
	t.Parallel()
	g := newGateway(t)
	env := map[string]string{"HOP_ADMIN_URL": g.url, "HOP_ADMIN_API_KEY": adminKey, "HOP_ADMIN_CA_FILE": g.caFile}
	ctx := context.Background()
	if _, _, err := g.store.Register(ctx, "shop.example.com", ""); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	noProvider := "https://" + ln.Addr().String()
	ln.Close()

	good := writeFile(t, `{"ip_allow":["203.0.113.0/24","2001:db8::/32"],"basic_auth":[{"user":"ops","password":"`+opsPassword+`"}],
		"rate_limit":{"rps":20,"burst":40}}`)
	tests := []struct {
		name   string
		stdin  string
		args   []string
		code   int
		stdout []string
		stderr []string
	}{
		{name: "show none", args: []string{"policy", "show", "shop.example.com"}, code: 0, stdout: []string{"{}\n"}},
		{name: "set", args: []string{"policy", "set", "shop.example.com", "--file", good}, code: 0,
			stdout: []string{"Access policy of shop.example.com set (secrets are not shown):\n{\n  \"ip_allow\": [\n    \"203.0.113.0/24\",", `"user": "ops"`, `"rps": 20`}},
		{name: "show", args: []string{"policy", "show", "SHOP.example.com"}, code: 0,
			stdout: []string{"{\n  \"ip_allow\": [", `"basic_auth": [`, `"user": "ops"`, `"burst": 40`}},
		{name: "show json", args: []string{"policy", "show", "shop.example.com", "--json"}, code: 0,
			stdout: []string{`{"success":true,"domain":"shop.example.com","policy":{"ip_allow":[`}},
		{name: "set from stdin, flag first", args: []string{"policy", "set", "--file", "-", "shop.example.com"}, code: 0,
			stdin:  `{"ip_deny":["192.0.2.7"],"basic_auth":[{"user":"ops"}]}`,
			stdout: []string{"Access policy of shop.example.com set", `"ip_deny": [`, `"user": "ops"`}},
		{name: "bad cidr", args: []string{"policy", "set", "shop.example.com", "--file", "-"}, code: 1,
			stdin: `{"ip_deny":["192.0.2.0/33"]}`, stderr: []string{"400 Bad Request: invalid policy: ip_deny[0]:"}},
		{name: "unknown user without password", args: []string{"policy", "set", "shop.example.com", "--file", "-"}, code: 1,
			stdin: `{"basic_auth":[{"user":"dev"}]}`, stderr: []string{"400 Bad Request: invalid policy: basic_auth[0].password: empty"}},
		{name: "issuer without discovery", args: []string{"policy", "set", "shop.example.com", "--file", "-"}, code: 1,
			stdin: `{"oidc":{"issuer":"` + noProvider + `","client_id":"c"}}`, stderr: []string{"400 Bad Request: invalid policy: oidc.issuer:"}},
		{name: "set unknown domain", args: []string{"policy", "set", "nobody.example.com", "--file", good}, code: 1,
			stderr: []string{"404 Not Found: domain not found"}},
		{name: "show unknown domain", args: []string{"policy", "show", "nobody.example.com"}, code: 1,
			stderr: []string{"404 Not Found: domain not found"}},
		{name: "show invalid domain", args: []string{"policy", "show", "no_such"}, code: 1, stderr: []string{"400 Bad Request"}},
		{name: "set without file", args: []string{"policy", "set", "shop.example.com"}, code: 2, stderr: []string{"policy set needs --file FILE"}},
		{name: "set missing file", args: []string{"policy", "set", "shop.example.com", "--file", "/nonexistent/p.json"}, code: 2,
			stderr: []string{"--file: open /nonexistent/p.json: no such file or directory"}},
		{name: "set not json", args: []string{"policy", "set", "shop.example.com", "--file", "-"}, code: 2,
			stdin: "ip_allow: [1.2.3.4]", stderr: []string{"--file: stdin is not JSON"}},
		{name: "set an array", args: []string{"policy", "set", "shop.example.com", "--file", "-"}, code: 2,
			stdin: `["1.2.3.4"]`, stderr: []string{"--file: stdin must hold a JSON object"}},
		{name: "set too large", args: []string{"policy", "set", "shop.example.com", "--file", "-"}, code: 2,
			stdin: `{"ip_allow":["` + strings.Repeat("1", policy.MaxBytes) + `"]}`, stderr: []string{"larger than 65536 bytes"}},
		{name: "file on show", args: []string{"policy", "show", "shop.example.com", "--file", good}, code: 2,
			stderr: []string{"flag provided but not defined: -file"}},
		{name: "no verb", args: []string{"policy"}, code: 2, stderr: []string{"policy needs show, set or clear"}},
		{name: "unknown verb", args: []string{"policy", "drop", "shop.example.com"}, code: 2, stderr: []string{`unknown command "policy drop"`}},
		{name: "no domain", args: []string{"policy", "show"}, code: 2, stderr: []string{"policy show takes one domain"}},
		{name: "help", args: []string{"policy", "--help"}, code: 0,
			stdout: []string{"policy show <domain>", "policy set <domain> --file FILE", "policy clear <domain>", "--file FILE            policy set:"}},
		{name: "clear", args: []string{"policy", "clear", "shop.example.com"}, code: 0,
			stdout: []string{"Access policy of shop.example.com removed: everyone may visit."}},
		{name: "show cleared", args: []string{"policy", "show", "shop.example.com"}, code: 0, stdout: []string{"{}\n"}},
	}
	// In order: each case starts from what the one before left.
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runWith(t, cli.Domains, env, tc.stdin, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, stdout, stderr)
			}
			for _, s := range tc.stdout {
				if !strings.Contains(stdout, s) {
					t.Errorf("stdout lacks %q:\n%s", s, stdout)
				}
			}
			for _, s := range tc.stderr {
				if !strings.Contains(stderr, s) {
					t.Errorf("stderr lacks %q:\n%s", s, stderr)
				}
			}
			for _, secret := range []string{opsPassword, "$2a$", "password_hash", adminKey} {
				if strings.Contains(stdout+stderr, secret) {
					t.Errorf("output shows a secret (%q):\n%s%s", secret, stdout, stderr)
				}
			}
		})
	}
	if p, err := g.store.Policy(ctx, "shop.example.com"); err != nil || !p.IsZero() {
		t.Fatalf("after clear: %+v, %v", p, err)
	}
}

// TestDomainsPolicyEditAgain: what `policy show` prints, edited and set again, keeps the passwords
// it does not show.
func TestDomainsPolicyEditAgain(t *testing.T) {
	t.Parallel()
	g := newGateway(t)
	env := map[string]string{"HOP_ADMIN_URL": g.url, "HOP_ADMIN_API_KEY": adminKey, "HOP_ADMIN_CA_FILE": g.caFile}
	ctx := context.Background()
	if _, _, err := g.store.Register(ctx, "edit.example.com", ""); err != nil {
		t.Fatal(err)
	}
	set, err := g.store.SetPolicy(ctx, "edit.example.com", policy.Spec{BasicAuth: []policy.BasicUser{{User: "ops", Password: opsPassword}}})
	if err != nil {
		t.Fatal(err)
	}
	code, shown, stderr := runWith(t, cli.Domains, env, "", "policy", "show", "edit.example.com")
	if code != 0 {
		t.Fatalf("show: %d %s", code, stderr)
	}
	edited := strings.Replace(shown, `"basic_auth"`, `"ip_deny": ["192.0.2.9"], "basic_auth"`, 1)
	if code, stdout, stderr := runWith(t, cli.Domains, env, edited, "policy", "set", "edit.example.com", "--file", "-"); code != 0 {
		t.Fatalf("set the edited document: %d\n%s%s", code, stdout, stderr)
	}
	p, err := g.store.Policy(ctx, "edit.example.com")
	if err != nil || len(p.IPDeny) != 1 || p.BasicAuth[0].PasswordHash != set.BasicAuth[0].PasswordHash {
		t.Fatalf("after setting the edited document: %+v, %v; want the ip rule added and the hash kept", p, err)
	}
}

func TestSessions(t *testing.T) {
	t.Parallel()
	g := newGateway(t)
	env := map[string]string{"HOP_ADMIN_URL": g.url, "HOP_ADMIN_API_KEY": adminKey, "HOP_ADMIN_CA_FILE": g.caFile}
	ctx := context.Background()
	before, err := g.store.SessionKey(ctx)
	if err != nil {
		t.Fatal(err)
	}

	code, stdout, stderr := runWith(t, cli.Sessions, env, "", "rotate-key")
	if code != 0 || !strings.Contains(stdout, "Session key rotated: every single-sign-on session has ended") {
		t.Fatalf("rotate-key: %d\n%s%s", code, stdout, stderr)
	}
	after, err := g.store.SessionKey(ctx)
	if err != nil || bytes.Equal(before, after) {
		t.Fatalf("key after rotate-key: unchanged or %v", err)
	}
	if code, stdout, _ := runWith(t, cli.Sessions, env, "", "rotate-key", "--json"); code != 0 || strings.TrimSpace(stdout) != `{"success":true,"rotated":true}` {
		t.Fatalf("rotate-key --json: %d %q", code, stdout)
	}

	for _, tc := range []struct {
		name   string
		env    map[string]string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{name: "help", args: []string{"--help"}, code: 0, stdout: "Usage: hopgate-server sessions rotate-key"},
		{name: "help of the command", args: []string{"rotate-key", "-h"}, code: 0, stdout: "every single-sign-on session ends"},
		{name: "no command", args: nil, code: 2, stderr: "hopgate-server sessions: missing command: rotate-key"},
		{name: "unknown command", args: []string{"list"}, code: 2, stderr: `unknown command "list": use rotate-key`},
		{name: "argument", args: []string{"rotate-key", "shop.example.com"}, code: 2, stderr: "rotate-key takes no argument"},
		{name: "policy is not a sessions command", args: []string{"policy", "show", "x.example.com"}, code: 2, stderr: `unknown command "policy"`},
		{name: "wrong admin key", env: map[string]string{"HOP_ADMIN_URL": g.url, "HOP_ADMIN_API_KEY": "wrong", "HOP_ADMIN_CA_FILE": g.caFile},
			args: []string{"rotate-key"}, code: 1, stderr: "401 Unauthorized"},
		{name: "no admin key", env: map[string]string{"HOP_ADMIN_URL": g.url}, args: []string{"rotate-key"}, code: 2, stderr: "no admin API key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := env
			if tc.env != nil {
				e = tc.env
			}
			code, stdout, stderr := runWith(t, cli.Sessions, e, "", tc.args...)
			if code != tc.code || !strings.Contains(stdout, tc.stdout) || !strings.Contains(stderr, tc.stderr) {
				t.Errorf("exit %d, want %d with %q / %q\nstdout:\n%s\nstderr:\n%s", code, tc.code, tc.stdout, tc.stderr, stdout, stderr)
			}
		})
	}
	if k, err := g.store.SessionKey(ctx); err != nil || len(k) != 32 {
		t.Fatalf("key at the end: %d bytes, %v", len(k), err)
	}
}
