package admin_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/hopgate/hopgate/internal/gateway/admin"
)

// TestRegisterWildcard: a wildcard domain registers, lists and authenticates under its canonical
// "*." name; a star anywhere else, a wildcard over a top-level domain or over the gateway's own name
// is 400, and so is any wildcard on a gateway that cannot get its certificate.
func TestRegisterWildcard(t *testing.T) {
	t.Parallel()
	sqlite := backends[0]
	e := newEnv(t, sqlite, adminKey, admin.Reserved("gw.example.com"))
	res := e.do(http.MethodPost, "/api/v1/admin/domains/register", "", jsonBody(`{"domain":"*.Apps.Example.com."}`))
	if res.code != http.StatusCreated || res.body["domain"] != "*.apps.example.com" {
		t.Fatalf("register wildcard: %d %s", res.code, res.raw)
	}
	key, _ := res.body["client_api_key"].(string)
	if _, err := e.store.Authenticate(t.Context(), "*.apps.example.com", key); err != nil {
		t.Fatalf("the agent's login for the wildcard: %v", err)
	}
	if res := e.do(http.MethodGet, "/api/v1/admin/domains/exists?domain=*.apps.example.com", "", nil); res.body["exists"] != true {
		t.Fatalf("exists: %s", res.raw)
	}
	// The wildcard and a name under it are two registrations.
	if res := e.do(http.MethodPost, "/api/v1/admin/domains/register", "", jsonBody(`{"domain":"x.apps.example.com"}`)); res.code != http.StatusCreated {
		t.Fatalf("register a name under the wildcard: %d %s", res.code, res.raw)
	}
	for _, tc := range []struct{ domain, want string }{
		{"*.com", "single label"},
		{"a.*.example.com", "wildcard"},
		{"*.*.example.com", "wildcard"},
		{"*x.example.com", "wildcard"},
		{"*.gw.example.com", "gateway's own name"},
	} {
		res := e.do(http.MethodPost, "/api/v1/admin/domains/register", "", jsonBody(`{"domain":"`+tc.domain+`"}`))
		if res.code != http.StatusBadRequest || !strings.Contains(res.body["error"].(string), tc.want) {
			t.Errorf("register %s: %d %s, want 400 mentioning %q", tc.domain, res.code, res.raw, tc.want)
		}
	}

	refusing := newEnv(t, sqlite, adminKey, admin.RefuseWildcards("HOP_ACME_DNS_PROVIDER is not set"))
	res = refusing.do(http.MethodPost, "/api/v1/admin/domains/register", "", jsonBody(`{"domain":"*.apps.example.com"}`))
	if res.code != http.StatusBadRequest || !strings.Contains(res.raw, "HOP_ACME_DNS_PROVIDER") {
		t.Fatalf("wildcard without a way to its certificate: %d %s", res.code, res.raw)
	}
	if res := refusing.do(http.MethodPost, "/api/v1/admin/domains/register", "", jsonBody(`{"domain":"app.example.com"}`)); res.code != http.StatusCreated {
		t.Fatalf("plain name on the same gateway: %d %s", res.code, res.raw)
	}
}
