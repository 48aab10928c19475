package errorpage

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/net/html"
)

// Real Accept headers, as sent by the clients named.
const (
	acceptChrome  = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
	acceptFirefox = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/png,image/svg+xml,*/*;q=0.8"
	acceptSafari  = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
	acceptCurl    = "*/*"
	acceptAxios   = "application/json, text/plain, */*"
	acceptHTTPie  = "application/json, */*;q=0.5"
)

// codes are the statuses the issue asks a page for; texts must cover exactly these.
var codes = []int{400, 401, 403, 404, 405, 413, 421, 429, 431, 500, 502, 503, 504}

func TestNegotiate(t *testing.T) {
	tests := []struct {
		name, accept string
		want         kind
	}{
		{"chrome", acceptChrome, kindHTML},
		{"firefox", acceptFirefox, kindHTML},
		{"safari", acceptSafari, kindHTML},
		{"curl", acceptCurl, kindText},
		{"wildcard with q", "*/*;q=0.8", kindText},
		{"none", "", kindText},
		{"axios", acceptAxios, kindJSON},
		{"httpie", acceptHTTPie, kindJSON},
		{"json", "application/json", kindJSON},
		{"problem json", "application/problem+json", kindJSON},
		{"json with charset", "application/json; charset=utf-8", kindJSON},
		{"plain text", "text/plain", kindText},
		{"text wildcard", "text/*", kindText},
		{"html preferred by q", "application/json;q=0.5, text/html", kindHTML},
		{"json preferred by q", "text/html;q=0.4, application/json;q=0.9", kindJSON},
		{"text preferred by q", "text/plain, text/html;q=0.9", kindText},
		{"tie goes to the first", "application/json, text/html", kindJSON},
		{"refused json", "application/json;q=0, text/html", kindHTML},
		{"only refused json", "application/json;q=0", kindText},
		{"bad q skipped", "application/json;q=abc, text/html;q=0.1", kindHTML},
		{"garbage", ";;, ,/", kindText},
		{"xhtml", "application/xhtml+xml", kindHTML},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := negotiate(tc.accept); got != tc.want {
				t.Errorf("negotiate(%q) = %v, want %v", tc.accept, got, tc.want)
			}
		})
	}
}

func TestTextsCoverEveryCode(t *testing.T) {
	for _, code := range codes {
		tx, ok := texts[code]
		if !ok {
			t.Errorf("no text for %d", code)
			continue
		}
		for name, s := range map[string]string{
			"Title": tx.Title, "Message": tx.Message, "Hint": tx.Hint,
			"TitleKo": tx.TitleKo, "MessageKo": tx.MessageKo, "HintKo": tx.HintKo,
		} {
			if strings.TrimSpace(s) == "" {
				t.Errorf("%d: %s is empty", code, name)
			}
		}
	}
	if len(texts) != len(codes) {
		t.Errorf("texts has %d statuses, want %d", len(texts), len(codes))
	}
}

// serve runs wr on a real listener: GET or HEAD /<code> answers that status.
func serve(t *testing.T, wr *Writer) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusTeapot)
			return
		}
		wr.Write(w, r, code, r.URL.Query().Get("msg"))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

type response struct {
	status int
	header http.Header
	body   string
}

func fetch(t *testing.T, method, url, accept string, header ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, string(b)}
}

func newWriter(t *testing.T, pagesDir, assetsDir string) *Writer {
	t.Helper()
	wr, err := New(pagesDir, assetsDir)
	if err != nil {
		t.Fatal(err)
	}
	return wr
}

