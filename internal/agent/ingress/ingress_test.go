package ingress

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/hopgate/hopgate/internal/tunnel"
	"github.com/hopgate/hopgate/internal/tunnel/tunneltest"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestMatch: the longest matching prefix wins, prefixes match whole segments, and the Host is
// compared canonical (any case, port and trailing dot ignored).
func TestMatch(t *testing.T) {
	rule := func(host, path string) Rule { return Rule{Hostname: host, Path: path} }
	table := New([]Rule{
		rule("app.example.com", ""),
		rule("app.example.com", "/api"),
		rule("app.example.com", "/api/v2"),
		rule("docs.example.com", "/guide"),
		rule("*.apps.example.com", ""),
		rule("own.apps.example.com", "/only"),
	})
	for _, tc := range []struct {
		host, path string
		want       string // the matched rule's host+path, "" for no match
	}{
		{"app.example.com", "/", "app.example.com"},
		{"app.example.com", "/api", "app.example.com/api"},
		{"app.example.com", "/api/", "app.example.com/api"},
		{"app.example.com", "/api/x?y=/api/v2", "app.example.com/api"},
		{"app.example.com", "/api/v2/users", "app.example.com/api/v2"},
		{"app.example.com", "/api/v20", "app.example.com/api"},
		{"app.example.com", "/apix", "app.example.com"},
		{"APP.Example.COM:8443", "/api/v2", "app.example.com/api/v2"},
		{"app.example.com.", "/api", "app.example.com/api"},
		{"docs.example.com", "/guide/intro", "docs.example.com/guide"},
		{"docs.example.com", "/guidebook", ""},
		{"docs.example.com", "/", ""},
		{"other.example.com", "/", ""},
		{"x.apps.example.com", "/any", "*.apps.example.com"},
		{"X.Apps.Example.com:443", "/", "*.apps.example.com"},
		{"a.b.apps.example.com", "/", ""}, // two labels under: not the wildcard
		{"apps.example.com", "/", ""},     // the wildcard's base is not under it
		{"own.apps.example.com", "/", ""}, // an exact hostname wins, even where its paths miss
		{"own.apps.example.com", "/only/x", "own.apps.example.com/only"},
		{"", "/", ""},
	} {
		r, ok := table.Match(tc.host, tc.path)
		got := ""
		if ok {
			got = r.Hostname + r.Path
		}
		if got != tc.want {
			t.Errorf("Match(%q, %q) = %q, want %q", tc.host, tc.path, got, tc.want)
		}
	}
	if !table.Has("Docs.Example.com:443") || table.Has("other.example.com") {
		t.Error("Has does not follow the canonical hostname")
	}
}

// TestServeNotFound: a stream no rule matches gets the agent's own 404, as JSON when the visitor
// asks for JSON and as text otherwise; a matching stream reaches its rule.
func TestServeNotFound(t *testing.T) {
	served := make(chan string, 1)
	table := New([]Rule{{Hostname: "app.example.com", Path: "/api", Serve: func(st *tunnel.Stream) {
		served <- st.Request().Path
		NotFound(st) // any answer will do
	}}})
	p := tunneltest.NewPair(t, table.Serve)
	for _, tc := range []struct {
		host, path, accept, wantType, wantBody string
	}{
		{"app.example.com", "/web", "", "text/plain", "no service for this hostname and path"},
		{"nope.example.com", "/", "application/json", "application/json", `"success":false`},
	} {
		head, body := roundTrip(t, p.Server, tc.host, tc.path, tc.accept)
		if head.Status != 404 || !strings.Contains(string(body), tc.wantBody) || !strings.HasPrefix(headerOf(head, "Content-Type"), tc.wantType) {
			t.Errorf("%s%s: %d %s %q", tc.host, tc.path, head.Status, headerOf(head, "Content-Type"), body)
		}
	}
	roundTrip(t, p.Server, "app.example.com", "/api/x", "")
	if got := <-served; got != "/api/x" {
		t.Errorf("rule served %q", got)
	}
}

func roundTrip(t *testing.T, s *tunnel.Session, host, path, accept string) (*tunnelv1.ResponseHead, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req := &tunnelv1.RequestHead{Method: "GET", Scheme: "https", Host: host, Path: path, EndStream: true}
	if accept != "" {
		req.Headers = []*tunnelv1.Header{{Name: "Accept", Values: []string{accept}}}
	}
	st, err := s.OpenStream(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	head, err := st.AwaitResponse(ctx)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(st)
	if err != nil {
		t.Fatal(err)
	}
	return head, body
}

func headerOf(h *tunnelv1.ResponseHead, name string) string {
	for _, hd := range h.Headers {
		if strings.EqualFold(hd.Name, name) && len(hd.Values) > 0 {
			return hd.Values[0]
		}
	}
	return ""
}
