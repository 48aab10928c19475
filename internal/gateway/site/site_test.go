package site_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	pages "github.com/hopgate/hopgate/errors"
	"github.com/hopgate/hopgate/internal/gateway/errorpage"
	"github.com/hopgate/hopgate/internal/gateway/site"
)

// adminStub stands in for the admin API: it answers 200 with the path it was given, so a test sees
// both that the request reached it and that the path was not rewritten on the way.
var adminStub = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Admin", "yes")
	_, _ = io.WriteString(w, r.URL.Path)
})

func newSite(t *testing.T, o site.Options) http.Handler {
	t.Helper()
	errs, err := errorpage.New("", "")
	if err != nil {
		t.Fatal(err)
	}
	o.Errors = errs
	return site.New(o)
}

func get(h http.Handler, path, accept string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, "https://localhost"+path, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, req)
	return rr
}

// decode reads a JSON object answer and checks the headers every JSON answer of the site carries.
func decode(t *testing.T, rr *httptest.ResponseRecorder) map[string]any {
	t.Helper()
	if ct := rr.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	// Health and admin answers describe the moment; no cache may keep them.
	if cc := rr.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", cc)
	}
	var v map[string]any
	if err := json.Unmarshal(rr.Body.Bytes(), &v); err != nil {
		t.Fatalf("body %q is not a JSON object: %v", rr.Body.String(), err)
	}
	return v
}

func sameJSON(got, want map[string]any) bool {
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	return string(g) == string(w)
}

// TestSite checks every route of the gateway's own name.
func TestSite(t *testing.T) {
	storeDown := func(context.Context) error {
		return errors.New("dial tcp 10.0.0.5:5432: password authentication failed for user hopgate")
	}
	disabled := map[string]any{"success": false, "error": "admin API is disabled"}
	errorPage404 := map[string]any{"success": false, "status": float64(404)}
	tests := []struct {
		name     string
		opts     site.Options
		path     string
		accept   string
		wantCode int
		wantJSON map[string]any // the whole JSON body, for the site's own answers
		// wantFields are some fields of a JSON body (errorpage's answers: their wording is its own)
		wantFields map[string]any
		wantBody   string // for non-JSON answers, a substring of the body
		admin      bool   // the admin handler must have served it
	}{
		{name: "healthz", path: "/healthz", wantCode: 200, wantJSON: map[string]any{"status": "ok"}},
		// Liveness never depends on the store: a dead database must not get the process restarted.
		{name: "healthz while the store is down", opts: site.Options{Ready: storeDown}, path: "/healthz",
			wantCode: 200, wantJSON: map[string]any{"status": "ok"}},
		{name: "readyz without a check", path: "/readyz", wantCode: 200, wantJSON: map[string]any{"status": "ok"}},
		{name: "readyz with the store up", opts: site.Options{Ready: func(context.Context) error { return nil }},
			path: "/readyz", wantCode: 200, wantJSON: map[string]any{"status": "ok"}},
		// The cause is logged, not shown: it may name hosts and users of the store.
		{name: "readyz with the store down", opts: site.Options{Ready: storeDown}, path: "/readyz",
			wantCode: 503, wantJSON: map[string]any{"status": "unavailable", "error": "store unreachable"}},
		{name: "readyz while draining", opts: site.Options{Ready: func(context.Context) error { return nil }, Draining: func() bool { return true }},
			path: "/readyz", wantCode: 503, wantJSON: map[string]any{"status": "draining"}},
		{name: "readyz not draining", opts: site.Options{Draining: func() bool { return false }},
			path: "/readyz", wantCode: 200, wantJSON: map[string]any{"status": "ok"}},
		// Liveness stays up while draining: the process is not to be restarted mid-drain.
		{name: "healthz while draining", opts: site.Options{Draining: func() bool { return true }},
			path: "/healthz", wantCode: 200, wantJSON: map[string]any{"status": "ok"}},
		{name: "admin disabled", path: "/api/v1/admin/domains", wantCode: 404, wantJSON: disabled},
		{name: "admin disabled, bare prefix", path: "/api/v1/admin", wantCode: 404, wantJSON: disabled},
		{name: "admin disabled, prefix with slash", path: "/api/v1/admin/", wantCode: 404, wantJSON: disabled},
		{name: "admin enabled", opts: site.Options{Admin: adminStub}, path: "/api/v1/admin/domains/status",
			wantCode: 200, wantBody: "/api/v1/admin/domains/status", admin: true},
		{name: "admin enabled, bare prefix", opts: site.Options{Admin: adminStub}, path: "/api/v1/admin",
			wantCode: 200, wantBody: "/api/v1/admin", admin: true},
		{name: "a path that only starts like the admin API", opts: site.Options{Admin: adminStub},
			path: "/api/v1/administrator", accept: "application/json", wantCode: 404,
			wantFields: errorPage404},
		{name: "unknown path", path: "/", wantCode: 404, wantBody: "404"},
		{name: "unknown path, JSON client", path: "/index.html", accept: "application/json", wantCode: 404,
			wantFields: errorPage404},
		{name: "asset directory is not listed", path: errorpage.AssetsPrefix, wantCode: 404},
		{name: "missing asset", path: errorpage.AssetsPrefix + "nope.css", wantCode: 404},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rr := get(newSite(t, tc.opts), tc.path, tc.accept)
			if rr.Code != tc.wantCode {
				t.Fatalf("status = %d %q, want %d", rr.Code, rr.Body.String(), tc.wantCode)
			}
			if got := rr.Header().Get("X-Admin") == "yes"; got != tc.admin {
				t.Errorf("served by the admin handler: %v, want %v", got, tc.admin)
			}
			if tc.wantJSON != nil {
				if got := decode(t, rr); !sameJSON(got, tc.wantJSON) {
					t.Errorf("body = %v, want %v", got, tc.wantJSON)
				}
			}
			if tc.wantFields != nil {
				got := decode(t, rr)
				for k, want := range tc.wantFields {
					if got[k] != want {
						t.Errorf("body field %q = %v, want %v (body %v)", k, got[k], want, got)
					}
				}
			}
			if !strings.Contains(rr.Body.String(), tc.wantBody) {
				t.Errorf("body %q does not contain %q", rr.Body.String(), tc.wantBody)
			}
		})
	}
}