func TestWriteEveryCode(t *testing.T) {
	base := serve(t, newWriter(t, "", ""))
	kinds := []struct {
		name, accept, ctype string
		check               func(t *testing.T, code int, body string)
	}{
		{"html", acceptChrome, "text/html; charset=utf-8", func(t *testing.T, code int, body string) {
			tx := texts[code]
			for _, want := range []string{strconv.Itoa(code), tx.Title, tx.Message, tx.Hint, tx.TitleKo, tx.MessageKo, tx.HintKo} {
				if !strings.Contains(body, html.EscapeString(want)) {
					t.Errorf("page lacks %q", want)
				}
			}
		}},
		{"json", "application/json", "application/json", func(t *testing.T, code int, body string) {
			var got map[string]any
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatalf("body %q: %v", body, err)
			}
			want := map[string]any{"success": false, "error": "detail for " + strconv.Itoa(code), "status": float64(code)}
			if len(got) != len(want) || got["success"] != want["success"] || got["error"] != want["error"] || got["status"] != want["status"] {
				t.Errorf("body = %v, want %v", got, want)
			}
		}},
		{"text", acceptCurl, "text/plain; charset=utf-8", func(t *testing.T, code int, body string) {
			want := strconv.Itoa(code) + " " + texts[code].Title + ": detail for " + strconv.Itoa(code) + "\n"
			if body != want {
				t.Errorf("body = %q, want %q", body, want)
			}
		}},
	}
	for _, code := range codes {
		for _, k := range kinds {
			t.Run(strconv.Itoa(code)+"/"+k.name, func(t *testing.T) {
				url := base + "/" + strconv.Itoa(code) + "?msg=detail+for+" + strconv.Itoa(code)
				get := fetch(t, http.MethodGet, url, k.accept)
				if get.status != code {
					t.Errorf("status = %d, want %d", get.status, code)
				}
				for h, want := range map[string]string{
					"Content-Type":           k.ctype,
					"Cache-Control":          "no-store",
					"X-Content-Type-Options": "nosniff",
					"Content-Length":         strconv.Itoa(len(get.body)),
					"Vary":                   "Accept",
				} {
					if got := get.header.Get(h); got != want {
						t.Errorf("%s = %q, want %q", h, got, want)
					}
				}
				k.check(t, code, get.body)

				head := fetch(t, http.MethodHead, url, k.accept)
				if head.status != code || head.body != "" {
					t.Errorf("HEAD: status %d, body %q; want %d and no body", head.status, head.body, code)
				}
				for _, h := range []string{"Content-Type", "Content-Length", "Cache-Control", "X-Content-Type-Options"} {
					if head.header.Get(h) != get.header.Get(h) {
						t.Errorf("HEAD %s = %q, GET has %q", h, head.header.Get(h), get.header.Get(h))
					}
				}
			})
		}
	}
}

// TestPagesSelfContained parses every page and fails on anything that would make the browser ask
// another host (or the failing tenant's domain) for a resource.
func TestPagesSelfContained(t *testing.T) {
	wr := newWriter(t, "", "")
	for _, code := range append(slices.Clone(codes), 418, 599) {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.Header.Set("Accept", acceptFirefox)
			req.Header.Set("X-Request-Id", "req-1")
			wr.Write(rec, req, code, "")
			page := rec.Body.String()
			doc, err := html.Parse(strings.NewReader(page))
			if err != nil {
				t.Fatal(err)
			}
			var refs int
			for n := range doc.Descendants() {
				if n.Type == html.ElementNode && n.Data == "link" {
					t.Errorf("page has a <link>: %v", n.Attr)
				}
				if n.Type == html.ElementNode && n.Data == "style" && n.FirstChild != nil {
					css := strings.ToLower(n.FirstChild.Data)
					if strings.Contains(css, "@import") || strings.Contains(css, "url(") {
						t.Errorf("inline CSS loads something: %q", css)
					}
				}
				for _, a := range n.Attr {
					v := strings.ToLower(strings.TrimSpace(a.Val))
					switch a.Key {
					case "src", "href", "srcset", "action", "poster", "data":
						refs++
						if !strings.HasPrefix(v, "data:") && !strings.HasPrefix(v, "#") {
							t.Errorf("<%s %s=%.60q> is not inline", n.Data, a.Key, a.Val)
						}
					}
					if strings.Contains(v, "http://") || strings.Contains(v, "https://") || strings.HasPrefix(v, "//") {
						t.Errorf("<%s %s=%.60q> refers to a URL", n.Data, a.Key, a.Val)
					}
				}
			}
			if refs == 0 {
				t.Error("no logo found: the walk checked nothing")
			}
			if !strings.Contains(page, "req-1") {
				t.Error("request id missing")
			}
		})
	}
}

