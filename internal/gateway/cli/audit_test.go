package cli_test

import (
	"bytes"
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hopgate/hopgate/internal/gateway/cli"
	"github.com/hopgate/hopgate/internal/gateway/registry"
)

func runAudit(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	code = cli.Audit(context.Background(), args, cli.Env{Lookup: lookup}, cli.IO{Stdout: &out, Stderr: &errOut})
	return code, out.String(), errOut.String()
}

// TestAudit: the command line's changes are in the log as the CLI's; verify passes on the untouched
// chain and fails naming the row edited in the database.
func TestAudit(t *testing.T) {
	t.Parallel()
	g := newGateway(t)
	env := map[string]string{"HOP_ADMIN_URL": g.url, "HOP_ADMIN_API_KEY": adminKey, "HOP_ADMIN_CA_FILE": g.caFile}
	if code, _, stderr := runAudit(t, env, "list"); code != 0 {
		t.Fatalf("list, empty: exit %d: %s", code, stderr)
	}
	for _, d := range []string{"one.example.com", "two.example.com", "three.example.com"} {
		if code, _, stderr := run(t, env, "add", d); code != 0 {
			t.Fatalf("add %s: exit %d: %s", d, code, stderr)
		}
	}
	code, stdout, stderr := runAudit(t, env, "list")
	if code != 0 || strings.Count(stdout, "admin-key (cli)") != 3 || !strings.Contains(stdout, "two.example.com") || !strings.Contains(stdout, "201 Created") {
		t.Fatalf("list: exit %d\n%s%s", code, stdout, stderr)
	}
	if code, stdout, stderr := runAudit(t, env, "verify"); code != 0 || !strings.Contains(stdout, "intact: 3 entries") {
		t.Fatalf("verify, untouched: exit %d\n%s%s", code, stdout, stderr)
	}

	raw, err := sql.Open("sqlite", filepath.Join(g.dataDir, registry.DBFile)+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Exec("UPDATE audit_log SET target = 'other.example.com' WHERE id = 2"); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = runAudit(t, env, "verify")
	if code != 1 || !strings.Contains(stderr, "row 2: edited") || strings.Contains(stderr, "row 3") {
		t.Fatalf("verify, row 2 edited: exit %d\n%s%s", code, stdout, stderr)
	}
	if _, err := raw.Exec("DELETE FROM audit_log WHERE id = 2"); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runAudit(t, env, "verify")
	if code != 1 || !strings.Contains(stderr, "row 3: row 2 before it was deleted") {
		t.Fatalf("verify, row 2 deleted: exit %d\n%s", code, stderr)
	}
	if code, _, _ := runAudit(t, env, "frobnicate"); code != 2 {
		t.Fatalf("unknown command: exit %d, want 2", code)
	}
}
