package admin_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hopgate/hopgate/internal/gateway/admin"
)

// TestAuditLog: every change through the API, refused ones included, is an entry naming who, from
// where, what, which domain and the result; reads are not; the log is served newest first and
// verified; an edited row is named by audit/verify.
func TestAuditLog(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		e := newEnvAudit(t, b)
		if r := e.do(http.MethodPost, "/api/v1/admin/domains/register", "", strings.NewReader(`{"domain":"Audit.Example.com"}`)); r.code != http.StatusCreated {
			t.Fatalf("register: %d %s", r.code, r.raw)
		}
		if r := e.do(http.MethodPost, "/api/v1/admin/domains/register", "", strings.NewReader(`{"domain":"audit.example.com"}`)); r.code != http.StatusConflict {
			t.Fatalf("register again: %d %s", r.code, r.raw)
		}
		e.do(http.MethodGet, "/api/v1/admin/domains", "", nil)
		req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/api/v1/admin/domains/rotate-key", strings.NewReader(`{"domain":"audit.example.com"}`))
		req.Header.Set("Authorization", "Bearer "+adminKey)
		req.Header.Set(admin.ClientHeader, "cli")
		res, err := e.srv.Client().Do(req)
		if err != nil || res.StatusCode != http.StatusOK {
			t.Fatalf("rotate-key: %v %v", res, err)
		}
		res.Body.Close()
		// Not authenticated: not an admin action, and never written (the failure limiter counts it).
		e.do(http.MethodPost, "/api/v1/admin/domains/unregister", "-", strings.NewReader(`{"domain":"audit.example.com"}`))

		r := e.do(http.MethodGet, "/api/v1/admin/audit", "", nil)
		entries, _ := r.body["entries"].([]any)
		if r.code != http.StatusOK || len(entries) != 3 {
			t.Fatalf("audit: %d, %d entries, want 3: %s", r.code, len(entries), r.raw)
		}
		want := []struct{ action, actor, result string }{
			{"domains/rotate-key", "admin-key (cli)", "200 OK"},
			{"domains/register", "admin-key", "409 Conflict"},
			{"domains/register", "admin-key", "201 Created"},
		}
		for i, w := range want {
			got := entries[i].(map[string]any)
			if got["action"] != w.action || got["actor"] != w.actor || got["result"] != w.result ||
				got["target"] != "audit.example.com" || got["remote"] != "127.0.0.1" || got["hash"] == "" || got["at"] == "" {
				t.Errorf("entry %d = %v, want %+v on audit.example.com from 127.0.0.1", i, got, w)
			}
		}
		if strings.Contains(r.raw, "hop_") {
			t.Errorf("the audit log holds a key: %s", r.raw)
		}
		if r := e.do(http.MethodGet, "/api/v1/admin/audit?limit=1&before=2", "", nil); len(r.body["entries"].([]any)) != 1 ||
			r.body["entries"].([]any)[0].(map[string]any)["id"] != float64(1) {
			t.Errorf("audit?limit=1&before=2: %s", r.raw)
		}
		if r := e.do(http.MethodGet, "/api/v1/admin/audit?limit=0", "", nil); r.code != http.StatusBadRequest {
			t.Errorf("limit=0: %d", r.code)
		}
		if r := e.do(http.MethodGet, "/api/v1/admin/audit/verify", "", nil); r.body["intact"] != true || r.body["rows"] != float64(3) {
			t.Fatalf("verify, untouched: %s", r.raw)
		}
		if _, err := e.raw.ExecContext(context.Background(), "UPDATE audit_log SET actor = 'someone else' WHERE id = 2"); err != nil {
			t.Fatal(err)
		}
		r = e.do(http.MethodGet, "/api/v1/admin/audit/verify", "", nil)
		problems, _ := r.body["problems"].([]any)
		if r.body["intact"] != false || len(problems) != 1 || problems[0].(map[string]any)["id"] != float64(2) {
			t.Fatalf("verify after editing row 2: %s", r.raw)
		}
	})
}

// newEnvAudit is newEnv with the audit log kept in the env's store.
func newEnvAudit(t *testing.T, b backend) *env {
	t.Helper()
	e := newEnv(t, b, adminKey)
	e.srv.Close()
	logger := slog.New(slog.NewJSONHandler(e.logs, nil))
	e.srv = httptest.NewTLSServer(admin.New(e.store, e.agents, adminKey, logger, admin.WithAudit(e.store)))
	t.Cleanup(e.srv.Close)
	return e
}