func TestRequestID(t *testing.T) {
	wr := newWriter(t, "", "")
	tests := []struct{ name, onRequest, onResponse, want, notWant string }{
		{"escaped", "<script>x</script>", "", "&lt;script&gt;", "<script>x"},
		{"truncated", strings.Repeat("a", 300), "", strings.Repeat("a", maxRequestIDLen) + "</code>", strings.Repeat("a", maxRequestIDLen+1)},
		{"response header wins", "from-client", "from-gateway", "from-gateway", "from-client"},
		{"none", "", "", "", "Request ID"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.Header.Set("Accept", "text/html")
			if tc.onRequest != "" {
				req.Header.Set("X-Request-Id", tc.onRequest)
			}
			if tc.onResponse != "" {
				rec.Header().Set("X-Request-Id", tc.onResponse)
			}
			wr.Write(rec, req, http.StatusBadGateway, "")
			body := rec.Body.String()
			if !strings.Contains(body, tc.want) {
				t.Errorf("page lacks %q", tc.want)
			}
			if strings.Contains(body, tc.notWant) {
				t.Errorf("page has %q", tc.notWant)
			}
		})
	}
}

// API callers get the request id too, and only when there is one.
func TestRequestIDInJSON(t *testing.T) {
	wr := newWriter(t, "", "")
	for id, want := range map[string]string{
		"req-7": `{"success":false,"error":"Your address may not visit.","status":403,"request_id":"req-7"}`,
		"":      `{"success":false,"error":"Your address may not visit.","status":403}`,
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Header.Set("Accept", "application/json")
		if id != "" {
			req.Header.Set("X-Request-Id", id)
		}
		wr.Write(rec, req, http.StatusForbidden, "Your address may not visit.")
		if got := strings.TrimSpace(rec.Body.String()); got != want {
			t.Errorf("request id %q: %s, want %s", id, got, want)
		}
	}
}

