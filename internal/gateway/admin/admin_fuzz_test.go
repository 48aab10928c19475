package admin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/hopgate/hopgate/internal/gateway/admin"
	"github.com/hopgate/hopgate/internal/gateway/apikey"
	"github.com/hopgate/hopgate/internal/gateway/hostname"
	"github.com/hopgate/hopgate/internal/gateway/registry"
)

const fuzzAdminKey = "fuzz-admin-key-0123456789"

// fuzzPaths are the admin calls that take a JSON body, chosen by the fuzzer's first argument.
var fuzzPaths = []string{"domains/register", "domains/unregister", "domains/rotate-key"}

// FuzzAdminBodies posts fuzzed bodies to the admin calls that take JSON, against a real registry on
// SQLite, with the right admin key unless the fuzzer supplies an Authorization header. Checked: the
// status is one the API documents (never 500); the answer is one JSON object whose "success" says
// whether the status is 2xx and whose "error" explains a failure; a registered or rotated domain
// comes back canonical with a well-formed key; neither the admin key nor any client key ever reaches
// the logs.
func FuzzAdminBodies(f *testing.F) {
	store, err := registry.Open(context.Background(), registry.Options{DataDir: f.TempDir()})
	if err != nil {
		f.Fatalf("registry.Open: %v", err)
	}
	f.Cleanup(func() { store.Close() })
	logs := &lockedBuffer{}
	h := admin.New(store, nil, fuzzAdminKey, slog.New(slog.NewTextHandler(logs, nil)), admin.Reserved("gate.example.com"))

	for _, s := range []struct {
		op   uint8
		body string
		auth string
	}{
		{0, `{"domain":"app.example.com","memo":"first"}`, ""},
		{0, `{"domain":"APP.example.com."}`, ""},
		{1, `{"domain":"app.example.com","client_api_key":"hopgate_wrong"}`, ""},
		{2, `{"domain":"app.example.com"}`, ""},
		{1, `{"domain":"app.example.com"}`, ""},
		{0, `{"domain":"gate.example.com"}`, ""},
		{0, `{"domain":"münchen.de","memo":"\u0007"}`, ""},
		{0, `{"domain":"x.example.com","memo":"` + strings.Repeat("m", 300) + `"}`, ""},
		{0, `{"domain":"x.example.com","extra":1}`, ""},
		{0, `{"domain":"x.example.com"} {}`, ""},
		{0, `{"domain":["x"]}`, ""},
		{1, `null`, ""},
		{2, ``, ""},
		{2, `{"domain":"x.example.com"}`, "Bearer wrong"},
		{2, `{"domain":"x.example.com"}`, "Basic " + fuzzAdminKey},
		{0, `{"domain":"1.2.3.4"}`, "bearer  " + fuzzAdminKey + " "},
	} {
		f.Add(s.op, []byte(s.body), s.auth)
	}
	f.Fuzz(func(t *testing.T, op uint8, body []byte, auth string) {
		logs.Reset()
		path := admin.Prefix + fuzzPaths[int(op)%len(fuzzPaths)]
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		if auth == "" {
			auth = "Bearer " + fuzzAdminKey
		}
		req.Header.Set("Authorization", auth)
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)

		switch rec.Code {
		case 200, 201, 400, 401, 403, 404, 409, 413, 503:
		default:
			t.Fatalf("POST %s %q: status %d: %s", path, body, rec.Code, rec.Body)
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		var res struct {
			Success      *bool   `json:"success"`
			Error        *string `json:"error"`
			Domain       string  `json:"domain"`
			ClientAPIKey string  `json:"client_api_key"`
		}
		dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
		if err := dec.Decode(&res); err != nil || dec.More() {
			t.Fatalf("POST %s %q: status %d, answer is not one JSON object (%v): %s", path, body, rec.Code, err, rec.Body)
		}
		ok := rec.Code < 300
		if res.Success == nil || *res.Success != ok {
			t.Errorf("POST %s %q: status %d with success %v", path, body, rec.Code, res.Success)
		}
		if !ok && (res.Error == nil || *res.Error == "") {
			t.Errorf("POST %s %q: status %d without an error message: %s", path, body, rec.Code, rec.Body)
		}
		if ok {
			var in struct {
				Domain string `json:"domain"`
			}
			_ = json.Unmarshal(body, &in)
			if want, err := hostname.Canonical(in.Domain); err != nil || res.Domain != want {
				t.Errorf("POST %s %q: answered for domain %q; the canonical form of %q is %q (%v)", path, body, res.Domain, in.Domain, want, err)
			}
			if rec.Code == 201 || strings.HasSuffix(path, "rotate-key") {
				if !apikey.WellFormed(res.ClientAPIKey) {
					t.Errorf("POST %s: issued the malformed key %q", path, res.ClientAPIKey)
				}
			}
		}
		if rec.Code == 401 && auth == "Bearer "+fuzzAdminKey {
			t.Errorf("POST %s: 401 with the right admin key", path)
		}
		if l := logs.String(); strings.Contains(l, fuzzAdminKey) || strings.Contains(l, apikey.Prefix) {
			t.Errorf("a key reached the logs:\n%s", l)
		}
	})
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *lockedBuffer) Reset() {
	b.mu.Lock()
	b.buf.Reset()
	b.mu.Unlock()
}
