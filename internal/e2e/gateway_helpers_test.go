package e2e

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/lib/pq"  // database/sql driver "postgres", to inspect what the server stored
	_ "modernc.org/sqlite" // database/sql driver "sqlite", same for the embedded store
)

// gwRequestTimeout bounds every single request the gateway tests make.
const gwRequestTimeout = 15 * time.Second

// gwResponse is a fully read answer.
type gwResponse struct {
	code   int
	header http.Header
	body   []byte
}

// gwJSON decodes the body as a JSON object, failing the test if it is not one.
func (r gwResponse) gwJSON(t testing.TB) map[string]any {
	t.Helper()
	var out map[string]any
	if err := json.Unmarshal(r.body, &out); err != nil {
		t.Fatalf("body is not a JSON object (%v): %q", err, r.body)
	}
	return out
}

// gwDoE sends one request and reads the whole answer; hdr may be nil. Safe from any goroutine.
func gwDoE(c *http.Client, method, url string, hdr http.Header, body io.Reader) (gwResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), gwRequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return gwResponse{}, err
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	res, err := c.Do(req)
	if err != nil {
		return gwResponse{}, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return gwResponse{}, fmt.Errorf("read body of %s %s: %w", method, url, err)
	}
	return gwResponse{code: res.StatusCode, header: res.Header, body: b}, nil
}

// gwDo is gwDoE failing t on a transport error.
func gwDo(t testing.TB, c *http.Client, method, url string, hdr http.Header, body io.Reader) gwResponse {
	t.Helper()
	r, err := gwDoE(c, method, url, hdr, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

// gwBearer is the Authorization header of the gateway's admin key.
func gwBearer(g *gateway) http.Header {
	return http.Header{"Authorization": {"Bearer " + g.adminKey}}
}

// gwBody marshals v to a JSON request body; nil means no body.
func gwBody(v any) io.Reader {
	if v == nil {
		return nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return bytes.NewReader(b)
}

// gwAdminE calls the admin API with the right key through c, from any goroutine.
func gwAdminE(g *gateway, c *http.Client, method, path string, body any) (int, map[string]any, error) {
	r, err := gwDoE(c, method, g.url("localhost", path), gwBearer(g), gwBody(body))
	if err != nil {
		return 0, nil, err
	}
	var out map[string]any
	if err := json.Unmarshal(r.body, &out); err != nil {
		return r.code, nil, fmt.Errorf("%s %s: %d with a body that is not JSON: %q", method, path, r.code, r.body)
	}
	return r.code, out, nil
}

// gwAdmin calls the admin API and fails t on transport errors or a non-JSON answer.
func gwAdmin(t testing.TB, g *gateway, c *http.Client, method, path string, body any) (int, map[string]any) {
	t.Helper()
	code, out, err := gwAdminE(g, c, method, path, body)
	if err != nil {
		t.Fatal(err)
	}
	return code, out
}

// gwAgents is the live agent count of domain as the status call reports it.
func gwAgents(t testing.TB, g *gateway, c *http.Client, domain string) int {
	t.Helper()
	code, out := gwAdmin(t, g, c, http.MethodGet, "/api/v1/admin/domains/status?domain="+domain, nil)
	if code != http.StatusOK {
		t.Fatalf("status %s: %d %v", domain, code, out)
	}
	n, ok := out["agents"].(float64)
	if !ok {
		t.Fatalf("status %s: no numeric agents field: %v", domain, out)
	}
	return int(n)
}

// gwTarget is a local service behind an agent that counts the requests reaching it.
type gwTarget struct {
	*httptest.Server
	hits atomic.Int64
}

// gwNewTarget serves h (a 200 "ok" when nil) and counts hits.
func gwNewTarget(t testing.TB, h http.HandlerFunc) *gwTarget {
	t.Helper()
	tg := &gwTarget{}
	tg.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tg.hits.Add(1)
		if h != nil {
			h(w, r)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(tg.Close)
	return tg
}

// gwNoRedirect is a plain-HTTP client that shows redirects instead of following them.
func gwNoRedirect() *http.Client {
	return &http.Client{
		Timeout:       gwRequestTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// gwRows returns every row of table domains, every column as text, from the database at dsn.
func gwRows(t testing.TB, driver, dsn string) [][]string {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := db.QueryContext(ctx, "SELECT * FROM domains")
	if err != nil {
		t.Fatalf("query domains: %v", err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		t.Fatal(err)
	}
	var out [][]string
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		row := make([]string, len(cols))
		for i, v := range vals {
			if b, ok := v.([]byte); ok {
				row[i] = string(b)
			} else {
				row[i] = fmt.Sprint(v)
			}
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// gwExec runs one statement against the database at dsn.
func gwExec(t testing.TB, driver, dsn, stmt string) {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, stmt); err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
}

// gwHideLength hides the length of a body, so that it is sent chunked (HTTP/1.1) or without
// content-length (HTTP/2) and the server must count what it reads.
type gwHideLength struct{ io.Reader }

// gwReadFileIfExists reads a file; a missing one reads as empty.
func gwReadFileIfExists(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}