// TestReadyBounded checks that the store check gets a deadline: a balancer's probe must be answered
// even when the store hangs.
func TestReadyBounded(t *testing.T) {
	var deadline time.Time
	var hasDeadline bool
	h := newSite(t, site.Options{Ready: func(ctx context.Context) error {
		deadline, hasDeadline = ctx.Deadline()
		return nil
	}})
	start := time.Now()
	if rr := get(h, "/readyz", ""); rr.Code != http.StatusOK {
		t.Fatalf("status = %d, want 200", rr.Code)
	}
	if !hasDeadline {
		t.Fatal("Ready was called without a deadline")
	}
	if d := deadline.Sub(start); d <= 0 || d > 5*time.Second {
		t.Errorf("Ready's deadline is %v away, want a few seconds", d)
	}
}

// TestAssets checks that the error pages' files are served from the embedded set, whole.
func TestAssets(t *testing.T) {
	h := newSite(t, site.Options{})
	tests := []struct {
		file, wantType string
	}{
		{file: "style.css", wantType: "text/css"},
		{file: "logo.svg", wantType: "image/svg+xml"},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			want, err := fs.ReadFile(pages.Assets, "assets/"+tc.file)
			if err != nil {
				t.Fatal(err)
			}
			rr := get(h, errorpage.AssetsPrefix+tc.file, "")
			if rr.Code != http.StatusOK {
				t.Fatalf("status = %d, want 200", rr.Code)
			}
			if ct := rr.Header().Get("Content-Type"); !strings.HasPrefix(ct, tc.wantType) {
				t.Errorf("Content-Type = %q, want %s", ct, tc.wantType)
			}
			if rr.Body.String() != string(want) {
				t.Errorf("served %d bytes, want the embedded file's %d", rr.Body.Len(), len(want))
			}
		})
	}
}