// A proxy that fails after copying upstream headers must not leave them on the error body.
func TestWriteDropsUpstreamBodyHeaders(t *testing.T) {
	wr := newWriter(t, "", "")
	rec := httptest.NewRecorder()
	rec.Header().Set("Content-Encoding", "gzip")
	rec.Header().Set("ETag", `"abc"`)
	rec.Header().Set("Cache-Control", "max-age=3600")
	wr.Write(rec, httptest.NewRequest(http.MethodGet, "/", nil), http.StatusBadGateway, "")
	for _, h := range []string{"Content-Encoding", "ETag"} {
		if v := rec.Header().Get(h); v != "" {
			t.Errorf("%s = %q survived", h, v)
		}
	}
	if v := rec.Header().Get("Cache-Control"); v != "no-store" {
		t.Errorf("Cache-Control = %q", v)
	}
}

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestOverrideDir(t *testing.T) {
	const (
		own     = `own {{.Code}} {{.TitleKo}}`
		generic = `generic {{.Code}} {{.Title}}`
	)
	tests := []struct {
		name  string
		files map[string]string
		want  map[int]string // status -> start of the page
	}{
		{"page per code and error.html", map[string]string{"503.html": own, "error.html": generic, "notes.html": "{{.Broken", "README": "x"},
			map[int]string{503: "own 503 서비스를 사용할 수 없음", 404: "generic 404 Not found", 418: "generic 418 I&#39;m a teapot"}},
		{"page per code only", map[string]string{"503.html": own},
			map[int]string{503: "own 503 ", 502: "<!doctype html>"}},
		{"code outside the table", map[string]string{"418.html": own},
			map[int]string{418: "own 418 오류", 404: "<!doctype html>"}},
		{"error.html only", map[string]string{"error.html": generic},
			map[int]string{400: "generic 400 Bad request", 504: "generic 504 Gateway timeout"}},
		{"empty directory", map[string]string{},
			map[int]string{404: "<!doctype html>"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wr := newWriter(t, writeFiles(t, tc.files), "")
			for code, want := range tc.want {
				rec := httptest.NewRecorder()
				req := httptest.NewRequest(http.MethodGet, "/", nil)
				req.Header.Set("Accept", "text/html")
				wr.Write(rec, req, code, "")
				if rec.Code != code {
					t.Errorf("%d: status %d", code, rec.Code)
				}
				if got := rec.Body.String(); !strings.HasPrefix(got, want) {
					t.Errorf("%d: page starts %.40q, want %q", code, got, want)
				}
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		pages      map[string]string // nil: no pages directory
		pagesDir   string            // used when pages is nil
		assetsDir  string
		wantInErr  []string // the file name must be in the message
		pagesNamed bool     // wantInErr[0] is relative to the pages directory
	}{
		{"syntax error in a code page", map[string]string{"404.html": "{{.Code", "error.html": "ok"}, "", "", []string{"404.html", "parse"}, true},
		{"syntax error in error.html", map[string]string{"error.html": "{{if .Code}}"}, "", "", []string{"error.html", "parse"}, true},
		{"unknown field", map[string]string{"502.html": "{{.Nope}}"}, "", "", []string{"502.html", "Nope"}, true},
		{"missing pages dir", nil, "/nonexistent/hopgate-pages", "", []string{"/nonexistent/hopgate-pages"}, false},
		{"pages dir is a file", nil, file, "", []string{file, "not a directory"}, false},
		{"missing assets dir", nil, "", "/nonexistent/hopgate-assets", []string{"/nonexistent/hopgate-assets"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.pagesDir
			if tc.pages != nil {
				dir = writeFiles(t, tc.pages)
			}
			wr, err := New(dir, tc.assetsDir)
			if err == nil {
				t.Fatalf("New succeeded (%v)", wr)
			}
			want := slices.Clone(tc.wantInErr)
			if tc.pagesNamed {
				want[0] = filepath.Join(dir, want[0])
			}
			for _, w := range want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}

func TestAssetsOverride(t *testing.T) {
	const logo = `<svg xmlns="http://www.w3.org/2000/svg"><circle r="1"/></svg>`
	wr := newWriter(t, "", writeFiles(t, map[string]string{"logo.svg": logo, "extra.txt": "extra"}))
	srv := httptest.NewServer(wr.Assets())
	t.Cleanup(srv.Close)

	tests := []struct {
		path   string
		status int
		body   string // a substring
	}{
		{AssetsPrefix + "logo.svg", http.StatusOK, "<circle"},
		{AssetsPrefix + "style.css", http.StatusOK, "prefers-color-scheme"}, // embedded fallback
		{AssetsPrefix + "extra.txt", http.StatusOK, "extra"},
		{AssetsPrefix, http.StatusNotFound, ""},
		{AssetsPrefix + "missing.png", http.StatusNotFound, ""},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			got := fetch(t, http.MethodGet, srv.URL+tc.path, "")
			if got.status != tc.status || !strings.Contains(got.body, tc.body) {
				t.Errorf("status %d body %.80q; want %d with %q", got.status, got.body, tc.status, tc.body)
			}
		})
	}
	if !strings.Contains(string(wr.logo), "data:image/svg+xml;base64,") || string(wr.css) == "" {
		t.Errorf("inlined assets: logo %.40q, css %d bytes", wr.logo, len(wr.css))
	}
}
