package ingress

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/hopgate/hopgate/internal/tunnel"
	"github.com/hopgate/hopgate/internal/tunnel/httpwire"
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
// asks for JSON and as text otherwise, marked for the gateway; a matching stream reaches its rule.
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
		// The gateway shows its own 404 page only for an answer carrying the marker.
		if headerOf(head, httpwire.NoRouteHeader) == "" {
			t.Errorf("%s%s: the 404 lacks %s", tc.host, tc.path, httpwire.NoRouteHeader)
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

// TestMatchRaw: a raw stream matches only its hostname's tcp:// rule (or the wildcard's, for a name
// with no rule of its own, ignoring any path) and an HTTP request only the other rules.
func TestMatchRaw(t *testing.T) {
	table := New([]Rule{
		{Hostname: "app.example.com"},
		{Hostname: "app.example.com", Raw: true},
		{Hostname: "web.example.com", Path: "/api"},
		{Hostname: "db.example.com", Raw: true},
		{Hostname: "*.apps.example.com", Raw: true},
		{Hostname: "own.apps.example.com"},
	})
	for _, tc := range []struct {
		host     string
		raw, web bool // whether MatchRaw, and Match of "/", find a rule
	}{
		{"app.example.com", true, true},
		{"APP.example.com:443", true, true},
		{"db.example.com", true, false},
		{"web.example.com", false, false}, // only /api is served over HTTP
		{"x.apps.example.com", true, false},
		{"a.b.apps.example.com", false, false},
		{"own.apps.example.com", false, true}, // an exact hostname wins, of either kind
		{"other.example.com", false, false},
	} {
		r, ok := table.MatchRaw(tc.host)
		if ok != tc.raw || (ok && !r.Raw) {
			t.Errorf("MatchRaw(%q) = %+v, %v; want a raw rule: %v", tc.host, r, ok, tc.raw)
		}
		r, ok = table.Match(tc.host, "/")
		if ok != tc.web || r.Raw {
			t.Errorf("Match(%q, /) = %+v, %v; want an HTTP rule: %v", tc.host, r, ok, tc.web)
		}
	}
	if r, ok := table.Match("web.example.com", "/api/x"); !ok || r.Raw || r.Path != "/api" {
		t.Errorf("Match(web.example.com, /api/x) = %+v, %v", r, ok)
	}
}

// TestServeRaw: a raw stream goes to the raw rule of its host; one with no raw rule is refused
// with a reset naming the host; an HTTP request for a host with only a tcp:// service gets the 404.
func TestServeRaw(t *testing.T) {
	served := make(chan string, 2)
	answer := func(kind string) func(*tunnel.Stream) {
		return func(st *tunnel.Stream) {
			defer st.Close()
			served <- kind + " " + st.Request().Host
			_ = st.SendResponse(&tunnelv1.ResponseHead{Status: 200, EndStream: true})
		}
	}
	table := New([]Rule{
		{Hostname: "app.example.com", Serve: answer("http")},
		{Hostname: "app.example.com", Raw: true, Serve: answer("raw")},
		{Hostname: "db.example.com", Raw: true, Serve: answer("raw")},
		{Hostname: "*.apps.example.com", Raw: true, Serve: answer("raw")},
	})
	p := tunneltest.NewPair(t, table.Serve)
	open := func(host string, mode tunnelv1.StreamMode) (*tunnelv1.ResponseHead, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := p.Server.OpenStream(ctx, &tunnelv1.RequestHead{Host: host, Mode: mode, RemoteAddr: "192.0.2.1:5000", LocalAddr: "198.51.100.1:443"})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		return st.AwaitResponse(ctx)
	}
	for _, tc := range []struct {
		host string
		mode tunnelv1.StreamMode
		want string
	}{
		{"app.example.com", tunnelv1.StreamMode_STREAM_MODE_TCP, "raw app.example.com"},
		{"db.example.com", tunnelv1.StreamMode_STREAM_MODE_TCP, "raw db.example.com"},
		{"x.apps.example.com", tunnelv1.StreamMode_STREAM_MODE_TLS_PASSTHROUGH, "raw x.apps.example.com"},
	} {
		if head, err := open(tc.host, tc.mode); err != nil || head.Status != 200 {
			t.Fatalf("%s %s: %v, %v", tc.mode, tc.host, head, err)
		}
		if got := <-served; got != tc.want {
			t.Errorf("%s %s served by %q, want %q", tc.mode, tc.host, got, tc.want)
		}
	}

	_, err := open("Nope.Example.com", tunnelv1.StreamMode_STREAM_MODE_TLS_PASSTHROUGH)
	var reset *tunnel.ResetError
	if !errors.As(err, &reset) || reset.Reason != tunnelv1.ResetReason_RESET_REASON_REFUSED ||
		reset.Message != "this agent has no TCP service for nope.example.com" {
		t.Errorf("raw stream without a rule: %v, want a REFUSED reset naming the host", err)
	}

	head, body := roundTrip(t, p.Server, "db.example.com", "/", "")
	if head.Status != 404 || !strings.Contains(string(body), "no service for this hostname") {
		t.Errorf("HTTP request to a tcp:// service: %d %q, want the 404", head.Status, body)
	}
	select {
	case got := <-served:
		t.Errorf("unexpectedly served %q", got)
	default:
	}
}
