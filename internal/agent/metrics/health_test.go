package metrics_test

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hopgate/hopgate/internal/agent/metrics"
)

func TestSetTargets(t *testing.T) {
	m := metrics.New()
	m.SetTargets(3, 1)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{"\nhopgate_client_target_up 2\n", "\nhopgate_client_target_down 1\n"} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %q", strings.TrimSpace(want))
		}
	}
}
