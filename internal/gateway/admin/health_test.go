package admin_test

import (
	"fmt"
	"testing"

	"github.com/hopgate/hopgate/internal/gateway/admin"
)

// TestStatusAgentsDetail: a domain's status lists its agents with their target health beside the
// unchanged count.
func TestStatusAgentsDetail(t *testing.T) {
	detail := func(domain string) []admin.AgentHealth {
		return []admin.AgentHealth{
			{ID: "a1", Healthy: true, Down: []string{}},
			{ID: "a2", Healthy: false, Down: []string{"/api/"}},
		}
	}
	e := newEnv(t, backends[0], adminKey, admin.WithAgentHealth(detail))
	if res := e.do("POST", "/api/v1/admin/domains/register", "", jsonBody(`{"domain":"app.example.com"}`)); res.code != 201 {
		t.Fatalf("register: %d %v", res.code, res.body)
	}
	e.agents.set("app.example.com", 2)
	res := e.do("GET", "/api/v1/admin/domains/status?domain=app.example.com", "", nil)
	if res.code != 200 || res.body["agents"] != 2.0 {
		t.Fatalf("status: %d %v", res.code, res.body)
	}
	got := fmt.Sprint(res.body["agents_detail"])
	if want := "[map[down:[] healthy:true id:a1] map[down:[/api/] healthy:false id:a2]]"; got != want {
		t.Errorf("agents_detail = %s, want %s", got, want)
	}
}
